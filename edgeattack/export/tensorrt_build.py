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
- `sparse=True` sets `BuilderFlag.SPARSE_WEIGHTS` for 2:4 models (`edgeattack compress sparse24`);
  TensorRT reports which layers were eligible and which got a sparse kernel at INFO level, and
  those lines go into the sidecar's `sparse_report`.
- Token-sparse models (data-dependent shapes) need nothing special here: the engine receives
  their outputs through an `IOutputAllocator` when TensorRT cannot know the shape beforehand.

The plan is written atomically, then the `<plan>.json` sidecar: the ONNX's embedded metadata
(precision replaced by the plan's) plus a `tensorrt` record — TensorRT version, GPU name and
compute capability, build flags, the batch profile, the sparse report and the plan's sha256 —
which `TensorRTEngine` checks before it deserialises a plan.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json, sha256_file
from edgeattack.engines.tensorrt_engine import (
    SIDECAR_SECTION,
    DeviceInfo,
    import_tensorrt,
    make_trt_logger,
    open_cuda_runtime,
)
from edgeattack.errors import ConfigError, EngineError, MissingDependencyError
from edgeattack.export.metadata import METADATA_KEY, EngineMetadata, sidecar_path

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

PRECISIONS = ("fp32", "fp16", "int8")
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
DEFAULT_MAX_BATCH = 64
DEFAULT_WORKSPACE_MB = 1024
INT8_HINT = "export the ONNX with `edgeattack export MODEL --precision int8 --preset full` first"

_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:\s*(.*)", re.IGNORECASE)
_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:\s*(.*)", re.I)


# ------------------------------------------------------------------------------------------------
# pure-Python checks (no TensorRT needed)


def parse_sparse_report(messages: list[str]) -> dict[str, Any]:
    """The builder log's structured-sparsity lines: eligible layers, layers given sparse kernels, raw lines."""
    eligible: list[str] = []
    picked: list[str] = []
    lines: list[str] = []
    for message in messages:
        for line in str(message).splitlines():
            if "sparsity" not in line.lower():
                continue
            lines.append(line.strip())
            for pattern, target in ((_ELIGIBLE, eligible), (_PICKED, picked)):
                match = pattern.search(line)
                if match:
                    target.extend(name.strip() for name in match.group(1).split(",") if name.strip())
    return {"eligible": eligible, "picked": picked, "lines": lines}


def inspect_onnx_quantization(path: str | Path) -> dict[str, Any]:
    """What kind of quantization an ONNX graph holds: Q/DQ node counts, uint8 zero points, dynamic int8 ops.

    Reads the graph with `onnx` when it is installed; otherwise counts the op types in the protobuf
    bytes (a NodeProto's `op_type` is field 4: tag 0x22, the length, then the name verbatim), which
    answers the same questions except `uint8`.
    """
    path = Path(path)
    try:
        import onnx  # the torch extra: a board may not have it
        from onnx import TensorProto
    except ImportError:
        data = path.read_bytes()
        return {
            "quantize_linear": data.count(_op_type_bytes("QuantizeLinear")),
            "dequantize_linear": data.count(_op_type_bytes("DequantizeLinear")),
            "dynamic": any(
                data.count(_op_type_bytes(op)) for op in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
            ),
            "uint8": None,
            "reader": "bytes",
        }
    model = onnx.load(str(path), load_external_data=False)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    dynamic = False
    zero_points: set[str] = set()
    for node in _all_nodes(model.graph):
        if node.op_type in counts:
            counts[node.op_type] += 1
            if node.op_type == "QuantizeLinear" and len(node.input) > 2:
                zero_points.add(node.input[2])
        elif node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul"):
            dynamic = True
    uint8 = any(init.name in zero_points and init.data_type == TensorProto.UINT8 for init in model.graph.initializer)
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "dynamic": dynamic,
        "uint8": uint8,
        "reader": "onnx",
    }


def _op_type_bytes(op_type: str) -> bytes:
    name = op_type.encode()
    return b"\x22" + bytes([len(name)]) + name


def _all_nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and len(attribute.g.node):
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _onnx_metadata(path: Path) -> EngineMetadata:
    """The edgeattack metadata embedded in an ONNX file (onnx if installed, else onnxruntime)."""
    try:
        from edgeattack.export.metadata import read_onnx_metadata

        metadata = read_onnx_metadata(path)
    except ImportError:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError(
                "reading the ONNX file's metadata needs onnx or onnxruntime; pip install 'edgeattack[cpu]'"
            ) from exc
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        metadata = EngineMetadata.from_json(text) if text else None
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
    if metadata is None:
        raise EngineError(f"{path} carries no edgeattack metadata: export it with `edgeattack export` first")
    return metadata


