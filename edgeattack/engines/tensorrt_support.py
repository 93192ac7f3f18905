"""TensorRT helpers shared by the engine and the builder: importing `tensorrt`, a capturing logger,
the output allocator for data-dependent shapes, and optimisation-profile shapes.

Nothing here imports tensorrt at import time.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any

from edgeattack.errors import EngineError, MissingDependencyError

logger = logging.getLogger(__name__)

__all__ = ["TENSORRT_INSTALL_HINT", "import_tensorrt", "make_trt_logger", "severity_name"]

TENSORRT_INSTALL_HINT = (
    "on a Jetson, TensorRT's Python bindings come with JetPack (`sudo apt install nvidia-jetpack`, or "
    "`python3-libnvinfer`); on an x86 machine with an NVIDIA GPU: `pip install tensorrt cuda-python`"
)


def import_tensorrt(feature: str = "TensorRT engines") -> Any:
    """The `tensorrt` module, or MissingDependencyError saying what to install."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:  # also OSError-like failures of libnvinfer surface as ImportError
        raise MissingDependencyError(
            f"TensorRT is needed for {feature} but `import tensorrt` failed ({exc}); {TENSORRT_INSTALL_HINT}"
        ) from exc
    if not hasattr(trt, "Runtime") or not hasattr(trt, "__version__"):
        raise MissingDependencyError(
            f"the `tensorrt` module found at {getattr(trt, '__file__', '?')} is not NVIDIA's TensorRT; "
            f"{TENSORRT_INSTALL_HINT}"
        )
    return trt


_SEVERITY_ORDER = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")
_PY_LEVEL = {
    "INTERNAL_ERROR": logging.ERROR,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}


def severity_name(severity: Any) -> str:
    name = getattr(severity, "name", None)
    if isinstance(name, str) and name:
        return name.upper()
    text = str(severity).rsplit(".", 1)[-1].upper()
    if text in _SEVERITY_ORDER:
        return text
    try:
        return _SEVERITY_ORDER[int(severity)]
    except (TypeError, ValueError, IndexError):
        return "INFO"


def make_trt_logger(trt: Any, *, keep: str = "INFO") -> Any:
    """A `trt.ILogger` that keeps every message at `keep` severity or above (for reports and errors)
    and forwards them to Python logging (TensorRT's INFO as DEBUG)."""
    limit = _SEVERITY_ORDER.index(keep)

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = severity_name(severity)
            rank = _SEVERITY_ORDER.index(name) if name in _SEVERITY_ORDER else 3
            if rank > limit:
                return
            self.messages.append((name, str(msg)))
            logger.log(_PY_LEVEL.get(name, logging.DEBUG), "TensorRT %s: %s", name.lower(), msg)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("INTERNAL_ERROR", "ERROR")]

    return CapturingLogger()


def _error_tail(messages: Sequence[str], limit: int = 3) -> str:
    return "; ".join(m.strip().splitlines()[0][:300] for m in messages[-limit:] if m.strip())


def _make_output_allocator(trt: Any, cuda: Any) -> Any:
    """An `IOutputAllocator` for outputs whose shape TensorRT learns only while running (data-dependent).

    Grow-only device buffers per tensor; `notify_shape` records the shape actually produced.
    """

    class OutputAllocator(trt.IOutputAllocator):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.pointers: dict[str, int] = {}
            self.sizes: dict[str, int] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.error: BaseException | None = None

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int | None:
            try:
                size = max(int(size), 1)
                if self.sizes.get(tensor_name, 0) >= size:
                    return self.pointers[tensor_name]
                if tensor_name in self.pointers:
                    cuda.free(self.pointers.pop(tensor_name))
                pointer = cuda.malloc(size)  # cudaMalloc aligns to 256 bytes
                if alignment and pointer % int(alignment):
                    raise EngineError(f"device buffer for {tensor_name} is not {alignment}-byte aligned")
                self.pointers[tensor_name] = pointer
                self.sizes[tensor_name] = size
                return pointer
            except BaseException as exc:  # an exception must not cross into TensorRT
                self.error = exc
                return None

        def reallocate_output_async(
            self, tensor_name: str, memory: int, size: int, alignment: int, stream: Any
        ) -> int | None:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def release(self) -> None:
            for pointer in self.pointers.values():
                try:
                    cuda.free(pointer)
                except Exception:  # pragma: no cover - freeing at teardown
                    pass
            self.pointers.clear()
            self.sizes.clear()

    return OutputAllocator()


def _tensor_profile_shapes(engine: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) of input `name` under optimisation profile 0.

    Falls back to the tensor's static shape only where nothing else can be known: a TensorRT without
    `get_tensor_profile_shape` (feature detection), an engine with no optimisation profile, or a
    profile that holds no shapes for a fully static input. A call that fails, or answers with
    something that is not three shapes of the tensor's rank, is an EngineError naming the tensor and
    the cause (it used to end, later, in an IndexError).
    """
    try:
        static = tuple(int(d) for d in engine.get_tensor_shape(name))
    except Exception as exc:
        raise EngineError(f"cannot read the shape of TensorRT input tensor {name!r}: {_cause(exc)}") from exc
    dynamic = any(d < 0 for d in static)
    getter = getattr(engine, "get_tensor_profile_shape", None)
    profiles = getattr(engine, "num_optimization_profiles", None)
    if getter is None or (isinstance(profiles, int) and profiles == 0):
        if dynamic:
            what = "no get_tensor_profile_shape (TensorRT < 8.5)" if getter is None else "no optimisation profile"
            raise EngineError(f"TensorRT input tensor {name!r} has dynamic shape {static} but the engine has {what}")
        return static, static, static
    try:
        answer = getter(name, 0)
    except Exception as exc:
        raise EngineError(
            f"cannot read optimisation profile 0 of TensorRT input tensor {name!r} (shape {static}): {_cause(exc)}"
        ) from exc
    try:
        shapes = tuple(tuple(int(d) for d in shape) for shape in answer)
    except TypeError as exc:
        raise EngineError(f"TensorRT returned {answer!r} as the profile of input tensor {name!r}: {_cause(exc)}") from exc
    if not dynamic and (not shapes or all(len(shape) == 0 for shape in shapes)):
        return static, static, static  # a static input the profile does not describe
    if len(shapes) != 3 or any(len(shape) != len(static) or any(d < 0 for d in shape) for shape in shapes):
        raise EngineError(
            f"TensorRT returned no usable optimisation profile for input tensor {name!r}: got {shapes} for a tensor "
            f"of shape {static} (expected min, opt and max shapes of rank {len(static)})"
        )
    return shapes  # type: ignore[return-value]


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
