"""Where an engine really runs, for choosing its energy meter: from the providers in use, not a flag.

`engine_device(engine)` reads the engine duck-typed (no engine module is imported):

- a TensorRT plan (`backend == "tensorrt"`) runs on its CUDA device (`engine.device`: index and,
  where the CUDA library gave it, the PCI bus id);
- an ONNX Runtime session whose first provider *really in use* (`engine.providers`, i.e.
  `session.get_providers()`, not merely the requested ones) is CUDA or TensorRT runs on that
  provider's `device_id` (`session.get_provider_options()`, 0 by default);
- a torch engine on `cuda[:N]` runs there;
- everything else runs on the CPU.

`resolve_device(engine, requested)` gives the device the meter is chosen for: the engine's, unless
`requested` ("cpu", "cuda", "cuda:N", "jetson") overrides it; an override that contradicts the
providers is kept (the caller may know better, e.g. a Jetson) but warned about.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from edgeattack.metrics.energy.select import parse_device

__all__ = ["GPU_PROVIDERS", "EngineDevice", "engine_device", "resolve_device"]

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")


@dataclass(frozen=True)
class EngineDevice:
    """The device of an engine: `kind` "cpu", "cuda" or "jetson", the CUDA ordinal, and how it was told."""

    kind: str
    cuda_index: int | None = None
    pci_bus_id: str | None = None
    source: str = ""

    @property
    def spec(self) -> str:
        """"cpu", "cuda:N" or "jetson": what `select_meter(device=...)` takes."""
        return f"cuda:{self.cuda_index}" if self.kind == "cuda" and self.cuda_index is not None else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.spec, "pci_bus_id": self.pci_bus_id, "source": self.source}


def _safe(getter: Any) -> Any:
    try:
        return getter()
    except Exception:
        return None


def _provider_device_id(engine: Any, provider: str) -> int:
    session = getattr(engine, "session", None)
    options = _safe(lambda: session.get_provider_options()) if session is not None else None
    value = ((options or {}).get(provider) or {}).get("device_id", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def engine_device(engine: Any) -> EngineDevice:
    """The device `engine` really runs on (see the module docstring)."""
    backend = str(getattr(engine, "backend", ""))
    if backend == "tensorrt":
        device = getattr(engine, "device", None)
        index = getattr(device, "index", 0)
        return EngineDevice("cuda", int(index or 0), getattr(device, "pci_bus_id", None),
                            f"TensorRT plan on {getattr(device, 'name', 'a GPU')}")
    providers = [str(p) for p in (_safe(lambda: list(engine.providers)) or [])]
    if providers and providers[0] in GPU_PROVIDERS:
        index = _provider_device_id(engine, providers[0])
        return EngineDevice("cuda", index, None, f"ONNX Runtime session on {providers[0]} (device_id {index})")
    if backend == "torch" and providers and providers[0].startswith("torch:cuda"):
        _, _, index = providers[0].removeprefix("torch:").partition(":")
        return EngineDevice("cuda", int(index) if index.isdigit() else 0, None, f"torch on {providers[0]}")
    used = ", ".join(providers) or "no provider reported"
    return EngineDevice("cpu", None, None, f"{backend or 'engine'} on {used}")


def resolve_device(engine: Any, requested: str | None = None) -> EngineDevice:
    """The engine's device, or `requested` when given (warning when it contradicts the providers)."""
    found = engine_device(engine)
    if requested is None or str(requested).strip().lower() in ("", "auto"):
        return found
    kind, index = parse_device(requested)
    if kind == "cuda" and index is None:
        index = found.cuda_index if found.kind == "cuda" else 0
    chosen = EngineDevice(kind, index, found.pci_bus_id if (kind, index) == (found.kind, found.cuda_index) else None,
                          f"--device {requested}")
    gpu_engine = found.kind == "cuda"  # "jetson" (the board's rails) fits either: they measure the whole board
    if (kind == "cpu" and gpu_engine) or (kind == "cuda" and (not gpu_engine or index != found.cuda_index)):
        message = (
            f"device {requested!r} contradicts the engine, which runs on {found.spec} ({found.source}); "
            f"the energy meter follows {requested!r}"
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return chosen
