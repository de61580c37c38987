"""The Device interface: push files, run a command, pull files and describe the machine."""

from __future__ import annotations

import re
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# One POSIX sh script gathers everything describe() needs in one round trip (one ssh/adb call).
PROBE_SCRIPT = r"""
echo "arch=$(uname -m)"
echo "os=$(uname -sr)"
if command -v getprop >/dev/null 2>&1; then
  echo "android_release=$(getprop ro.build.version.release)"
  echo "android_model=$(getprop ro.product.model)"
  echo "soc=$(getprop ro.soc.manufacturer) $(getprop ro.soc.model)"
fi
echo "cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null)"
echo "governor=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null)"
echo "freq_khz=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq 2>/dev/null)"
echo "board=$(tr -d '\000' < /sys/firmware/devicetree/base/model 2>/dev/null)"
echo "brand=$(sysctl -n machdep.cpu.brand_string 2>/dev/null)"
for zone in /sys/class/thermal/thermal_zone*; do
  [ -r "$zone/temp" ] && echo "thermal=$(cat "$zone/type" 2>/dev/null):$(cat "$zone/temp" 2>/dev/null)"
done
echo "--cpuinfo--"
cat /proc/cpuinfo 2>/dev/null
"""

# ARM "CPU implementer" 0x41 part numbers, for aarch64 Linux kernels whose cpuinfo has no model name.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
    "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2",
}


class DeviceError(EdgepackError, RuntimeError):
    """A device could not be reached or used; the message names the device and the cause."""


class CommandTimeout(DeviceError):
    """A command ran past its timeout (the local client was killed)."""


class ProgramNotFound(DeviceError):
    """The program to run does not exist (on the host: ssh, adb, qemu or argv[0] itself)."""


@dataclass
class RunResult:
    """What one command produced on a device; ``emulated`` marks timings that mean nothing."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    emulated: bool = False

    def check(self, device: str, argv: list[str]) -> RunResult:
        """Return self, or raise DeviceError naming the device and command when it failed."""
        if self.returncode != 0:
            tail = (self.stderr.strip() or self.stdout.strip())[-2000:]
            raise DeviceError(f"{device}: command `{shlex.join(argv)}` exited with "
                              f"{self.returncode}: {tail}")
        return self


def remote_command(argv: list[str], env: dict | None = None, cwd: str | None = None) -> str:
    """One shell command line for a remote POSIX shell, every word quoted with shlex.quote."""
    if not argv:
        raise ValueError("argv is empty: give the program and its arguments as a list")
    words = []
    if cwd is not None:
        words += ["cd", shlex.quote(cwd), "&&"]
    if env:
        for name in env:
            if not _ENV_NAME.match(str(name)):
                raise ValueError(f"invalid environment variable name {name!r}")
        words += ["env"] + [shlex.quote(f"{name}={value}") for name, value in env.items()]
    words += [shlex.quote(str(word)) for word in argv]
    return " ".join(words)


def check_remote_name(name: str) -> str:
    """A file name inside the workdir: one plain path component, so nothing lands outside it."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"remote name {name!r} must be a plain file name (no '/', not '.' or '..')")
    return name


