"""Build a TensorRT plan from an edgeattack ONNX file: fp32, fp16, explicit-Q/DQ int8, 2:4 sparse.

Follows NVIDIA's documented Python API (`trt.Builder`, `trt.OnnxParser`, builder config flags,
an optimisation profile over the batch dimension, a timing cache, `build_serialized_network`) and
feature-detects instead of pinning a version:

- TensorRT 8.6/9/10 are weakly typed: fp16 and int8 are builder flags (`BuilderFlag.FP16`,
  `BuilderFlag.INT8`); 8.x also needs the EXPLICIT_BATCH network flag (the default from 10 on).
- TensorRT 11 removed the precision flags: networks are strongly typed and the precision comes
  from the ONNX itself, so an fp16 plan needs the fp16 ONNX (`edgeattack export --precision fp16`).
- int8 comes only from explicit Q/DQ ONNX (TensorRT 11 has no implicit calibration, and 10
  deprecates it): ONNX Runtime's `full` preset with symmetric int8 activations, the layout
  TensorRT's explicit quantization expects. The `cpu` preset's uint8 activations and dynamic
  int8 (`DynamicQuantizeLinear`, `MatMulInteger`) are refused with a message saying what to export.
  Where TensorRT is weakly typed, an int8 plan also sets `BuilderFlag.FP16` (`int8_fp16=True`, as
  `trtexec --best` does): layers outside Q/DQ pairs (softmax, LayerNorm, GELU, residual adds) may
  then run in fp16 instead of fp32 — what int8 ViTs are deployed with. TensorRT keeps a layer in
  fp32 where fp16 cannot represent it, but fp16 LayerNorm can lose accuracy (TensorRT warns about
  it): the plan's parity against its ONNX (`compare_plan_with_onnx`) measures that, and
  `int8_fp16=False` builds int8 + fp32. The sidecar's `build_flags` record which.
- `sparse=True` sets `BuilderFlag.SPARSE_WEIGHTS` for 2:4 models (`edgeattack compress sparse24`);
  TensorRT reports which layers were eligible and which got a sparse kernel at INFO level, and
  those lines go into the sidecar's `sparse_report`.
- Token-sparse models (data-dependent shapes) need nothing special here: the engine receives
  their outputs through an `IOutputAllocator` when TensorRT cannot know the shape beforehand.

The plan is written atomically, then the `<plan>.json` sidecar: the ONNX's embedded metadata
(precision replaced by the plan's) plus a `tensorrt` record — TensorRT version, GPU name and
compute capability, build flags, the batch profile, the sparse report and the plan's sha256 —
which `TensorRTEngine` checks before it deserialises a plan.

The ONNX inspection and pre-build checks live in `edgeattack.export.tensorrt_source`, the
builder proper (network, flags, profile, timing cache) in `edgeattack.export.tensorrt_network`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json, sha256_file
from edgeattack.engines.cuda_buffers import current_device
from edgeattack.engines.tensorrt_engine import (
    SIDECAR_SECTION,
    DeviceInfo,
    import_tensorrt,
    make_trt_logger,
    open_cuda_runtime,
)
from edgeattack.errors import ConfigError, EngineError, MissingDependencyError
from edgeattack.export.metadata import EngineMetadata, sidecar_path
from edgeattack.export.tensorrt_network import _build
from edgeattack.export.tensorrt_source import (
    PRECISIONS,
    _check_options,
    _check_source,
    _count_2to4_weights,
    _onnx_metadata,
    inspect_onnx_quantization,
    parse_sparse_report,
)

logger = logging.getLogger(__name__)

__all__ = [
    "PLAN_SUFFIXES",
    "PRECISIONS",
    "build_tensorrt_engine",
    "check_build_environment",
    "compare_plan_with_onnx",
    "inspect_onnx_quantization",
    "onnx_precision_for",
    "parse_sparse_report",
    "record_plan_parity",
    "tensorrt_capabilities",
]

PLAN_SUFFIXES = (".plan", ".engine", ".trt")
DEFAULT_MAX_BATCH = 64
DEFAULT_WORKSPACE_MIB = 1024


# ------------------------------------------------------------------------------------------------
# TensorRT


def tensorrt_capabilities(trt: Any | None = None) -> dict[str, Any]:
    """What the installed TensorRT offers: version, weak typing (precision flags), sparsity, timing cache."""
    trt = trt if trt is not None else import_tensorrt("building TensorRT plans")
    flags = trt.BuilderFlag
    return {
        "version": str(trt.__version__),
        "major": _major(trt.__version__),
        "weakly_typed": hasattr(flags, "FP16") and hasattr(flags, "INT8"),
        "sparse_weights": hasattr(flags, "SPARSE_WEIGHTS"),
        "timing_cache": hasattr(trt, "ITimingCache"),
        "output_allocator": hasattr(trt, "IOutputAllocator"),
    }


def onnx_precision_for(precision: str, capabilities: dict[str, Any]) -> str:
    """The ONNX precision to export for a plan of `precision`.

    int8 -> the int8 Q/DQ ONNX; fp16 -> the fp32 ONNX built with the FP16 flag where TensorRT is
    weakly typed (<= 10), the fp16 ONNX where it is strongly typed only (11); fp32 -> fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16":
        return "fp32" if capabilities["weakly_typed"] else "fp16"
    return precision


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _open_device(device_index: int) -> tuple[DeviceInfo, str, Any | None]:
    """The GPU the plan is built on, the library that said so, and its CUDA runtime (None: nvidia-smi only).

    CUDA device `device_index` is made current for the build through the runtime; without cuda-python
    or pycuda only device 0 can be built on (TensorRT then uses CUDA's default device), and nvidia-smi
    names it by PCI bus id or UUID (its own indices are not CUDA's).
    """
    try:
        cuda = open_cuda_runtime(device_index)
        return cuda.device_info(), f"{cuda.library} {getattr(cuda, 'version', '')}".strip(), cuda
    except MissingDependencyError as exc:
        if device_index != 0:
            raise MissingDependencyError(
                f"building on CUDA device {device_index} needs cuda-python or pycuda to make it current ({exc}); "
                "or build with CUDA_VISIBLE_DEVICES set to that GPU and device 0"
            ) from exc
        smi = _device_from_nvidia_smi(device_index)
        if smi is None:
            raise
        logger.warning("%s; recording the GPU from nvidia-smi instead", exc)
        return smi, "nvidia-smi", None


