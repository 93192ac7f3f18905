"""NVIDIA Jetson power rails: the on-module INA3221 monitors read from sysfs, integrated at >= 10 Hz.

Two sysfs layouts exist (paths under `root`, "/" on a board, a fake tree in tests):

- JetPack 4 (and 5 on some modules), driver `ina3221x`, IIO:
  `sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_N` with `in_power{N}_input` (mW), or
  `in_voltage{N}_input` (mV) x `in_current{N}_input` (mA) where the power file is absent.
- JetPack 5/6, driver `ina3221`, hwmon:
  `sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in{N}_label` (N = 1..3) with `in{N}_input` (mV) and
  `curr{N}_input` (mA); power = mV x mA / 1000 mW. Channels labelled "NC" are not connected.

Rails differ by module: VDD_IN (Orin Nano/NX, Xavier NX, TX2) and POM_5V_IN (Nano) are the
module's total input, and `energy_j` is that rail alone (CPU/GPU/SOC rails are part of it and are
reported separately in `domain_energy_j`). AGX Xavier (GPU, CPU, SOC, CV, VDDRQ, SYS5V) and AGX Orin
(VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0, VDDQ_VDD2_1V8AO) have no input rail: `energy_j` is then the
sum of all rails, which is the module's power; neither includes the carrier board.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeattack.errors import ConfigError
from edgeattack.metrics.energy.base import Clock, Meter, MeterError, WindowData
from edgeattack.metrics.energy.sampling import DEFAULT_INTERVAL_S, Sampler, integrate_power, read_number

__all__ = ["BOARD_INPUT_RAILS", "JetsonMeter", "Rail", "board_power_source", "find_rails"]

BOARD_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"
_HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"
_UNCONNECTED = {"", "NC", "N/A"}


@dataclass(frozen=True)
class Rail:
    """One monitored rail: its power from a mW file, or from mV x mA files."""

    name: str
    layout: str  # "iio" (ina3221x, JetPack 4/5) or "hwmon" (ina3221, JetPack 5/6)
    power_path: Path | None = None
    voltage_path: Path | None = None
    current_path: Path | None = None

    def read_mw(self) -> float:
        if self.power_path is not None:
            return read_number(self.power_path)
        assert self.voltage_path is not None and self.current_path is not None
        return read_number(self.voltage_path) * read_number(self.current_path) / 1000.0

    @property
    def source(self) -> str:
        return str(self.power_path or f"{self.voltage_path} x {self.current_path}")


def _unique(name: str, chip: str, seen: set[str]) -> str:
    return name if name not in seen else f"{name}@{chip}"


def find_rails(root: str | Path = "/") -> list[Rail]:
    """The connected INA3221 rails under `root`, in both layouts (empty when there are none)."""
    base = Path(root)
    rails: list[Rail] = []
    seen: set[str] = set()
    for label_file in sorted(base.glob(_IIO_GLOB)):
        n = label_file.name.rsplit("_", 1)[-1]
        name = _label(label_file)
        if name is None:
            continue
        folder = label_file.parent
        power = folder / f"in_power{n}_input"
        volts, amps = folder / f"in_voltage{n}_input", folder / f"in_current{n}_input"
        if power.exists():
            rail = Rail(_unique(name, folder.parent.name, seen), "iio", power_path=power)
        elif volts.exists() and amps.exists():
            rail = Rail(_unique(name, folder.parent.name, seen), "iio", voltage_path=volts, current_path=amps)
        else:
            continue
        rails.append(rail)
        seen.add(rail.name)
    for label_file in sorted(base.glob(_HWMON_GLOB)):
        match = re.fullmatch(r"in([123])_label", label_file.name)
        name = _label(label_file) if match else None
        if match is None or name is None:
            continue
        n, folder = match.group(1), label_file.parent
        volts, amps = folder / f"in{n}_input", folder / f"curr{n}_input"
        if volts.exists() and amps.exists():
            rail = Rail(_unique(name, folder.parent.parent.name, seen), "hwmon", voltage_path=volts, current_path=amps)
            rails.append(rail)
            seen.add(rail.name)
    return rails


def _label(path: Path) -> str | None:
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return None if name.upper() in _UNCONNECTED else name


def board_power_source(names: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """Which rails make the module's total, and how: the input rail, else the sum of every rail."""
    for rail in BOARD_INPUT_RAILS:
        if rail in names:
            return (rail,), f"{rail} (module input rail; the other rails are part of it)"
    return tuple(names), "sum of all rails (this module has no input rail; carrier board not included)"


