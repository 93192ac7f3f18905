"""ONNX Runtime back-end: CPU, CUDA and TensorRT execution providers, providers really used reported.

onnxruntime-gpu lists the CUDA/TensorRT providers even where no GPU works and falls back to the CPU
without a word; this back-end reads `session.get_providers()` after creating the session and warns
when a requested provider is not among them.

With `io_binding=True` the input is copied to the device of the provider really in use
(`OrtValue.ortvalue_from_numpy(x, "cuda", 0)` on CUDA/TensorRT, the host otherwise) and the outputs
are bound there too, so `session.run_with_iobinding` runs without host<->device copies; its time
is `last_device_ms` (compute only, host-measured, ORT synchronises the device at the end of a run)
and `last_host_ms` is the whole call, copies included. Without it the plain `session.run` path is
used and `last_device_ms` stays None.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeattack._lazy import require
from edgeattack.engines.base import LOGITS, Engine
from edgeattack.errors import EngineError
from edgeattack.export.metadata import METADATA_KEY, EngineMetadata

logger = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Full provider names for aliases ("cpu", "cuda", "tensorrt") or names; unknown ones raise."""
    ort = require("onnxruntime", feature="ONNX engines")
    available = ort.get_available_providers()
    if not requested:
        return ["CPUExecutionProvider"]
    resolved: list[str] = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            known = sorted(set(PROVIDER_ALIASES) | set(available))
            raise EngineError(
                f"unknown or unavailable ONNX Runtime provider {name!r}; this onnxruntime offers "
                f"{', '.join(available)} (aliases: {', '.join(k for k in known if k in PROVIDER_ALIASES)})"
            )
        resolved.append(full)
    if "CPUExecutionProvider" not in resolved:
        resolved.append("CPUExecutionProvider")
    return resolved


class OnnxRuntimeEngine(Engine):
    """An `.onnx` file run by ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        batch_dependent: bool | None = None,
        io_binding: bool = False,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"engine file {path} does not exist")
        self._provider_request = resolve_providers(providers)
        self._intra_op_threads = intra_op_threads
        self.io_binding = bool(io_binding)
        self.last_device_ms: float | None = None
        self.last_host_ms: float | None = None
        self._session: object | None = None
        self._session = self._create_session(path)
        metadata = self._read_metadata(path)
        if batch_dependent is not None:
            metadata = metadata.replace(batch_dependent=batch_dependent)
        super().__init__(path, metadata)
        self._output_names: list[str] = [o.name for o in self._session.get_outputs()]  # type: ignore[attr-defined]
        if LOGITS not in self._output_names:
            # An ONNX file from elsewhere: take its first output as the logits.
            self._logits_name = self._output_names[0]
        else:
            self._logits_name = LOGITS

    def _create_session(self, path: Path) -> object:
        ort = require("onnxruntime", feature="ONNX engines")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self._intra_op_threads:
            options.intra_op_num_threads = int(self._intra_op_threads)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=self._provider_request)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise EngineError(f"cannot load ONNX engine {path}: {str(exc).splitlines()[0][:300]}") from exc
        used = session.get_providers()
        missing = [p for p in self._provider_request if p not in used]
        if missing:
            warnings.warn(
                f"ONNX Runtime fell back: requested {', '.join(missing)} but the session runs on {', '.join(used)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return session

    def _read_metadata(self, path: Path) -> EngineMetadata:
        session = self._session
        meta_map = session.get_modelmeta().custom_metadata_map  # type: ignore[attr-defined]
        if METADATA_KEY in meta_map:
            return EngineMetadata.from_json(meta_map[METADATA_KEY])
        logger.warning("%s carries no edgeattack metadata; assuming [0,1] inputs, normalisation inside", path)
        first = session.get_inputs()[0]  # type: ignore[attr-defined]
        shape = tuple(d if isinstance(d, int) else "batch" for d in first.shape)
        return EngineMetadata(
            input_name=first.name,
            input_shape=shape,
            output_names=tuple(o.name for o in session.get_outputs()),  # type: ignore[attr-defined]
            bounds=(0.0, 1.0),
            mean=(),
            std=(),
            labels=(),
            precision="unknown",
            source_model="unknown",
            source_sha256="",
        )

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())  # type: ignore[attr-defined]

    @property
    def session(self) -> object:
        """The onnxruntime.InferenceSession (for I/O binding or profiling)."""
        return self._session

    def _activate_impl(self) -> None:
        if self._session is None:
            self._session = self._create_session(Path(self.source))

    @property
    def binding_device(self) -> str:
        """Where I/O binding puts inputs and outputs: "cuda" on the CUDA/TensorRT providers, else "cpu"."""
        used = self.providers
        return "cuda" if used and used[0] in GPU_PROVIDERS else "cpu"

    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.io_binding:
            values = self._run_bound(images)
        else:
            try:
                values = self._session.run(None, {self.metadata.input_name: images})  # type: ignore[attr-defined]
            except Exception as exc:
                raise EngineError(f"engine {self.name} failed on a batch of {len(images)}: {exc}") from exc
        outputs = dict(zip(self._output_names, values, strict=True))
        outputs[LOGITS] = np.asarray(outputs[self._logits_name], dtype=np.float32)
        return outputs

    def _run_bound(self, images: np.ndarray) -> list[np.ndarray]:
        """One call through I/O binding; times the run alone (`last_device_ms`) and the whole call."""
        ort = require("onnxruntime", feature="ONNX engines")
        session = self._session
        device = self.binding_device
        t0 = time.perf_counter_ns()
        try:
            binding = session.io_binding()  # type: ignore[attr-defined]
            value = ort.OrtValue.ortvalue_from_numpy(images, device, 0)  # the providers' default device 0
            binding.bind_ortvalue_input(self.metadata.input_name, value)
            for name in self._output_names:
                binding.bind_output(name, device, 0)
            binding.synchronize_inputs()
            t_run = time.perf_counter_ns()
            session.run_with_iobinding(binding)  # type: ignore[attr-defined]
            binding.synchronize_outputs()
            t_done = time.perf_counter_ns()
            values = binding.copy_outputs_to_cpu()
        except Exception as exc:
            raise EngineError(f"engine {self.name} failed on a batch of {len(images)} (I/O binding): {exc}") from exc
        self.last_device_ms = (t_done - t_run) / 1e6
        self.last_host_ms = (time.perf_counter_ns() - t0) / 1e6
        return list(values)

    def describe(self) -> dict[str, object]:
        document = super().describe()
        if self.io_binding:
            document["io_binding"] = {"device": self.binding_device if self._session is not None else None}
        return document

    def _deactivate_impl(self) -> None:
        self._session = None