def _check_options(
    precision: str, sparse: bool, min_batch: int, opt_batch: int, max_batch: int, workspace_mb: int
) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            f"the batch profile must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})"
        )
    if workspace_mb < 1:
        raise ConfigError(f"the workspace must be at least 1 MB, got {workspace_mb}")
    if sparse and precision == "fp32":
        raise ConfigError("2:4 sparse kernels run in fp16 or int8: use --sparse with --precision fp16 or int8")


def _check_source(source: EngineMetadata, quant: dict[str, Any], precision: str, onnx_path: Path) -> None:
    """The ONNX must be able to become a plan of `precision` (TensorRT explicit quantization rules)."""
    is_qdq = quant["quantize_linear"] > 0
    if quant["dynamic"] or source.quantization.get("method") == "dynamic_int8":
        raise ConfigError(
            f"{onnx_path} holds ONNX Runtime dynamic int8 (DynamicQuantizeLinear/MatMulInteger), which TensorRT "
            f"cannot build; {INT8_HINT}"
        )
    if precision == "int8":
        if not is_qdq:
            raise ConfigError(
                f"{onnx_path} has no QuantizeLinear nodes: TensorRT builds int8 only from explicit Q/DQ ONNX "
                f"(implicit calibration is gone in TensorRT 11); {INT8_HINT}"
            )
        if quant["uint8"] or source.quantization.get("activation_type") == "uint8":
            raise ConfigError(
                f"{onnx_path} quantizes activations to uint8 (the 'cpu' preset); TensorRT needs symmetric int8 "
                f"Q/DQ; {INT8_HINT}"
            )
    elif is_qdq:
        raise ConfigError(f"{onnx_path} is an int8 Q/DQ graph: build it with precision int8, not {precision}")
    if source.precision == "fp16" and precision != "fp16":
        raise ConfigError(f"{onnx_path} computes in fp16: build it with precision fp16, not {precision}")


def _count_2to4_weights(onnx_path: Path) -> int | None:
    """How many 2-D initializers are 2:4 sparse (None when onnx is not installed)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    from edgeattack.compress.sparse24 import is_2to4_sparse

    model = onnx.load(str(onnx_path))
    count = 0
    for init in model.graph.initializer:
        if len(init.dims) == 2:
            weight = numpy_helper.to_array(init)
            # ONNX MatMul weights are [in, out] (reduction axis 0); Gemm with transB is [out, in]
            if is_2to4_sparse(weight, axis=0) or is_2to4_sparse(weight, axis=-1):
                count += 1
    return count


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


def _probe_device(device_index: int) -> tuple[DeviceInfo, str]:
    """The GPU the plan is built on (cuda-python/pycuda, else nvidia-smi) and the library that said so."""
    try:
        cuda = open_cuda_runtime(device_index)
        return cuda.device_info(), f"{cuda.library} {getattr(cuda, 'version', '')}".strip()
    except MissingDependencyError as exc:
        smi = _device_from_nvidia_smi(device_index)
        if smi is None:
            raise
        logger.warning("%s; recording the GPU from nvidia-smi instead", exc)
        return smi, "nvidia-smi"


def _device_from_nvidia_smi(device_index: int) -> DeviceInfo | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--id={device_index}", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        name, cc, memory = (part.strip() for part in out.splitlines()[0].split(","))
        return DeviceInfo(name=name, compute_capability=cc, index=device_index, total_memory_mb=float(memory))
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
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    device_index: int = 0,
) -> EngineMetadata:
    """Build the TensorRT plan `plan_path` from the edgeattack ONNX `onnx_path`; returns the plan's metadata.

    `precision` "fp32", "fp16" or "int8" (explicit Q/DQ ONNX only); `sparse` enables 2:4 sparse
    kernels; the batch profile is `min_batch` <= `opt_batch` (default `max_batch`) <= `max_batch`;
    `workspace_mb` caps TensorRT's scratch memory; `timing_cache` is a file read if present and
    written back (atomically) after the build, so rebuilds on the same device are fast.
    Writes the plan atomically, then `<plan>.json`.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    opt_batch = max_batch if opt_batch is None else opt_batch
    _check_options(precision, sparse, min_batch, opt_batch, max_batch, workspace_mb)
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
    device, device_source = _probe_device(device_index)

    build_log = make_trt_logger(trt, keep="INFO")
    serialized, flags, cache_note = _build(
        trt,
        build_log,
        onnx_path,
        source,
        caps,
        precision,
        sparse,
        (min_batch, opt_batch, max_batch),
        workspace_mb,
        Path(timing_cache) if timing_cache is not None else None,
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
        "sparse": sparse,
        "sparse_report": sparse_report,
        "profile": {
            "input": source.input_name,
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
        },
        "workspace_mb": workspace_mb,
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
        len(data) / 2**20,
        device.name,
        caps["version"],
    )
    return metadata


