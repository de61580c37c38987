"""Power sources read from fake sysfs trees and CSV logs made here; measure() on controlled sources."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edgepack.devices import LocalDevice
from edgepack.devices.power import (
    BatterySource,
    CsvMeterSource,
    EstimateSource,
    HwmonSource,
    PowerError,
    PowerSource,
    RaplSource,
    get_power_source,
    measure,
)

MAX_UJ = 262143328850


def write(path: Path, text: str) -> None:
    """Replace a file atomically (a sampler thread may be reading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def make_rapl(root: Path, energies: dict[str, int]) -> Path:
    for domain, energy in energies.items():
        write(root / domain / "name", f"package-{domain[-1]}\n")
        write(root / domain / "energy_uj", f"{energy}\n")
        write(root / domain / "max_energy_range_uj", f"{MAX_UJ}\n")
    write(root / "intel-rapl:0:0" / "energy_uj", "999999\n")  # a sub-domain: already inside package 0
    write(root / "intel-rapl:0:0" / "max_energy_range_uj", f"{MAX_UJ}\n")
    return root


# ---- RAPL ---------------------------------------------------------------------------------------

def test_rapl_sums_packages_and_follows_wrap_around(tmp_path):
    root = make_rapl(tmp_path / "powercap", {"intel-rapl:0": MAX_UJ - 500, "intel-rapl:1": 1000})
    source = RaplSource(str(root))
    assert source.method == "rapl" and not source.estimated and source.sampling == "counter"
    assert source.name == "rapl:intel-rapl:0+intel-rapl:1"
    assert source.energy_j() == 0
    write(root / "intel-rapl:0" / "energy_uj", "700\n")  # wrapped: 500 to the top, then 700
    write(root / "intel-rapl:1" / "energy_uj", "1300\n")
    assert source.energy_j() == pytest.approx((500 + 700 + 300) / 1e6)
    write(root / "intel-rapl:0" / "energy_uj", "1700\n")
    assert source.energy_j() == pytest.approx((1500 + 1000) / 1e6)


def test_rapl_errors_name_the_file(tmp_path):
    with pytest.raises(PowerError, match=f"cannot list {tmp_path}/none"):
        RaplSource(str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PowerError, match="no RAPL package domain"):
        RaplSource(str(tmp_path / "empty"))
    root = make_rapl(tmp_path / "powercap", {"intel-rapl:0": 5})
    source = RaplSource(str(root))
    energy = root / "intel-rapl:0" / "energy_uj"
    energy.unlink()
    energy.mkdir()  # unreadable, whoever we run as
    with pytest.raises(PowerError, match=f"cannot read power file {energy}"):
        source.energy_j()
    energy.rmdir()
    write(energy, "n/a\n")
    with pytest.raises(PowerError, match=f"power file {energy}: expected a number, got 'n/a'"):
        source.energy_j()


def test_measure_with_a_counter(tmp_path):
    root = make_rapl(tmp_path / "powercap", {"intel-rapl:0": MAX_UJ - 1000})
    source = RaplSource(str(root))

    def workload() -> int:
        time.sleep(0.05)
        write(root / "intel-rapl:0" / "energy_uj", "3000\n")  # 4000 µJ, across the wrap
        time.sleep(0.05)
        return 4

    result = measure(source, workload, idle_seconds=0.05, interval=0.01)
    assert result.idle_w == 0 and result.runs == 4 and result.method == "rapl" and not result.estimated
    assert result.active_w == pytest.approx(4000e-6 / result.seconds)
    assert result.energy_mj_per_inference == pytest.approx(1.0)


# ---- hwmon --------------------------------------------------------------------------------------

def make_hwmon(root: Path) -> Path:
    write(root / "hwmon0" / "name", "coretemp\n")
    write(root / "hwmon0" / "temp1_input", "45000\n")
    write(root / "hwmon1" / "name", "ina226\n")
    write(root / "hwmon1" / "power1_input", "1500000\n")  # µW
    write(root / "hwmon1" / "curr1_input", "300\n")
    write(root / "hwmon1" / "in1_input", "5000\n")
    ina3221 = root / "hwmon2"
    write(ina3221 / "name", "ina3221\n")
    for n, (bus_mv, ma, label) in enumerate([(5000, 200, "VDD_IN"), (3300, 100, "VDD_CPU"), (1800, 50, "VDD_SOC")],
                                            start=1):
        write(ina3221 / f"in{n}_input", f"{bus_mv}\n")
        write(ina3221 / f"curr{n}_input", f"{ma}\n")
        write(ina3221 / f"in{n}_label", f"{label}\n")
        write(ina3221 / f"in{n}_enable", "1\n")
        write(ina3221 / f"in{n + 3}_input", "40\n")  # shunt voltages: never paired with a current
    write(ina3221 / "in3_enable", "0\n")  # channel 3 off
    write(ina3221 / "curr4_input", "350\n")  # sum of currents
    write(ina3221 / "in7_input", "120\n")
    return root


def test_hwmon_power_and_current_times_voltage(tmp_path):
    root = make_hwmon(tmp_path / "hwmon")
    source = HwmonSource(str(root))
    assert source.method == "hwmon" and source.sampling == "instant"
    assert source.read_power_w() == pytest.approx(1.5 + 5.0 * 0.2 + 3.3 * 0.1)
    assert HwmonSource(str(root), chip="ina3221").read_power_w() == pytest.approx(1.33)
    assert HwmonSource(str(root), chip="ina3221", channels=["VDD_CPU"]).read_power_w() == pytest.approx(0.33)
    assert HwmonSource(str(root), chip="hwmon2", channels=[1]).read_power_w() == pytest.approx(1.0)


def test_hwmon_errors(tmp_path):
    root = tmp_path / "hwmon"
    write(root / "hwmon0" / "name", "coretemp\n")
    with pytest.raises(PowerError, match=r"no INA2xx/INA3221 hwmon chip .*found: hwmon0=coretemp"):
        HwmonSource(str(root))
    make_hwmon(root)
    source = HwmonSource(str(root), chip="ina226")
    (root / "hwmon1" / "power1_input").unlink()
    with pytest.raises(PowerError, match=f"cannot read power file {root}/hwmon1/power1_input"):
        source.read_power_w()


# ---- battery ------------------------------------------------------------------------------------

def make_battery(root: Path, current: str, voltage: str, status: str = "Discharging") -> Path:
    write(root / "current_now", current + "\n")
    write(root / "voltage_now", voltage + "\n")
    write(root / "status", status + "\n")
    return root


@pytest.mark.parametrize("current", ["-500000", "500000"])  # vendors disagree on the sign of discharge
def test_battery_power(tmp_path, current):
    root = make_battery(tmp_path / "battery", current, "3800000")
    source = BatterySource(str(root))
    assert source.method == "battery" and source.read_power_w() == pytest.approx(1.9)


def test_battery_units_and_charging(tmp_path):
    root = make_battery(tmp_path / "battery", "-500", "3800")
    assert BatterySource(str(root), current_unit="mA").read_power_w() == pytest.approx(1.9)
    make_battery(root, "800000", "4200000", status="Charging")
    with pytest.raises(PowerError, match="is 'Charging'"):
        BatterySource(str(root))
    assert BatterySource(str(root), allow_charging=True).read_power_w() == pytest.approx(3.36)
    (root / "voltage_now").unlink()
    with pytest.raises(PowerError, match=f"cannot read power file {root}/voltage_now"):
        BatterySource(str(root), allow_charging=True)


def test_battery_through_a_device(tmp_path):
    root = make_battery(tmp_path / "battery", "-250000", "4000000")
    device = LocalDevice()
    assert BatterySource(str(root), device=device).read_power_w() == pytest.approx(1.0)
    (root / "current_now").unlink()
    with pytest.raises(PowerError, match=f"local: cannot read power file {root}/current_now"):
        BatterySource(str(root), device=device)


# ---- CSV meter log ------------------------------------------------------------------------------

def test_csv_integrates_between_times(tmp_path):
    log = tmp_path / "meter.csv"
    log.write_text("timestamp,watts\n# comment\n100,2\n102,4\n\n104,4\n106,0\n")
    source = CsvMeterSource(log)
    assert source.method == "csv" and source.sampling == "log" and source.read_power_w() == 0
    assert source.energy_between(100, 104) == pytest.approx(2 * 3 + 2 * 4)
    assert source.energy_between(101, 103) == pytest.approx((3 + 4) / 2 + 4)  # interpolated ends
    assert source.mean_power_w(104, 106) == pytest.approx(2)


def test_csv_errors_name_file_and_line(tmp_path):
    log = tmp_path / "meter.csv"
    log.write_text("timestamp,watts\n100,2\n101,two\n")
    with pytest.raises(PowerError, match=rf"{log}:3: expected 'timestamp,watts'.*'101,two'"):
        CsvMeterSource(log)
    log.write_text("100,2\n101,3,4\n")
    with pytest.raises(PowerError, match=f"{log}:2:"):
        CsvMeterSource(log)
    log.write_text("100,2\n99,3\n")
    with pytest.raises(PowerError, match=f"{log}:2: timestamp 99.0 goes back in time"):
        CsvMeterSource(log)
    log.write_text("100,2\n101,3\n")
    with pytest.raises(PowerError, match="covers 100.000..101.000"):
        CsvMeterSource(log, wait_s=0).energy_between(100.5, 200)
    with pytest.raises(PowerError, match=f"cannot read power file {tmp_path}/missing.csv"):
        CsvMeterSource(tmp_path / "missing.csv")


def test_measure_with_a_csv_log(tmp_path):
    log = tmp_path / "meter.csv"
    now = time.time()
    log.write_text(f"{now - 60},2\n{now + 60},2\n")
    source = CsvMeterSource(log)

    def workload() -> int:  # the "meter" logs 5 W from the moment the workload starts
        start = time.time()
        log.write_text(f"{now - 60},2\n{start - 1e-6},2\n{start},5\n{now + 60},5\n")
        time.sleep(0.2)
        return 10

    result = measure(source, workload, idle_seconds=0.05)
    assert result.method == "csv" and result.idle_w == pytest.approx(2)
    assert result.active_w == pytest.approx(5, rel=0.01)
    assert result.energy_mj_per_inference == pytest.approx((result.active_w - 2) * result.seconds / 10 * 1e3)


# ---- measure ------------------------------------------------------------------------------------

class SwitchedSource(PowerSource):
    """2 W, or 5 W while ``busy`` is set."""

    method = "hwmon"
    name = "switched"

    def __init__(self):
        super().__init__()
        self.busy = threading.Event()

    def read_power_w(self) -> float:
        return 5.0 if self.busy.is_set() else 2.0


def test_measure_active_minus_idle():
    source = SwitchedSource()

    def workload() -> int:
        source.busy.set()
        time.sleep(0.3)
        return 3

    result = measure(source, workload, idle_seconds=0.1, interval=0.01)
    assert result.idle_w == 2.0
    assert 4.5 < result.active_w <= 5.0
    assert result.runs == 3 and result.source == "switched"
    assert result.energy_mj_per_inference == pytest.approx((result.active_w - 2.0) * result.seconds / 3 * 1e3)


def test_measure_rejects_bad_input():
    with pytest.raises(ValueError, match="number of inferences|how many inferences"):
        measure(SwitchedSource(), lambda: 0, idle_seconds=0.01)
    with pytest.raises(ValueError, match="idle_seconds"):
        measure(SwitchedSource(), lambda: 1, idle_seconds=0)
    with pytest.raises(PowerError, match="estimate"):
        measure(EstimateSource(), lambda: 1, idle_seconds=0.01)


def test_sampler_errors_reach_the_caller(tmp_path):
    root = make_battery(tmp_path / "battery", "-500000", "3800000")
    source = BatterySource(str(root))

    def workload() -> int:
        (root / "voltage_now").unlink()
        time.sleep(0.1)
        return 1

    with pytest.raises(PowerError, match="voltage_now"):
        measure(source, workload, idle_seconds=0.02, interval=0.01)


# ---- choosing a source --------------------------------------------------------------------------

class RootedDevice(LocalDevice):
    """A local device whose '/' is a folder: lets 'auto' look at a fake sysfs."""

    def __init__(self, root: Path):
        super().__init__(spec=f"rooted:{root}")
        self.root = root

    def read_file(self, path: str) -> str:
        return super().read_file(str(self.root) + path)

    def list_dir(self, path: str) -> list[str]:
        return super().list_dir(str(self.root) + path)


def test_get_power_source_auto_order(tmp_path):
    device = RootedDevice(tmp_path)
    source = get_power_source("auto", device=device)
    assert isinstance(source, EstimateSource) and source.estimated and "powercap" in source.reason
    make_battery(tmp_path / "sys/class/power_supply/battery", "-1000000", "4000000")
    assert isinstance(get_power_source("auto", device=device), BatterySource)
    make_hwmon(tmp_path / "sys/class/hwmon")
    assert isinstance(get_power_source("auto", device=device), HwmonSource)
    make_rapl(tmp_path / "sys/class/powercap", {"intel-rapl:0": 1})
    assert isinstance(get_power_source("auto", device=device), RaplSource)
    assert isinstance(get_power_source("battery", device=device), BatterySource)


def test_get_power_source_specs(tmp_path):
    log = tmp_path / "m.csv"
    log.write_text("1,1\n")
    assert isinstance(get_power_source(f"csv:{log}"), CsvMeterSource)
    estimate = get_power_source("estimate")
    assert estimate.method == "estimate" and estimate.estimated
    with pytest.raises(PowerError, match="no instantaneous power"):
        estimate.read_power_w()
    with pytest.raises(PowerError, match="cannot read"):
        get_power_source("csv:" + str(tmp_path / "none.csv"))
    with pytest.raises(ValueError, match="valid forms: auto, rapl, hwmon, battery, csv:FILE, estimate"):
        get_power_source("ina")
    if not Path("/sys/class/powercap").exists():
        with pytest.raises(PowerError, match="/sys/class/powercap"):
            get_power_source("rapl")
