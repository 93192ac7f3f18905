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

The pieces live beside this module: `cuda_buffers` (cuda-python/pycuda buffers, streams, events),
`tensorrt_plan` (the sidecar and the compatibility checks) and `tensorrt_support` (importing
tensorrt, its logger, the output allocator); their public names are re-exported here.

Nothing here imports tensorrt, cuda-python or pycuda at import time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._io import sha256_file
from edgeattack.engines.base import LOGITS, Engine
from edgeattack.engines.cuda_buffers import CUDA_INSTALL_HINT, DeviceInfo, current_device, open_cuda_runtime
from edgeattack.engines.cuda_buffers import CudaPythonRuntime as CudaPythonRuntime  # re-exported
from edgeattack.engines.cuda_buffers import PyCudaRuntime as PyCudaRuntime  # re-exported
from edgeattack.engines.tensorrt_plan import SIDECAR_SECTION as SIDECAR_SECTION  # re-exported
from edgeattack.engines.tensorrt_plan import check_plan_compatibility, read_sidecar
from edgeattack.engines.tensorrt_support import (
    TENSORRT_INSTALL_HINT,
    _error_tail,
    _make_output_allocator,
    _tensor_profile_shapes,
    import_tensorrt,
    make_trt_logger,
)
from edgeattack.engines.tensorrt_support import severity_name as severity_name  # re-exported
from edgeattack.errors import EngineError, MissingDependencyError

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

    `cuda` is a CUDA runtime object (`open_cuda_runtime(device_index)` by default: cuda-python, else
    pycuda); its device is made current while the plan is deserialised and while the engine is active.
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
        with current_device(self._cuda):  # deserialise on this device, not on whichever is current (device 0)
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