def _probe_device(device_index: int) -> tuple[DeviceInfo, str]:
    """The GPU a plan would be built on and the library that said so."""
    device, source, _ = _open_device(device_index)
    return device, source


def _device_from_nvidia_smi(device_index: int) -> DeviceInfo | None:
    """CUDA device `device_index` as nvidia-smi describes it, matched by UUID / PCI order (None when unknown)."""
    from edgeattack.metrics.energy.gpu_map import GpuId, normalise_pci_bus_id, pick_visible_gpu

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,pci.bus_id,name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        rows = [[part.strip() for part in line.split(",")] for line in out.splitlines() if line.strip()]
        gpus = [GpuId(int(r[0]), r[1], normalise_pci_bus_id(r[2])) for r in rows]
        chosen, why = pick_visible_gpu(gpus, device_index, os.environ)
        if chosen is None:
            logger.warning("nvidia-smi cannot tell which GPU is CUDA device %d: %s", device_index, why)
            return None
        _, _, bus, name, cc, memory = rows[gpus.index(chosen)]
        return DeviceInfo(name=name, compute_capability=cc, index=device_index, total_memory_mib=float(memory),
                          pci_bus_id=bus)
    except Exception:
        return None


def build_tensorrt_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    precision: str = "fp16",
    sparse: bool = False,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: str | Path | None = None,
    device_index: int = 0,
    int8_fp16: bool = True,
) -> EngineMetadata:
    """Build the TensorRT plan `plan_path` from the edgeattack ONNX `onnx_path`; returns the plan's metadata.

    `precision` "fp32", "fp16" or "int8" (explicit Q/DQ ONNX only); `sparse` enables 2:4 sparse
    kernels; the batch profile is `min_batch` <= `opt_batch` (default `max_batch`) <= `max_batch`;
    `workspace_mib` caps TensorRT's scratch memory; `timing_cache` is a file read if present and
    written back (atomically) after the build, so rebuilds on the same device are fast.
    `device_index` is the CUDA device built on (made current during the build). `int8_fp16` lets an
    int8 plan run layers without Q/DQ in fp16 (weakly typed TensorRT; see the module docstring).
    Writes the plan atomically, then `<plan>.json`.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    opt_batch = max_batch if opt_batch is None else opt_batch
    _check_options(precision, sparse, min_batch, opt_batch, max_batch, workspace_mib)
    if plan_path.suffix.lower() not in PLAN_SUFFIXES:
        raise ConfigError(f"a TensorRT plan path must end in {'/'.join(PLAN_SUFFIXES)}, got {plan_path}")
    if not onnx_path.is_file():
        raise EngineError(f"ONNX file {onnx_path} does not exist")
    source = _onnx_metadata(onnx_path)
    quant = inspect_onnx_quantization(onnx_path)
    _check_source(source, quant, precision, onnx_path)

    trt = import_tensorrt("building TensorRT plans")
    caps = tensorrt_capabilities(trt)
    if precision == "fp16" and not caps["weakly_typed"] and source.precision != "fp16":
        raise ConfigError(
            f"TensorRT {caps['version']} builds strongly typed networks only (no FP16 builder flag): an fp16 plan "
            f"needs the fp16 ONNX; export with `edgeattack export MODEL --precision fp16` (or use --target tensorrt)"
        )
    if sparse and not caps["sparse_weights"]:
        raise ConfigError(f"TensorRT {caps['version']} has no SPARSE_WEIGHTS builder flag")
    device, device_source, cuda = _open_device(device_index)

    build_log = make_trt_logger(trt, keep="INFO")
    with current_device(cuda) if cuda is not None else contextlib.nullcontext():
        serialized, flags, cache_note = _build(
            trt,
            build_log,
            onnx_path,
            source,
            caps,
            precision,
            sparse,
            (min_batch, opt_batch, max_batch),
            workspace_mib,
            Path(timing_cache) if timing_cache is not None else None,
            int8_fp16=int8_fp16,
        )
    data = bytes(memoryview(serialized))
    if not data:
        raise EngineError(f"TensorRT returned an empty plan for {onnx_path}")
    sparse_report = parse_sparse_report([m for _, m in build_log.messages]) if sparse else None
    if sparse_report is not None:
        sparse_report["onnx_2to4_weights"] = _count_2to4_weights(onnx_path)
        if not sparse_report["picked"]:
            logger.warning(
                "TensorRT picked no sparse kernel for %s (eligible layers: %s)",
                onnx_path.name,
                ", ".join(sparse_report["eligible"]) or "none",
            )
    build_record = {
        "version": caps["version"],
        "device": device.to_dict(),
        "device_source": device_source,
        "precision": precision,
        "strongly_typed": not caps["weakly_typed"],
        "build_flags": flags,
        "int8_fp16": ("FP16" in flags) if precision == "int8" else None,
        "sparse": sparse,
        "sparse_report": sparse_report,
        "profile": {
            "input": source.input_name,
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
        },
        "workspace_mib": workspace_mib,
        "timing_cache": cache_note,
        "source_onnx": onnx_path.name,
        "source_onnx_sha256": sha256_file(onnx_path),
        "source_onnx_precision": source.precision,
        "source_onnx_parity": source.parity,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "plan_bytes": len(data),
        "warnings": [m for s, m in build_log.messages if s == "WARNING"][-20:],
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata = source.replace(
        precision=precision,
        parity={},
        batch_dependent=False,
        exporter=f"TensorRT {caps['version']} on {device.name} from {source.exporter or 'ONNX'}",
    )
    atomic_write_bytes(plan_path, data)
    atomic_write_json(sidecar_path(plan_path), {**metadata.to_dict(), SIDECAR_SECTION: build_record})
    logger.info(
        "built %s (%s%s, batch %d..%d, %.2f MB) on %s with TensorRT %s",
        plan_path,
        precision,
        " 2:4 sparse" if sparse else "",
        min_batch,
        max_batch,
        len(data) / 1e6,
        device.name,
        caps["version"],
    )
    return metadata


# ------------------------------------------------------------------------------------------------
# environment check and parity against the ONNX


def check_build_environment(device_index: int = 0) -> dict[str, Any]:
    """Fail fast (MissingDependencyError naming what is missing) before an export that would end in a build.

    Returns the TensorRT capabilities plus the GPU (`device`) the plan would be built on.
    """
    caps = tensorrt_capabilities()
    device, source = _probe_device(device_index)
    return {**caps, "device": device.to_dict(), "device_source": source}


def compare_plan_with_onnx(
    plan_path: str | Path,
    onnx_path: str | Path,
    images: Any,
    *,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Top-1 agreement and logit differences of the plan against its ONNX (ONNX Runtime, CPU) on `images`."""
    import numpy as np

    from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
    from edgeattack.engines.tensorrt_engine import TensorRTEngine

    images = np.ascontiguousarray(images, dtype=np.float32)
    if len(images) == 0:
        raise ConfigError("comparing a plan with its ONNX needs at least one image")
    with OnnxRuntimeEngine(onnx_path) as reference:
        ref = np.concatenate([reference.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    with TensorRTEngine(plan_path) as engine:
        size = min(batch_size, engine.max_batch)
        got = np.concatenate([engine.infer(images[i : i + size]) for i in range(0, len(images), size)])
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {
        "images": len(images),
        "reference": "onnxruntime CPUExecutionProvider on the source ONNX",
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
    }


def record_plan_parity(plan_path: str | Path, report: dict[str, Any]) -> None:
    """Store `report` as `tensorrt.parity_vs_onnx` in the plan's sidecar (atomically)."""
    import json

    path = sidecar_path(plan_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    document.setdefault(SIDECAR_SECTION, {})["parity_vs_onnx"] = report
    atomic_write_json(path, document)
