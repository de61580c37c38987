"""An Android phone (or board) reached with the ``adb`` binary.

``adb shell`` joins its arguments with spaces and hands the line to the device's sh, so every
word is shlex-quoted first; ``adb push``/``pull`` use the sync protocol and take paths verbatim.
Exit codes come from adb's shell protocol (Android 7+, adb 1.0.36+).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
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

# adb's own errors (as opposed to the remote command's), matched in its stderr.
ADB_FAILURES = [
    ("not found", "the device is not attached (see `adb devices`)"),
    ("no devices/emulators found", "no adb device attached"),
    ("device offline", "the device is offline (reconnect it or restart adbd)"),
    ("unauthorized", "the device is unauthorized (accept the USB debugging prompt on the phone)"),
    ("more than one device", "more than one device attached: name one as adb://SERIAL"),
    ("cannot connect to daemon", "the adb server could not be started"),
]

STATE_HINTS = {
    "unauthorized": "accept the USB debugging prompt on the phone",
    "offline": "reconnect it or restart adbd",
    "no permissions": "fix the udev rules for the USB device",
}


class AdbDevice(Device):
    """``adb://SERIAL``, or the only attached device when serial is None."""

    kind = "adb"

    def __init__(self, serial: str | None = None, *, adb: str = "adb", adb_options: list[str] | None = None,
                 workdir: str | None = None):
        spec = f"adb://{serial}" if serial else "adb"
        super().__init__(spec, workdir)
        program = shutil.which(adb)
        if program is None:
            raise ProgramNotFound(f"{spec}: the adb binary {adb!r} is not installed (Debian: apt-get install "
                                  "adb; elsewhere: Android SDK platform-tools)")
        self._adb = [program, *(adb_options or [])]
        self.serial = self._attached_serial(serial)
        self.spec = f"adb://{self.serial}"

    def _call(self, args: list[str], timeout: float | None, text: bool = True) -> subprocess.CompletedProcess:
        """Run the adb client; adb's own failures (no device, offline, …) become DeviceError."""
        try:
            done = subprocess.run([*self._adb, *args], capture_output=True, timeout=timeout, text=text,
                                  stdin=subprocess.DEVNULL, **({"errors": "replace"} if text else {}))
        except subprocess.TimeoutExpired as error:
            raise CommandTimeout(f"{self.spec}: adb {args[0] if args else ''} timed out after "
                                 f"{timeout} s") from error
        stderr = done.stderr if text else done.stderr.decode(errors="replace")
        if done.returncode != 0:
            first = stderr.strip().splitlines()[0] if stderr.strip() else ""
            if first.startswith(("error:", "adb: error:", "* daemon", "adb: device")):
                for fragment, cause in ADB_FAILURES:
                    if fragment in stderr:
                        raise DeviceError(f"{self.spec}: {cause}: {stderr.strip()}")
        return done

    def _attached_serial(self, serial: str | None) -> str:
        """The serial to use, checked against `adb devices`; DeviceError when it is not usable."""
        done = self._call(["devices"], timeout=60)
        if done.returncode != 0:
            raise DeviceError(f"{self.spec}: `adb devices` failed: {done.stderr.strip()}")
        states = {}
        for line in done.stdout.splitlines():
            if "\t" in line:
                name, state = line.split("\t", 1)
                states[name.strip()] = state.strip()
        ready = [name for name, state in states.items() if state == "device"]
        listed = ", ".join(f"{n} ({s})" for n, s in states.items()) or "none"
        if serial is None:
            if not ready:
                raise DeviceError(f"{self.spec}: no adb device attached (adb devices lists: {listed}); "
                                  "connect one with USB debugging on, or `adb connect HOST:PORT`")
            if len(ready) > 1:
                raise DeviceError(f"{self.spec}: more than one adb device attached ({listed}); "
                                  "name one as adb://SERIAL")
            return ready[0]
        if serial not in states:
            raise DeviceError(f"{self.spec}: no adb device {serial!r} attached (adb devices lists: {listed})")
        if states[serial] != "device":
            hint = STATE_HINTS.get(states[serial], "check `adb devices`")
            raise DeviceError(f"{self.spec}: the device is {states[serial]}: {hint}")
        return serial

    def run(self, argv: list[str], *, timeout: float | None = None, env: dict | None = None,
            cwd: str | None = None) -> RunResult:
        """Run argv through ``adb shell`` (one quoted command line for the device's sh)."""
        command = remote_command(argv, env, cwd)
        start = time.perf_counter()
        done = self._call(["-s", self.serial, "shell", command], timeout)
        return RunResult(done.returncode, done.stdout, done.stderr, time.perf_counter() - start)

    def _make_workdir(self) -> str:
        path = f"/data/local/tmp/edgepack-{uuid.uuid4().hex[:8]}"
        self.run_checked(["mkdir", "-p", path], timeout=60)
        return path

    def push(self, local_path: str | Path, remote_name: str | None = None, *,
             timeout: float | None = None) -> str:
        """``adb push`` a file or folder into the workdir; return its path on the device."""
        source = Path(local_path)
        if not source.exists():
            raise FileNotFoundError(f"{self.spec}: cannot push {source}: no such file or folder")
        target = f"{self.workdir}/{check_remote_name(remote_name or source.name)}"
        done = self._call(["-s", self.serial, "push", str(source), target], timeout=timeout)
        if done.returncode != 0:
            raise DeviceError(f"{self.spec}: cannot push {source} to {target}: {done.stderr.strip()}")
        return target

    def pull(self, remote_path: str, local_path: str | Path) -> None:
        """``adb pull`` one file to local_path."""
        done = self._call(["-s", self.serial, "pull", remote_path, str(local_path)], timeout=None)
        if done.returncode != 0:
            raise DeviceError(f"{self.spec}: cannot pull {remote_path}: {done.stderr.strip()}")
