"""Energy and memory meters (`edgeattack.metrics.energy`) without the hardware.

Jetson and RAPL read fake sysfs trees written under tmp_path (the layouts of JetPack 4's
`ina3221x` IIO driver, JetPack 5/6's `ina3221` hwmon driver and the powercap `intel-rapl` tree).
NVML is a fake module with pynvml's function names that answers from a timestamped trace written
by hand, shaped like an H100's answers (an idle ~70 W, a busy ~350 W; energy counter in mJ since
driver load): synthetic, not recorded from a GPU (none was available). A second fake lists three
GPUs whose NVML (PCI) order differs from CUDA's fastest-first order, for the CUDA -> NVML mapping. A fake clock drives the windows; sampling threads are off
(`interval_s=None`, samples taken by hand) except in one short real-time test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeattack.errors import ConfigError
from edgeattack.metrics.energy import (
    ENERGY_ESTIMATE_METHOD,
    EstimateMeter,
    JetsonMeter,
    MeterReading,
    NoMeter,
    NvmlMeter,
    ProcessMemoryMeter,
    RaplMeter,
    available_meters,
    counter_delta,
    energy_summary,
    find_rails,
    integrate_power,
    measure_energy,
    select_meter,
)
from edgeattack.metrics.energy.sampling import Sampler


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def write(path: Path, text: str | float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n")


# Fake sysfs trees ---------------------------------------------------------------------------


def hwmon_chip(root: Path, chip: str, channels: dict[int, tuple[str, float, float]], hwmon: str = "hwmon3") -> Path:
    """JetPack 5/6: drivers/ina3221/<chip>/hwmon/hwmonN/in{N}_label, in{N}_input (mV), curr{N}_input (mA)."""
    folder = root / "sys/bus/i2c/drivers/ina3221" / chip / "hwmon" / hwmon
    for n, (label, mv, ma) in channels.items():
        write(folder / f"in{n}_label", label)
        write(folder / f"in{n}_input", mv)
        write(folder / f"curr{n}_input", ma)
        write(folder / f"curr{n}_crit", 32760)
    write(folder / "in7_label", "sum of shunt voltages")  # not a rail: ignored
    write(folder / "in7_input", 12)
    return folder


def orin_nano_tree(root: Path) -> Path:
    # VDD_IN 5000 mV x 1000 mA = 5000 mW, VDD_CPU_GPU_CV 5000 x 200 = 1000 mW, VDD_SOC 5000 x 300 = 1500 mW.
    return hwmon_chip(root, "1-0040", {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU_GPU_CV", 5000, 200),
                                       3: ("VDD_SOC", 5000, 300)})


def set_power(folder: Path, channel: int, mw: float, mv: float = 5000) -> None:
    write(folder / f"in{channel}_input", mv)
    write(folder / f"curr{channel}_input", mw * 1000 / mv)


def jetson(root: Path, clock: FakeClock, **kw) -> JetsonMeter:
    return JetsonMeter(root=root, interval_s=None, clock=clock, **kw)


# Jetson -------------------------------------------------------------------------------------


def test_find_rails_in_both_layouts(tmp_path):
    iio = tmp_path / "jp4/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mw) in enumerate([("POM_5V_IN", 4520), ("POM_5V_GPU", 0), ("POM_5V_CPU", 1078)]):
        write(iio / f"rail_name_{n}", name)
        write(iio / f"in_power{n}_input", mw)
        write(iio / f"in_voltage{n}_input", 5000)
    rails = find_rails(tmp_path / "jp4")
    assert [(r.name, r.layout) for r in rails] == [("POM_5V_IN", "iio"), ("POM_5V_GPU", "iio"), ("POM_5V_CPU", "iio")]
    assert rails[0].read_mw() == 4520.0

    orin_nano_tree(tmp_path / "jp6")
    rails = find_rails(tmp_path / "jp6")
    assert [r.name for r in rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    assert [r.read_mw() for r in rails] == [5000.0, 1000.0, 1500.0]

    # An IIO rail with no power file: mV x mA.
    write(iio / "rail_name_3", "VDD_X")
    write(iio / "in_voltage3_input", 1000)
    write(iio / "in_current3_input", 250)
    assert find_rails(tmp_path / "jp4")[-1].read_mw() == 250.0


def test_jetson_energy_idle_subtraction_and_per_inference(tmp_path):
    folder = orin_nano_tree(tmp_path)
    clock = FakeClock()
    meter = jetson(tmp_path, clock, min_window_s=1.0)
    # Idle baseline: VDD_IN 4 W for 1 s.
    set_power(folder, 1, 4000)
    assert meter.measure_idle(1.0, sleep=clock.sleep) == pytest.approx(4.0)
    # Workload: VDD_IN 5 W at the start, 7 W at 1 s and at 2 s -> 6 J + 7 J.
    set_power(folder, 1, 5000)
    meter.start()
    clock.sleep(1.0)
    set_power(folder, 1, 7000)
    meter.sampler.sample()
    clock.sleep(1.0)
    reading = meter.stop(inferences=10)
    assert reading.measured and reading.kind == "measured" and reading.reason is None
    assert reading.energy_j == pytest.approx(13.0)
    assert reading.window_s == pytest.approx(2.0)
    assert reading.average_power_w == pytest.approx(6.5)
    assert reading.idle_power_w == pytest.approx(4.0)
    assert reading.active_energy_j == pytest.approx(13.0 - 8.0)
    assert reading.energy_per_inference_j == pytest.approx(1.3)
    assert reading.active_energy_per_inference_j == pytest.approx(0.5)
    assert reading.samples == 3 and reading.energy_domains == ("VDD_IN",)
    # The CPU/GPU and SOC rails are reported separately and are not added to the input rail.
    assert reading.domain_energy_j["VDD_CPU_GPU_CV"] == pytest.approx(2.0)
    assert reading.domain_energy_j["VDD_SOC"] == pytest.approx(3.0)
    assert reading.device["layout"] == "hwmon" and reading.device["total"].startswith("VDD_IN")
    assert reading.warnings == ()
    doc = reading.to_dict()
    json.dumps(doc, allow_nan=False)
    assert MeterReading.from_dict(doc) == reading


def test_agx_orin_has_no_input_rail_so_the_rails_are_summed(tmp_path):
    hwmon_chip(tmp_path, "1-0040", {1: ("VDD_GPU_SOC", 5000, 600), 2: ("VDD_CPU_CV", 5000, 400),
                                    3: ("VIN_SYS_5V0", 5000, 800)})
    hwmon_chip(tmp_path, "1-0041", {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 1800, 500), 3: ("NC", 0, 0)}, "hwmon4")
    clock = FakeClock()
    meter = jetson(tmp_path, clock)
    meter.start()
    clock.sleep(2.0)
    reading = meter.stop()
    assert set(reading.energy_domains) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert reading.energy_j == pytest.approx(2.0 * (3.0 + 2.0 + 4.0 + 0.9))
    assert "sum of all rails" in reading.device["total"]
    # Restricting the total to chosen rails.
    meter = jetson(tmp_path, clock, rails=["VDD_GPU_SOC", "VDD_CPU_CV"])
    meter.start()
    clock.sleep(1.0)
    assert meter.stop().energy_j == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="VDD_IN"):
        jetson(tmp_path, clock, rails=["VDD_IN"]).start()


def test_jetson_rail_vanishing_mid_run_gives_no_energy(tmp_path):
    folder = orin_nano_tree(tmp_path)
    clock = FakeClock()
    meter = jetson(tmp_path, clock)
    meter.start()
    clock.sleep(0.5)
    (folder / "curr1_input").unlink()
    assert meter.sampler.sample() is False
    clock.sleep(0.6)
    reading = meter.stop(inferences=5)
    assert reading.energy_j is None and reading.energy_per_inference_j is None and not reading.measured
    assert "vanished" in reading.reason and "curr1_input" in reading.reason


def test_jetson_negative_power_is_flagged_and_short_window_warned(tmp_path):
    folder = orin_nano_tree(tmp_path)
    write(folder / "curr2_input", -4)  # an idle rail's offset can read below zero
    clock = FakeClock()
    meter = jetson(tmp_path, clock, min_window_s=1.0)
    meter.start()
    clock.sleep(0.25)
    reading = meter.stop()
    assert reading.energy_j == pytest.approx(1.25)
    assert any("negative power" in w and "VDD_CPU_GPU_CV" in w for w in reading.warnings)
    assert any("shorter than" in w for w in reading.warnings)


def test_idle_above_the_workload_is_flagged_not_clamped(tmp_path):
    orin_nano_tree(tmp_path)
    clock = FakeClock()
    meter = jetson(tmp_path, clock, idle_power_w=6.0)
    meter.start()
    clock.sleep(1.0)
    reading = meter.stop()
    assert reading.active_energy_j == pytest.approx(-1.0)
    assert any("negative" in w for w in reading.warnings)


def test_jetson_unavailable_and_start_failure(tmp_path):
    ok, why = JetsonMeter.available(root=tmp_path)
    assert not ok and "INA3221" in why
    clock = FakeClock()
    with jetson(tmp_path, clock) as meter:
        clock.sleep(1.0)
    assert meter.reading.energy_j is None and "could not start" in meter.reading.reason


def test_sampling_thread_runs_at_10_hz_or_more(tmp_path):
    orin_nano_tree(tmp_path)
    meter = JetsonMeter(root=tmp_path, interval_s=0.01)
    with meter:
        time.sleep(0.25)
        meter.count(3)
    reading = meter.reading
    assert reading.samples >= 5 and reading.sample_rate_hz >= 10
    # Constant 5 W: the samples span the window from start to stop.
    assert reading.energy_j == pytest.approx(5.0 * reading.window_s, rel=0.05)
    assert reading.inferences == 3


def test_sampler_rejects_rates_below_10_hz():
    with pytest.raises(ConfigError):
        Sampler(lambda: {"p": 1.0}, interval_s=0.5)


# RAPL ---------------------------------------------------------------------------------------

MAX_RANGE_UJ = 262143328850


def rapl_tree(root: Path, package0_uj: float = 1_000_000, dram: bool = True) -> Path:
    base = root / "sys/class/powercap"
    write(base / "intel-rapl/enabled", 1)  # the control type folder: not a domain
    domains = {"intel-rapl:0": ("package-0", package0_uj), "intel-rapl:0:0": ("core", 400_000),
               "intel-rapl:1": ("package-1", 2_000_000)}
    if dram:
        domains["intel-rapl:0:1"] = ("dram", 50_000)
    for folder, (name, uj) in domains.items():
        write(base / folder / "name", name)
        write(base / folder / "energy_uj", int(uj))
        write(base / folder / "max_energy_range_uj", MAX_RANGE_UJ)
    return base


def test_rapl_packages_subdomains_and_wrap_around(tmp_path):
    base = rapl_tree(tmp_path, package0_uj=MAX_RANGE_UJ - 300_000)
    clock = FakeClock()
    meter = RaplMeter(root=tmp_path, interval_s=None, clock=clock, include_dram=True)
    meter.start()
    clock.sleep(1.0)
    write(base / "intel-rapl:0/energy_uj", MAX_RANGE_UJ - 100_000)
    meter.sampler.sample()
    clock.sleep(1.0)
    write(base / "intel-rapl:0/energy_uj", 500_000)  # wrapped: 100_000 to the top, then 500_000 more
    write(base / "intel-rapl:0:0/energy_uj", 900_000)
    write(base / "intel-rapl:0:1/energy_uj", 150_000)
    write(base / "intel-rapl:1/energy_uj", 3_000_000)
    reading = meter.stop(inferences=4)
    assert reading.domain_energy_j["package-0"] == pytest.approx(0.2 + 0.1 + 0.5)
    assert reading.domain_energy_j["package-0/core"] == pytest.approx(0.5)
    assert reading.domain_energy_j["package-0/dram"] == pytest.approx(0.1)
    assert reading.domain_energy_j["package-1"] == pytest.approx(1.0)
    assert reading.energy_domains == ("package-0", "package-1", "package-0/dram")
    assert reading.energy_j == pytest.approx(0.8 + 1.0 + 0.1)
    assert reading.energy_per_inference_j == pytest.approx(1.9 / 4)
    assert any("wrapped around 1 time" in w for w in reading.warnings)


def test_rapl_permission_denied_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    rapl_tree(tmp_path)
    assert RaplMeter.available(root=tmp_path)[0]
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    ok, why = RaplMeter.available(root=tmp_path)
    assert not ok and "permission denied" in why and "CVE-2020-8694" in why
    with pytest.raises(ConfigError, match="permission denied"):
        select_meter("rapl", root=tmp_path)


def test_rapl_counter_file_vanishing_mid_run(tmp_path):
    base = rapl_tree(tmp_path)
    clock = FakeClock()
    meter = RaplMeter(root=tmp_path, interval_s=None, clock=clock)
    meter.start()
    clock.sleep(1.0)
    (base / "intel-rapl:1/energy_uj").unlink()
    reading = meter.stop()
    assert reading.energy_j is None and "vanished" in reading.reason


def test_counter_delta_and_integration():
    assert counter_delta([10, 20, 5, 15], max_range=30) == (35.0, 1)
    with pytest.raises(Exception, match="backwards"):
        counter_delta([10, 20, 5], max_range=None)
    assert integrate_power([0, 1, 3], [2, 4, 4]) == pytest.approx(3 + 8)
    assert integrate_power([0.0], [5.0]) == 0.0


# NVML ---------------------------------------------------------------------------------------

# (time s, total energy mJ since driver load, power mW, memory used MiB): idle at ~70 W, then busy.
H100_TRACE = [
    (0.0, 5_000_000, 70_000, 1024),
    (1.0, 5_070_000, 70_000, 1024),
    (2.0, 5_140_000, 345_000, 9216),
    (3.0, 5_485_000, 352_000, 9728),
    (4.0, 5_837_000, 70_500, 9728),
]


class FakeNvml:
    """pynvml's names, answering from a timestamped trace at the fake clock's time."""

    NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 1, 2

    class NVMLError(Exception):
        pass

    def __init__(self, clock, trace=H100_TRACE, *, counter=True, lost_at=None, driver=True):
        self.clock, self.trace, self.counter, self.lost_at, self.driver = clock, trace, counter, lost_at, driver
        self.inits = self.shutdowns = 0

    def _row(self):
        now = self.clock()
        if self.lost_at is not None and now >= self.lost_at:
            raise self.NVMLError("GPU is lost")
        return [row for row in self.trace if row[0] <= now + 1e-9][-1]

    def nvmlInit(self):
        if not self.driver:
            raise self.NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        if index != 0:
            raise self.NVMLError("Invalid Argument")
        return "handle-0"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"  # older pynvml returns bytes

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError("Not Supported")
        return self._row()[1]

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._row()[2]

    def nvmlDeviceGetMemoryInfo(self, handle):
        used = self._row()[3] * 1024 * 1024
        total = 81559 * 1024 * 1024
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return {self.NVML_CLOCK_SM: 1980, self.NVML_CLOCK_MEM: 2619}[kind]


def nvml_window(meter: NvmlMeter, clock: FakeClock, start: float, stop: float, inferences: int | None = None):
    clock.t = start
    meter.start()
    while clock.t + 1.0 < stop + 1e-9:
        clock.sleep(1.0)
        meter.sampler.sample()
    clock.t = stop
    return meter.stop(inferences=inferences)


def test_nvml_energy_counter_idle_memory_and_clocks():
    clock = FakeClock(0.0)
    fake = FakeNvml(clock)
    meter = NvmlMeter(nvml=fake, interval_s=None, clock=clock)
    clock.t = 0.0
    assert meter.measure_idle(1.0, sleep=clock.sleep) == pytest.approx(70.0)
    reading = nvml_window(meter, clock, 2.0, 4.0, inferences=1000)
    assert reading.measured and "TotalEnergyConsumption" in reading.method
    assert reading.energy_j == pytest.approx(697.0)
    assert reading.active_energy_j == pytest.approx(697.0 - 140.0)
    assert reading.energy_per_inference_j == pytest.approx(0.697)
    assert reading.active_energy_per_inference_j == pytest.approx(0.557)
    assert reading.energy_domains == ("gpu0",)
    assert (reading.peak_memory_mib, reading.memory_delta_mib) == (9728.0, 512.0)
    assert reading.device["name"] == "NVIDIA H100 80GB HBM3"
    assert reading.device["clocks_mhz_start"] == {"sm": 1980, "memory": 2619}
    assert fake.inits == fake.shutdowns == 2


def test_nvml_without_counter_integrates_sampled_power():
    clock = FakeClock(0.0)
    meter = NvmlMeter(nvml=FakeNvml(clock, counter=False), interval_s=None, clock=clock)
    reading = nvml_window(meter, clock, 2.0, 4.0)
    assert "PowerUsage" in reading.method and "no energy counter" in reading.method
    assert reading.energy_j == pytest.approx((345 + 352) / 2 + (352 + 70.5) / 2)


def test_nvml_lost_mid_run_and_counter_reset_give_no_energy():
    clock = FakeClock(0.0)
    meter = NvmlMeter(nvml=FakeNvml(clock, lost_at=3.0), interval_s=None, clock=clock)
    reading = nvml_window(meter, clock, 2.0, 4.0, inferences=10)
    assert reading.energy_j is None and "GPU is lost" in reading.reason
    reset = [*H100_TRACE[:3], (3.0, 12_000, 352_000, 9728), (4.0, 364_000, 70_500, 9728)]
    meter = NvmlMeter(nvml=FakeNvml(clock, reset), interval_s=None, clock=clock)
    reading = nvml_window(meter, clock, 2.0, 4.0)
    assert reading.energy_j is None and "backwards" in reading.reason


def test_nvml_availability():
    clock = FakeClock(0.0)
    ok, why = NvmlMeter.available(nvml=FakeNvml(clock))
    assert ok and "H100" in why and "total-energy counter" in why
    ok, why = NvmlMeter.available(nvml=FakeNvml(clock, driver=False))
    assert not ok and "Driver Not Loaded" in why
    ok, why = NvmlMeter.available(index=3, nvml=FakeNvml(clock))
    assert not ok and "no index 3" in why


# measure_energy, estimate, summary ----------------------------------------------------------


def test_measure_energy_repeats_until_the_window_is_met(tmp_path):
    orin_nano_tree(tmp_path)
    clock = FakeClock()
    meter = jetson(tmp_path, clock, min_window_s=1.0)
    calls = []

    def work():
        calls.append(1)
        clock.sleep(0.3)

    reading = measure_energy(work, meter, inferences_per_call=8, idle_s=0.5, sleep=clock.sleep)
    assert len(calls) == 4  # 1.2 s >= 1 s
    assert reading.inferences == 32 and reading.window_s == pytest.approx(1.2)
    assert reading.idle_power_w == pytest.approx(5.0)
    assert reading.energy_per_inference_j == pytest.approx(5.0 * 1.2 / 32)
    assert reading.active_energy_j == pytest.approx(0.0, abs=1e-9)

    capped = measure_energy(work, meter, max_calls=2)
    assert capped.inferences == 2 and any("shorter than" in w for w in capped.warnings)

    def broken():
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        measure_energy(broken, meter)
    assert not meter.running


def test_estimate_is_labelled_and_kept_apart_from_measurements():
    meter = EstimateMeter(gflops_per_inference=1.2)
    with meter:
        meter.count(10)
    reading = meter.reading
    assert reading.kind == "estimate" and not reading.measured
    assert reading.energy_j == pytest.approx(1.2e9 * 10 * 4.6e-12)
    assert reading.energy_per_inference_j == pytest.approx(5.52e-3)
    assert reading.average_power_w is None and reading.method == ENERGY_ESTIMATE_METHOD
    summary = energy_summary(reading)
    assert summary["measured_mj"] is None and summary["estimate_mj"] == pytest.approx(5.52)
    assert "not a measurement" in summary["estimate_method"]
    with EstimateMeter() as no_macs:
        pass
    assert no_macs.reading.energy_j is None and "MACs" in no_macs.reading.reason


def test_energy_summary_has_the_availability_keys(tmp_path):
    orin_nano_tree(tmp_path)
    clock = FakeClock()
    meter = jetson(tmp_path, clock, idle_power_w=4.0)
    meter.start()
    clock.sleep(2.0)
    reading = meter.stop(inferences=100)
    summary = energy_summary(reading, gflops_per_inference=0.5)
    assert {"measured_mj", "meter", "reason", "estimate_mj", "estimate_method"} <= set(summary)
    assert summary["meter"] == "jetson" and summary["reason"] is None
    assert summary["measured_mj"] == pytest.approx((10.0 - 8.0) / 100 * 1e3)
    assert summary["measured_basis"] == "idle-subtracted"
    assert summary["estimate_mj"] == pytest.approx(0.5e9 * 4.6e-12 * 1e3)
    json.dumps(summary, allow_nan=False)
    gross = energy_summary(jetson(tmp_path, clock).start().stop(inferences=1))
    assert gross["measured_basis"].startswith("gross")
    empty = energy_summary(None, gflops_per_inference=None)
    assert empty["measured_mj"] is None and empty["estimate_mj"] is None and "no energy meter" in empty["reason"]
    none = energy_summary(NoMeter("nothing here").start().stop(), gflops_per_inference=1.0)
    assert none["reason"] == "nothing here" and none["meter"] is None


def test_process_memory_meter_reports_peak_rss():
    size_mb = 32
    with ProcessMemoryMeter() as meter:
        _touch_fresh_pages(size_mb)
    reading = meter.reading
    assert reading.kind == "memory" and reading.energy_j is None and reading.reason
    if reading.memory_method == "process resident set (vmhwm)":
        assert reading.memory_delta_mib >= size_mb * 0.9
    else:
        assert reading.memory_delta_mib is None or reading.memory_delta_mib >= 0


# select_meter, available_meters --------------------------------------------------------------


def test_select_meter_auto_by_device(tmp_path):
    clock = FakeClock(0.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert isinstance(select_meter("auto", device="cuda", nvml=FakeNvml(clock), root=empty), NvmlMeter)
    orin_nano_tree(tmp_path / "jetson")
    assert isinstance(select_meter(None, device="jetson", root=tmp_path / "jetson"), JetsonMeter)
    # A Jetson's GPU has no NVML: "cuda" falls back to its rails; so does CPU inference on it.
    no_driver = FakeNvml(clock, driver=False)
    assert isinstance(select_meter(device="cuda", nvml=no_driver, root=tmp_path / "jetson"), JetsonMeter)
    assert isinstance(select_meter(device="cpu", root=tmp_path / "jetson"), JetsonMeter)
    rapl_tree(tmp_path / "x86")
    assert isinstance(select_meter(device="cpu", root=tmp_path / "x86"), RaplMeter)
    meter = select_meter(device="cpu", root=empty)
    assert isinstance(meter, NoMeter) and "rapl:" in meter.reason and "jetson:" in meter.reason
    reading = measure_energy(lambda: None, meter)
    assert reading.energy_j is None and reading.reason == meter.reason and reading.inferences == 1


def test_select_meter_by_name_and_errors(tmp_path):
    clock = FakeClock(0.0)
    assert isinstance(select_meter("nvml", nvml=FakeNvml(clock), interval_s=0.02), NvmlMeter)
    assert select_meter("estimate", macs_per_inference=1e9).macs_per_inference == 1e9
    assert isinstance(select_meter("none"), NoMeter)
    with pytest.raises(ConfigError, match="Driver Not Loaded"):
        select_meter("nvml", nvml=FakeNvml(clock, driver=False))
    with pytest.raises(ConfigError, match="did you mean: rapl"):
        select_meter("rappl")
    with pytest.raises(ConfigError, match="need a meter name"):
        select_meter("auto", interval_s=0.01)
    with pytest.raises(ConfigError, match="unknown device"):
        select_meter("auto", device="tpu")
    with pytest.raises(ConfigError, match="does not take"):
        select_meter("none", bogus=1)


def test_available_meters_says_why(tmp_path):
    clock = FakeClock(0.0)
    rows = {name: (ok, why) for name, ok, why in available_meters(root=tmp_path, nvml=FakeNvml(clock, driver=False))}
    assert set(rows) == {"nvml", "jetson", "rapl", "estimate", "process-memory", "none"}
    assert rows["nvml"][0] is False and "Driver Not Loaded" in rows["nvml"][1]
    assert rows["jetson"][0] is False and rows["rapl"][0] is False and "powercap" in rows["rapl"][1]
    assert rows["estimate"][0] and "not a measurement" in rows["estimate"][1]
    # This machine's own view (no GPU, no RAPL here): every row still has a reason.
    assert all(why for _, _, why in available_meters())


def test_energy_package_imports_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'tensorrt', 'pynvml'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgeattack.metrics.energy as e\n"
        "print(e.available_meters()[0][1], 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False False"


def _touch_fresh_pages(size_mb: int) -> None:
    """Make `size_mb` of new pages resident: an anonymous mmap, one write per page (a malloc'd
    array can reuse pages freed earlier in the test session, which would not raise the RSS)."""
    import mmap

    size = size_mb << 20
    with mmap.mmap(-1, size) as region:
        for offset in range(0, size, mmap.PAGESIZE):
            region[offset] = 1


# A failed window never lends its meter's name -----------------------------------------------


def test_energy_summary_of_a_failed_window_names_no_meter():
    clock = FakeClock(0.0)
    meter = NvmlMeter(nvml=FakeNvml(clock, lost_at=3.0), interval_s=None, clock=clock)
    reading = nvml_window(meter, clock, 2.0, 4.0, inferences=10)
    summary = energy_summary(reading, gflops_per_inference=0.5)
    assert summary["measured_mj"] is None and summary["meter"] is None and summary["measured_method"] is None
    assert "GPU is lost" in summary["reason"]
    assert summary["estimate_mj"] == pytest.approx(0.5e9 * 4.6e-12 * 1e3)  # beside it, labelled, not in its place
    assert summary["measurement"]["meter"] == "nvml" and summary["measurement"]["energy_j"] is None


# CUDA device -> NVML device ------------------------------------------------------------------

# NVML lists GPUs in PCI order; CUDA's default order is fastest first. Here the fastest GPU (an H100 at
# 86:00.0) is CUDA device 0 but NVML index 2. Each GPU has its own power, so a reading says which was read.
GPUS = [  # (NVML index, UUID, PCI bus id as NVML writes it, watts)
    (0, "GPU-aaaaaaaa-0000-0000-0000-000000000000", "00000000:18:00.0", 100.0),
    (1, "GPU-bbbbbbbb-0000-0000-0000-000000000000", "00000000:3B:00.0", 200.0),
    (2, "GPU-cccccccc-0000-0000-0000-000000000000", "00000000:86:00.0", 300.0),
]


class FakeMultiNvml:
    """pynvml's names over several GPUs: handles by index, UUID or PCI bus id; a constant power per GPU."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    class NVMLError(Exception):
        pass

    def __init__(self, clock, gpus=GPUS):
        self.clock, self.gpus = clock, gpus
        self.lookups: list[tuple[str, str]] = []

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self.lookups.append(("index", str(index)))
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.lookups.append(("uuid", uuid))
        return next(g for g in self.gpus if g[1] == uuid)

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        self.lookups.append(("pci", bus))
        for gpu in self.gpus:
            if gpu[2].lower() == bus.lower():
                return gpu
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):
        return handle[1]

    def nvmlDeviceGetPciInfo(self, handle):
        return SimpleNamespace(busId=handle[2].encode())  # older pynvml returns bytes

    def nvmlDeviceGetName(self, handle):
        return f"GPU {handle[0]}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return int(handle[3] * self.clock() * 1000)  # mJ: the GPU's watts since t=0

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(handle[3] * 1000)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=2**34, used=2**30, free=2**34 - 2**30)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return 1000


