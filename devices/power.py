"""Power sources (RAPL, hwmon INA2xx/INA3221, Android battery, a meter's CSV log, an estimate) and
``measure``: energy per inference = (mean active power − idle power measured just before) × time / runs.

Sources given a ``device`` read their files through ``device.read_file`` / ``device.list_dir``, so
the same code reads the sysfs of a phone (adb) or a board (ssh). Sources come in three kinds
(``sampling``): "instant" (a power reading, sampled in a thread), "counter" (an energy counter,
read before and after and in between to follow wrap-around) and "log" (a meter's timestamped log,
integrated over the wall-clock interval afterwards).
"""

from __future__ import annotations

import posixpath
import re
import threading
import time
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import EdgepackError

from .base import Device, DeviceError
from .estimate import (
    HOROWITZ_45NM,
    EnergyTable,
    EstimatedEnergy,
    count_macs_and_bytes,
    count_work,
    estimate_energy,
    estimate_model,
)

METHODS = ("rapl", "hwmon", "battery", "csv", "estimate")
VALID_SPECS = ("auto", "rapl", "hwmon", "battery", "csv:FILE", "estimate")


class PowerError(EdgepackError, RuntimeError):
    """A power file or log could not be read or makes no sense; the message names it."""


class PowerSource(ABC):  # noqa: B024 - a source implements read_power_w or energy_j, not both
    """Something that reports power (read_power_w) or energy (energy_j)."""

    name: str = "power"
    method: str = "estimate"
    estimated: bool = False
    sampling: str = "instant"

    def __init__(self, device: Device | None = None):
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def read_power_w(self) -> float:
        """Instantaneous power in watts."""
        raise PowerError(f"{self.name}: gives no instantaneous power (sampling={self.sampling})")

    def energy_j(self) -> float:
        """Energy in joules accumulated since this source was made (counter sources)."""
        raise PowerError(f"{self.name}: has no energy counter (sampling={self.sampling})")

    # -- file access, local or through the device -------------------------------------------------
    def _where(self) -> str:
        return f"{self.device.spec}: " if self.device is not None else ""

    def _read(self, path: str) -> str:
        """A file's text; PowerError naming the file (and device) when it cannot be read."""
        try:
            if self.device is not None:
                return self.device.read_file(path)
            return Path(path).read_text()
        except PermissionError as error:
            hint = " (energy_uj is root-only since Linux 5.10)" if path.endswith("energy_uj") else ""
            raise PowerError(f"{self._where()}cannot read power file {path}: permission denied{hint}") from error
        except (OSError, DeviceError) as error:
            cause = getattr(error, "strerror", None) or str(error)
            raise PowerError(f"{self._where()}cannot read power file {path}: {cause}") from error

    def _number(self, path: str) -> float:
        text = self._read(path).strip()
        try:
            return float(text)
        except ValueError:
            raise PowerError(f"{self._where()}power file {path}: expected a number, got {text[:80]!r}") from None

    def _list(self, folder: str) -> list[str]:
        try:
            if self.device is not None:
                return self.device.list_dir(folder)
            return sorted(p.name for p in Path(folder).iterdir())
        except (OSError, DeviceError) as error:
            cause = getattr(error, "strerror", None) or str(error)
            raise PowerError(f"{self._where()}cannot list {folder}: {cause}") from error


