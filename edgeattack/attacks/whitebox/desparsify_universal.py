"""DeSparsify universal and class-universal: one L-inf delta for all images, or one per class."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from edgeattack.attacks.whitebox.base import UniversalAttack
from edgeattack.attacks.whitebox.desparsify_base import _FittedMixin, fit_by_ascent
from edgeattack.attacks.whitebox.desparsify_objective import SCHEDULES, token_utilization
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import project, quantize_within
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.errors import ConfigError

# the name the attack logged under before it was split out of `desparsify.py`
logger = logging.getLogger("edgeattack.attacks.whitebox.desparsify")


class DeSparsifyUniversal(_FittedMixin, UniversalAttack):
    """DeSparsify, one L-inf delta for all images (`variant="universal"`) or one per class (`"class-universal"`).

    Minibatch signed-gradient ascent of the mean objective over the fit images (each model's clean
    predictions protected), momentum as in `DeSparsify`, the step size decayed over all steps,
    projected onto the eps-ball after each step. `history`: the fit-set fooling rate after each
    epoch (the `UniversalAttack` convention); `tur_history` in the params: the fit-set mean TUR.

    Args:
        variant: "universal" or "class-universal" (the same as `class_universal=True`).
        eps: L-inf radius.
        epochs: passes over the fit images (per class for class-universal).
        batch_size: minibatch size.
        step_size: the first step (default eps / 4), decayed along `schedule` over all steps.
        schedule, momentum, lam, pred_loss, kappa: as for `DeSparsify`.
        random_start: start from a uniform random delta in the ball (seeded with `seed`).
    """

    _variants = ("universal", "class-universal")

    def __init__(
        self,
        *,
        variant: str = "universal",
        eps: float = 8 / 255,
        epochs: int = 40,
        batch_size: int = 32,
        step_size: float | None = None,
        schedule: str = "cosine",
        momentum: float = 0.9,
        lam: float = 1.0,
        pred_loss: str = "margin",
        kappa: float = 2.0,
        random_start: bool = False,
        class_universal: bool | None = None,
        **common: Any,
    ) -> None:
        if class_universal is not None and variant == "universal" and class_universal:
            variant = "class-universal"
        self._init_loss(variant, lam, pred_loss, kappa)
        if class_universal is not None and bool(class_universal) != (self.variant == "class-universal"):
            raise ConfigError(f"class_universal={class_universal} contradicts variant={variant!r}")
        self.eps = positive_float("eps", eps)
        self.epochs = positive_int("epochs", epochs)
        self.step_size = self.eps / 4 if step_size is None else positive_float("step_size", step_size)
        self.schedule = choice("schedule", schedule, SCHEDULES)
        self.momentum = positive_float("momentum", momentum, allow_zero=True)
        self.random_start = bool(random_start)
        self._tur_history: list[float] = []
        super().__init__(class_universal=self.variant == "class-universal", batch_size=batch_size, **common)

    @property
    def progress_units(self) -> int:
        return self.epochs

    def _apply(self, model: AttackModel, x: Tensor, v: Tensor) -> Tensor:
        adv = model.clip(x + v)
        if self.quantize:
            adv = quantize_within(adv, x, self.norm, self.eps, model.bounds)
        return adv

    def fit(
        self, model: AttackModel, x: Tensor, y: Tensor, *, clean_pred: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Sequence[float]]:
        members = model.models
        device = model.device
        x_dev = x.to(device)
        clean_tur, clean_preds, clean_logits = token_utilization(members, x_dev, max(self.batch_size, 256))
        ensemble_clean = clean_logits.argmax(1)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (1, *x.shape[1:])
        if self.random_start:
            v = ((torch.rand(shape, generator=generator) * 2 - 1) * self.eps).to(device, x.dtype)
        else:
            v = torch.zeros(shape, dtype=x.dtype, device=device)

        def on_epoch(epoch: int, tur: float) -> None:
            self._tur_history.append(tur)
            self.tick(epoch)
            logger.debug("desparsify %s epoch %d: fit TUR %.4f", self.variant, epoch, self._tur_history[-1])

        v, history = fit_by_ascent(
            members,
            x_dev,
            clean_preds,
            ensemble_clean,
            v,
            objective=self._objective,
            perturb=lambda images, delta: model.clip(images + delta),
            constrain=lambda delta: project(delta, "linf", self.eps),
            evaluate=lambda delta: self._apply(model, x_dev, delta),
            epochs=self.epochs,
            batch_size=self.batch_size,
            step_size=self.step_size,
            schedule=self.schedule,
            momentum=self.momentum,
            generator=generator,
            on_epoch=on_epoch,
        )
        adv_tur, adv_preds, _ = token_utilization(members, self._apply(model, x_dev, v), 256)
        assert self._tally is not None
        self._tally.add(clean_tur, adv_tur, clean_preds, adv_preds, y)
        return v, history


__all__ = ["DeSparsifyUniversal"]