def _watts_read(meter: NvmlMeter, clock: FakeClock) -> float:
    reading = nvml_window(meter, clock, 1.0, 2.0)
    assert reading.measured, reading.reason
    return reading.energy_j


def test_cuda_device_maps_to_nvml_by_pci_bus_id_from_cuda():
    clock = FakeClock(0.0)
    fake = FakeMultiNvml(clock)
    cuda = {0: "0000:86:00.0", 1: "0000:18:00.0"}  # what cudaDeviceGetPCIBusId answers (fastest first)
    env = {"CUDA_VISIBLE_DEVICES": "2,0"}
    meter = NvmlMeter(cuda_device=0, nvml=fake, cuda_lookup=cuda.get, environ=env, interval_s=None, clock=clock)
    assert _watts_read(meter, clock) == pytest.approx(300.0)  # the H100 at 86:00.0, NVML index 2, not index 0
    assert ("pci", "00000000:86:00.0") in fake.lookups and ("index", "0") not in fake.lookups
    assert meter.reading.device["pci_bus_id"] == "00000000:86:00.0" and meter.reading.energy_domains == ("gpu0",)
    meter = NvmlMeter(cuda_device=1, nvml=fake, cuda_lookup=cuda.get, environ=env, interval_s=None, clock=clock)
    assert _watts_read(meter, clock) == pytest.approx(100.0)  # CUDA 1 is NVML 0 here


