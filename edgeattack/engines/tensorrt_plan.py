"""A TensorRT plan's `<plan>.json` sidecar and the checks made before deserialising it.

A plan runs only on the TensorRT version that built it and on GPUs of the compute capability it
was built for, and its kernels are tuned for the GPU model it was built on. The sidecar written by
`edgeattack.export.tensorrt_build` records all three (and the plan's sha256); `TensorRTEngine`
checks them *before* deserialising, so a plan from another board fails with a message that says
what to rebuild instead of an opaque TensorRT error or, worse, timings that describe no real device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeattack.engines.cuda_buffers import DeviceInfo
from edgeattack.errors import EngineError
from edgeattack.export.metadata import EngineMetadata, sidecar_path

__all__ = ["SIDECAR_SECTION", "check_plan_compatibility", "read_sidecar"]

SIDECAR_SECTION = "tensorrt"


def read_sidecar(plan: str | Path) -> tuple[EngineMetadata, dict[str, Any]]:
    """(engine metadata, TensorRT build record) from `<plan>.json`; EngineError when absent or corrupt."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise EngineError(
            f"{plan} has no sidecar {path.name}: without it edgeattack cannot tell what the plan expects "
            "or where it may run; build plans with `edgeattack export --target tensorrt`"
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"sidecar {path} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise EngineError(f"sidecar {path} is not a JSON object")
    build = document.get(SIDECAR_SECTION)
    if not isinstance(build, dict):
        raise EngineError(f"sidecar {path} has no '{SIDECAR_SECTION}' build record; rebuild the plan")
    try:
        metadata = EngineMetadata.from_dict(document)
    except EngineError as exc:
        raise EngineError(f"sidecar {path}: {exc}") from exc
    return metadata, build


def _normalise_gpu_name(name: str) -> str:
    return " ".join(str(name).replace("NVIDIA", "").split()).lower()


def check_plan_compatibility(
    build: Mapping[str, Any],
    *,
    tensorrt_version: str,
    device: DeviceInfo,
    plan: str | Path = "plan",
    allow_other_gpu: bool = False,
) -> list[str]:
    """Refuse (EngineError) a plan built by another TensorRT version or for another GPU.

    `build` is the sidecar's `tensorrt` record. A different compute capability is always refused
    (the kernels cannot run); another GPU model of the same compute capability is refused unless
    `allow_other_gpu` (TensorRT would run it, but with kernels tuned for the other GPU: latency
    and energy would describe neither device). Returns warnings for what could not be checked.
    """
    notes: list[str] = []
    built_version = str(build.get("version") or "")
    if not built_version:
        raise EngineError(f"{plan}: its sidecar records no TensorRT version; rebuild the plan on this device")
    if built_version != str(tensorrt_version):
        raise EngineError(
            f"{plan} was built with TensorRT {built_version} but this machine has TensorRT {tensorrt_version}; "
            "a plan runs only under the TensorRT version that built it: rebuild it here "
            "(edgeattack export --target tensorrt)"
        )
    built_device = build.get("device") or {}
    built_cc = str(built_device.get("compute_capability") or "")
    built_name = str(built_device.get("name") or "")
    if not built_cc or built_cc == "unknown":
        notes.append(f"{plan}: its sidecar records no compute capability; cannot check the GPU")
    elif built_cc != device.compute_capability:
        raise EngineError(
            f"{plan} was built for {built_name or 'a GPU'} (compute capability {built_cc}) but this GPU is "
            f"{device.name} (compute capability {device.compute_capability}); rebuild the plan on this device"
        )
    if built_name and built_name != "unknown" and _normalise_gpu_name(built_name) != _normalise_gpu_name(device.name):
        message = (
            f"{plan} was built on {built_name} but runs on {device.name} (same compute capability "
            f"{device.compute_capability}): TensorRT tuned its kernels for the other GPU"
        )
        if not allow_other_gpu:
            raise EngineError(f"{message}; rebuild the plan here, or open it with allow_other_gpu=True")
        notes.append(message)
    return notes
