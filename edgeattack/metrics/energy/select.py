"""Choose a meter by name (`--meter nvml`) or automatically for the device, and say which ones work here.

Automatic choice, by the device the engine runs on: `cuda` (or `cuda:N`) tries NVML, then Jetson
rails (a Jetson's integrated GPU has no NVML power); `jetson` tries the Jetson rails; `cpu` tries
RAPL, then Jetson rails (on a Jetson, CPU inference is measured by the board rails). Where none
works, `NoMeter` carries every reason: its readings have no energy (and the estimate is still
reported beside them by `energy_summary`). `available_meters()` lists every meter with whether it
works and why not (what `edgeattack doctor` prints).

The GPU NVML reads is CUDA device N of `cuda:N` (0 for `cuda`), mapped to NVML by PCI bus id or
UUID (`gpu_map`); `pci_bus_id=` names it directly, `gpu_index=` is NVML's own index.
`engine_device` (in `device`) derives the device from the providers an engine really runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError, did_you_mean
from edgeattack.metrics.energy.base import Meter
from edgeattack.metrics.energy.estimate import EstimateMeter, NoMeter
from edgeattack.metrics.energy.gpu_map import PciLookup, cuda_pci_bus_id
from edgeattack.metrics.energy.jetson import JetsonMeter
from edgeattack.metrics.energy.memory import ProcessMemoryMeter
from edgeattack.metrics.energy.nvml import NvmlMeter
from edgeattack.metrics.energy.rapl import RaplMeter

__all__ = ["AUTO_ORDER", "DEVICES", "METERS", "available_meters", "meter_names", "parse_device", "select_meter"]

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
_ALIASES = {"gpu": "cuda"}


def meter_names() -> list[str]:
    """Every name `select_meter` accepts, "auto" first."""
    return ["auto", *METERS]


def parse_device(device: str) -> tuple[str, int | None]:
    """("cuda", 1) for "cuda:1"; ("cuda", None) for "cuda"; ("cpu", None)... ConfigError for others."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    kind = _ALIASES.get(kind, kind)
    if kind not in AUTO_ORDER or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    return kind, int(index) if index else None


def _gpu_options(
    nvml: Any, gpu_index: int | None, cuda_device: int | None, pci_bus_id: str | None,
    cuda_lookup: PciLookup | None, environ: Mapping[str, str] | None,
) -> dict[str, Any]:
    options: dict[str, Any] = {"nvml": nvml, "cuda_lookup": cuda_lookup, "environ": environ}
    if gpu_index is not None:
        options["index"] = gpu_index
    else:
        options.update(cuda_device=cuda_device, pci_bus_id=pci_bus_id)
    return options


def _probe(name: str, root: str | Path, gpu: dict[str, Any]) -> tuple[bool, str]:
    try:
        if name == "nvml":
            return NvmlMeter.available(**gpu)
        if name in ("jetson", "rapl"):
            return METERS[name].available(root=root)  # type: ignore[call-arg]
        return METERS[name].available()
    except Exception as exc:  # a probe must never break `doctor`
        return False, f"{type(exc).__name__}: {exc}"


def available_meters(
    *,
    root: str | Path = "/",
    nvml: Any = None,
    gpu_index: int | None = 0,
    cuda_device: int | None = None,
    pci_bus_id: str | None = None,
    cuda_lookup: PciLookup | None = cuda_pci_bus_id,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, bool, str]]:
    """(name, works here, what it measures or why not) for every meter, hardware meters first.

    NVML is probed on NVML's GPU `gpu_index` (0: the first `nvidia-smi` lists); give
    `gpu_index=None` and `cuda_device` (or `pci_bus_id`) to probe the GPU of a CUDA device.
    """
    gpu = _gpu_options(nvml, gpu_index, cuda_device, pci_bus_id, cuda_lookup, environ)
    return [(name, *_probe(name, root, gpu)) for name in METERS]


def select_meter(
    name: str | None = "auto",
    *,
    device: str = "cpu",
    root: str | Path = "/",
    nvml: Any = None,
    gpu_index: int | None = None,
    pci_bus_id: str | None = None,
    cuda_lookup: PciLookup | None = cuda_pci_bus_id,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Meter:
    """A meter by `name`, or for "auto" (or None) the first that works for `device` (else `NoMeter`).

    `device` is "cpu", "cuda", "cuda:N" or "jetson": for NVML, CUDA device N (default 0) is
    mapped to its NVML GPU by PCI bus id / UUID, or `pci_bus_id` names the GPU; `gpu_index` is
    NVML's own index instead. `root` is the filesystem root of the sysfs meters (jetson, rapl),
    `nvml` an NVML module to use instead of `pynvml`, `cuda_lookup(index)` asks CUDA for a
    device's PCI bus id (None: do not ask), `environ` stands in for os.environ. `options` go to the
    named meter's constructor (e.g. `interval_s`, `min_window_s`, `include_dram`,
    `macs_per_inference`); with "auto" they must be empty. A named hardware meter that does not
    work here is a ConfigError with the reason.
    """
    kind, cuda_device = parse_device(device)
    gpu = _gpu_options(nvml, gpu_index, cuda_device, pci_bus_id, cuda_lookup, environ)
    key = "auto" if name is None else name.strip().lower()
    if key == "auto":
        if options:
            raise ConfigError(f"meter options {sorted(options)} need a meter name, not 'auto'")
        reasons = []
        for candidate in AUTO_ORDER[kind]:
            ok, why = _probe(candidate, root, gpu)
            if ok:
                return _build(candidate, root, gpu, {})
            reasons.append(f"{candidate}: {why}")
        return NoMeter(f"no energy meter works for device {device!r} here ({'; '.join(reasons)})")
    if key not in METERS:
        raise ConfigError(f"unknown meter {name!r}; choose one of {', '.join(meter_names())}"
                          f"{did_you_mean(key, meter_names())}")
    if key in _HARDWARE:
        ok, why = _probe(key, root, gpu)
        if not ok:
            raise ConfigError(f"meter {key!r} does not work here: {why}")
    return _build(key, root, gpu, options)


def _build(name: str, root: str | Path, gpu: dict[str, Any], options: dict[str, Any]) -> Meter:
    kwargs = dict(options)
    if name == "nvml":
        kwargs.update(gpu)
    elif name in ("jetson", "rapl"):
        kwargs["root"] = root
    try:
        return METERS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"meter {name!r} does not take these options: {exc}") from exc
