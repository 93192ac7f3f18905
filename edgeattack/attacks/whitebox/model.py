"""The source model(s) as an attack sees them: one classifier over the ensemble, its bounds and device.

A list of models is attacked through the *mean of their logits*; a model returning a tuple
contributes the mean of its same-shaped heads (see `_logits_of`). `attack_mode` freezes the models
for the duration of an attack and restores them afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from edgeattack._lazy import require
from edgeattack.devices import Precision
from edgeattack.errors import ConfigError

torch = require("torch", feature="white-box attacks")

Tensor = Any  # torch.Tensor; kept as Any so the annotations need no torch at type-check time
ModelLike = Any  # a torch.nn.Module (or any callable) mapping images in `bounds` to logits


def _logits_of(output: Any) -> Tensor:
    """Logits from a model's output: a tensor, or the mean of a tuple's same-shaped heads."""
    if isinstance(output, (tuple, list)):
        heads = [o for o in output if torch.is_tensor(o) and o.shape == output[0].shape]
        if not heads:
            raise ConfigError("the model returned a tuple without logits")
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)
    return output


class AttackModel:
    """The source model(s) as one classifier: `model(x)` -> logits averaged over the ensemble.

    `bounds` are the input bounds, `device` where the images must be, `precision` the autocast
    policy of the forward passes (the logits come back float32, so losses and input gradients are
    float32 whatever the policy). `predict` runs without gradients in batches.
    """

    def __init__(
        self,
        models: Sequence[ModelLike],
        bounds: tuple[float, float],
        device: Any,
        precision: Precision | None = None,
    ) -> None:
        self.models = list(models)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.device = device
        self.precision = precision or Precision()
        self.precision.check_device(str(device))

    def __call__(self, x: Tensor) -> Tensor:
        """Float32 logits of `x`; the forward passes run under the precision's autocast."""
        if not self.precision.enabled:
            return self._mean_logits(x)
        with self.precision.autocast(str(self.device)):
            logits = self._mean_logits(x)
        return logits.float()

    def _mean_logits(self, x: Tensor) -> Tensor:
        total = _logits_of(self.models[0](x))
        for model in self.models[1:]:
            total = total + _logits_of(model(x))
        return total / len(self.models) if len(self.models) > 1 else total

    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Logits of `x` (moved to the device batch by batch), without gradients, on the device."""
        with torch.no_grad():
            chunks = [self(x[i : i + batch_size].to(self.device)) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])


@contextlib.contextmanager
def attack_mode(models: Sequence[ModelLike]) -> Iterator[None]:
    """Eval mode and `requires_grad=False` on every parameter for the duration; both restored after.

    Each submodule's own training flag is restored (a model with frozen BatchNorm stays so).
    """
    saved: list[tuple[list[tuple[Any, bool]], list[tuple[Any, bool]]]] = []
    seen: set[int] = set()
    for model in models:
        if not isinstance(model, torch.nn.Module) or id(model) in seen:
            continue
        seen.add(id(model))
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        saved.append((modes, grads))
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for modes, grads in saved:
            for m, training in modes:
                m.training = training
            for p, flag in grads:
                p.requires_grad_(flag)


def model_bounds(models: Sequence[ModelLike], bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The input bounds: `bounds` if given, else what every model's `config.bounds` (or `.bounds`) says."""
    found: set[tuple[float, float]] = set()
    for model in models:
        b = getattr(getattr(model, "config", None), "bounds", None) or getattr(model, "bounds", None)
        if b is not None:
            found.add((float(b[0]), float(b[1])))
    if bounds is not None:
        low, high = float(bounds[0]), float(bounds[1])
        if found and found != {(low, high)}:
            raise ConfigError(f"bounds={[low, high]} disagree with the model config bounds {sorted(found)}")
    elif len(found) == 1:
        low, high = found.pop()
    elif not found:
        raise ConfigError("the model does not declare its input bounds (config.bounds); pass bounds=(low, high)")
    else:
        raise ConfigError(f"the ensemble's models declare different input bounds: {sorted(found)}")
    if not high > low:
        raise ConfigError(f"bounds must satisfy low < high, got {[low, high]}")
    return low, high


def model_sources(models: Sequence[ModelLike]) -> tuple[dict[str, str], ...]:
    """`{"model": name, "sha256": weights}` per source model, as artifacts and results record them."""
    sources = []
    for model in models:
        name = str(getattr(model, "model_name", "") or type(model).__name__)
        digest = str(getattr(model, "weights_sha256", "") or "")
        if not digest and isinstance(model, torch.nn.Module):
            from edgeattack.zoo.factory import state_dict_sha256

            digest = state_dict_sha256(model)
        sources.append({"model": name, "sha256": digest})
    return tuple(sources)


def model_device(models: Sequence[ModelLike]) -> Any:
    """The device of the models' parameters (all must agree); the CPU for parameter-free callables."""
    devices = set()
    for model in models:
        if isinstance(model, torch.nn.Module):
            for tensor in list(model.parameters())[:1] or list(model.buffers())[:1]:
                devices.add(tensor.device)
    if len(devices) > 1:
        raise ConfigError(f"the ensemble's models are on different devices: {sorted(map(str, devices))}")
    return devices.pop() if devices else torch.device("cpu")


def _as_model_list(models: ModelLike | Sequence[ModelLike]) -> list[ModelLike]:
    listed = list(models) if isinstance(models, (list, tuple)) else [models]
    if not listed:
        raise ConfigError("no source model given (an empty ensemble)")
    for model in listed:
        if not callable(model):
            raise ConfigError(f"a source model must be callable (a torch module), got {type(model).__name__}")
    return listed


__all__ = [
    "AttackModel",
    "ModelLike",
    "Tensor",
    "attack_mode",
    "model_bounds",
    "model_device",
    "model_sources",
    "torch",
]