class Device(ABC):
    """Where a benchmark runs. Subclasses provide run/push/pull; describe and python build on run."""

    kind: str = "device"
    emulated: bool = False

    def __init__(self, spec: str, workdir: str | None = None):
        self.spec = spec
        self._workdir = workdir
        self._made_workdir = False
        self._owns_workdir = False
        self._pythons: dict[tuple[str, ...], str | None] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __enter__(self) -> Device:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.cleanup()
        except DeviceError:
            if exc_type is None:  # do not hide the error that is already on its way out
                raise

    # -- the part each device implements ------------------------------------------------------
    @abstractmethod
    def run(self, argv: list[str], *, timeout: float | None = None, env: dict | None = None,
            cwd: str | None = None) -> RunResult:
        """Run argv (a list, never a shell string) on the device and wait for it."""

    @abstractmethod
    def push(self, local_path: str | Path, remote_name: str | None = None, *,
             timeout: float | None = None) -> str:
        """Copy a local file (or folder) into the workdir within ``timeout`` seconds (CommandTimeout
        past it); return its path on the device."""

    @abstractmethod
    def pull(self, remote_path: str, local_path: str | Path) -> None:
        """Copy one file from the device to local_path."""

    @abstractmethod
    def _make_workdir(self) -> str:
        """Create a fresh scratch folder on the device and return its path."""

    # -- shared behaviour ---------------------------------------------------------------------
    @property
    def workdir(self) -> str:
        """The scratch folder on the device, created on first use."""
        if self._workdir is None:
            self._workdir = self._make_workdir()
            self._made_workdir = self._owns_workdir = True
        elif not self._made_workdir:
            self._make_dir(self._workdir)
            self._made_workdir = True
        return self._workdir

    @property
    def existing_workdir(self) -> str | None:
        """The workdir if one was created or used on the device, else None (creates nothing)."""
        return self._workdir if self._made_workdir else None

    def cleanup(self) -> None:
        """Remove the workdir if this object created it (a workdir given by the caller is kept)."""
        if self._owns_workdir and self._workdir:
            self._remove_dir(self._workdir)
            self._workdir = None
        self._made_workdir = self._owns_workdir = False

    def _make_dir(self, path: str) -> None:
        self.run_checked(["mkdir", "-p", path])

    def _remove_dir(self, path: str) -> None:
        self.run(["rm", "-rf", path])

    def run_checked(self, argv: list[str], **options) -> RunResult:
        """run(), raising DeviceError (naming the device and command) when the command fails."""
        return self.run(argv, **options).check(self.spec, argv)

    def read_file(self, path: str) -> str:
        """The text of a (sysfs) file on the device; DeviceError naming the file when unreadable."""
        result = self.run(["cat", path])
        if result.returncode != 0:
            raise DeviceError(f"{self.spec}: cannot read {path}: {result.stderr.strip()}")
        return result.stdout

    def list_dir(self, path: str) -> list[str]:
        """Names in a folder on the device (sorted); DeviceError naming the folder when unreadable."""
        result = self.run(["ls", "-1", path])
        if result.returncode != 0:
            raise DeviceError(f"{self.spec}: cannot list {path}: {result.stderr.strip()}")
        return sorted(line for line in result.stdout.splitlines() if line)

    def _python_candidates(self) -> list[str]:
        return ["python3", "python"]

    def python(self, modules: list[str]) -> str | None:
        """A python on the device that imports all of ``modules``, or None when there is none."""
        for module in modules:
            if not _MODULE_NAME.match(module):
                raise ValueError(f"invalid module name {module!r}")
        key = tuple(modules)
        if key not in self._pythons:
            self._pythons[key] = None
            code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(sys.executable)"
            for candidate in self._python_candidates():
                try:
                    result = self.run([candidate, "-c", code], timeout=120)
                except (CommandTimeout, ProgramNotFound):
                    continue
                if result.returncode == 0:
                    lines = result.stdout.strip().splitlines()
                    self._pythons[key] = lines[-1] if lines and lines[-1] else candidate
                    break
        return self._pythons[key]

    def describe(self) -> dict:
        """CPU model, cores, governor and temperature, read on the device in one command."""
        result = self.run(["sh", "-c", PROBE_SCRIPT], timeout=60)
        if result.returncode != 0 and "--cpuinfo--" not in result.stdout:
            raise DeviceError(f"{self.spec}: describe failed: {result.stderr.strip()}")
        info = parse_probe(result.stdout)
        info.update(spec=self.spec, kind=self.kind, emulated=self.emulated)
        return info


def parse_probe(text: str) -> dict:
    """Turn PROBE_SCRIPT's output into describe()'s dictionary."""
    head, _, cpuinfo = text.partition("--cpuinfo--")
    values: dict[str, str] = {}
    zones: list[tuple[str, str]] = []
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "thermal":
            kind, _, temp = value.rpartition(":")
            zones.append((kind, temp))
        else:
            values[key] = value.strip()
    os_name = values.get("os") or None
    if values.get("android_release"):
        os_name = f"Android {values['android_release']} ({os_name})"
    cores = values.get("cores", "")
    freq = values.get("freq_khz", "")
    return {
        "arch": values.get("arch") or None,
        "os": os_name,
        "cpu_model": cpu_model(cpuinfo, values),
        "cores": int(cores) if cores.isdigit() else _count_processors(cpuinfo),
        "governor": values.get("governor") or None,
        "frequency_mhz": int(freq) / 1000 if freq.isdigit() else None,
        "temperature_c": pick_temperature(zones),
        "board": values.get("board") or values.get("android_model") or None,
    }


def _count_processors(cpuinfo: str) -> int | None:
    count = sum(1 for line in cpuinfo.splitlines() if re.match(r"^processor\s*:\s*\d", line))
    return count or None


def cpu_model(cpuinfo: str, values: dict[str, str]) -> str | None:
    """The CPU's name: x86 'model name', else the Android SoC, else ARM part numbers, else 'Hardware'."""
    fields: dict[str, list[str]] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("model name"):
        return fields["model name"][0]
    if values.get("brand"):
        return values["brand"]
    soc = values.get("soc", "").strip()
    if soc:
        return soc
    parts = [p for i, p in zip(fields.get("cpu implementer", []), fields.get("cpu part", [])) if i == "0x41"]
    if parts:
        names = sorted({ARM_PARTS.get(p, f"ARM part {p}") for p in parts})
        return " + ".join(names)
    for key in ("hardware", "processor", "cpu model", "cpu"):
        for value in fields.get(key, []):
            if value and not value.isdigit():
                return value
    return None


def pick_temperature(zones: list[tuple[str, str]]) -> float | None:
    """Degrees Celsius from the thermal zone most likely to be the CPU (millidegrees in sysfs)."""
    readings = []
    for kind, raw in zones:
        try:
            value = float(raw)
        except ValueError:
            continue
        celsius = value / 1000 if abs(value) > 200 else value
        readings.append((kind.lower(), celsius))
    for wanted in ("x86_pkg_temp", "cpu", "soc", "tsens", "package"):
        for kind, celsius in readings:
            if wanted in kind:
                return celsius
    return readings[0][1] if readings else None