class RaplSource(PowerSource):
    """Intel/AMD RAPL through powercap: the sum of the package domains ``intel-rapl:N/energy_uj``.

    Counters wrap at ``max_energy_range_uj``; a wrap between two reads adds max − last + now.
    Sub-domains (``intel-rapl:N:M``: cores, uncore, dram) are inside the package and not added.
    """

    method = "rapl"
    sampling = "counter"

    def __init__(self, root: str = "/sys/class/powercap", device: Device | None = None):
        super().__init__(device)
        self.root = str(root)
        domains = [n for n in self._list(self.root) if re.fullmatch(r"intel-rapl:\d+", n)]
        if not domains:
            raise PowerError(f"{self._where()}no RAPL package domain (intel-rapl:N) under {self.root}")
        self.domains = [posixpath.join(self.root, d) for d in domains]
        self.max_uj = {d: self._number(f"{d}/max_energy_range_uj") for d in self.domains}
        self.last_uj = {d: self._number(f"{d}/energy_uj") for d in self.domains}
        self.total_uj = 0.0
        self.name = "rapl:" + "+".join(domains)

    def energy_j(self) -> float:
        """Joules since construction, following each counter through its wrap-around."""
        for domain in self.domains:
            now = self._number(f"{domain}/energy_uj")
            last = self.last_uj[domain]
            self.total_uj += now - last if now >= last else self.max_uj[domain] - last + now
            self.last_uj[domain] = now
        return self.total_uj / 1e6


class HwmonSource(PowerSource):
    """INA2xx / INA3221 power monitors under hwmon, summed over chips and channels.

    Per channel: ``powerN_input`` (µW) when the driver has it (ina2xx), else ``currN_input`` (mA) ×
    ``inN_input`` (mV) — channel N's current times channel N's bus voltage. For ina3221, in1..in3 are
    the bus voltages of channels 1..3 (in4..in7 are shunt voltages and curr4 a sum), so only N = 1..3
    pair; disabled channels (``inN_enable`` = 0) are skipped. Where one channel is the board's total
    input (e.g. Jetson's VDD_IN) summing all would double count: pick ``chip`` / ``channels``
    (numbers or labels).
    """

    method = "hwmon"
    sampling = "instant"
    CHIPS = re.compile(r"ina2\d\d|ina3221")

    def __init__(self, root: str = "/sys/class/hwmon", device: Device | None = None, *,
                 chip: str | None = None, channels: list[int | str] | None = None):
        super().__init__(device)
        self.root = str(root)
        names = {}
        for entry in self._list(self.root):
            try:
                names[entry] = self._read(posixpath.join(self.root, entry, "name")).strip()
            except PowerError:
                continue
        if chip:
            chosen = [entry for entry, name in names.items() if chip in (entry, name)]
        else:
            chosen = [entry for entry, name in names.items() if self.CHIPS.fullmatch(name)]
        if not chosen:
            found = ", ".join(f"{e}={n}" for e, n in names.items()) or "none"
            wanted = chip or "INA2xx/INA3221"
            raise PowerError(f"{self._where()}no {wanted} hwmon chip under {self.root} (found: {found})")
        self.readings: list[tuple[str, str | None]] = []  # (power file µW | current file mA, voltage mV)
        for entry in chosen:
            self.readings += self._channels(posixpath.join(self.root, entry), names[entry], channels)
        if not self.readings:
            raise PowerError(f"{self._where()}no readable power channel in {', '.join(chosen)} under {self.root}"
                             f"{f' matching channels {channels}' if channels else ''}")
        self.name = "hwmon:" + "+".join(f"{e}({names[e]})" for e in chosen)
        self.read_power_w()

    def _channels(self, folder: str, chip_name: str, wanted) -> list[tuple[str, str | None]]:
        files = set(self._list(folder))
        numbers = sorted(int(m[1]) for f in files if (m := re.fullmatch(r"power(\d+)_input", f)))
        use_power = bool(numbers)
        if not use_power:
            numbers = sorted(int(m[1]) for f in files if (m := re.fullmatch(r"curr(\d+)_input", f))
                             and f"in{m[1]}_input" in files)
            if chip_name == "ina3221":
                numbers = [n for n in numbers if n <= 3]
        chosen = []
        for n in numbers:
            if f"in{n}_enable" in files and self._read(f"{folder}/in{n}_enable").strip() == "0":
                continue
            if wanted is not None and n not in wanted and not self._labels(folder, files, n) & set(wanted):
                continue
            if use_power:
                chosen.append((f"{folder}/power{n}_input", None))
            else:
                chosen.append((f"{folder}/curr{n}_input", f"{folder}/in{n}_input"))
        return chosen

    def _labels(self, folder: str, files: set[str], n: int) -> set[str]:
        names = (f"in{n}_label", f"curr{n}_label", f"power{n}_label")
        return {self._read(f"{folder}/{name}").strip() for name in names if name in files}

    def read_power_w(self) -> float:
        """Watts summed over the chosen channels."""
        total_uw = 0.0
        for first, voltage in self.readings:
            total_uw += self._number(first) if voltage is None else self._number(first) * self._number(voltage)
        return total_uw / 1e6


