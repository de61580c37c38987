"""A machine reached with the system ``ssh``, so ~/.ssh/config, agents and known_hosts all apply.

Every remote command is one line of shlex-quoted words for the remote login shell (a POSIX sh on
the boards we target). Files travel through ``ssh HOST 'cat > PATH'`` rather than scp: since
OpenSSH 9 scp speaks SFTP by default and the quoting of remote paths differs between its legacy
and SFTP modes, while a quoted ``cat`` means the same on every version. Host keys are always
checked: ``-o StrictHostKeyChecking=yes`` comes before the user's options, and ssh keeps the first
value it is given for an option (command line, then config files), so neither ``ssh_options`` nor
~/.ssh/config can turn it into ``no`` or ``accept-new``. Add a host's key to known_hosts first
(README: "Benchmark on your device"), or give ``known_hosts=FILE``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from .base import (
    CommandTimeout,
    Device,
    DeviceError,
    ProgramNotFound,
    RunResult,
    check_remote_name,
    remote_command,
)

# ssh exits with 255 on its own errors; these stderr fragments say which one.
SSH_FAILURES = [
    ("Permission denied", "authentication failed (is the key in the remote authorized_keys, "
                          "or loaded in the agent?)"),
    ("Too many authentication failures", "authentication failed (too many keys offered)"),
    ("Could not resolve hostname", "unreachable: the host name does not resolve"),
    ("Connection refused", "unreachable: connection refused (is sshd running on that port?)"),
    ("timed out", "unreachable: connection timed out"),
    ("No route to host", "unreachable: no route to host"),
    ("Network is unreachable", "unreachable: network is unreachable"),
    ("Connection closed", "the connection was closed by the remote side"),
    ("Connection reset", "the connection was reset by the remote side"),
    ("kex_exchange_identification", "the remote side closed the connection during the handshake"),
]

_HOST = re.compile(r"^[A-Za-z0-9._:%\[\]-]+$")
_USER = re.compile(r"^[A-Za-z0-9._-]+$")


class SSHDevice(Device):
    """``ssh://user@host[:port]``. ``ssh_options`` are passed to every ssh call (e.g. -i KEY);
    ``known_hosts`` is a known_hosts file to use instead of ~/.ssh/known_hosts."""

    kind = "ssh"

    def __init__(self, host: str, user: str | None = None, port: int | None = None, *,
                 ssh_options: list[str] | None = None, workdir: str | None = None,
                 connect_timeout: float = 10, ssh: str = "ssh", known_hosts: str | Path | None = None):
        if not host or host.startswith("-") or not _HOST.match(host):
            raise ValueError(f"invalid ssh host {host!r}")
        if user is not None and (user.startswith("-") or not _USER.match(user)):
            raise ValueError(f"invalid ssh user name {user!r}")
        target = f"{user}@{host}" if user else host
        shown_host = f"[{host}]" if ":" in host else host
        spec = f"ssh://{user + '@' if user else ''}{shown_host}{f':{port}' if port else ''}"
        super().__init__(spec, workdir)
        program = shutil.which(ssh)
        if program is None:
            raise ProgramNotFound(f"{spec}: the ssh client {ssh!r} is not installed "
                                  "(Debian: apt-get install openssh-client)")
        self.host, self.port = host, port
        self._command = [program, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                         "-o", f"ConnectTimeout={max(1, round(connect_timeout))}"]
        if known_hosts is not None:
            if not Path(known_hosts).is_file():
                raise ValueError(f"{spec}: known_hosts file {known_hosts} does not exist")
            # ssh splits this option's value on blanks (quotes and backslashes escape) and expands %-tokens
            path = str(Path(known_hosts).resolve()).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
            self._command += ["-o", f'UserKnownHostsFile="{path}"']
        if port:
            self._command += ["-p", str(int(port))]
        self._command += [*(ssh_options or []), "--", target]

    def _ssh(self, command: str, timeout: float | None, stdin=subprocess.DEVNULL,
             stdout=subprocess.PIPE, text: bool = True) -> subprocess.CompletedProcess:
        """Run one remote command line through ssh; raise DeviceError for ssh's own failures."""
        try:
            done = subprocess.run([*self._command, command], stdin=stdin, stdout=stdout,
                                  stderr=subprocess.PIPE, timeout=timeout, text=text,
                                  **({"errors": "replace"} if text else {}))
        except subprocess.TimeoutExpired as error:
            raise CommandTimeout(f"{self.spec}: command timed out after {timeout} s: {command}") from error
        stderr = done.stderr if text else done.stderr.decode(errors="replace")
        if done.returncode == 255:
            if "Host key verification failed" in stderr:
                raise DeviceError(f"{self.spec}: {self.host_key_advice()}: {stderr.strip()}")
            for fragment, cause in SSH_FAILURES:
                if fragment in stderr:
                    raise DeviceError(f"{self.spec}: {cause}: {stderr.strip()}")
            if stderr.startswith("ssh:") or "ssh_" in stderr:
                raise DeviceError(f"{self.spec}: ssh failed: {stderr.strip()}")
        return done

    def host_key_advice(self) -> str:
        """What to do when the host's key is unknown or changed (edgepack never skips the check)."""
        port = f"-p {self.port} " if self.port else ""
        host = shlex.quote(self.host)
        return (f"host key verification failed for {self.host}: its key is not in known_hosts or has changed "
                f"(edgepack always checks host keys, whatever StrictHostKeyChecking your options or "
                f"~/.ssh/config say). Add the key: `ssh-keyscan {port}{host} > key.txt`, compare "
                f"`ssh-keygen -lf key.txt` with the fingerprint the host shows (`ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub` on it), then `cat key.txt >> ~/.ssh/known_hosts` "
                f"(or give that file with --known-hosts)")

    def run(self, argv: list[str], *, timeout: float | None = None, env: dict | None = None,
            cwd: str | None = None) -> RunResult:
        """Run argv on the remote host (in its home folder unless cwd is given). On timeout the local
        ssh is killed; the remote process, having no tty, may outlive it."""
        command = remote_command(argv, env, cwd)
        start = time.perf_counter()
        done = self._ssh(command, timeout)
        return RunResult(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)

    def _make_workdir(self) -> str:
        return self.run_checked(["mktemp", "-d", "/tmp/edgepack.XXXXXX"], timeout=60).stdout.strip()

    def push(self, local_path: str | Path, remote_name: str | None = None, *,
             timeout: float | None = None) -> str:
        """Copy a file (keeping its permission bits) or a folder (as a tar stream) into the workdir."""
        source = Path(local_path)
        if not source.exists():
            raise FileNotFoundError(f"{self.spec}: cannot push {source}: no such file or folder")
        target = f"{self.workdir}/{check_remote_name(remote_name or source.name)}"
        quoted = shlex.quote(target)
        if source.is_dir():
            with tempfile.TemporaryFile() as archive:
                with tarfile.open(fileobj=archive, mode="w") as tar:
                    tar.add(source, arcname=".")
                archive.seek(0)
                done = self._ssh(f"mkdir -p {quoted} && tar -C {quoted} -xf -", timeout, stdin=archive)
        else:
            mode = oct(source.stat().st_mode & 0o777)[2:]
            with open(source, "rb") as data:
                done = self._ssh(f"cat > {quoted} && chmod {mode} {quoted}", timeout, stdin=data)
        if done.returncode != 0:
            raise DeviceError(f"{self.spec}: cannot push {source} to {target}: {done.stderr.strip()}")
        return target

    def pull(self, remote_path: str, local_path: str | Path) -> None:
        """Copy one remote file to local_path (nothing is left behind when it fails)."""
        local = Path(local_path)
        with open(local, "wb") as data:
            done = self._ssh(f"cat {shlex.quote(remote_path)}", None, stdout=data, text=False)
        if done.returncode != 0:
            local.unlink(missing_ok=True)
            stderr = done.stderr.decode(errors="replace").strip()
            raise DeviceError(f"{self.spec}: cannot pull {remote_path}: {stderr}")
