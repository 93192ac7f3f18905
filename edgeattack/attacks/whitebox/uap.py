"""Universal adversarial perturbations: one delta (or one per class) that fools a model on most images.

- `UAPDeepFool`: Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations",
  CVPR 2017 (Algorithm 1). Passes over the fit set in a seeded random order; for each image whose
  prediction the current `v` does not yet change, the minimal DeepFool perturbation of `x + v` is
  added to `v`, which is projected back onto the eps-ball. Stops once the fooling rate on the fit set
  reaches `1 - delta`, or after `max_passes` passes.
- `UAPSGD`: the stochastic-gradient variant (Shafahi et al., "Universal adversarial training", AAAI
  2020; the `sgd-uap` code used by the compressed-ViT paper): one delta trained by ascending a
  per-image-capped loss over minibatches with Adam, momentum SGD or signed steps, projected onto
  the eps-ball after every step.

Both return a `UniversalOutput` (K=1, or K=#classes with `class_universal=True`) whose artifact
records the fit split and the fit-set fooling rate; it replays on any split of the same dataset.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.attacks.whitebox.base import UniversalAttack
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import NORMS, project
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.errors import ConfigError

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd", "sign")
UAP_LOSSES = ("ce", "margin")
DEFAULT_LINF_EPS = 10 / 255


def _resolve_eps(eps: float | None, norm: str) -> float:
    if eps is None:
        if norm == "l2":
            raise ConfigError("norm='l2' needs an explicit eps (the L2 radius in the units of the bounds)")
        return DEFAULT_LINF_EPS
    return positive_float("eps", eps)


def deepfool(
    model: AttackModel,
    x: Tensor,
    *,
    num_candidates: int = 10,
    overshoot: float = 0.02,
    max_iter: int = 50,
) -> tuple[Tensor, Tensor]:
    """Batched L2 DeepFool (Moosavi-Dezfooli et al., CVPR 2016) against the top-`num_candidates` classes.

    Returns `(r, converged)`: the perturbation `(1 + overshoot) * r_total` per image and whether
    `clip(x + r)` left the originally predicted class within `max_iter` iterations.
    """
    with torch.no_grad():
        logits0 = model(x)
    k = min(num_candidates, int(logits0.shape[1]))
    candidates = logits0.topk(k, dim=1).indices
    label = candidates[:, 0]
    m = x.shape[0]
    r_total = torch.zeros_like(x)
    converged = torch.zeros(m, dtype=torch.bool, device=x.device)
    active = torch.arange(m, device=x.device)
    if k < 2:
        return r_total, converged
    for iteration in range(max_iter + 1):
        xa = model.clip(x[active] + (1 + overshoot) * r_total[active]).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            flipped = logits.argmax(1) != label[active]
            converged[active[flipped]] = True
            still = ~flipped
            if iteration == max_iter or not bool(still.any()):
                break
            chosen = logits.gather(1, candidates[active])
            f = chosen[:, 1:] - chosen[:, :1]
            grads = []
            for j in range(k - 1):
                (g,) = torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < k - 2)
                grads.append(g[still])
        active = active[still]
        f = f.detach()[still]
        w = torch.stack(grads, 1)
        w_norm = w.flatten(2).norm(dim=2) + 1e-8
        pert = f.abs() / w_norm
        best = pert.argmin(1)
        rows = torch.arange(active.numel(), device=x.device)
        step = (pert[rows, best] + 1e-4) / w_norm[rows, best]
        r_total[active] += step.view(-1, *([1] * (x.dim() - 1))) * w[rows, best]
    return (1 + overshoot) * r_total, converged


def fooling_rate(model: AttackModel, x: Tensor, clean_pred: Tensor, delta: Tensor, batch_size: int = 256) -> float:
    """Fraction of `x` whose prediction changes under `clip(x + delta)` (the UAP convention)."""
    changed = 0
    with torch.no_grad():
        for begin in range(0, x.shape[0], batch_size):
            xb = x[begin : begin + batch_size].to(model.device)
            pred = model(model.clip(xb + delta)).argmax(1).cpu()
            changed += int((pred != clean_pred[begin : begin + batch_size]).sum())
    return changed / max(int(x.shape[0]), 1)


class UAPDeepFool(UniversalAttack):
    """Universal adversarial perturbation by iterated DeepFool (Moosavi-Dezfooli et al. 2017).

    Args:
        eps: radius of the `norm` ball (default 10/255 for L-inf; required for L2).
        norm: "linf" or "l2".
        delta: stop once the fit-set fooling rate is at least 1 - delta.
        max_passes: most passes over the fit set.
        overshoot: DeepFool's overshoot.
        max_iter: DeepFool's iterations per image; a perturbation is only added when DeepFool
            changed the prediction within them (as in the original code).
        num_candidates: DeepFool's candidate classes (the top-k of the logits).
        batch_size: images whose DeepFool perturbations are computed together against the same
            `v`; they are then added one after the other, projecting after each, as the original
            algorithm does between images (batch_size=1 is the original algorithm exactly).
        class_universal: one delta per class, each fitted on that class's images.
        seed: the per-pass shuffling.
    """

    name = "uap"
    supports_targeted = False

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        delta: float = 0.2,
        max_passes: int = 10,
        overshoot: float = 0.02,
        max_iter: int = 10,
        num_candidates: int = 10,
        batch_size: int = 32,
        **common: Any,
    ) -> None:
        self.norm = choice("norm", norm, NORMS)
        self.eps = _resolve_eps(eps, self.norm)
        self.delta = positive_float("delta", delta, allow_zero=True)
        if self.delta >= 1:
            raise ConfigError(f"delta must be below 1 (the target fooling rate is 1 - delta), got {delta}")
        self.max_passes = positive_int("max_passes", max_passes)
        self.overshoot = positive_float("overshoot", overshoot, allow_zero=True)
        self.max_iter = positive_int("max_iter", max_iter)
        self.num_candidates = positive_int("num_candidates", num_candidates)
        if self.num_candidates < 2:
            raise ConfigError("num_candidates must be at least 2 (the predicted class and one other)")
        super().__init__(batch_size=batch_size, **common)

    @property
    def progress_units(self) -> int:
        return self.max_passes

    def fit(
        self, model: AttackModel, x: Tensor, y: Tensor, *, clean_pred: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Sequence[float]]:
        n = int(x.shape[0])
        v = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=model.device)
        rng = np.random.default_rng(self.seed)
        history: list[float] = []
        for done in range(1, self.max_passes + 1):
            order = torch.from_numpy(rng.permutation(n))
            for chunk in order.split(self.batch_size):
                xb = x[chunk].to(model.device)
                kb = clean_pred[chunk].to(model.device)
                with torch.no_grad():
                    todo = model(model.clip(xb + v)).argmax(1) == kb
                if not bool(todo.any()):
                    continue
                r, converged = deepfool(
                    model,
                    model.clip(xb[todo] + v),
                    num_candidates=self.num_candidates,
                    overshoot=self.overshoot,
                    max_iter=self.max_iter,
                )
                for ri in r[converged]:
                    v = project(v + ri[None], self.norm, self.eps)
            rate = fooling_rate(model, x, clean_pred, v, self.batch_size)
            history.append(rate)
            self.tick(done)
            logger.debug("uap pass %d: fit fooling rate %.3f", done, rate)
            if rate >= 1 - self.delta:
                break
        return v, history


class UAPSGD(UniversalAttack):
    """Universal perturbation learnt by stochastic gradient ascent over minibatches (sgd-uap).

    Each step ascends the mean over the minibatch of a per-image loss capped at `beta` (capping
    keeps already-fooled images from dominating), then projects onto the eps-ball.

    Args:
        eps: radius of the `norm` ball (default 10/255 for L-inf; required for L2).
        norm: "linf" or "l2".
        epochs: passes over the fit set.
        optimizer: "adam", "sgd" (momentum 0.9) or "sign" (signed gradient steps, as in sgd-uap).
        lr: step size; default `eps / 10` per pixel (for L2, `eps / sqrt(dims) / 10`) for adam and
            sign, and that times 1000 for plain sgd, whose gradients are per-image-averaged.
        loss: "ce" (cross-entropy, capped at `beta`) or "margin" (best other logit minus the true
            one, capped at `beta`); targeted: minus the target's loss.
        beta: the per-image cap on the loss.
        batch_size: minibatch size.
        class_universal: one delta per class, each fitted on that class's images.
        seed: minibatch order.
    """

    name = "uap-sgd"

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        epochs: int = 10,
        optimizer: str = "adam",
        lr: float | None = None,
        loss: str = "ce",
        beta: float = 12.0,
        batch_size: int = 32,
        **common: Any,
    ) -> None:
        self.norm = choice("norm", norm, NORMS)
        self.eps = _resolve_eps(eps, self.norm)
        self.epochs = positive_int("epochs", epochs)
        self.optimizer = choice("optimizer", optimizer, OPTIMIZERS)
        self.lr = None if lr is None else positive_float("lr", lr)
        self.loss = choice("loss", loss, UAP_LOSSES)
        self.beta = positive_float("beta", beta)
        super().__init__(batch_size=batch_size, **common)

    @property
    def progress_units(self) -> int:
        return self.epochs

    def _lr(self, dims: int) -> float:
        if self.lr is not None:
            return self.lr
        per_pixel = self.eps if self.norm == "linf" else self.eps / math.sqrt(dims)
        return per_pixel / 10 * (1000.0 if self.optimizer == "sgd" else 1.0)

    def _objective(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        functional = torch.nn.functional
        cls = y if target is None else target
        if self.loss == "ce":
            per_image = functional.cross_entropy(logits, cls, reduction="none")
        else:
            own = logits.gather(1, cls[:, None]).squeeze(1)
            others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
            per_image = others - own
        per_image = per_image.clamp(max=self.beta)
        return per_image.mean() if target is None else -per_image.mean()

    def fit(
        self, model: AttackModel, x: Tensor, y: Tensor, *, clean_pred: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Sequence[float]]:
        n = int(x.shape[0])
        v = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=model.device, requires_grad=True)
        lr = self._lr(math.prod(x.shape[1:]))
        opt: Any = None
        if self.optimizer == "adam":
            opt = torch.optim.Adam([v], lr=lr)
        elif self.optimizer == "sgd":
            opt = torch.optim.SGD([v], lr=lr, momentum=0.9)
        generator = torch.Generator().manual_seed(self.seed)
        history: list[float] = []
        for epoch in range(1, self.epochs + 1):
            fooled = 0
            for chunk in torch.randperm(n, generator=generator).split(self.batch_size):
                xb = x[chunk].to(model.device)
                yb = y[chunk].to(model.device)
                tb = None if target is None else target[chunk].to(model.device)
                with torch.enable_grad():
                    logits = model(model.clip(xb + v))
                    (grad,) = torch.autograd.grad(self._objective(logits, yb, tb), v)
                fooled += int((logits.argmax(1).cpu() != clean_pred[chunk]).sum())
                with torch.no_grad():
                    if opt is None:
                        v += lr * grad.sign()
                    else:
                        v.grad = -grad
                        opt.step()
                    v.copy_(project(v, self.norm, self.eps))
            # the running fooling rate of the epoch's minibatches (v moved during the epoch)
            history.append(fooled / max(n, 1))
            self.tick(epoch)
            logger.debug("uap-sgd epoch %d: running fooling rate %.3f", epoch, history[-1])
        return v.detach(), history


__all__ = ["OPTIMIZERS", "UAPSGD", "UAPDeepFool", "deepfool", "fooling_rate"]
