"""The TensorRT builder proper: parse the ONNX, set the builder flags, profile and timing cache, build.

`edgeattack.export.tensorrt_build.build_tensorrt_engine` checks the source and the installed
TensorRT first, then calls `_build` here with the `tensorrt` module it imported (lazily) and the
capturing logger; everything TensorRT-specific is reached through that module object, so this
file imports neither tensorrt nor cuda.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes
from edgeattack.errors import ConfigError, EngineError, MissingDependencyError
from edgeattack.export.metadata import EngineMetadata

logger = logging.getLogger(__name__)


def _build(
    trt: Any,
    build_log: Any,
    onnx_path: Path,
    source: EngineMetadata,
    caps: dict[str, Any],
    precision: str,
    sparse: bool,
    batches: tuple[int, int, int],
    workspace_mib: int,
    timing_cache: Path | None,
    *,
    int8_fp16: bool = True,
) -> tuple[Any, list[str], dict[str, Any] | None]:
    """Parse, configure and build; returns (serialized plan, builder flags set, timing-cache note).

    Weakly typed int8 sets INT8 and, with `int8_fp16`, FP16 too (`trtexec --best`): layers outside
    Q/DQ may pick fp16 kernels instead of fp32.
    """
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
            if int8_fp16:
                set_flag("FP16")  # the layers outside Q/DQ pairs: fp16 where TensorRT finds it faster
    if sparse:
        set_flag("SPARSE_WEIGHTS")
    pool = getattr(trt, "MemoryPoolType", None)
    if pool is not None and hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(pool.WORKSPACE, int(workspace_mib) << 20)
    else:  # pragma: no cover - TensorRT < 8.4
        config.max_workspace_size = int(workspace_mib) << 20

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
