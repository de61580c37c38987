"""The host itself as a device: commands run as subprocesses, files are copied into a temp folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .base import CommandTimeout, Device, DeviceError, ProgramNotFound, RunResult, check_remote_name


def _kill_group(process: subprocess.Popen) -> None:
    """Kill a command started in its own session with everything it started, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


class LocalDevice(Device):
    """This machine. ``workdir`` is a fresh temp folder unless one is given."""

    kind = "local"

    def __init__(self, workdir: str | None = None, spec: str = "local"):
        super().__init__(spec, workdir)

    def _execute(self, argv: list[str], timeout: float | None, env: dict | None,
                 cwd: str | None) -> RunResult:
        """Run argv without a shell; map a missing program or a timeout to DeviceError."""
        if not argv:
            raise ValueError("argv is empty: give the program and its arguments as a list")
        argv = [str(word) for word in argv]
        full_env = None if env is None else {**os.environ, **{str(k): str(v) for k, v in env.items()}}
        start = time.perf_counter()
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       errors="replace", env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except FileNotFoundError as error:
            raise ProgramNotFound(f"{self.spec}: program not found: {argv[0]} ({error.strerror})") from error
        except PermissionError as error:
            raise DeviceError(f"{self.spec}: cannot execute {argv[0]}: {error.strerror}") from error
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as error:
            _kill_group(process)
            raise CommandTimeout(f"{self.spec}: command {argv[0]} timed out after {timeout} s") from error
        except BaseException:  # Ctrl-C: the command runs in its own session, so stop it here
            _kill_group(process)
            raise
        return RunResult(process.returncode, stdout, stderr, time.perf_counter() - start, emulated=self.emulated)

    def run(self, argv: list[str], *, timeout: float | None = None, env: dict | None = None,
            cwd: str | None = None) -> RunResult:
        """Run argv on this machine."""
        return self._execute(argv, timeout, env, cwd)

    def _make_workdir(self) -> str:
        return tempfile.mkdtemp(prefix="edgepack-")

    def _make_dir(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def _remove_dir(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def push(self, local_path: str | Path, remote_name: str | None = None, *,
             timeout: float | None = None) -> str:
        """Copy a file or folder into the workdir; return the copy's path (a local copy: no timeout)."""
        source = Path(local_path)
        if not source.exists():
            raise FileNotFoundError(f"{self.spec}: cannot push {source}: no such file or folder")
        target = Path(self.workdir) / check_remote_name(remote_name or source.name)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return str(target)

    def pull(self, remote_path: str, local_path: str | Path) -> None:
        """Copy a file from anywhere on this machine to local_path."""
        try:
            shutil.copy2(remote_path, local_path)
        except OSError as error:
            raise DeviceError(f"{self.spec}: cannot pull {remote_path}: {error.strerror}") from error

    def read_file(self, path: str) -> str:
        """The text of a local file; DeviceError naming the file when unreadable."""
        try:
            return Path(path).read_text(errors="replace")
        except OSError as error:
            raise DeviceError(f"{self.spec}: cannot read {path}: {error.strerror or error}") from error

    def list_dir(self, path: str) -> list[str]:
        """Names in a local folder, sorted."""
        try:
            return sorted(os.listdir(path))
        except OSError as error:
            raise DeviceError(f"{self.spec}: cannot list {path}: {error.strerror or error}") from error

    def _python_candidates(self) -> list[str]:
        return [sys.executable, "python3", "python"]
