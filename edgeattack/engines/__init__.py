"""Deployed engines behind one protocol (DESIGN.md): `open_engine(path_or_name)`.

This package imports no torch: the torch back-end is imported only when a zoo name is opened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeattack.engines.base import LOGITS, Engine
from edgeattack.errors import EngineError

__all__ = ["LOGITS", "Engine", "open_engine"]

ONNX_SUFFIXES = (".onnx",)
TENSORRT_SUFFIXES = (".plan", ".engine", ".trt")


def open_engine(
    source: str | Path,
    *,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
    checkpoint: str | Path | None = None,
    io_binding: bool = False,
    allow_other_gpu: bool = False,
    pretrained: bool | None = None,
    random_weights: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> Engine:
    """An engine for `source`: an `.onnx` file (ONNX Runtime), a TensorRT plan, or a zoo model name (torch).

    `io_binding` (ONNX Runtime) binds inputs and outputs on the provider's device. A TensorRT plan
    (`.plan`/`.engine`/`.trt`) needs its `<plan>.json` sidecar, TensorRT and cuda-python (or pycuda)
    and refuses a plan built by another TensorRT version or for another GPU (`allow_other_gpu`
    accepts another GPU model of the same compute capability). The engine is returned inactive;
    use it as a context manager.
    """
    text = str(source)
    suffix = Path(text).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(
            text, providers=providers, intra_op_threads=intra_op_threads, io_binding=io_binding
        )
    if suffix in TENSORRT_SUFFIXES:
        if not Path(text).is_file():
            raise EngineError(f"engine file {text} does not exist")
        from edgeattack.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(text, allow_other_gpu=allow_other_gpu)
    if Path(text).exists() or suffix:
        raise EngineError(
            f"cannot open {text!r} as an engine: expected .onnx, "
            f"{'/'.join(TENSORRT_SUFFIXES)} or a zoo model name"
        )
    from edgeattack.zoo.registry import get_entry

    get_entry(text)  # unknown names fail here with suggestions, before torch is imported
    from edgeattack.engines.torch_engine import TorchEngine

    return TorchEngine.from_name(
        text, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights, model_args=model_args
    )