def test_cuda_visible_devices_parsed_when_cuda_cannot_say():
    clock = FakeClock(0.0)
    fake = FakeMultiNvml(clock)

    def watts(cuda_device, env):
        return _watts_read(NvmlMeter(cuda_device=cuda_device, nvml=fake, cuda_lookup=None, environ=env,
                                     interval_s=None, clock=clock), clock)

    pci_order = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,0"}
    assert watts(0, pci_order) == pytest.approx(300.0)  # physical 2 in PCI order: 86:00.0
    assert watts(1, pci_order) == pytest.approx(100.0)
    assert watts(0, {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}) == pytest.approx(200.0)  # a UUID prefix, as CUDA takes
    assert watts(1, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) == pytest.approx(200.0)  # all visible, PCI order
    # Fastest first (CUDA's default) with several GPUs: no way to tell from NVML alone -> no energy, and why.
    ok, why = NvmlMeter.available(cuda_device=1, nvml=fake, cuda_lookup=None, environ={})
    assert not ok and "fastest first" in why and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in why
    meter = NvmlMeter(cuda_device=1, nvml=fake, cuda_lookup=None, environ={}, interval_s=None, clock=clock)
    reading = nvml_window(meter, clock, 1.0, 2.0)
    assert reading.energy_j is None and "cannot tell which NVML GPU is CUDA device 1" in reading.reason
    ok, why = NvmlMeter.available(cuda_device=2, nvml=fake, cuda_lookup=None, environ={"CUDA_VISIBLE_DEVICES": "1,0"})
    assert not ok and "not visible" in why
    ok, why = NvmlMeter.available(cuda_device=0, nvml=fake, cuda_lookup=None, environ={"CUDA_VISIBLE_DEVICES": "MIG-1"})
    assert not ok and "MIG" in why


