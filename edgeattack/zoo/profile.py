"""`profile_model`: parameters, stored sizes, analytic GFLOPs and throughput of a zoo model.

Sizes are bytes of the weights as stored, given in two units because the figures they are compared
with use both (see `ModelProfile`):

* fp32: the network's state dict saved as safetensors (header included);
* int8: the network after PyTorch dynamic int8 quantization of its Linear layers
  (`torch.ao.quantization.quantize_dynamic`: int8 weights with a per-tensor scale, fp32 bias, the
  patch-embedding conv, norms and embeddings left fp32), its state dict saved with `torch.save`.
  `torch.ao.quantization` warns that it is deprecated (torchao replaces it; torchao is not
  installed); that warning is silenced here, around the one call that triggers it.

GFLOPs come from `edgeattack.metrics.flops` (one multiply-add = one FLOP, matmuls and convs only)
on the architecture read off the timm network by `edgeattack.zoo.arch.arch_of`: the dense model, or a token-pruned one
from its static per-block token counts (`flops_of`).

Throughput is images per second of wall time over timed calls of one `batch_size` batch, after
warm-up calls (`edgeattack.metrics.latency.measure_latency`): the PyTorch model under
`torch.inference_mode()` and its fp32 ONNX export (to a temporary directory) in ONNX Runtime,
both on the CPU with the stated number of threads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.metrics.flops import bytes_to_mb, bytes_to_mib
from edgeattack.zoo.arch import arch_of, flops_of, network_of

logger = logging.getLogger(__name__)

torch = require("torch", feature="model profiles")
nn = torch.nn

__all__ = [
    "ModelProfile",
    "arch_of",
    "flops_of",
    "fp32_safetensors_bytes",
    "int8_dynamic_bytes",
    "profile_model",
    "quantize_dynamic_int8",
]

INT8_SCHEME = (
    "torch dynamic int8 (quantize_dynamic, nn.Linear weights int8 per-tensor, the rest fp32), torch.save(state_dict)"
)
FP32_FORMAT = "safetensors of the network's fp32 state dict"


@dataclass(frozen=True)
class ModelProfile:
    """What `edgeattack profile` reports for one model.

    Units: `*_mb` fields are megabytes, MB = 10^6 bytes; `*_mib` fields are mebibytes, MiB = 2^20
    bytes (the unit of `ls -h`). The size table of the paper mixes them: its fp32 column (DeiT-Ti /
    S / B: 22 / 85 / 331) is `ls -h` of the checkpoint (MiB, rounded up), its int8 column
    (6.4 / 23 / 89) is in MB. `gflops`: one multiply-add = one FLOP, dense model, one image.
    Throughputs are images/s at `batch_size` with `threads` CPU threads; None when not measured,
    with the reason in `notes`. `device` is where the torch throughput ran (ONNX Runtime's is
    always on the CPU); `device_name` the GPU's name for CUDA.
    """

    name: str
    family: str
    params: int
    size_fp32_bytes: int
    size_fp32_mb: float
    size_fp32_mib: float
    size_int8_bytes: int | None
    size_int8_mb: float | None
    size_int8_mib: float | None
    gflops: float | None
    batch_size: int
    threads: int
    throughput_torch_ips: float | None = None
    throughput_ort_ips: float | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    weights: str = ""
    arch: dict[str, Any] | None = None
    latency_torch: dict[str, Any] | None = None
    latency_ort: dict[str, Any] | None = None
    fp32_format: str = FP32_FORMAT
    int8_scheme: str = INT8_SCHEME
    flops_convention: str = "1 multiply-add = 1 FLOP; matmuls and convs only (fvcore-style)"
    notes: tuple[str, ...] = field(default=())
    device: str = "cpu"
    device_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["input_size"] = list(self.input_size)
        doc["notes"] = list(self.notes)
        doc["units"] = {"mb": "10^6 bytes", "mib": "2^20 bytes", "throughput": "images/s", "gflops": "10^9 FLOPs"}
        return doc


def _compact(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def fp32_safetensors_bytes(model: Any) -> int:
    """Bytes of the network's state dict in fp32, serialised as safetensors (header included)."""
    safetensors_torch = require("safetensors.torch", feature="model sizes")
    state = {key: value.detach().to(torch.float32).contiguous() for key, value in network_of(model).state_dict().items()}
    return len(safetensors_torch.save(state))


@contextlib.contextmanager
def _quiet_ao_deprecation() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation notices (it is deprecated in favour of torchao)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        yield


