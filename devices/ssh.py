"""A machine reached with the system ``ssh``, so ~/.ssh/config, agents and known_hosts all apply.

Every remote command is one line of shlex-quoted words for the remote login shell (a POSIX sh on
the boards we target). Files travel through ``ssh HOST 'cat > PATH'`` rather than scp: since
OpenSSH 9 scp speaks SFTP by default and the quoting of remote paths differs between its legacy
and SFTP modes, while a quoted ``cat`` means the same on every version. Host keys are checked
(BatchMode=yes never prompts; nothing here turns StrictHostKeyChecking off).
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
    ("Host key verification failed", "host key verification failed (the host's key is not in "
                                     "known_hosts or has changed; check its fingerprint, then add it)"),
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
    """``ssh://user@host[:port]``. ``ssh_options`` are passed to every ssh call (e.g. -i KEY)."""

    kind = "ssh"

    def __init__(self, host: str, user: str | None = None, port: int | None = None, *,
                 ssh_options: list[str] | None = None, workdir: str | None = None,
                 connect_timeout: float = 10, ssh: str = "ssh"):
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
        self._command = [program, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(connect_timeout))}"]
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
            for fragment, cause in SSH_FAILURES:
                if fragment in stderr:
                    raise DeviceError(f"{self.spec}: {cause}: {stderr.strip()}")
            if stderr.startswith("ssh:") or "ssh_" in stderr:
                raise DeviceError(f"{self.spec}: ssh failed: {stderr.strip()}")
        return done

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

    def push(self, local_path: str | Path, remote_name: str | None = None) -> str:
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
                done = self._ssh(f"mkdir -p {quoted} && tar -C {quoted} -xf -", None, stdin=archive)
        else:
            mode = oct(source.stat().st_mode & 0o777)[2:]
            with open(source, "rb") as data:
                done = self._ssh(f"cat > {quoted} && chmod {mode} {quoted}", None, stdin=data)
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
