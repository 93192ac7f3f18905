"""TensorRT back-end: a serialized plan (`.plan`/`.engine`/`.trt`) and its `<plan>.json` sidecar.

A plan runs only on the TensorRT version that built it and on GPUs of the compute capability it
was built for, and its kernels are tuned for the GPU model it was built on. The sidecar written by
`edgeattack.export.tensorrt_build` records all three (and the plan's sha256); this back-end checks
them *before* deserialising, so a plan from another board fails with a message that says what to
rebuild instead of an opaque TensorRT error or, worse, timings that describe no real device.

Buffers follow NVIDIA's Python samples: cuda-python (`cuda.bindings.runtime`, or the older
`cuda.cudart`) for device and pinned host memory, streams and events; pycuda is accepted where
that is what a board has. The TensorRT 10/11 named-tensor API is used throughout
(`num_io_tensors`, `get_tensor_name`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`);
outputs whose shape depends on the data are received through an `IOutputAllocator`.

Timing: every call records CUDA events around `execute_async_v3` on the engine's stream, so
`last_device_ms` is the device compute time of the last call without the host<->device copies,
and `last_host_ms` the host end-to-end time (copies and synchronisation included). Pass
`device_time_fn=lambda: engine.last_device_ms` to `measure_latency` to fill `device_compute_ms`.

Nothing here imports tensorrt, cuda-python or pycuda at import time.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._io import sha256_file
from edgeattack.engines.base import LOGITS, Engine
from edgeattack.errors import EngineError, MissingDependencyError
from edgeattack.export.metadata import EngineMetadata, sidecar_path

logger = logging.getLogger(__name__)

__all__ = [
    "CUDA_INSTALL_HINT",
    "TENSORRT_INSTALL_HINT",
    "DeviceInfo",
    "TensorRTEngine",
    "check_plan_compatibility",
    "import_tensorrt",
    "open_cuda_runtime",
    "read_sidecar",
]

SIDECAR_SECTION = "tensorrt"
TENSORRT_INSTALL_HINT = (
    "on a Jetson, TensorRT's Python bindings come with JetPack (`sudo apt install nvidia-jetpack`, or "
    "`python3-libnvinfer`); on an x86 machine with an NVIDIA GPU: `pip install tensorrt cuda-python`"
)
CUDA_INSTALL_HINT = "`pip install cuda-python` (or pycuda, where the board has it; JetPack images often do)"


# ------------------------------------------------------------------------------------------------
# optional dependencies


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


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for or runs on."""

    name: str
    compute_capability: str  # "8.7" (Jetson Orin), "9.0" (H100)...
    index: int = 0
    total_memory_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cuda_error_name(err: Any) -> str:
    return str(getattr(err, "name", err))