class JetsonMeter(Meter):
    """Jetson INA3221 rails from sysfs, sampled by a thread (default 20 Hz) and integrated (trapezoid).

    `rails` restricts the total to the named rails (default: the input rail, see the module
    docstring); every rail's own energy is in `domain_energy_j` either way.
    """

    name = "jetson"

    def __init__(
        self,
        *,
        root: str | Path = "/",
        rails: Sequence[str] | None = None,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        clock: Clock = time.perf_counter,
        idle_power_w: float | None = None,
        min_window_s: float | None = None,
    ) -> None:
        super().__init__(clock=clock, idle_power_w=idle_power_w, min_window_s=min_window_s)
        self.root = Path(root)
        self.total_rails = tuple(rails) if rails is not None else None
        self._rails: list[Rail] = []
        self._sampler = Sampler(self._read, interval_s=interval_s, clock=clock, what="jetson rails")

    @classmethod
    def available(cls, *, root: str | Path = "/") -> tuple[bool, str]:
        rails = find_rails(root)
        if not rails:
            return False, (f"no INA3221 rails under {Path(root) / 'sys/bus/i2c/drivers'}/ina3221{{,x}} "
                           "(not a Jetson, or sysfs not mounted)")
        try:
            for rail in rails:
                rail.read_mw()
        except MeterError as exc:
            return False, str(exc)
        _, how = board_power_source([r.name for r in rails])
        return True, f"Jetson INA3221 rails {', '.join(r.name for r in rails)}; total = {how}"

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    def _read(self) -> dict[str, float]:
        return {rail.name: rail.read_mw() for rail in self._rails}

    def _start_impl(self) -> None:
        self._rails = find_rails(self.root)
        if not self._rails:
            raise MeterError(f"no INA3221 rails under {self.root}")
        if self.total_rails is not None:
            missing = [r for r in self.total_rails if r not in {rail.name for rail in self._rails}]
            if missing:
                raise ConfigError(f"rails {missing} not on this board (it has {[r.name for r in self._rails]})")
        self._sampler.start()

    def _stop_impl(self, window_s: float) -> WindowData:
        sampler = self._sampler
        sampler.stop()
        names = [r.name for r in self._rails]
        if self.total_rails is not None:
            total, how = self.total_rails, "sum of the requested rails " + "+".join(self.total_rails)
        else:
            total, how = board_power_source(names)
        device = {"rails": {r.name: r.source for r in self._rails}, "layout": self._rails[0].layout, "total": how}
        method = f"INA3221 rails via sysfs, power sampled at {sampler.interval_s or 0:g}-s intervals, trapezoid"
        if sampler.error is not None:
            return WindowData(None, method, samples=len(sampler), reason=sampler.error, device=device)
        warnings = sampler.check()
        times = sampler.times
        energies: dict[str, float | None] = {}
        for name in names:
            mw = sampler.values(name)
            if (mw < 0).any():
                warnings.append(f"rail {name} read a negative power ({mw.min():.0f} mW); kept as measured")
            energies[name] = integrate_power(times, mw / 1000.0)
        energy = sum(energies[name] or 0.0 for name in total)
        return WindowData(
            energy,
            method,
            domain_energy_j=energies,
            energy_domains=tuple(total),
            samples=len(sampler),
            sample_rate_hz=sampler.rate_hz(),
            warnings=warnings,
            device=device,
        )
