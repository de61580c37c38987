"""LocalDevice, QemuDevice (a cross-compiled aarch64 program under qemu-aarch64) and get_device."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from edgepack.devices import (
    CommandTimeout,
    Device,
    DeviceError,
    LocalDevice,
    ProgramNotFound,
    QemuDevice,
    get_device,
)

HELLO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/utsname.h>
int main(int argc, char **argv) {
    struct utsname u;
    uname(&u);
    printf("machine=%s\n", u.machine);
    for (int i = 1; i < argc; i++) printf("arg=[%s]\n", argv[i]);
    const char *v = getenv("EDGEPACK_TEST");
    printf("env=%s\n", v ? v : "(unset)");
    return 7;
}
"""


@pytest.fixture(scope="module")
def aarch64_programs(tmp_path_factory) -> dict[str, Path]:
    """hello.c cross-compiled for aarch64, static and dynamic."""
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("aarch64-linux-gnu-gcc / qemu-aarch64 are not installed (scripts/setup-system.sh)")
    folder = tmp_path_factory.mktemp("aarch64")
    source = folder / "hello.c"
    source.write_text(HELLO_C)
    programs = {"static": folder / "hello static", "dynamic": folder / "hello dynamic"}
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", "-o", str(programs["static"]), str(source)],
                   check=True)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-o", str(programs["dynamic"]), str(source)], check=True)
    return programs


@pytest.mark.parametrize("linkage", ["static", "dynamic"])
def test_qemu_runs_an_aarch64_binary(aarch64_programs, linkage):
    with get_device("qemu-aarch64") as dev:
        assert isinstance(dev, QemuDevice) and dev.emulated
        remote = dev.push(aarch64_programs[linkage])
        assert Path(remote).parent == Path(dev.workdir)
        result = dev.run([remote, "a b", "it's \"q\""], env={"EDGEPACK_TEST": "yes"})
        assert result.returncode == 7
        assert result.stdout == "machine=aarch64\narg=[a b]\narg=[it's \"q\"]\nenv=yes\n"
        assert result.emulated is True
        workdir = dev.workdir
    assert not Path(workdir).exists()


def test_qemu_describe_is_labelled_emulated():
    info = QemuDevice().describe()
    assert info["arch"] == "aarch64" and info["emulated"] is True and info["kind"] == "qemu-aarch64"
    assert info["host_arch"] == platform.machine()
    assert "emulated" in info["cpu_model"]
    assert QemuDevice().python(["json"]) is None


def test_qemu_missing_binary():
    with pytest.raises(ProgramNotFound, match="qemu-aarch64"):
        QemuDevice(qemu="/nonexistent/qemu-aarch64")


def test_local_run_push_pull(tmp_path):
    dev = LocalDevice()
    awkward = tmp_path / "it's \"x\" $y.txt"
    awkward.write_text("payload")
    remote = dev.push(awkward)
    assert Path(remote).read_text() == "payload"
    dev.pull(remote, tmp_path / "back")
    assert (tmp_path / "back").read_text() == "payload"
    result = dev.run(["sh", "-c", 'printf "%s" "$X"; pwd'], env={"X": "1"}, cwd=str(tmp_path))
    assert result.stdout == f"1{tmp_path}\n" and result.emulated is False
    with pytest.raises(ProgramNotFound, match="no-such-program"):
        dev.run(["no-such-program"])
    with pytest.raises(CommandTimeout, match="timed out"):
        dev.run(["sleep", "30"], timeout=0.2)
    with pytest.raises(DeviceError, match="cannot read /no/such/file"):
        dev.read_file("/no/such/file")
    with pytest.raises(DeviceError, match="cannot pull /no/such/file"):
        dev.pull("/no/such/file", tmp_path / "x")
    dev.cleanup()
    assert not Path(remote).exists()


def test_local_result_check(tmp_path):
    dev = LocalDevice()
    assert dev.run(["true"]).check(dev.spec, ["true"]).returncode == 0
    with pytest.raises(DeviceError, match="local: command `false` exited with 1"):
        dev.run(["false"]).check(dev.spec, ["false"])
    with pytest.raises(DeviceError, match="local: command `sh -c 'echo oops >&2; exit 2'` exited with 2: oops"):
        dev.run_checked(["sh", "-c", "echo oops >&2; exit 2"])


def test_local_given_workdir_is_kept(tmp_path):
    folder = tmp_path / "work dir"
    dev = LocalDevice(workdir=str(folder))
    assert dev.workdir == str(folder) and folder.is_dir()
    dev.cleanup()
    assert folder.is_dir()


def test_local_describe():
    info = LocalDevice().describe()
    assert set(info) >= {"spec", "kind", "arch", "os", "cpu_model", "cores", "governor", "temperature_c",
                         "emulated"}
    assert info["arch"] == platform.machine() and info["kind"] == "local" and info["emulated"] is False
    assert info["cores"] >= 1


def test_local_python():
    dev = LocalDevice()
    assert dev.python(["json", "os.path"]) is not None
    assert dev.python(["no_such_module_edgepack"]) is None
    with pytest.raises(ValueError, match="invalid module name"):
        dev.python(["os; import evil"])


def test_get_device_rejects_unknown_specs():
    for spec in ("nonsense", "ssh:/host", "localhost", "adb://", "qemu-arm"):
        with pytest.raises(ValueError, match="valid forms|adb://SERIAL"):
            get_device(spec)
    with pytest.raises(ValueError) as error:
        get_device("telnet://x")
    for form in ("local", "ssh://[user@]host[:port]", "adb://SERIAL", "qemu-aarch64"):
        assert form in str(error.value)


def test_get_device_parses_ssh_specs():
    dev = get_device("ssh://pi@10.0.0.2:2222")
    assert dev.spec == "ssh://pi@10.0.0.2:2222" and isinstance(dev, Device)
    assert get_device("ssh://board").spec == "ssh://board"
    assert get_device("ssh://[::1]:22").spec == "ssh://[::1]:22"
    assert isinstance(get_device("local"), LocalDevice)