def quantize_dynamic_int8(model: Any) -> Any:
    """A copy of the network with its Linear layers dynamically quantized to int8 (CPU, fbgemm/qnnpack)."""
    with _quiet_ao_deprecation():
        return torch.ao.quantization.quantize_dynamic(network_of(model), {nn.Linear}, dtype=torch.qint8, inplace=False)


def int8_dynamic_bytes(model: Any) -> int:
    """Bytes of `torch.save(state_dict)` of the dynamic-int8 network (`quantize_dynamic_int8`)."""
    quantized = quantize_dynamic_int8(model)
    buffer = io.BytesIO()
    with _quiet_ao_deprecation():
        torch.save(quantized.state_dict(), buffer)
    return buffer.tell()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _timing(
    label: str,
    fn: Any,
    batch: Any,
    batch_size: int,
    *,
    warmup_runs: int,
    min_runs: int,
    min_seconds: float,
    warn: bool,
    stacklevel: int = 3,
) -> Any:
    """`measure_latency` with trtexec-like minimums; its instability warning names the engine."""
    from edgeattack.metrics.latency import UnstableLatencyWarning, measure_latency

    stats = measure_latency(
        fn,
        batch,
        batch_size=batch_size,
        warmup_min_s=0.0,
        warmup_min_runs=warmup_runs,
        min_runs=min_runs,
        min_seconds=min_seconds,
        warn=False,
    )
    if warn and stats.unstable:
        warnings.warn(
            f"{label} latency is unstable: coefficient of variation {stats.cv:.1%} over {stats.runs} runs "
            f"exceeds {stats.cv_threshold:.1%}; its throughput is indicative only",
            UnstableLatencyWarning,
            stacklevel=stacklevel,  # the caller of profile_model
        )
    return stats