class CudaPythonRuntime:
    """cuda-python's runtime API (`cuda.bindings.runtime` or `cuda.cudart`): NVIDIA's samples' choice."""

    library = "cuda-python"

    def __init__(self, rt: Any, device_index: int = 0) -> None:
        self._rt = rt
        self.index = device_index
        err, count = rt.cudaGetDeviceCount()[:2]
        if int(err) != 0 or not count:
            reason = _cuda_error_name(err) if int(err) != 0 else "no device"
            raise MissingDependencyError(
                f"no CUDA GPU is usable (cudaGetDeviceCount: {reason}): TensorRT needs an NVIDIA GPU and its "
                "driver; run on the board or GPU machine itself"
            )
        if device_index >= count:
            raise EngineError(f"CUDA device {device_index} does not exist; this machine has {count}")
        self._check(rt.cudaSetDevice(device_index), "cudaSetDevice")
        self.version = self._version()

    def _version(self) -> str:
        try:
            from importlib.metadata import version

            for dist in ("cuda-python", "cuda-bindings"):
                try:
                    return version(dist)
                except Exception:
                    continue
        except Exception:  # pragma: no cover - importlib.metadata is stdlib
            pass
        return "unknown"

    def _check(self, result: Any, what: str) -> Any:
        values = result if isinstance(result, tuple) else (result,)
        err = values[0]
        if int(err) != 0:
            raise EngineError(f"CUDA call {what} failed: {_cuda_error_name(err)}")
        rest = values[1:]
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def device_info(self) -> DeviceInfo:
        rt = self._rt
        props = self._check(rt.cudaGetDeviceProperties(self.index), "cudaGetDeviceProperties")
        raw = props.name
        name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        attr = rt.cudaDeviceAttr
        major = self._check(
            rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, self.index), "cudaDeviceGetAttribute"
        )
        minor = self._check(
            rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, self.index), "cudaDeviceGetAttribute"
        )
        total = getattr(props, "totalGlobalMem", None)
        return DeviceInfo(
            name=name.strip(),
            compute_capability=f"{int(major)}.{int(minor)}",
            index=self.index,
            total_memory_mb=None if total is None else int(total) / 2**20,
        )

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self._check(self._rt.cudaFree(pointer), "cudaFree")

    def host_alloc(self, nbytes: int) -> np.ndarray:
        """Page-locked host memory as a uint8 array (asynchronous copies need it)."""
        nbytes = max(int(nbytes), 1)
        pointer = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(pointer))

    def host_free(self, array: np.ndarray) -> None:
        self._check(self._rt.cudaFreeHost(array.ctypes.data), "cudaFreeHost")

    def htod_async(self, device: int, host: np.ndarray, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def dtoh_async(self, host: np.ndarray, device: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes, kind, stream), "cudaMemcpyAsync")

    def stream_create(self) -> Any:
        return self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> Any:
        return int(stream)  # the cudaStream_t's address: what `execute_async_v3(stream_handle)` takes

    def stream_sync(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        self._check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def event_create(self) -> Any:
        return self._check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self._check(self._rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self._rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._check(self._rt.cudaEventDestroy(event), "cudaEventDestroy")

    def memory_info(self) -> tuple[int, int] | None:
        """(free, total) device memory in bytes."""
        try:
            free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
            return int(free), int(total)
        except EngineError:
            return None

    def enter(self) -> None:
        return None

    def exit(self) -> None:
        return None


class PyCudaRuntime:
    """pycuda's driver API on the device's primary context (the one TensorRT's runtime API uses)."""

    library = "pycuda"

    def __init__(self, driver: Any, device_index: int = 0) -> None:
        self._cuda = driver
        self.index = device_index
        try:
            driver.init()
            count = driver.Device.count()
        except Exception as exc:
            raise MissingDependencyError(
                f"no CUDA GPU is usable (pycuda: {exc}): TensorRT needs an NVIDIA GPU and its driver"
            ) from exc
        if not count:
            raise MissingDependencyError("no CUDA GPU is usable (pycuda sees 0 devices)")
        if device_index >= count:
            raise EngineError(f"CUDA device {device_index} does not exist; this machine has {count}")
        self._device = driver.Device(device_index)
        self._context = self._device.retain_primary_context()
        self._entered = 0
        self._pinned: dict[int, Any] = {}
        try:
            import pycuda

            self.version = str(getattr(pycuda, "VERSION_TEXT", "unknown"))
        except Exception:  # pragma: no cover
            self.version = "unknown"

    def device_info(self) -> DeviceInfo:
        major, minor = self._device.compute_capability()
        return DeviceInfo(
            name=str(self._device.name()).strip(),
            compute_capability=f"{int(major)}.{int(minor)}",
            index=self.index,
            total_memory_mb=int(self._device.total_memory()) / 2**20,
        )

    def enter(self) -> None:
        self._context.push()
        self._entered += 1

    def exit(self) -> None:
        if self._entered:
            self._cuda.Context.pop()
            self._entered -= 1

    def malloc(self, nbytes: int) -> int:
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        pointer = int(allocation)
        self._pinned[pointer] = allocation  # keep the DeviceAllocation alive until free()
        return pointer

    def free(self, pointer: int) -> None:
        allocation = self._pinned.pop(int(pointer), None)
        if allocation is not None:
            allocation.free()

    def host_alloc(self, nbytes: int) -> np.ndarray:
        return self._cuda.pagelocked_empty(max(int(nbytes), 1), np.uint8)

    def host_free(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        free = getattr(base, "free", None)
        if free is not None:
            free()

    def htod_async(self, device: int, host: np.ndarray, stream: Any) -> None:
        self._cuda.memcpy_htod_async(device, host, stream)

    def dtoh_async(self, host: np.ndarray, device: int, stream: Any) -> None:
        self._cuda.memcpy_dtoh_async(host, device, stream)

    def stream_create(self) -> Any:
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> Any:
        return stream.handle

    def stream_sync(self, stream: Any) -> None:
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        return None

    def event_create(self) -> Any:
        return self._cuda.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def event_destroy(self, event: Any) -> None:
        return None

    def memory_info(self) -> tuple[int, int] | None:
        try:
            free, total = self._cuda.mem_get_info()
            return int(free), int(total)
        except Exception:
            return None


def open_cuda_runtime(device_index: int = 0, *, prefer: str | None = None) -> Any:
    """A CUDA runtime for buffers, streams and events: cuda-python first, then pycuda.

    `prefer` ("cuda-python" or "pycuda") tries that one only. Raises MissingDependencyError naming
    each library tried and why it cannot be used (not installed, or no GPU/driver).
    """
    if prefer not in (None, "cuda-python", "pycuda"):
        raise EngineError(f"unknown CUDA library {prefer!r}; choose cuda-python or pycuda")
    reasons: list[str] = []
    no_gpu: MissingDependencyError | None = None
    if prefer in (None, "cuda-python"):
        for module in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                rt = importlib.import_module(module)
            except ImportError as exc:
                reasons.append(f"{module}: {exc}")
                continue
            try:
                return CudaPythonRuntime(rt, device_index)
            except MissingDependencyError as exc:
                no_gpu = exc
                break
    if prefer in (None, "pycuda") and no_gpu is None:
        try:
            driver = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            reasons.append(f"pycuda: {exc}")
        else:
            return PyCudaRuntime(driver, device_index)
    if no_gpu is not None:
        raise no_gpu
    raise MissingDependencyError(
        f"TensorRT engines need cuda-python or pycuda for their buffers, and neither can be imported "
        f"({'; '.join(reasons)}); install {CUDA_INSTALL_HINT}"
    )


# ------------------------------------------------------------------------------------------------
# sidecar and compatibility


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


# ------------------------------------------------------------------------------------------------
# TensorRT helpers shared with the builder


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
    """(min, opt, max) of an input under optimisation profile 0; its static shape when it has none."""
    getter = getattr(engine, "get_tensor_profile_shape", None)
    if getter is not None:
        try:
            shapes = getter(name, 0)
            if shapes and len(shapes) == 3:
                return tuple(tuple(int(d) for d in s) for s in shapes)  # type: ignore[return-value]
        except Exception:
            pass
    static = tuple(int(d) for d in engine.get_tensor_shape(name))
    return static, static, static


@dataclass
class _Binding:
    name: str
    is_input: bool
    dtype: np.dtype
    device: int = 0
    host: np.ndarray | None = None
    capacity: int = 0
    data_dependent: bool = False


# ------------------------------------------------------------------------------------------------
# the engine


class TensorRTEngine(Engine):
    """A TensorRT plan with its sidecar, on one GPU. Use as a context manager.

    `cuda` is a CUDA runtime object (`open_cuda_runtime()` by default: cuda-python, else pycuda).
    `allow_other_gpu` accepts a plan built on another GPU model of the same compute capability.
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        *,
        cuda: Any = None,
        device_index: int = 0,
        allow_other_gpu: bool = False,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"engine file {path} does not exist")
        metadata, build = read_sidecar(path)
        trt = import_tensorrt("running TensorRT plans")
        if not hasattr(trt, "IExecutionContext") or not hasattr(trt.IExecutionContext, "execute_async_v3"):
            raise MissingDependencyError(
                f"TensorRT {trt.__version__} lacks the named-tensor API (execute_async_v3); edgeattack needs "
                f"TensorRT 8.6 or newer (10.x/11.x recommended); {TENSORRT_INSTALL_HINT}"
            )
        self._cuda = cuda if cuda is not None else open_cuda_runtime(device_index)
        self.device = self._cuda.device_info()
        self.compatibility_notes = check_plan_compatibility(
            build, tensorrt_version=trt.__version__, device=self.device, plan=path, allow_other_gpu=allow_other_gpu
        )
        for note in self.compatibility_notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        expected_sha = build.get("plan_sha256")
        if expected_sha and sha256_file(path) != expected_sha:
            raise EngineError(
                f"{path} does not match its sidecar (sha256 differs): the plan was rebuilt, replaced or corrupted; "
                "rebuild it with `edgeattack export --target tensorrt`"
            )
        super().__init__(path, metadata)
        self.build_info = dict(build)
        self._trt = trt
        self._logger = make_trt_logger(trt, keep="WARNING")
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._deserialize(path)
        self._bindings = self._describe_io()
        inputs = [b for b in self._bindings.values() if b.is_input]
        if len(inputs) != 1:
            raise EngineError(f"{path}: edgeattack runs plans with one image input, this one has {len(inputs)}")
        self._input = inputs[0]
        self._outputs = [b for b in self._bindings.values() if not b.is_input]
        names = [b.name for b in self._outputs]
        if not names:
            raise EngineError(f"{path}: the plan has no outputs")
        self._logits_name = LOGITS if LOGITS in names else names[0]  # a plan from elsewhere: first output
        self.min_batch, self.opt_batch, self.max_batch = (
            s[0] for s in _tensor_profile_shapes(self._engine, self._input.name)
        )
        self._context: Any = None
        self._stream: Any = None
        self._events: tuple[Any, Any] | None = None
        self._allocator: Any = None
        self.last_device_ms: float | None = None
        self.last_host_ms: float | None = None

    # construction ------------------------------------------------------------------------------
    def _deserialize(self, path: Path) -> Any:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read TensorRT plan {path}: {exc}") from exc
        try:
            engine = self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:
            raise EngineError(f"cannot deserialise TensorRT plan {path}: {str(exc).splitlines()[0][:300]}") from exc
        if engine is None:
            detail = _error_tail(self._logger.errors())
            raise EngineError(
                f"cannot deserialise TensorRT plan {path}: the file is corrupt or not a TensorRT plan"
                + (f" ({detail})" if detail else "")
            )
        return engine

    def _describe_io(self) -> dict[str, _Binding]:
        trt, engine = self._trt, self._engine
        bindings: dict[str, _Binding] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError as exc:
                raise EngineError(f"{self.source}: I/O tensor {name} has a type numpy cannot hold") from exc
            bindings[name] = _Binding(name=name, is_input=is_input, dtype=dtype)
        return bindings

    # properties ----------------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {self._trt.__version__}", f"{self.device.name} (compute {self.device.compute_capability})"]

    @property
    def tensorrt_version(self) -> str:
        return str(self._trt.__version__)

    @property
    def device_memory_bytes(self) -> int | None:
        """Device memory TensorRT reserves for activations (the plan's weights come on top)."""
        for attribute in ("device_memory_size_v2", "device_memory_size"):
            try:
                value = getattr(self._engine, attribute)
            except Exception:
                continue
            if value is not None:
                return int(value)
        return None

    def describe(self) -> dict[str, object]:
        document = super().describe()
        document["tensorrt"] = {
            "version": self.tensorrt_version,
            "device": self.device.to_dict(),
            "cuda_library": f"{self._cuda.library} {getattr(self._cuda, 'version', '')}".strip(),
            "built_on": self.build_info.get("device"),
            "build_flags": self.build_info.get("build_flags"),
            "profile": {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch},
            "sparse_layers_picked": (self.build_info.get("sparse_report") or {}).get("picked"),
            "device_memory_bytes": self.device_memory_bytes,
            "timing": "last_device_ms: CUDA events around execute_async_v3; host time includes copies",
        }
        return document

    # lifecycle -------------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        cuda, trt = self._cuda, self._trt
        cuda.enter()
        try:
            context = self._engine.create_execution_context()
            if context is None:
                raise EngineError(
                    f"TensorRT could not create an execution context for {self.name} (out of device memory?)"
                    + (f": {_error_tail(self._logger.errors())}" if self._logger.errors() else "")
                )
            self._context = context
            self._stream = cuda.stream_create()
            self._events = (cuda.event_create(), cuda.event_create())
            # Shapes at the largest batch size the profile allows: buffer capacities.
            max_shape = (self.max_batch, *self._input_dims())
            self._set_input_shape(max_shape)
            self._allocate(self._input, int(np.prod(max_shape)))
            for binding in self._outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(binding.name))
                if any(d < 0 for d in shape):
                    binding.data_dependent = True
                    if self._allocator is None:
                        self._allocator = _make_output_allocator(trt, cuda)
                    context.set_output_allocator(binding.name, self._allocator)
                else:
                    self._allocate(binding, int(np.prod(shape)))
                    context.set_tensor_address(binding.name, binding.device)
            context.set_tensor_address(self._input.name, self._input.device)
        except BaseException:
            self._release()
            raise

    def _input_dims(self) -> tuple[int, ...]:
        _, _, max_shape = _tensor_profile_shapes(self._engine, self._input.name)
        dims = tuple(max_shape[1:])
        if any(d < 0 for d in dims):
            raise EngineError(f"{self.name}: only the batch dimension of the input may be dynamic, got {max_shape}")
        return dims

    def _allocate(self, binding: _Binding, elements: int) -> None:
        nbytes = max(elements, 1) * binding.dtype.itemsize
        binding.device = self._cuda.malloc(nbytes)
        binding.host = self._cuda.host_alloc(nbytes)
        binding.capacity = nbytes

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        ok = self._context.set_input_shape(self._input.name, tuple(int(d) for d in shape))
        if ok is False:
            raise EngineError(
                f"{self.name}: TensorRT refused input shape {tuple(shape)} (profile batch "
                f"{self.min_batch}..{self.max_batch})"
            )

    def _deactivate_impl(self) -> None:
        self._release()

    def _release(self) -> None:
        cuda = self._cuda
        try:
            if self._stream is not None:
                try:
                    cuda.stream_sync(self._stream)
                except Exception:  # pragma: no cover - teardown after a failed call
                    pass
            for binding in self._bindings.values():
                if binding.device:
                    cuda.free(binding.device)
                    binding.device = 0
                if binding.host is not None:
                    cuda.host_free(binding.host)
                    binding.host = None
                binding.capacity = 0
                binding.data_dependent = False
            if self._allocator is not None:
                self._allocator.release()
                self._allocator = None
            if self._events is not None:
                for event in self._events:
                    cuda.event_destroy(event)
                self._events = None
            if self._stream is not None:
                cuda.stream_destroy(self._stream)
                self._stream = None
            self._context = None
        finally:
            cuda.exit()

    # inference -------------------------------------------------------------------------------------
    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.shape[0] < self.min_batch:
            raise EngineError(
                f"{self.name} was built for batches of {self.min_batch}..{self.max_batch} images, got {images.shape[0]}"
            )
        t0 = time.perf_counter_ns()
        parts: list[dict[str, np.ndarray]] = []
        device_ms = 0.0
        for start in range(0, images.shape[0], self.max_batch):
            chunk = images[start : start + self.max_batch]
            if chunk.shape[0] < self.min_batch:  # a short last chunk: run it with the previous images
                chunk = images[-self.min_batch :]
                outputs, ms = self._run_chunk(chunk)
                keep = images.shape[0] - start
                outputs = {k: v[-keep:] for k, v in outputs.items()}
            else:
                outputs, ms = self._run_chunk(chunk)
            parts.append(outputs)
            device_ms += ms
        merged = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.last_device_ms = device_ms
        self.last_host_ms = (time.perf_counter_ns() - t0) / 1e6
        merged[LOGITS] = np.asarray(merged[self._logits_name], dtype=np.float32)
        return merged

    def _run_chunk(self, chunk: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        cuda, context, stream = self._cuda, self._context, self._stream
        assert self._events is not None and self._input.host is not None
        start_event, end_event = self._events
        self._set_input_shape(chunk.shape)
        host_in = self._input.host[: chunk.size * self._input.dtype.itemsize]
        np.copyto(host_in.view(self._input.dtype).reshape(chunk.shape), chunk, casting="same_kind")
        cuda.htod_async(self._input.device, host_in, stream)
        cuda.event_record(start_event, stream)
        ok = context.execute_async_v3(cuda.stream_handle(stream))
        cuda.event_record(end_event, stream)
        if ok is False or (self._allocator is not None and self._allocator.error is not None):
            cuda.stream_sync(stream)
            reason = self._allocator.error if self._allocator is not None and self._allocator.error else None
            detail = str(reason) if reason else _error_tail(self._logger.errors())
            if self._allocator is not None:
                self._allocator.error = None
            raise EngineError(
                f"TensorRT failed to run {self.name} on {chunk.shape[0]} images" + (f": {detail}" if detail else "")
            )
        views: dict[str, np.ndarray] = {}
        for binding in self._outputs:
            if binding.data_dependent:
                continue
            shape = tuple(int(d) for d in context.get_tensor_shape(binding.name))
            views[binding.name] = self._copy_back(binding, shape, binding.device)
        if any(b.data_dependent for b in self._outputs):
            cuda.stream_sync(stream)  # the allocator knows the shapes once the work is done
            for binding in self._outputs:
                if not binding.data_dependent:
                    continue
                shape = self._allocator.shapes.get(binding.name)
                if shape is None or any(d < 0 for d in shape):
                    shape = tuple(int(d) for d in context.get_tensor_shape(binding.name))
                if any(d < 0 for d in shape):
                    raise EngineError(f"{self.name}: TensorRT reported no shape for output {binding.name}")
                views[binding.name] = self._copy_back(binding, shape, self._allocator.pointers.get(binding.name, 0))
        cuda.stream_sync(stream)
        device_ms = cuda.event_elapsed_ms(start_event, end_event)
        outputs = {name: view.copy() for name, view in views.items()}  # host buffers are reused
        for name, value in outputs.items():
            if value.dtype == np.int32 and name in self.metadata.extra_outputs:
                outputs[name] = value.astype(np.int64)  # TensorRT < 10 has no int64 I/O
        return outputs, device_ms

    def _copy_back(self, binding: _Binding, shape: tuple[int, ...], pointer: int) -> np.ndarray:
        nbytes = int(np.prod(shape)) * binding.dtype.itemsize
        if binding.host is None or binding.capacity < nbytes:
            if binding.host is not None:
                self._cuda.host_free(binding.host)
            binding.host = self._cuda.host_alloc(nbytes)
            binding.capacity = nbytes
        host = binding.host[:nbytes]
        if nbytes:
            self._cuda.dtoh_async(host, pointer, self._stream)
        return host.view(binding.dtype).reshape(shape)