class BatterySource(PowerSource):
    """The Android (or laptop) battery: ``current_now`` × ``voltage_now``, while discharging.

    Units: current_now is µA and voltage_now µV by the kernel ABI; some older vendors report mA
    (pass current_unit="mA") and mV (voltage values below 100000 are taken as mV). Sign: the sysfs
    ABI leaves it to the driver, and vendors differ — discharge reads negative on some phones and
    positive on others (Android's BatteryManager API, by contrast, always reports discharge as
    negative) — so the absolute value is used. That is only the device's draw while discharging,
    so a reading while the battery is "Charging" or "Full" (USB feeds the phone) raises PowerError
    unless allow_charging=True: measure over adb on Wi-Fi (`adb tcpip`) with the cable out. Fuel
    gauges update about once a second: give measure() idle and active phases of several seconds.
    """

    method = "battery"
    sampling = "instant"
    CHARGING = ("Charging", "Full")

    def __init__(self, root: str = "/sys/class/power_supply/battery", device: Device | None = None, *,
                 current_unit: str = "uA", allow_charging: bool = False):
        super().__init__(device)
        if current_unit not in ("uA", "mA"):
            raise ValueError(f"current_unit must be 'uA' or 'mA', got {current_unit!r}")
        self.root = str(root)
        self.amps_per_unit = 1e-6 if current_unit == "uA" else 1e-3
        self.allow_charging = allow_charging
        self.has_status = "status" in self._list(self.root)
        self.name = f"battery:{self.root}"
        self.read_power_w()

    def read_power_w(self) -> float:
        """|current| × voltage in watts; PowerError while charging (see class docstring)."""
        if self.has_status and not self.allow_charging:
            status = self._read(f"{self.root}/status").strip()
            if status in self.CHARGING:
                raise PowerError(f"{self._where()}battery {self.root} is {status!r}: the charger, not the "
                                 "battery, powers the device; unplug it (adb over Wi-Fi) to measure")
        amps = abs(self._number(f"{self.root}/current_now")) * self.amps_per_unit
        volts_raw = self._number(f"{self.root}/voltage_now")
        volts = volts_raw * (1e-3 if volts_raw < 100_000 else 1e-6)
        return amps * volts


