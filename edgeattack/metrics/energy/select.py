"""Choose a meter by name (`--meter nvml`) or automatically for the device, and say which ones work here.

Automatic choice, by the device the engine runs on: `cuda` tries NVML, then Jetson rails (a
Jetson's integrated GPU has no NVML power); `jetson` tries the Jetson rails; `cpu` tries RAPL,
then Jetson rails (on a Jetson, CPU inference is measured by the board rails). Where none works,
`NoMeter` carries every reason: its readings have no energy (and the estimate is still reported
beside them by `energy_summary`). `available_meters()` lists every meter with whether it works and
why not (what `edgeattack doctor` prints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError, did_you_mean
from edgeattack.metrics.energy.base import Meter
from edgeattack.metrics.energy.estimate import EstimateMeter, NoMeter
from edgeattack.metrics.energy.jetson import JetsonMeter
from edgeattack.metrics.energy.memory import ProcessMemoryMeter
from edgeattack.metrics.energy.nvml import NvmlMeter
from edgeattack.metrics.energy.rapl import RaplMeter

__all__ = ["AUTO_ORDER", "DEVICES", "METERS", "available_meters", "meter_names", "select_meter"]

METERS: dict[str, type[Meter]] = {
    "nvml": NvmlMeter,
    "jetson": JetsonMeter,
    "rapl": RaplMeter,
    "estimate": EstimateMeter,
    "process-memory": ProcessMemoryMeter,
    "none": NoMeter,
}
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("nvml", "jetson"),
    "jetson": ("jetson",),
    "cpu": ("rapl", "jetson"),
}
DEVICES = tuple(AUTO_ORDER)
_HARDWARE = ("nvml", "jetson", "rapl")


def meter_names() -> list[str]:
    """Every name `select_meter` accepts, "auto" first."""
    return ["auto", *METERS]


def _probe(name: str, root: str | Path, nvml: Any, gpu_index: int) -> tuple[bool, str]:
    try:
        if name == "nvml":
            return NvmlMeter.available(index=gpu_index, nvml=nvml)
        if name in ("jetson", "rapl"):
            return METERS[name].available(root=root)  # type: ignore[call-arg]
        return METERS[name].available()
    except Exception as exc:  # a probe must never break `doctor`
        return False, f"{type(exc).__name__}: {exc}"


def available_meters(*, root: str | Path = "/", nvml: Any = None, gpu_index: int = 0) -> list[tuple[str, bool, str]]:
    """(name, works here, what it measures or why not) for every meter, hardware meters first."""
    return [(name, *_probe(name, root, nvml, gpu_index)) for name in METERS]


def select_meter(
    name: str | None = "auto",
    *,
    device: str = "cpu",
    root: str | Path = "/",
    nvml: Any = None,
    gpu_index: int = 0,
    **options: Any,
) -> Meter:
    """A meter by `name`, or for "auto" (or None) the first that works for `device` (else `NoMeter`).

    `root` is the filesystem root of the sysfs meters (jetson, rapl), `nvml` an NVML module to use
    instead of `pynvml`, `gpu_index` NVML's GPU. `options` go to the named meter's constructor
    (e.g. `interval_s`, `min_window_s`, `include_dram`, `macs_per_inference`); with "auto" they must
    be empty. A named hardware meter that does not work here is a ConfigError with the reason.
    """
    key = "auto" if name is None else name.strip().lower()
    if key == "auto":
        if device not in AUTO_ORDER:
            raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        if options:
            raise ConfigError(f"meter options {sorted(options)} need a meter name, not 'auto'")
        reasons = []
        for candidate in AUTO_ORDER[device]:
            ok, why = _probe(candidate, root, nvml, gpu_index)
            if ok:
                return _build(candidate, root, nvml, gpu_index, {})
            reasons.append(f"{candidate}: {why}")
        return NoMeter(f"no energy meter works for device {device!r} here ({'; '.join(reasons)})")
    if key not in METERS:
        raise ConfigError(f"unknown meter {name!r}; choose one of {', '.join(meter_names())}"
                          f"{did_you_mean(key, meter_names())}")
    if key in _HARDWARE:
        ok, why = _probe(key, root, nvml, gpu_index)
        if not ok:
            raise ConfigError(f"meter {key!r} does not work here: {why}")
    return _build(key, root, nvml, gpu_index, options)


def _build(name: str, root: str | Path, nvml: Any, gpu_index: int, options: dict[str, Any]) -> Meter:
    kwargs = dict(options)
    if name == "nvml":
        kwargs.update(index=gpu_index, nvml=nvml)
    elif name in ("jetson", "rapl"):
        kwargs["root"] = root
    try:
        return METERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"meter {name!r} does not take these options: {exc}") from exc
