"""DeSparsify: an availability attack on token-sparse Vision Transformers (ATS, A-ViT, AdaViT).

Yehezkel, Zolfi, Baras, Elovici and Shabtai, "DeSparsify: Adversarial Attack Against Token
Sparsification Mechanisms in Vision Transformers", NeurIPS 2024 (arXiv 2402.02554). The authors
published no code; this follows the paper's description.

A token-sparse model drops the tokens it judges unimportant, per image. DeSparsify crafts inputs
that make it keep them all (worst-case compute, memory, latency and energy) while the prediction
stays what it was, so nothing looks wrong. The objective, ascended with signed-gradient steps
(MI-FGSM-style momentum, cosine-decayed step size) under an L-inf budget, is per image

    mean over models and blocks of usage(x)  -  lam * mean over models of keep(logits(x), clean label)

`usage` is the model's differentiable token-usage surrogate (`ZooModel.usage`, [N, depth] in
[0, 1], see `edgeattack.sparsity.base`). `keep` is `pred_loss="margin"` (default): the hinge
`max(0, best other logit - clean-class logit + kappa)`, zero while the clean class leads by at least
`kappa`, or `"ce"`: the cross-entropy of the clean predicted label. Each model keeps its own clean
prediction.

Variants (`variant=`), all built through `DeSparsify(variant=...)` / `make_attack("desparsify", ...)`:

- `single` (`DeSparsify`): one perturbation per image, one model. By default (`track_best`) each
  image keeps the iterate with the highest measured token utilisation (`forward_counts`) among
  those on which every model still predicts its clean class, so the prediction is kept whenever
  any iterate kept it.
- `ensemble` (`DeSparsify`): per image, one perturbation fitted over two or more token-sparse
  models at once (usage and keep terms averaged over them). Given one model it is a ConfigError
  (use `single`); `single` with several models is one too (use `ensemble`).
- `universal` / `class-universal` (`DeSparsifyUniversal`): one delta for all images / one per
  class, fitted by minibatch signed-gradient ascent over `epochs` passes.
- `patch` (`DeSparsifyPatch`): a universal square patch of `patch_size` pixels at
  `patch_location`, pixel values free within the bounds (no eps). Its artifact holds `mask` and
  `patch` (and a zero `delta`), which `PerturbationArtifact.apply` pastes onto the images.

Every artifact records `method="desparsify"`, and in `meta.params` the variant, the
hyper-parameters, the mechanisms and what the attack measured on the images it was crafted on:
`clean_tur`, `adv_tur` (mean token utilisation ratio, counts from `forward_counts`, averaged over
the models), `prediction_kept` (among images a model classified correctly when clean, the share
still correct), `prediction_unchanged` and `per_model` details.

Measured with the defaults on the 270 digits test images, on the official mechanisms (TUR clean ->
adversarial on the ONNX engines, every correct prediction kept): single at 8/255, ATS 0.699 -> 0.924,
A-ViT 0.474 -> 0.930, AdaViT 0.503 -> 0.871; class-universal ATS 0.826, universal ATS 0.746, patch
(8x8, top-left) A-ViT 0.737 (`benchmarks/RESULTS.md`, `benchmarks/bench_desparsify.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.desparsify_base import _DeSparsifyMixin
from edgeattack.attacks.whitebox.desparsify_objective import (
    PATCH_LOCATIONS,
    PRED_LOSSES,
    SCHEDULES,
    VARIANTS,
    _normalised,
    _step_size_at,
    check_token_sparse,
    check_variant,
    desparsify_objective,
    keep_penalty,
    mechanisms_of,
    token_utilization,
)
from edgeattack.attacks.whitebox.desparsify_patch import DeSparsifyPatch, PatchOutput, patch_origin
from edgeattack.attacks.whitebox.desparsify_universal import DeSparsifyUniversal
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# per image: single and ensemble
# --------------------------------------------------------------------------------------------------
class DeSparsify(_DeSparsifyMixin, WhiteBoxAttack):
    """DeSparsify, per image (`variant="single"` or `"ensemble"`), L-inf.

    `DeSparsify(variant="universal" | "class-universal" | "patch", ...)` builds a
    `DeSparsifyUniversal` or `DeSparsifyPatch` instead, so `make_attack("desparsify", variant=...)`
    reaches every variant.

    Args:
        variant: "single" (one model) or "ensemble" (two or more, one perturbation for all).
        eps: L-inf radius in the units of the bounds.
        steps: signed-gradient steps.
        step_size: the first step (default eps / 3), decayed along `schedule`.
        schedule: "cosine" (to zero over the steps) or "constant".
        momentum: decay of the accumulated, L1-normalised gradient (MI-FGSM); 0 for plain PGD.
        lam: weight of the keep-the-prediction term.
        pred_loss: "margin" (hinge on the clean class's logit margin, inactive while it leads by
            `kappa`) or "ce" (cross-entropy of the clean prediction).
        kappa: the margin the hinge asks for, in logits.
        random_start: start from a uniform random point of the ball (seeded with `seed`).
        track_best: return, per image, the iterate with the highest measured TUR among those on
            which every model keeps its clean prediction (the clean image if none does); False
            returns the last iterate.
    """

    _variants = ("single", "ensemble")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is DeSparsify and not args:
            variant = check_variant(kwargs.get("variant", "single"))
            if variant in ("universal", "class-universal"):
                return DeSparsifyUniversal(**kwargs)
            if variant == "patch":
                return DeSparsifyPatch(**kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        variant: str = "single",
        eps: float = 8 / 255,
        steps: int = 100,
        step_size: float | None = None,
        schedule: str = "cosine",
        momentum: float = 0.9,
        lam: float = 1.0,
        pred_loss: str = "margin",
        kappa: float = 2.0,
        random_start: bool = False,
        track_best: bool = True,
        **common: Any,
    ) -> None:
        self._init_loss(variant, lam, pred_loss, kappa)
        self.eps = positive_float("eps", eps)
        self.steps = positive_int("steps", steps)
        self.step_size = self.eps / 3 if step_size is None else positive_float("step_size", step_size)
        self.schedule = choice("schedule", schedule, SCHEDULES)
        self.momentum = positive_float("momentum", momentum, allow_zero=True)
        self.random_start = bool(random_start)
        self.track_best = bool(track_best)
        super().__init__(**common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> Tensor:
        members = model.models
        clean_tur, clean_pred, _ = token_utilization(members, x, self.batch_size)
        if self.random_start:
            shape = tuple(x.shape[1:])
            noise = (self.per_row(lambda g: torch.rand(shape, generator=g)) * 2 - 1).to(x.device, x.dtype)
            adv = model.clip(x + noise * self.eps)
        else:
            adv = x.clone()
        best = x.clone()
        best_score = clean_tur.mean(0)
        state = torch.zeros_like(x)

        def consider(candidate: Tensor) -> None:
            finished = self._finish_images(candidate, x, model)
            tur, pred, _ = token_utilization(members, finished, self.batch_size)
            score = tur.mean(0)
            better = (pred == clean_pred).all(0) & (score > best_score)
            best[better] = finished[better]
            best_score[better] = score[better]

        for index in range(self.steps):
            if self.track_best and (index or self.random_start):
                consider(adv)
            a = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                objective = self._objective(members, a, clean_pred).sum()
                (grad,) = torch.autograd.grad(objective, a)
            state = self.momentum * state + _normalised(grad)
            size = _step_size_at(self.step_size, self.schedule, index, self.steps)
            adv = adv.detach() + size * state.sign()
            adv = model.clip(torch.min(torch.max(adv, x - self.eps), x + self.eps))
        if self.track_best:
            consider(adv)
            final = best
        else:
            final = self._finish_images(adv, x, model)
        adv_tur, adv_pred, _ = token_utilization(members, final, self.batch_size)
        assert self._tally is not None
        self._tally.add(clean_tur, adv_tur, clean_pred, adv_pred, y)
        return final


__all__ = [
    "PATCH_LOCATIONS",
    "PRED_LOSSES",
    "VARIANTS",
    "DeSparsify",
    "DeSparsifyPatch",
    "DeSparsifyUniversal",
    "PatchOutput",
    "check_token_sparse",
    "check_variant",
    "desparsify_objective",
    "keep_penalty",
    "mechanisms_of",
    "patch_origin",
    "token_utilization",
]
