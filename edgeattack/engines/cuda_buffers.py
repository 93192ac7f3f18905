"""CUDA buffers, streams and events for TensorRT plans: cuda-python, or pycuda as a fallback.

Buffers follow NVIDIA's Python samples: cuda-python (`cuda.bindings.runtime`, or the older
`cuda.cudart`) for device and pinned host memory, streams and events; pycuda is accepted where
that is what a board has. `open_cuda_runtime` picks one; both expose the same small interface
(`malloc`/`free`, `host_alloc`/`host_free`, async copies, streams, events, `device_info`, and
`enter`/`exit`, or `with current_device(runtime):`, to make the runtime's device current).

The device must be current whenever TensorRT creates something on it — a builder, a deserialised
plan, an execution context — or TensorRT silently uses device 0. cuda-python's `enter` calls
`cudaSetDevice(index)`; pycuda's pushes the device's primary context (`retain_primary_context()`,
the context CUDA's runtime API, and so TensorRT, uses) and `exit` pops it. `DeviceInfo.pci_bus_id`
identifies the GPU for NVML (`edgeattack.metrics.energy.gpu_map`): CUDA ordinals are not NVML's.

Nothing here imports cuda-python or pycuda at import time.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeattack.errors import EngineError, MissingDependencyError

__all__ = [
    "CUDA_INSTALL_HINT",
    "CudaPythonRuntime",
    "DeviceInfo",
    "PyCudaRuntime",
    "current_device",
    "open_cuda_runtime",
]

CUDA_INSTALL_HINT = "`pip install cuda-python` (or pycuda, where the board has it; JetPack images often do)"


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for or runs on."""

    name: str
    compute_capability: str  # "8.7" (Jetson Orin), "9.0" (H100)...
    index: int = 0
    total_memory_mib: float | None = None
    pci_bus_id: str | None = None
    """`domain:bus:device.function` as CUDA reports it, where the CUDA library gives it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def current_device(runtime: Any) -> Iterator[Any]:
    """`runtime`'s device made current for the block (pycuda: its context pushed, then popped)."""
    runtime.enter()
    try:
        yield runtime
    finally:
        runtime.exit()


def _bus_text(value: Any) -> str | None:
    text = value.split(b"\0", 1)[0].decode(errors="replace") if isinstance(value, bytes) else str(value or "")
    return text.strip() or None


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
        self._previous: list[int | None] = []
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
            total_memory_mib=None if total is None else int(total) / 2**20,
            pci_bus_id=self._pci_bus_id(),
        )

    def _pci_bus_id(self) -> str | None:
        getter = getattr(self._rt, "cudaDeviceGetPCIBusId", None)
        if getter is None:
            return None
        try:
            return _bus_text(self._check(getter(32, self.index), "cudaDeviceGetPCIBusId"))
        except EngineError:
            return None

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
        """Make this runtime's device current for the calling thread (the previous one is restored by `exit`)."""
        previous = None
        getter = getattr(self._rt, "cudaGetDevice", None)
        if getter is not None:
            try:
                previous = int(self._check(getter(), "cudaGetDevice"))
            except EngineError:
                previous = None
        self._check(self._rt.cudaSetDevice(self.index), "cudaSetDevice")
        self._previous.append(previous)

    def exit(self) -> None:
        previous = self._previous.pop() if self._previous else None
        if previous is not None and previous != self.index:
            self._check(self._rt.cudaSetDevice(previous), "cudaSetDevice")


class PyCudaRuntime:
    """pycuda's driver API on the device's primary context (the one TensorRT's runtime API uses).

    `enter()` pushes that context (so TensorRT builds, deserialises and runs on this device, not on
    device 0), `exit()` pops it; they nest.
    """

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
        try:
            bus = _bus_text(self._device.pci_bus_id())
        except Exception:
            bus = None
        return DeviceInfo(
            name=str(self._device.name()).strip(),
            compute_capability=f"{int(major)}.{int(minor)}",
            index=self.index,
            total_memory_mib=int(self._device.total_memory()) / 2**20,
            pci_bus_id=bus,
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
