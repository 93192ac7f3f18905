"""DeSparsify's objective and measurement: the variants, the keep-the-prediction penalty, the ascended
per-image objective and the token utilisation ratio measured with `forward_counts`.

The attack classes are in `edgeattack.attacks.whitebox.desparsify` (per image),
`desparsify_universal` and `desparsify_patch`; their shared parts in `desparsify_base`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgeattack.attacks.whitebox.model import ModelLike, Tensor, _as_model_list, torch
from edgeattack.errors import ConfigError, did_you_mean

VARIANTS = ("single", "ensemble", "class-universal", "universal", "patch")
PRED_LOSSES = ("margin", "ce")
SCHEDULES = ("cosine", "constant")
PATCH_LOCATIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


def check_variant(variant: Any) -> str:
    """`variant` if it is one of `VARIANTS`, else a ConfigError listing them."""
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown DeSparsify variant {variant!r}{did_you_mean(str(variant), VARIANTS)}; "
            f"valid variants: {', '.join(VARIANTS)}"
        )
    return str(variant)


def _model_name(model: Any) -> str:
    return str(getattr(model, "model_name", "") or type(model).__name__)


def check_token_sparse(models: ModelLike | Sequence[ModelLike]) -> list[Any]:
    """The models as a list; ConfigError for any that is not token-sparse (no `usage`/`forward_counts`)."""
    listed = _as_model_list(models)
    for model in listed:
        if not getattr(model, "token_sparse", False):
            raise ConfigError(
                f"model {_model_name(model)} is not token-sparse: DeSparsify needs ats/avit/adavit models"
            )
    return listed


def mechanisms_of(models: Sequence[Any]) -> list[str]:
    """The token-sparsification mechanism of each model ("ats", "avit", "adavit")."""
    return [str(getattr(getattr(m, "net", m), "mechanism", "")) for m in models]


def keep_penalty(logits: Tensor, label: Tensor, pred_loss: str = "margin", kappa: float = 0.0) -> Tensor:
    """Per image, how far the logits are from keeping `label` on top (>= 0; what the attack subtracts).

    "margin": `max(0, best other logit - label logit + kappa)`, zero while `label` leads by `kappa`;
    "ce": the cross-entropy of `label`.
    """
    if pred_loss == "ce":
        return torch.nn.functional.cross_entropy(logits, label, reduction="none")
    own = logits.gather(1, label[:, None]).squeeze(1)
    others = logits.scatter(1, label[:, None], float("-inf")).amax(1)
    return (others - own + kappa).clamp_min(0.0)


def desparsify_objective(
    models: Sequence[Any],
    x: Tensor,
    labels: Tensor,
    *,
    lam: float,
    pred_loss: str = "margin",
    kappa: float = 0.0,
) -> Tensor:
    """Per-image objective (ascended): mean token usage over models and blocks minus `lam` x the keep penalty.

    `labels` [M, N]: each model's clean prediction (the label its keep term protects).
    """
    usage_total: Tensor | None = None
    penalty_total: Tensor | None = None
    for index, model in enumerate(models):
        logits, usage = model.usage(x)
        usage_mean = usage.mean(1)
        usage_total = usage_mean if usage_total is None else usage_total + usage_mean
        if lam:
            penalty = keep_penalty(logits, labels[index], pred_loss, kappa)
            penalty_total = penalty if penalty_total is None else penalty_total + penalty
    assert usage_total is not None
    objective = usage_total / len(models)
    if penalty_total is not None:
        objective = objective - lam * penalty_total / len(models)
    return objective


def token_utilization(models: Sequence[Any], x: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(tur [M, N], predictions [M, N], ensemble logits [N, classes]) of images `x`, from `forward_counts`.

    `tur` per image: tokens summed over blocks / (depth x num_tokens) (the `tur` metric).
    """
    turs, preds = [], []
    total: Tensor | None = None
    with torch.no_grad():
        for model in models:
            net = model.net
            scale = float(net.depth * net.num_tokens)
            model_tur, model_logits = [], []
            for begin in range(0, x.shape[0], batch_size):
                logits, counts = model.forward_counts(x[begin : begin + batch_size])
                model_tur.append(counts.sum(1).to(torch.float32) / scale)
                model_logits.append(logits)
            logits = torch.cat(model_logits)
            turs.append(torch.cat(model_tur))
            preds.append(logits.argmax(1))
            total = logits if total is None else total + logits
    assert total is not None
    return torch.stack(turs), torch.stack(preds), total / len(models)


def _step_size_at(step_size: float, schedule: str, index: int, total: int) -> float:
    if schedule == "constant" or total <= 1:
        return step_size
    return step_size * 0.5 * (1.0 + math.cos(math.pi * index / total))


def _normalised(grad: Tensor) -> Tensor:
    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)
    return grad / scale.view(-1, *([1] * (grad.dim() - 1)))


__all__ = [
    "PATCH_LOCATIONS",
    "PRED_LOSSES",
    "SCHEDULES",
    "VARIANTS",
    "check_token_sparse",
    "check_variant",
    "desparsify_objective",
    "keep_penalty",
    "mechanisms_of",
    "token_utilization",
]
