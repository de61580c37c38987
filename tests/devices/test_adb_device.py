"""AdbDevice: the real adb binary with no phone attached, and a fake adb that runs `shell` locally."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from sshd_helpers import free_port

from edgepack.devices import AdbDevice, DeviceError, ProgramNotFound, get_device

# Behaves like adb for one attached device "fake-1": `shell` hands the joined words to sh -c, as adbd does.
FAKE_ADB = r"""#!/bin/sh
if [ "$1" = "-P" ]; then shift 2; fi
case "$1" in
  devices) printf 'List of devices attached\n%b\n' "${FAKE_ADB_DEVICES:-fake-1\tdevice}" ;;
  -s)
    serial=$2; shift 2
    [ "$serial" = fake-1 ] || { echo "error: device '$serial' not found" >&2; exit 1; }
    case "$1" in
      shell) shift; exec sh -c "$*" ;;
      push) cp -R "$2" "$3" ;;
      pull) cp "$2" "$3" ;;
    esac ;;
esac
"""


@pytest.fixture
def adb_port():
    """A private adb server port, so the test neither uses nor disturbs the user's adb server."""
    if shutil.which("adb") is None:
        pytest.skip("adb is not installed (scripts/setup-system.sh)")
    port = free_port()
    yield port
    subprocess.run(["adb", "-P", str(port), "kill-server"], capture_output=True, timeout=30)


def test_no_device_attached(adb_port):
    with pytest.raises(DeviceError, match="no adb device attached"):
        get_device("adb", adb_options=["-P", str(adb_port)])
    with pytest.raises(DeviceError, match=r"adb://R58M12345.*no adb device 'R58M12345' attached"):
        get_device("adb://R58M12345", adb_options=["-P", str(adb_port)])


def test_missing_adb_binary(monkeypatch, tmp_path):
    with pytest.raises(ProgramNotFound, match="adb binary '/nonexistent/adb' is not installed"):
        AdbDevice("R58M12345", adb="/nonexistent/adb")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProgramNotFound, match="adb://R58M12345: the adb binary 'adb' is not installed"):
        get_device("adb://R58M12345")


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> str:
    program = tmp_path / "bin" / "adb"
    program.parent.mkdir()
    program.write_text(FAKE_ADB)
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}:/usr/bin:/bin")
    return str(program)


def test_device_states(fake_adb, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_DEVICES", r"fake-1\tdevice\nfake-2\tunauthorized")
    with pytest.raises(DeviceError, match="adb://fake-2: the device is unauthorized: accept the USB debugging"):
        get_device("adb://fake-2")
    assert get_device("adb").spec == "adb://fake-1"
    monkeypatch.setenv("FAKE_ADB_DEVICES", r"fake-1\tdevice\nfake-3\tdevice")
    with pytest.raises(DeviceError, match="more than one adb device"):
        get_device("adb")


def test_run_push_pull_through_adb_shell_quoting(fake_adb, tmp_path):
    dev = get_device("adb://fake-1", workdir=str(tmp_path / "device tmp"))
    marker = tmp_path / "injected"
    words = ["a b", "it's", '"dq"', f"$(touch {marker})", f"; touch {marker}", "*"]
    result = dev.run(["printf", "[%s]", *words], env={"V": "x y"})
    assert result.stdout == "".join(f"[{w}]" for w in words) and result.returncode == 0
    assert not marker.exists()
    assert dev.run(["sh", "-c", "exit 5"]).returncode == 5

    source = tmp_path / "it's a \"model\" $x.onnx"
    source.write_bytes(b"\x00onnx\xff")
    remote = dev.push(source)
    assert remote == f"{tmp_path}/device tmp/{source.name}"
    dev.pull(remote, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"\x00onnx\xff"
    (tmp_path / "device tmp" / "value").write_text("3800000\n")
    assert dev.read_file(f"{dev.workdir}/value") == "3800000\n"
    assert dev.describe()["kind"] == "adb"


def test_device_gone_after_attach(fake_adb, monkeypatch):
    dev = get_device("adb://fake-1")
    dev.serial = "fake-9"  # unplugged between calls
    with pytest.raises(DeviceError, match="not attached"):
        dev.run(["true"])