class CsvMeterSource(PowerSource):
    """An external meter's log: lines ``timestamp,watts`` (seconds since the epoch, watts).

    Blank lines, ``#`` comments and one header line are skipped. The log is re-read on every use
    (the meter may still be writing it) and integrated (trapezoids, interpolated at the ends) over
    the wall-clock interval asked for; the meter's clock must agree with this host's.
    """

    method = "csv"
    sampling = "log"

    def __init__(self, path: str | Path, *, wait_s: float = 2.0):
        super().__init__(None)
        self.path = str(path)
        self.wait_s = wait_s
        self.name = f"csv:{self.path}"
        if not self.samples():
            raise PowerError(f"meter log {self.path} has no samples")

    def samples(self) -> list[tuple[float, float]]:
        """(timestamp, watts) rows in order; PowerError with the line number on a malformed line."""
        rows: list[tuple[float, float]] = []
        first = True
        for number, line in enumerate(self._read(self.path).splitlines(), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            is_first, first = first, False
            fields = [f.strip() for f in text.split(",")]
            try:
                if len(fields) != 2:
                    raise ValueError
                stamp, watts = float(fields[0]), float(fields[1])
            except ValueError:
                if is_first and re.search(r"[A-Za-z]", text):
                    continue  # a header such as "timestamp,watts"
                raise PowerError(f"meter log {self.path}:{number}: expected 'timestamp,watts' (seconds since "
                                 f"the epoch, watts), got {line!r}") from None
            if rows and stamp < rows[-1][0]:
                raise PowerError(f"meter log {self.path}:{number}: timestamp {stamp} goes back in time "
                                 f"(previous {rows[-1][0]})")
            rows.append((stamp, watts))
        return rows

    def read_power_w(self) -> float:
        """The latest logged power."""
        return self.samples()[-1][1]

    def energy_between(self, t0: float, t1: float) -> float:
        """Joules logged between wall-clock times t0 and t1 (waits up to wait_s for the log to catch up)."""
        deadline = time.time() + self.wait_s
        rows = self.samples()
        while rows[-1][0] < t1 and time.time() < deadline:
            time.sleep(0.1)
            rows = self.samples()
        if rows[0][0] > t0 or rows[-1][0] < t1:
            raise PowerError(f"meter log {self.path} covers {rows[0][0]:.3f}..{rows[-1][0]:.3f} but the "
                             f"measurement ran {t0:.3f}..{t1:.3f}; is the meter logging, its clock in sync?")
        points = [(t0, _interpolate(rows, t0))] + [r for r in rows if t0 < r[0] < t1] + [(t1, _interpolate(rows, t1))]
        return sum((w0 + w1) / 2 * (b - a) for (a, w0), (b, w1) in zip(points, points[1:]))

    def mean_power_w(self, t0: float, t1: float) -> float:
        """Mean watts over [t0, t1]."""
        if t1 <= t0:
            return _interpolate(self.samples(), t0)
        return self.energy_between(t0, t1) / (t1 - t0)


def _interpolate(rows: list[tuple[float, float]], t: float) -> float:
    """Watts at time t, linear between the logged samples around it."""
    for (a, w0), (b, w1) in zip(rows, rows[1:]):
        if a <= t <= b:
            return w0 if b == a else w0 + (w1 - w0) * (t - a) / (b - a)
    return rows[0][1] if t < rows[0][0] else rows[-1][1]


class EstimateSource(PowerSource):
    """No meter: energy comes from op counts (estimate_energy), always labelled estimated.

    ``reason`` says why ``auto`` fell back to it. measure() refuses it; call ``estimate(model)``.
    """

    method = "estimate"
    estimated = True
    sampling = "estimate"

    def __init__(self, table: EnergyTable = HOROWITZ_45NM, reason: str = ""):
        super().__init__(None)
        self.table = table
        self.reason = reason
        self.name = f"estimate:{table.name}"

    def estimate(self, onnx_model: str | Path, **options) -> EstimatedEnergy:
        """Estimated energy of one inference of an ONNX model (one-time load work in ``.load``)."""
        return estimate_model(onnx_model, table=self.table, **options)


# ---- measuring -------------------------------------------------------------------------------

@dataclass
class EnergyResult:
    """Energy per inference from a measured source (active minus idle power)."""

    method: str
    estimated: bool
    idle_w: float
    active_w: float
    seconds: float
    runs: int
    energy_mj_per_inference: float
    source: str = ""


class _Sampler(threading.Thread):
    """Calls ``read`` every ``interval`` seconds until stopped; keeps the values and any error."""

    def __init__(self, read: Callable[[], float], interval: float):
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.values: list[float] = []
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.values.append(self.read())
            except BaseException as error:  # reported in the caller's thread
                self.error = error
                return

    def finish(self) -> list[float]:
        self.stopping.set()
        self.join()
        if self.error is not None:
            raise self.error
        return self.values


def _mean_power(source: PowerSource, work: Callable[[], int], interval: float) -> tuple[float, float, int]:
    """(mean watts, seconds, work's result) over one call of ``work``."""
    if source.sampling == "log":
        t0 = time.time()
        result = work()
        t1 = time.time()
        return source.mean_power_w(t0, t1), t1 - t0, result
    counter = source.sampling == "counter"
    before = source.energy_j() if counter else 0.0
    # For a counter the sampler only keeps up with wrap-around on long phases.
    sampler = _Sampler(source.energy_j if counter else source.read_power_w, interval)
    start = time.perf_counter()
    sampler.start()
    try:
        result = work()
    finally:
        seconds = time.perf_counter() - start
        values = sampler.finish()
    if counter:
        joules = source.energy_j() - before
        return (joules / seconds if seconds > 0 else 0.0), seconds, result
    if not values:  # shorter than one interval
        values = [source.read_power_w()]
    return sum(values) / len(values), seconds, result


def measure(source: PowerSource, workload: Callable[[], int], idle_seconds: float, *,
            interval: float = 0.1) -> EnergyResult:
    """Idle power for ``idle_seconds``, then ``workload()`` (returns how many inferences it ran):
    energy per inference = (mean active − idle) × active seconds / runs, in millijoules."""
    if source.estimated or source.sampling not in ("instant", "counter", "log"):
        raise PowerError(f"{source.name}: an estimate measures nothing; use estimate_energy / source.estimate")
    if idle_seconds <= 0:
        raise ValueError(f"idle_seconds must be > 0, got {idle_seconds}")
    if interval <= 0:
        raise ValueError(f"interval must be > 0, got {interval}")
    idle_w, _, _ = _mean_power(source, lambda: time.sleep(idle_seconds), interval)
    active_w, seconds, runs = _mean_power(source, workload, interval)
    if not isinstance(runs, int) or isinstance(runs, bool) or runs <= 0:
        raise ValueError(f"the workload must return how many inferences it ran (an int > 0), got {runs!r}")
    energy_mj = (active_w - idle_w) * seconds / runs * 1e3
    return EnergyResult(source.method, source.estimated, idle_w, active_w, seconds, runs, energy_mj,
                        source.name)


# ---- choosing a source -------------------------------------------------------------------------

SOURCES: dict[str, Callable[[Device | None], PowerSource]] = {
    "rapl": lambda device: RaplSource(device=device),
    "hwmon": lambda device: HwmonSource(device=device),
    "battery": lambda device: BatterySource(device=device),
}


def check_spec(spec: str) -> None:
    """ValueError listing VALID_SPECS unless ``spec`` names a power source (opens nothing)."""
    if spec not in (*SOURCES, "auto", "estimate") and not (spec.startswith("csv:") and len(spec) > 4):
        raise ValueError(f"unknown power source {spec!r}; valid forms: {', '.join(VALID_SPECS)}")


def get_power_source(spec: str, device: Device | None = None) -> PowerSource:
    """``auto`` (rapl, hwmon, battery in that order, else estimate), ``rapl``, ``hwmon``, ``battery``,
    ``csv:FILE`` or ``estimate``; ``device`` makes the sysfs sources read that device's files."""
    check_spec(spec)
    if spec in SOURCES:
        return SOURCES[spec](device)
    if spec.startswith("csv:"):
        return CsvMeterSource(spec[4:])
    if spec == "estimate":
        return EstimateSource()
    reasons = []  # auto
    for make in SOURCES.values():
        try:
            return make(device)
        except PowerError as error:
            reasons.append(str(error))
    return EstimateSource(reason="; ".join(reasons))


__all__ = [
    "HOROWITZ_45NM", "METHODS", "VALID_SPECS", "BatterySource", "CsvMeterSource", "EnergyResult", "EnergyTable",
    "EstimateSource", "EstimatedEnergy", "HwmonSource", "PowerError", "PowerSource", "RaplSource",
    "check_spec", "count_macs_and_bytes", "count_work", "estimate_energy", "estimate_model", "get_power_source",
    "measure",
]