def _build(
    trt: Any,
    build_log: Any,
    onnx_path: Path,
    source: EngineMetadata,
    caps: dict[str, Any],
    precision: str,
    sparse: bool,
    batches: tuple[int, int, int],
    workspace_mb: int,
    timing_cache: Path | None,
) -> tuple[Any, list[str], dict[str, Any] | None]:
    """Parse, configure and build; returns (serialized plan, builder flags set, timing-cache note)."""
    try:
        builder = trt.Builder(build_log)
    except Exception as exc:
        raise MissingDependencyError(
            f"TensorRT cannot create a builder ({exc}): is an NVIDIA GPU with its driver present?"
        ) from exc
    if builder is None:
        raise MissingDependencyError(
            "TensorRT cannot create a builder (no usable GPU/CUDA driver?): " + "; ".join(build_log.errors()[-3:])
        )
    network_flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if caps["major"] < 10 and creation is not None and hasattr(creation, "EXPLICIT_BATCH"):
        network_flags |= 1 << int(creation.EXPLICIT_BATCH)  # the default from TensorRT 10 on
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, build_log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or build_log.errors()
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {'; '.join(e.strip() for e in errors[:3])}")

    config = builder.create_builder_config()
    flags: list[str] = []

    def set_flag(name: str) -> None:
        config.set_flag(getattr(trt.BuilderFlag, name))
        flags.append(name)

    if caps["weakly_typed"]:
        if precision == "fp16":
            set_flag("FP16")
        elif precision == "int8":
            set_flag("INT8")  # Q/DQ scales come from the ONNX: no calibrator
    if sparse:
        set_flag("SPARSE_WEIGHTS")
    pool = getattr(trt, "MemoryPoolType", None)
    if pool is not None and hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(pool.WORKSPACE, int(workspace_mb) << 20)
    else:  # pragma: no cover - TensorRT < 8.4
        config.max_workspace_size = int(workspace_mb) << 20

    _add_profile(trt, builder, network, config, source, batches)
    cache_note = _attach_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(m.strip().splitlines()[0][:300] for m in build_log.errors()[-3:])
        raise EngineError(f"TensorRT failed to build a plan from {onnx_path}" + (f": {detail}" if detail else ""))
    if timing_cache is not None and cache_note is not None:
        _save_timing_cache(config, timing_cache, cache_note)
    return serialized, flags, cache_note


def _add_profile(
    trt: Any, builder: Any, network: Any, config: Any, source: EngineMetadata, batches: tuple[int, int, int]
) -> None:
    """One optimisation profile over the batch dimension of every network input."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise EngineError(
                f"input {tensor.name} has dynamic dimensions besides the batch ({shape}); edgeattack plans take fixed "
                "image sizes"
            )
        if shape and shape[0] < 0:
            dynamic = True
            low, opt, high = ((b, *shape[1:]) for b in batches)
            profile.set_shape(tensor.name, low, opt, high)
        elif shape and not batches[0] <= shape[0] <= batches[2]:
            raise ConfigError(
                f"input {tensor.name} has a fixed batch of {shape[0]}, outside the requested {batches[0]}..{batches[2]}"
            )
    if dynamic:
        config.add_optimization_profile(profile)


def _attach_timing_cache(config: Any, path: Path | None) -> dict[str, Any] | None:
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    accepted = config.set_timing_cache(cache, False)
    note = {"path": str(path), "loaded_bytes": len(data), "accepted": accepted is not False}
    if accepted is False and data:
        logger.warning("timing cache %s does not fit this device/TensorRT; starting a fresh one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return note


def _save_timing_cache(config: Any, path: Path, note: dict[str, Any]) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    data = bytes(memoryview(cache.serialize()))
    atomic_write_bytes(path, data)
    note["saved_bytes"] = len(data)


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
