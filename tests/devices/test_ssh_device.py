"""SSHDevice against a real sshd on 127.0.0.1 (started by the sshd fixture), host keys checked."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import pytest
from sshd_helpers import free_port, keygen

from edgepack.devices import CommandTimeout, DeviceError, ProgramNotFound, SSHDevice, get_device
from edgepack.devices.power import BatterySource, PowerError

AWKWARD = "it's a \"file\" with $HOME; `x` & spaces.bin"


@pytest.fixture
def device(sshd):
    with get_device(sshd.spec, ssh_options=sshd.options()) as dev:
        yield dev


def test_spec_and_kind(device, sshd):
    assert device.spec == sshd.spec
    assert device.kind == "ssh" and device.emulated is False


def test_run_returns_output_and_exit_code(device):
    result = device.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.seconds >= 0 and result.emulated is False


def test_arguments_reach_the_program_verbatim(device, tmp_path):
    marker = tmp_path / "injected"
    words = ["a b", "it's", '"dq"', f"$(touch {marker})", f"; touch {marker}", "`id`", "*", "", "x\ny"]
    result = device.run(["printf", "[%s]", *words])
    assert result.returncode == 0
    assert result.stdout == "".join(f"[{w}]" for w in words)
    assert not marker.exists()


def test_env_and_cwd(device, tmp_path):
    folder = tmp_path / "a dir 'q'"
    folder.mkdir()
    result = device.run(["sh", "-c", 'printf "%s|" "$GREETING" "$(pwd)"'], env={"GREETING": "hi 'there' $x"},
                        cwd=str(folder))
    assert result.stdout == f"hi 'there' $x|{folder}|"
    with pytest.raises(ValueError, match="environment variable"):
        device.run(["true"], env={"BAD NAME": "1"})


def test_push_and_pull_awkward_names(device, tmp_path):
    source = tmp_path / AWKWARD
    payload = bytes(range(256)) * 100
    source.write_bytes(payload)
    remote = device.push(source)
    assert remote == f"{device.workdir}/{AWKWARD}"
    assert device.run(["wc", "-c", remote]).stdout.split()[0] == str(len(payload))
    back = tmp_path / "back 'again' \"here\".bin"
    device.pull(remote, back)
    assert back.read_bytes() == payload

    renamed = device.push(source, "other name's.bin")
    assert renamed.endswith("/other name's.bin")
    with pytest.raises(ValueError, match="plain file name"):
        device.push(source, "../escape")


def test_push_keeps_the_executable_bit_and_folders(device, tmp_path):
    script = tmp_path / "run me.sh"
    script.write_text("#!/bin/sh\necho \"ran with $1\"\n")
    script.chmod(0o755)
    assert device.run([device.push(script), "one arg"]).stdout == "ran with one arg\n"

    folder = tmp_path / "model dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w 1.bin").write_bytes(b"\x00\x01")
    remote = device.push(folder)
    assert device.run(["cat", f"{remote}/sub/w 1.bin"]).stdout == "\x00\x01"


def test_pull_missing_file_names_it(device, tmp_path):
    target = tmp_path / "nothing"
    with pytest.raises(DeviceError, match="cannot pull /no/such file"):
        device.pull("/no/such file", target)
    assert not target.exists()


def test_describe(device):
    info = device.describe()
    assert info["spec"] == device.spec and info["kind"] == "ssh" and info["emulated"] is False
    assert info["arch"] == platform.machine()
    assert info["cores"] >= 1
    assert info["os"].startswith("Linux")
    for key in ("cpu_model", "governor", "temperature_c"):
        assert key in info


def test_read_file_list_dir_and_python(device, tmp_path):
    (tmp_path / "value").write_text("42\n")
    assert device.read_file(str(tmp_path / "value")) == "42\n"
    assert "value" in device.list_dir(str(tmp_path))
    with pytest.raises(DeviceError, match="cannot read /no/such/file"):
        device.read_file("/no/such/file")
    assert device.python(["json"]) is not None
    assert device.python(["no_such_module_edgepack"]) is None


def test_power_source_reads_through_the_device(device, tmp_path):
    battery = tmp_path / "battery"
    battery.mkdir()
    (battery / "current_now").write_text("-250000\n")
    (battery / "voltage_now").write_text("4000000\n")
    source = BatterySource(str(battery), device=device)
    assert source.read_power_w() == pytest.approx(1.0)
    (battery / "voltage_now").unlink()
    with pytest.raises(PowerError, match=f"{device.spec}.*{battery}/voltage_now"):
        source.read_power_w()


def test_workdir_is_created_and_cleaned_up(sshd):
    dev = get_device(sshd.spec, ssh_options=sshd.options())
    folder = dev.workdir
    assert Path(folder).is_dir()
    dev.cleanup()
    assert not Path(folder).exists()


def test_timeout(device):
    with pytest.raises(CommandTimeout, match="timed out"):
        device.run(["sleep", "30"], timeout=0.5)


def test_auth_failure_is_named(sshd, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    dev = get_device(sshd.spec, ssh_options=sshd.options(key=stranger))
    with pytest.raises(DeviceError, match=r"ssh://.*127\.0\.0\.1.*authentication failed"):
        dev.run(["true"])


def test_unknown_host_key_is_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other_host")
    known_hosts = tmp_path / "known_hosts"
    kind, key = (tmp_path / "other_host.pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")
    assert other.exists()
    dev = get_device(sshd.spec, ssh_options=sshd.options(known_hosts=known_hosts))
    with pytest.raises(DeviceError, match="host key verification failed"):
        dev.run(["true"])
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    dev = get_device(sshd.spec, ssh_options=sshd.options(known_hosts=empty))
    with pytest.raises(DeviceError, match="host key verification failed"):
        dev.run(["true"])


def lenient(sshd, known_hosts: Path, how: str) -> list[str]:
    """The test sshd's client options with host key checking turned off the way a user might."""
    config = known_hosts.parent / "ssh_config"
    config.write_text("Host *\n  StrictHostKeyChecking no\n" if how == "config" else "")
    options = ["-F", str(config), "-i", str(sshd.client_key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
               "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    return options if how == "config" else [*options, "-o", f"StrictHostKeyChecking={how}"]


@pytest.mark.parametrize("how", ["no", "accept-new", "config"])
def test_host_key_checking_cannot_be_turned_off(sshd, tmp_path, how):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    dev = get_device(sshd.spec, ssh_options=lenient(sshd, known_hosts, how))
    with pytest.raises(DeviceError) as error:
        dev.run(["true"])
    message = str(error.value)
    assert message.startswith(f"{sshd.spec}: host key verification failed for 127.0.0.1")
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message and "ssh-keygen -lf" in message
    assert known_hosts.read_text() == ""  # accept-new would have added the key


def test_known_hosts_from_ssh_keyscan(sshd, tmp_path):
    scanned = subprocess.run(["ssh-keyscan", "-p", str(sshd.port), "127.0.0.1"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=scanned, capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    expected = subprocess.run(["ssh-keygen", "-lf", str(sshd.folder / "host_key.pub")], capture_output=True,
                              text=True, check=True).stdout.split()[1]
    assert fingerprint == expected  # the README's check before adding the key
    known_hosts = tmp_path / "scanned_known_hosts"
    known_hosts.write_text(scanned)
    empty = tmp_path / "empty"
    empty.write_text("")
    dev = get_device(sshd.spec, ssh_options=sshd.options(known_hosts=empty), known_hosts=known_hosts)
    assert dev.run(["echo", "hi"]).stdout == "hi\n"
    with pytest.raises(ValueError, match="known_hosts file .*missing does not exist"):
        get_device(sshd.spec, known_hosts=tmp_path / "missing")


def test_known_hosts_path_with_blanks_quotes_and_percents(sshd, tmp_path):
    """ssh splits UserKnownHostsFile on blanks, unquotes it and expands %-tokens: still one file."""
    folder = tmp_path / 'my keys %h "q" a\\\\b\\c'
    folder.mkdir()
    known_hosts = folder / "known hosts"
    known_hosts.write_text(sshd.known_hosts.read_text())
    empty = tmp_path / "empty"
    empty.write_text("")
    dev = get_device(sshd.spec, ssh_options=sshd.options(known_hosts=empty), known_hosts=known_hosts)
    assert dev.run(["echo", "hi"]).stdout == "hi\n"


def test_unreachable_host(sshd):
    spec = f"ssh://{sshd.user}@127.0.0.1:{free_port()}"
    dev = get_device(spec, ssh_options=sshd.options(), connect_timeout=5)
    with pytest.raises(DeviceError, match=rf"{spec}: unreachable"):
        dev.run(["true"])


def test_missing_ssh_binary():
    with pytest.raises(ProgramNotFound, match="ssh client"):
        SSHDevice("example.org", ssh="/nonexistent/ssh")


def test_bad_specs():
    with pytest.raises(ValueError, match="port"):
        get_device("ssh://pi@host:notaport")
    with pytest.raises(ValueError, match="invalid ssh host"):
        SSHDevice("-oProxyCommand=evil")
    with pytest.raises(ValueError, match="invalid ssh user"):
        SSHDevice("host", user="-l")
