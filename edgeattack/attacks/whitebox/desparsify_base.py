"""The parts DeSparsify's attack classes share: the measured-TUR tally, the loss set-up and
token-sparsity checks (`_DeSparsifyMixin`), and the minibatch signed-gradient ascent that fits a
universal delta or patch (`fit_by_ascent`).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeattack.attacks.whitebox.common import _Prepared
from edgeattack.attacks.whitebox.desparsify_objective import (
    PRED_LOSSES,
    _model_name,
    _normalised,
    _step_size_at,
    check_token_sparse,
    check_variant,
    desparsify_objective,
    mechanisms_of,
    token_utilization,
)
from edgeattack.attacks.whitebox.model import ModelLike, Tensor, torch
from edgeattack.attacks.whitebox.validation import choice, positive_float
from edgeattack.errors import ConfigError


class _Tally:
    """What DeSparsify measured on the images it attacked, per model, summed over batches / classes."""

    def __init__(self, models: Sequence[Any]) -> None:
        self.names = [_model_name(m) for m in models]
        self.mechanisms = mechanisms_of(models)
        m = len(models)
        self.n = 0
        self.clean_tur = np.zeros(m)
        self.adv_tur = np.zeros(m)
        self.clean_correct = np.zeros(m)
        self.adv_correct = np.zeros(m)
        self.kept = np.zeros(m)
        self.unchanged = np.zeros(m)

    def add(self, clean_tur: Tensor, adv_tur: Tensor, clean_pred: Tensor, adv_pred: Tensor, y: Tensor) -> None:
        """One batch / group: [M, n] TURs and predictions, [n] true labels."""
        y = y.to(clean_pred.device)[None]
        clean_ok = clean_pred == y
        adv_ok = adv_pred == y
        self.n += int(y.shape[1])
        self.clean_tur += clean_tur.sum(1).cpu().double().numpy()
        self.adv_tur += adv_tur.sum(1).cpu().double().numpy()
        self.clean_correct += clean_ok.sum(1).cpu().numpy()
        self.adv_correct += adv_ok.sum(1).cpu().numpy()
        self.kept += (clean_ok & adv_ok).sum(1).cpu().numpy()
        self.unchanged += (clean_pred == adv_pred).sum(1).cpu().numpy()

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        per_model = []
        for i, name in enumerate(self.names):
            kept = float(self.kept[i] / self.clean_correct[i]) if self.clean_correct[i] else None
            per_model.append(
                {
                    "model": name,
                    "mechanism": self.mechanisms[i],
                    "clean_tur": float(self.clean_tur[i] / n),
                    "adv_tur": float(self.adv_tur[i] / n),
                    "clean_acc": float(self.clean_correct[i] / n),
                    "adv_acc": float(self.adv_correct[i] / n),
                    "prediction_kept": kept,
                    "prediction_unchanged": float(self.unchanged[i] / n),
                }
            )
        kept_values = [p["prediction_kept"] for p in per_model if p["prediction_kept"] is not None]
        clean = float(np.mean([p["clean_tur"] for p in per_model]))
        adv = float(np.mean([p["adv_tur"] for p in per_model]))
        return {
            "tur_images": self.n,
            "clean_tur": clean,
            "adv_tur": adv,
            "tur_gap_closed": (adv - clean) / (1.0 - clean) if clean < 1.0 else None,
            "prediction_kept": float(np.mean(kept_values)) if kept_values else None,
            "prediction_unchanged": float(np.mean([p["prediction_unchanged"] for p in per_model])),
            "per_model": per_model,
        }


class _DeSparsifyMixin:
    """Token-sparsity checks, the loss hyper-parameters and the measured TUR in `params`."""

    name: typing.ClassVar[str] = "desparsify"
    supports_targeted: typing.ClassVar[bool] = False
    _variants: typing.ClassVar[tuple[str, ...]] = ()

    variant: str
    lam: float
    pred_loss: str
    kappa: float
    _tally: _Tally | None = None

    def _init_loss(self, variant: Any, lam: Any, pred_loss: Any, kappa: Any) -> None:
        variant = check_variant(variant)
        if variant not in self._variants:
            raise ConfigError(f"{type(self).__name__} runs the {' / '.join(self._variants)} variant(s), not {variant!r}")
        self.variant = variant
        self.lam = positive_float("lam", lam, allow_zero=True)
        self.pred_loss = choice("pred_loss", pred_loss, PRED_LOSSES)
        self.kappa = positive_float("kappa", kappa, allow_zero=True)
        self._tally = None

    def _prepare(
        self,
        models: ModelLike | Sequence[ModelLike],
        images: Any,
        labels: Any,
        target: Any,
        bounds: tuple[float, float] | None,
    ) -> _Prepared:
        listed = check_token_sparse(models)
        if self.variant == "single" and len(listed) > 1:
            raise ConfigError(
                f"variant 'single' attacks one model, got {len(listed)}: use variant='ensemble' for several"
            )
        if self.variant == "ensemble" and len(listed) < 2:
            raise ConfigError(
                "variant 'ensemble' fits one perturbation over two or more token-sparse models, got one: "
                "use variant='single'"
            )
        prep = super()._prepare(listed, images, labels, target, bounds)  # type: ignore[misc]
        self._tally = _Tally(listed)
        return prep

    @property
    def params(self) -> dict[str, Any]:
        """The hyper-parameters, and after a call what it measured (clean/adversarial TUR, predictions kept)."""
        params: dict[str, Any] = super().params  # type: ignore[misc]
        if self._tally is not None:
            params["mechanisms"] = list(self._tally.mechanisms)
            if self._tally.n:
                params.update(self._tally.summary())
        return params

    def _objective(self, models: Sequence[Any], x: Tensor, labels: Tensor) -> Tensor:
        return desparsify_objective(models, x, labels, lam=self.lam, pred_loss=self.pred_loss, kappa=self.kappa)



class _FittedMixin(_DeSparsifyMixin):
    """The fitted variants (universal, class-universal, patch): also the fit-set TUR after each epoch."""

    _tur_history: list[float]

    def _prepare(self, *args: Any, **kwargs: Any) -> _Prepared:
        prep = super()._prepare(*args, **kwargs)
        self._tur_history = []
        return prep

    @property
    def params(self) -> dict[str, Any]:
        params = super().params
        if self._tally is not None and self._tally.n:
            params["tur_history"] = list(self._tur_history)
        return params

def fit_by_ascent(
    members: Sequence[Any],
    x: Tensor,
    labels: Tensor,
    ensemble_clean: Tensor,
    start: Tensor,
    *,
    objective: Callable[[Sequence[Any], Tensor, Tensor], Tensor],
    perturb: Callable[[Tensor, Tensor], Tensor],
    constrain: Callable[[Tensor], Tensor],
    evaluate: Callable[[Tensor], Tensor],
    epochs: int,
    batch_size: int,
    step_size: float,
    schedule: str,
    momentum: float,
    generator: torch.Generator,
    on_epoch: Callable[[int, float], None],
) -> tuple[Tensor, list[float]]:
    """(fitted perturbation, fit-set fooling rate per epoch): minibatch signed-gradient ascent from `start`.

    Each epoch visits the images `x` in a random order drawn from `generator`, in minibatches of
    `batch_size`. Per minibatch: the gradient of the mean `objective(members, perturb(images, v),
    labels[:, batch])` with respect to `v`, L1-normalised, is added to the `momentum`-decayed state;
    `v` moves by the step size (decayed along `schedule` over all steps) times its sign, then goes
    through `constrain`. After each epoch `evaluate(v)` gives the adversarial fit set: the rate at
    which its ensemble prediction differs from `ensemble_clean` joins the history, and
    `on_epoch(epoch, mean TUR)` is called.
    """
    device = x.device
    n = int(x.shape[0])
    v = start
    state = torch.zeros_like(v)
    total = epochs * math.ceil(n / batch_size)
    step = 0
    history: list[float] = []
    for epoch in range(1, epochs + 1):
        for chunk in torch.randperm(n, generator=generator).split(batch_size):
            index = chunk.to(device)
            v_req = v.detach().requires_grad_(True)
            with torch.enable_grad():
                value = objective(members, perturb(x[index], v_req), labels[:, index]).mean()
                (grad,) = torch.autograd.grad(value, v_req)
            state = momentum * state + _normalised(grad)
            size = _step_size_at(step_size, schedule, step, total)
            v = constrain(v.detach() + size * state.sign())
            step += 1
        adv_tur, _, adv_logits = token_utilization(members, evaluate(v), 256)
        history.append(float((adv_logits.argmax(1) != ensemble_clean).float().mean()))
        on_epoch(epoch, float(adv_tur.mean()))
    return v, history


__all__ = ["_DeSparsifyMixin", "_Tally", "fit_by_ascent"]