def profile_model(
    name_or_model: str | Any,
    *,
    checkpoint: str | Path | None = None,
    batch_size: int = 64,
    measure_throughput: bool = True,
    onnx: bool = True,
    int8: bool = True,
    threads: int | None = None,
    warmup_runs: int = 1,
    min_runs: int = 3,
    min_seconds: float = 1.0,
    warn: bool = True,
    device: str = "cpu",
    pretrained: bool | None = None,
    random_weights: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> ModelProfile:
    """Profile zoo model `name_or_model` (a name, built with `create_model`, or a ZooModel).

    A timm name without `checkpoint` is built with random weights (nothing is downloaded): sizes and
    FLOPs depend only on the architecture. `threads` sets torch's and ONNX Runtime's intra-op
    threads for the timing (default: torch's current setting, used for both). Timing: `warmup_runs`
    untimed calls, then at least `min_runs` calls and `min_seconds` seconds. `onnx=False` skips
    the ONNX export and its timing; `int8=False` skips the int8 size. `device` ("auto", "cpu",
    "cuda[:N]", see `edgeattack.devices.resolve_device`) is where the torch throughput is timed
    (synchronised after each call on CUDA); sizes, FLOPs and ONNX Runtime stay on the CPU.
    `pretrained` / `random_weights` are passed to `create_model` with a name (a timm name with
    neither, and no checkpoint, is built with random weights: the profile is the architecture's).
    """
    from edgeattack.devices import device_record, resolve_device

    torch_device = resolve_device(device)
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if min_runs < 1 or warmup_runs < 0 or min_seconds < 0:
        raise ConfigError("min_runs must be at least 1, warmup_runs and min_seconds non-negative")
    notes: list[str] = []
    if isinstance(name_or_model, str):
        from edgeattack.zoo.factory import create_model
        from edgeattack.zoo.manifest import shipped_weights
        from edgeattack.zoo.registry import get_entry

        entry = get_entry(name_or_model)
        architecture_only = checkpoint is None and not pretrained and not entry.shipped
        model = create_model(
            name_or_model,
            checkpoint=checkpoint,
            pretrained=pretrained,
            random_weights=architecture_only or random_weights,
            **dict(model_args or {}),
        )
        if checkpoint is not None:
            weights = f"checkpoint {checkpoint}"
        elif pretrained and not entry.shipped:
            weights = "timm pretrained"
        elif entry.shipped and shipped_weights(name_or_model) is not None:
            weights = "shipped"
        else:
            weights = "random (architecture only, nothing downloaded)"
    else:
        if checkpoint is not None:
            raise ConfigError("pass checkpoint with a model name, not with a built model")
        model = name_or_model
        weights = "in-memory"
    model = model.eval()
    if not hasattr(model, "config") or not hasattr(model, "model_name"):
        raise ConfigError("profile_model needs a zoo model name or a ZooModel (edgeattack.zoo.create_model)")
    from edgeattack.zoo.factory import count_parameters

    params = count_parameters(network_of(model))
    fp32_bytes = fp32_safetensors_bytes(model)
    int8_bytes: int | None = None
    if int8:
        try:
            int8_bytes = int8_dynamic_bytes(model)
        except Exception as exc:  # a quantization engine missing on this platform
            notes.append(f"int8 size not measured: {type(exc).__name__}: {str(exc)[:200]}")
    else:
        notes.append("int8 size not measured (int8=False)")
    gflops: float | None = None
    arch_doc: dict[str, Any] | None = None
    try:
        flops = flops_of(model)
        gflops = flops.gflops
        if flops.transforms:
            notes.append(f"weight-multiplexed: per-layer transforms {flops.transforms / 1e9:.4f} G included")
        if getattr(network_of(model), "token_schedule", None) is not None:
            notes.append(
                f"token-pruned: GFLOPs from the model's tokens per block {[_compact(n) for n in flops.tokens_per_block]}"
                + (f", predictors {flops.predictor / 1e9:.3f} G included" if flops.predictor else "")
            )
    except ConfigError as exc:
        notes.append(f"no analytic GFLOPs: {exc}")
    try:
        arch_doc = arch_of(model).to_dict()
    except ConfigError:
        arch_doc = None

    input_size = tuple(int(d) for d in model.config.input_size)
    latency_torch = latency_ort = None
    with _torch_threads(threads) as used_threads:
        if measure_throughput:
            generator = torch.Generator().manual_seed(0)
            images = torch.rand((batch_size, *input_size), generator=generator)
            on_device = model.to(torch_device)
            device_images = images.to(torch_device)
            cuda = torch_device.startswith("cuda")

            def run_torch(batch: Any) -> Any:
                with torch.inference_mode():
                    logits = on_device(device_images if batch is images else batch.to(torch_device))
                if cuda:
                    torch.cuda.synchronize(torch_device)
                return logits

            latency_torch = _timing(
                "torch",
                run_torch,
                images,
                batch_size,
                warmup_runs=warmup_runs,
                min_runs=min_runs,
                min_seconds=min_seconds,
                warn=warn,
            )
            model.to("cpu")  # the ONNX export and the sizes work on the CPU copy
            if onnx:
                latency_ort = _ort_latency(
                    model,
                    images.numpy(),
                    used_threads,
                    warmup_runs=warmup_runs,
                    min_runs=min_runs,
                    min_seconds=min_seconds,
                    warn=warn,
                )
            else:
                notes.append("ONNX Runtime throughput not measured (onnx=False)")
        else:
            notes.append("throughput not measured")

    return ModelProfile(
        name=str(model.model_name),
        family=str(model.config.family),
        params=params,
        size_fp32_bytes=fp32_bytes,
        size_fp32_mb=bytes_to_mb(fp32_bytes),
        size_fp32_mib=bytes_to_mib(fp32_bytes),
        size_int8_bytes=int8_bytes,
        size_int8_mb=None if int8_bytes is None else bytes_to_mb(int8_bytes),
        size_int8_mib=None if int8_bytes is None else bytes_to_mib(int8_bytes),
        gflops=gflops,
        batch_size=int(batch_size),
        threads=int(used_threads),
        throughput_torch_ips=None if latency_torch is None else latency_torch.throughput_ips,
        throughput_ort_ips=None if latency_ort is None else latency_ort.throughput_ips,
        input_size=input_size,  # type: ignore[arg-type]
        weights=weights,
        arch=arch_doc,
        latency_torch=None if latency_torch is None else latency_torch.to_dict(),
        latency_ort=None if latency_ort is None else latency_ort.to_dict(),
        notes=tuple(notes),
        device=torch_device,
        device_name=device_record(torch_device).get("device_name"),
    )


def _ort_latency(
    model: Any, images: np.ndarray, threads: int, *, warmup_runs: int, min_runs: int, min_seconds: float, warn: bool
) -> Any:
    """Export `model` to fp32 ONNX in a temporary directory and time ONNX Runtime (CPU) on `images`."""
    from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
    from edgeattack.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgeattack-profile-") as tmp:
        path = Path(tmp) / f"{model.model_name}.onnx"
        export_onnx(model, path, precision="fp32")
        engine = OnnxRuntimeEngine(path, providers=["cpu"], intra_op_threads=threads)
        with engine:
            return _timing(
                "onnxruntime",
                engine.infer,
                images,
                len(images),
                warmup_runs=warmup_runs,
                min_runs=min_runs,
                min_seconds=min_seconds,
                warn=warn,
                stacklevel=4,
            )
