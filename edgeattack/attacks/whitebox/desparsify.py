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

Measured with the defaults on the 270 digits test images (TUR clean -> adversarial, every correct
prediction kept unless noted): single at 8/255, ATS 0.634 -> 0.906, A-ViT 0.461 -> 0.719, AdaViT
0.484 -> 0.757; A-ViT needs eps 32/255 and 200 steps for 0.916, AdaViT 24/255 for 0.915 (their
usage surrogates saturate: A-ViT's halting sigmoid sits at pre-activations of +20 and more once the
digits ViT's tokens halt after block 3). Class-universal ATS 0.786, universal ATS 0.677, patch
(8x8, top-left) A-ViT 0.636 (ATS barely moves while predictions are protected; `lam=0` gives 0.74
at 42 % accuracy, the paper's trade-off).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.artifacts import PerturbationArtifact, quantize_to_grid
from edgeattack.attacks.whitebox.base import Progress, UniversalAttack, WhiteBoxAttack
from edgeattack.attacks.whitebox.common import _AttackBase, _Prepared
from edgeattack.attacks.whitebox.model import AttackModel, ModelLike, Tensor, _as_model_list, attack_mode, torch
from edgeattack.attacks.whitebox.norms import project, quantize_within
from edgeattack.attacks.whitebox.outputs import UniversalOutput
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

VARIANTS = ("single", "ensemble", "class-universal", "universal", "patch")
PRED_LOSSES = ("margin", "ce")
SCHEDULES = ("cosine", "constant")
PATCH_LOCATIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


# --------------------------------------------------------------------------------------------------
# the objective and the measurement
# --------------------------------------------------------------------------------------------------
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


def _step_size_at(step_size: float, schedule: str, index: int, total: int) -> float:
    if schedule == "constant" or total <= 1:
        return step_size
    return step_size * 0.5 * (1.0 + math.cos(math.pi * index / total))


def _normalised(grad: Tensor) -> Tensor:
    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)
    return grad / scale.view(-1, *([1] * (grad.dim() - 1)))


# --------------------------------------------------------------------------------------------------
# shared parts of the three attack classes
# --------------------------------------------------------------------------------------------------
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
            noise = (torch.rand(x.shape, generator=self.generator) * 2 - 1).to(x.device, x.dtype)
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


# --------------------------------------------------------------------------------------------------
# universal and class-universal
# --------------------------------------------------------------------------------------------------
class DeSparsifyUniversal(_DeSparsifyMixin, UniversalAttack):
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

    @property
    def params(self) -> dict[str, Any]:
        params = super().params
        if self._tally is not None and self._tally.n:
            params["tur_history"] = list(self._tur_history)
        return params

    def _prepare(self, *args: Any, **kwargs: Any) -> _Prepared:
        prep = super()._prepare(*args, **kwargs)
        self._tur_history = []
        return prep

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
        n = int(x.shape[0])
        x_dev = x.to(device)
        clean_tur, clean_preds, clean_logits = token_utilization(members, x_dev, max(self.batch_size, 256))
        ensemble_clean = clean_logits.argmax(1)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (1, *x.shape[1:])
        if self.random_start:
            v = ((torch.rand(shape, generator=generator) * 2 - 1) * self.eps).to(device, x.dtype)
        else:
            v = torch.zeros(shape, dtype=x.dtype, device=device)
        state = torch.zeros_like(v)
        per_epoch = math.ceil(n / self.batch_size)
        total = self.epochs * per_epoch
        step = 0
        history: list[float] = []
        for epoch in range(1, self.epochs + 1):
            for chunk in torch.randperm(n, generator=generator).split(self.batch_size):
                xb = x_dev[chunk.to(device)]
                labels = clean_preds[:, chunk.to(device)]
                v_req = v.detach().requires_grad_(True)
                with torch.enable_grad():
                    objective = self._objective(members, model.clip(xb + v_req), labels).mean()
                    (grad,) = torch.autograd.grad(objective, v_req)
                state = self.momentum * state + _normalised(grad)
                size = _step_size_at(self.step_size, self.schedule, step, total)
                v = project(v.detach() + size * state.sign(), "linf", self.eps)
                step += 1
            adv_tur, _, adv_logits = token_utilization(members, self._apply(model, x_dev, v), 256)
            history.append(float((adv_logits.argmax(1) != ensemble_clean).float().mean()))
            self._tur_history.append(float(adv_tur.mean()))
            self.tick(epoch)
            logger.debug("desparsify %s epoch %d: fit TUR %.4f", self.variant, epoch, self._tur_history[-1])
        adv_tur, adv_preds, _ = token_utilization(members, self._apply(model, x_dev, v), 256)
        assert self._tally is not None
        self._tally.add(clean_tur, adv_tur, clean_preds, adv_preds, y)
        return v, history


# --------------------------------------------------------------------------------------------------
# universal patch
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PatchOutput(UniversalOutput):
    """A universal patch: `mask` [1,1,H,W] (1 inside the square) and `patch` [1,C,H,W] (zeros outside).

    `delta` is zero; `apply` and the artifact paste the patch: `images * (1 - mask) + patch * mask`.
    """

    mask: np.ndarray | None = None
    patch: np.ndarray | None = None

    def to_artifact(
        self,
        dataset: ImageDataset | None = None,
        *,
        dataset_name: str | None = None,
        split: str | None = None,
        seed: int | None = None,
    ) -> PerturbationArtifact:
        artifact = super().to_artifact(dataset, dataset_name=dataset_name, split=split, seed=seed)
        return dataclasses.replace(artifact, mask=self.mask, patch=self.patch)

    def apply(self, images: np.ndarray, labels: np.ndarray | None = None, *, quantize: bool = False) -> np.ndarray:
        assert self.mask is not None and self.patch is not None
        out = np.clip(images * (1.0 - self.mask) + self.patch * self.mask, self.bounds[0], self.bounds[1])
        out = out.astype(np.float32)
        return quantize_to_grid(out) if quantize else out


def patch_origin(location: Any, patch_size: int, height: int, width: int) -> tuple[int, int]:
    """(top, left) of a `patch_size` square at `location` (a name in PATCH_LOCATIONS or (row, col)) in an image."""
    if patch_size > height or patch_size > width:
        raise ConfigError(f"a {patch_size}x{patch_size} patch is larger than the {height}x{width} images")
    if isinstance(location, str):
        corners = {
            "top-left": (0, 0),
            "top-right": (0, width - patch_size),
            "bottom-left": (height - patch_size, 0),
            "bottom-right": (height - patch_size, width - patch_size),
            "center": ((height - patch_size) // 2, (width - patch_size) // 2),
        }
        return corners[location]
    top, left = (int(v) for v in location)
    if top + patch_size > height or left + patch_size > width:
        raise ConfigError(
            f"a {patch_size}x{patch_size} patch at row {top}, column {left} does not fit in {height}x{width} images"
        )
    return top, left


def _check_location(location: Any) -> str | tuple[int, int]:
    if isinstance(location, str) and "," in location:
        location = tuple(part.strip() for part in location.split(","))
    if isinstance(location, str):
        return choice("patch_location", location, PATCH_LOCATIONS)
    try:
        values = tuple(location)
        if len(values) != 2:
            raise ValueError
        top, left = (int(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(
            f"patch_location must be one of {', '.join(PATCH_LOCATIONS)} or 'ROW,COL', got {location!r}"
        ) from None
    if top < 0 or left < 0:
        raise ConfigError(f"patch_location must be non-negative, got {location!r}")
    return top, left


class DeSparsifyPatch(_DeSparsifyMixin, _AttackBase):
    """DeSparsify as a universal patch (`variant="patch"`): a square of free pixel values pasted on every image.

    Not an eps-ball attack, so it is no `UniversalAttack` (whose final `__call__` projects onto an
    eps-ball and adds a delta); its own final `__call__` uses the same input checks, eval mode,
    ensembling and bookkeeping, and returns a `PatchOutput` whose artifact carries `mask` and
    `patch` (kind "universal", norm "none", a zero delta).

    Args:
        patch_size: side of the square patch in pixels (8 for the 32x32 digits).
        patch_location: "top-left" (default), "top-right", "bottom-left", "bottom-right", "center",
            or (row, col) / "ROW,COL" of its top-left pixel.
        epochs: passes over the fit images.
        batch_size: minibatch size.
        step_size: the first signed step on the pixel values (in the units of the bounds; default
            1/16 of the bounds' range), decayed along `schedule` over all steps.
        schedule, momentum, lam, pred_loss, kappa: as for `DeSparsify`.
        seed: the random initial patch and the minibatch order.
    """

    _variants = ("patch",)
    norm = "none"
    eps = None

    def __init__(
        self,
        *,
        variant: str = "patch",
        patch_size: int = 8,
        patch_location: str | Sequence[int] = "top-left",
        epochs: int = 40,
        batch_size: int = 32,
        step_size: float | None = None,
        schedule: str = "cosine",
        momentum: float = 0.9,
        lam: float = 1.0,
        pred_loss: str = "margin",
        kappa: float = 2.0,
        **common: Any,
    ) -> None:
        self._init_loss(variant, lam, pred_loss, kappa)
        self.patch_size = positive_int("patch_size", patch_size)
        self.patch_location = _check_location(patch_location)
        self.epochs = positive_int("epochs", epochs)
        self.step_size = None if step_size is None else positive_float("step_size", step_size)
        self.schedule = choice("schedule", schedule, SCHEDULES)
        self.momentum = positive_float("momentum", momentum, allow_zero=True)
        self._tur_history: list[float] = []
        super().__init__(batch_size=batch_size, **common)

    @property
    def params(self) -> dict[str, Any]:
        params = super().params
        if self._tally is not None and self._tally.n:
            params["tur_history"] = list(self._tur_history)
        return params

    def _prepare(self, *args: Any, **kwargs: Any) -> _Prepared:
        prep = super()._prepare(*args, **kwargs)
        height, width = prep.x.shape[2:]
        self._origin = patch_origin(self.patch_location, self.patch_size, int(height), int(width))
        self._tur_history = []
        return prep

    @typing.final
    def __call__(
        self,
        models: ModelLike | Sequence[ModelLike],
        images: Any,
        labels: Any = None,
        *,
        target: Any = None,
        bounds: tuple[float, float] | None = None,
        progress: Progress | None = None,
    ) -> PatchOutput:
        """Fit the patch on `images` (numpy / torch NCHW, or an ImageDataset: the fit split)."""
        start_time = time.perf_counter()
        prep = self._prepare(models, images, labels, target, bounds)
        x_all = torch.from_numpy(prep.x)
        y_all = torch.from_numpy(prep.y)
        with attack_mode(prep.models):
            model = AttackModel(prep.models, prep.bounds, prep.device)
            clean_logits = model.predict(x_all, 256)
            self._check_classes(clean_logits, prep.y, prep.target)
            clean_pred = clean_logits.argmax(1).cpu()
            mask, patch, history = self._fit(model, x_all.to(prep.device), y_all, progress)
            adv_pred = torch.empty_like(y_all)
            with torch.no_grad():
                for begin in range(0, len(y_all), 256):
                    xb = x_all[begin : begin + 256].to(prep.device)
                    adv_pred[begin : begin + 256] = model(model.clip(xb * (1 - mask) + patch * mask)).argmax(1).cpu()
        n = len(y_all)
        ds = prep.dataset
        output = PatchOutput(
            delta=np.zeros((1, *prep.x.shape[1:]), dtype=np.float32),
            kind="universal",
            method=self.name,
            norm=self.norm,
            eps=None,
            params=self.params,
            sources=prep.sources,
            bounds=prep.bounds,
            fooling_rate=float((adv_pred != clean_pred).float().mean()) if n else 0.0,
            clean_acc=float((clean_pred == y_all).float().mean()) if n else 0.0,
            adv_acc=float((adv_pred == y_all).float().mean()) if n else 0.0,
            n_images=n,
            history=tuple(history),
            dataset=ds.name if ds is not None else None,
            split=ds.split if ds is not None else None,
            data_seed=ds.seed if ds is not None else None,
            wall_s=time.perf_counter() - start_time,
            mask=mask.cpu().numpy().astype(np.float32),
            patch=patch.cpu().numpy().astype(np.float32),
        )
        logger.info(
            "desparsify patch fitted on %d images: clean_acc %.3f, adv_acc %.3f (%.1f s)",
            n, output.clean_acc, output.adv_acc, output.wall_s,
        )
        return output

    def _fit(
        self, model: AttackModel, x: Tensor, y: Tensor, progress: Progress | None
    ) -> tuple[Tensor, Tensor, list[float]]:
        """(mask [1,1,H,W], patch [1,C,H,W] zero outside the square, fit fooling rate per epoch)."""
        members = model.models
        device = model.device
        n, channels, height, width = (int(s) for s in x.shape)
        low, high = model.bounds
        size = self.patch_size
        top, left = self._origin
        pad = (left, width - left - size, top, height - top - size)
        mask = torch.nn.functional.pad(torch.ones(1, 1, size, size, dtype=x.dtype), pad).to(device)
        generator = torch.Generator().manual_seed(self.seed)
        p = (low + (high - low) * torch.rand((1, channels, size, size), generator=generator)).to(device, x.dtype)
        step_size = (high - low) / 16 if self.step_size is None else self.step_size
        clean_tur, clean_preds, clean_logits = token_utilization(members, x, 256)
        ensemble_clean = clean_logits.argmax(1)

        def paste(images: Tensor, values: Tensor) -> Tensor:
            return images * (1 - mask) + torch.nn.functional.pad(values, pad) * mask

        state = torch.zeros_like(p)
        total = self.epochs * math.ceil(n / self.batch_size)
        step = 0
        history: list[float] = []
        for epoch in range(1, self.epochs + 1):
            for chunk in torch.randperm(n, generator=generator).split(self.batch_size):
                index = chunk.to(device)
                p_req = p.detach().requires_grad_(True)
                with torch.enable_grad():
                    objective = self._objective(members, paste(x[index], p_req), clean_preds[:, index]).mean()
                    (grad,) = torch.autograd.grad(objective, p_req)
                state = self.momentum * state + _normalised(grad)
                p = (p.detach() + _step_size_at(step_size, self.schedule, step, total) * state.sign()).clamp(low, high)
                step += 1
            adv_tur, _, adv_logits = token_utilization(members, paste(x, self._final(p, model)), 256)
            history.append(float((adv_logits.argmax(1) != ensemble_clean).float().mean()))
            self._tur_history.append(float(adv_tur.mean()))
            if progress is not None:
                progress(epoch, self.epochs)
        p = self._final(p, model)
        adv_tur, adv_preds, _ = token_utilization(members, paste(x, p), 256)
        assert self._tally is not None
        self._tally.add(clean_tur, adv_tur, clean_preds, adv_preds, y)
        return mask, torch.nn.functional.pad(p, pad), history

    def _final(self, p: Tensor, model: AttackModel) -> Tensor:
        p = model.clip(p)
        if self.quantize:
            p = (torch.round(p * 255) / 255).clamp(*model.bounds)
        return p


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