def test_select_meter_maps_cuda_n_and_pci_bus_ids(tmp_path):
    clock = FakeClock(0.0)
    fake = FakeMultiNvml(clock)
    meter = select_meter("auto", device="cuda:1", nvml=fake, root=tmp_path, environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                         cuda_lookup=None)
    assert isinstance(meter, NvmlMeter) and meter.target.cuda_device == 1
    by_bus = select_meter("nvml", device="cuda:0", pci_bus_id="0000:3b:00.0", nvml=fake, cuda_lookup=None)
    assert by_bus.target.pci_bus_id == "00000000:3b:00.0"
    unknown = select_meter("auto", device="cuda:1", nvml=fake, root=tmp_path, environ={}, cuda_lookup=None)
    assert isinstance(unknown, NoMeter) and "fastest first" in unknown.reason  # never NVML index 1 by assumption
    assert select_meter("auto", device="gpu", nvml=FakeNvml(clock), root=tmp_path).target.cuda_device == 0
    with pytest.raises(ConfigError, match="unknown device"):
        select_meter("auto", device="cuda:x")


def test_pci_bus_id_forms_and_the_only_gpu():
    from edgeattack.metrics.energy.gpu_map import normalise_pci_bus_id, nvml_handle_for_cuda_device

    assert normalise_pci_bus_id("0000:3B:00.0") == normalise_pci_bus_id(b"00000000:3b:00.0\0") == "00000000:3b:00.0"
    assert normalise_pci_bus_id("3b:00.0") == "00000000:3b:00.0"
    clock = FakeClock(0.0)
    # One GPU: CUDA device 0 is it, whatever CUDA_VISIBLE_DEVICES says, and CUDA is not even asked.
    handle, how = nvml_handle_for_cuda_device(FakeNvml(clock), 0, environ={"CUDA_VISIBLE_DEVICES": "GPU-x"},
                                              cuda_lookup=lambda i: pytest.fail("asked CUDA"))
    assert handle == "handle-0" and how["how"] == "the only GPU NVML sees"


