"""PyTorch dynamic int8 of the Linear layers: the quantized models of the compressed-ViT paper.

Weights are quantized to int8 ahead of time; activations are quantized per batch at run time
(`torch.ao.quantization.quantize_dynamic` with the default qconfig: per-tensor weight scales,
fbgemm/x86 kernels on the CPU). No training and no data are needed.

The result has **no gradients**: quantized dynamic Linear kernels are not differentiable, so
white-box attacks cannot run on it. The project attacks int8 models through the ONNX Runtime int8
engines (`edgeattack.export.quantize`) and their differentiable fake-quant twin
(`edgeattack.compress.fakequant`); this torch model is the paper's reference for accuracy and size.

`torch.ao.quantization` is deprecated in favour of torchao, whose
`quantize_(model, Int8DynamicActivationInt8WeightConfig())` is the successor (per-token activation
and per-channel weight scales, so its numbers differ slightly). `backend="auto"` uses torchao when
it is importable and torch.ao otherwise; the report names the backend used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes
from edgeattack._lazy import require
from edgeattack.errors import ConfigError, EdgeAttackError

torch = require("torch", feature="dynamic int8 quantization")

BACKENDS = ("auto", "torch.ao", "torchao")
FORMAT_KEY = "edgeattack_int8_dynamic"


@contextlib.contextmanager
def _quiet_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (torchao is the successor) for the duration."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_channel.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated", category=UserWarning)
        yield


def torchao_available() -> bool:
    try:
        import torchao.quantization  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"int8-dynamic backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "torchao" if torchao_available() else "torch.ao"
    if backend == "torchao" and not torchao_available():
        raise ConfigError("backend='torchao' needs torchao (pip install torchao); backend='torch.ao' works without it")
    return backend


def quantize_dynamic_int8(model: Any, *, backend: str = "auto", name: str | None = None) -> Any:
    """A dynamic-int8 copy of zoo model `model` (Linear layers only), in eval mode; `model` is unchanged.

    The copy is named `name` (default `<model>_int8_dynamic`); `source_model_name` keeps the zoo
    name of the fp32 architecture it was made from.
    """
    backend = resolve_backend(backend)
    quantized = copy.deepcopy(model).eval()
    if backend == "torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(quantized.net, Int8DynamicActivationInt8WeightConfig())
    else:
        with _quiet_ao():
            quantized.net = torch.ao.quantization.quantize_dynamic(quantized.net, {torch.nn.Linear}, dtype=torch.qint8)
    quantized.config = dataclasses.replace(model.config, family="int8-dynamic")
    quantized.model_name = name or f"{model.model_name}_int8_dynamic"
    quantized.source_model_name = getattr(model, "source_model_name", model.model_name)
    quantized.int8_backend = backend
    quantized.differentiable = False  # attacks go through the ORT int8 engines and the fake-quant twin
    quantized.weights_sha256 = hashlib.sha256(_state_bytes(quantized)).hexdigest()
    for p in quantized.parameters():
        p.requires_grad_(False)
    return quantized


def _state_bytes(model: Any) -> bytes:
    buffer = io.BytesIO()
    with _quiet_ao():
        torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def serialized_size(model: Any) -> int:
    """Bytes of `torch.save(model.state_dict())`: the model's size on disk."""
    return len(_state_bytes(model))


def quantized_layers(model: Any) -> list[str]:
    """Names of the modules that run int8 kernels."""
    names = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized") and type(module).__name__ == "Linear":
            names.append(name)  # torch.ao: the Linear was swapped for a quantized module
        elif isinstance(module, torch.nn.Linear) and type(module.weight) not in (torch.nn.Parameter, torch.Tensor):
            names.append(name)  # torchao: the Linear keeps a quantized tensor-subclass weight
    return names


def compress_int8_dynamic(
    teacher: Any, train_ds: Any = None, val_ds: Any = None, **hyperparams: Any
) -> tuple[Any, dict[str, Any]]:
    """Dynamic int8 of `teacher`'s Linear layers; (int8 model, report). `train_ds` is not used.

    Hyper-parameters: `backend` ("auto" | "torch.ao" | "torchao"). The report gives the serialised
    sizes, the quantized layers, and the accuracies on `val_ds` when it is given.
    """
    from edgeattack.compress.distill import check_teacher
    from edgeattack.zoo.train import evaluate_accuracy

    unknown = sorted(set(hyperparams) - {"backend", "name"})
    if unknown:
        raise ConfigError(f"unknown int8-dynamic hyper-parameter(s) {', '.join(unknown)}; known: backend, name")
    check_teacher(teacher, train_ds, val_ds)
    quantized = quantize_dynamic_int8(
        teacher, backend=hyperparams.get("backend") or "auto", name=hyperparams.get("name")
    )
    fp32_bytes, int8_bytes = serialized_size(teacher), serialized_size(quantized)
    report: dict[str, Any] = {
        "method": "int8-dynamic",
        "model": quantized.model_name,
        "family": quantized.config.family,
        "teacher": teacher.model_name,
        "teacher_sha256": getattr(teacher, "weights_sha256", ""),
        "backend": quantized.int8_backend,
        "quantized_layers": len(quantized_layers(quantized)),
        "size_fp32_bytes": fp32_bytes,
        "size_int8_bytes": int8_bytes,
        "size_ratio": int8_bytes / fp32_bytes,
        "differentiable": False,
        "hyperparams": {"backend": hyperparams.get("backend") or "auto"},
    }
    if val_ds is not None:
        with _quiet_ao():
            report["val_dataset"] = val_ds.spec
            report["val_acc_final"] = evaluate_accuracy(quantized, val_ds)
            report["teacher_val_acc"] = evaluate_accuracy(teacher, val_ds)
    return quantized, report


def save_int8_dynamic(model: Any, path: str | Path) -> Path:
    """Write a dynamic-int8 model (torch.ao backend) as a `.pt` that `load_int8_dynamic` reads back."""
    if getattr(model, "int8_backend", None) != "torch.ao":
        raise ConfigError(
            "save_int8_dynamic stores torch.ao dynamic-int8 models (quantize_dynamic_int8(..., backend='torch.ao'))"
        )
    buffer = io.BytesIO()
    payload = {
        FORMAT_KEY: 1,
        "model": model.source_model_name,
        "name": model.model_name,
        "state_dict": model.state_dict(),
    }
    with _quiet_ao():
        torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_int8_dynamic(path: str | Path, *, checkpoint: str | Path | None = None) -> Any:
    """Rebuild the zoo model named in the file, quantize it (torch.ao) and load the int8 weights."""
    from edgeattack.zoo.checkpoint import torch_load_weights_only
    from edgeattack.zoo.factory import create_model

    path = Path(path)
    with _quiet_ao():
        payload = torch_load_weights_only(path, what="int8 model")
    if not isinstance(payload, dict) or payload.get(FORMAT_KEY) != 1:
        raise EdgeAttackError(f"{path} is not an edgeattack dynamic-int8 model file")
    state = payload.get("state_dict")
    if not isinstance(payload.get("model"), str) or not isinstance(state, dict) or not state:
        raise EdgeAttackError(f"int8 model {path} is incomplete: it names no model or holds no tensors")
    base = create_model(payload["model"], checkpoint=checkpoint, pretrained=False)
    quantized = quantize_dynamic_int8(base, backend="torch.ao", name=str(payload.get("name") or "") or None)
    try:
        with _quiet_ao():
            quantized.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise EdgeAttackError(f"int8 model {path} does not fit {payload['model']}: {reason[:200]}") from exc
    return quantized