# where the engine runs -----------------------------------------------------------------------


class _Engine:
    def __init__(self, backend, providers, options=None, device=None):
        self.backend, self._providers, self.device = backend, providers, device
        self.session = SimpleNamespace(get_provider_options=lambda: options or {})

    @property
    def providers(self):
        return self._providers


def test_engine_device_follows_the_providers_in_use():
    from edgeattack.engines.cuda_buffers import DeviceInfo
    from edgeattack.metrics.energy import engine_device, resolve_device

    cuda1 = _Engine("onnxruntime", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                    {"CUDAExecutionProvider": {"device_id": "1"}, "CPUExecutionProvider": {}})
    assert engine_device(cuda1).spec == "cuda:1"
    trt_ep = _Engine("onnxruntime", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engine_device(trt_ep).spec == "cuda:0"
    fell_back = _Engine("onnxruntime", ["CPUExecutionProvider"])  # asked for CUDA, runs on the CPU
    assert engine_device(fell_back).spec == "cpu"
    plan = _Engine("tensorrt", ["TensorRT 10.3.0", "GPU"],
                   device=DeviceInfo("NVIDIA H100", "9.0", index=1, pci_bus_id="0000:86:00.0"))
    found = engine_device(plan)
    assert (found.spec, found.pci_bus_id) == ("cuda:1", "0000:86:00.0")
    assert engine_device(_Engine("torch", ["torch:cuda:1"])).spec == "cuda:1"
    assert resolve_device(plan, None) == found and resolve_device(plan, "auto") == found
    assert resolve_device(plan, "cuda").spec == "cuda:1"
    with pytest.warns(RuntimeWarning, match="contradicts the engine, which runs on cuda:1"):
        assert resolve_device(plan, "cpu").spec == "cpu"
    with pytest.warns(RuntimeWarning, match="contradicts"):
        assert resolve_device(plan, "cuda:0").pci_bus_id is None  # not the engine's GPU: its bus id does not apply
    with pytest.warns(RuntimeWarning, match="runs on cpu"):
        resolve_device(fell_back, "cuda")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device(plan, "jetson").spec == "jetson"  # the board's rails fit any engine on it
        assert resolve_device(fell_back, "cpu").spec == "cpu"
