"""FAB: the Fast Adaptive Boundary attack, untargeted and AutoAttack's targeted FAB-T (L-inf, L2).

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020 (arXiv:1907.02044). Each iteration linearises the model at the current point `x1`, takes
the closest linearised decision boundary (untargeted: over all classes; targeted: the one between
the label and the target), and projects both `x1` and the clean image `x0` onto it within the box
(`fab_projections`). The next point is the convex combination
`(x1 + eta d1)(1 - a) + (x0 + eta d2) a` with `a = min(|d1| / (|d1| + |d2|), alpha_max)`: biased
towards the clean image, so the perturbation stays small. When the point is adversarial its norm is
recorded (the smallest one kept) and it is pulled back towards `x0` by `beta` (the backward step).
Restarts after the first start from a random point at half the eps (L-inf: uniform; L2: Gaussian
direction), drawn per image from (seed, dataset index).

AutoAttack's defaults: 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9; FAB-T aims in turn at
the 9 classes with the largest clean logits after the prediction, one restart each, on the images
still robust, and counts any misclassification. With `eps` a result counts only when its norm is
within eps (the image is then left once it has one); without `eps` FAB is a minimal-norm attack and
returns the smallest adversarial perturbation it found for each image (the clean image where none).
"""

from __future__ import annotations

from typing import Any

from edgeattack.attacks.whitebox.apgd_core import differentiable_logits, require_gradients
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.fab_projections import project_onto_hyperplane
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import per_image_norm
from edgeattack.attacks.whitebox.outputs import RunResult
from edgeattack.attacks.whitebox.robust_checks import (
    Perturbed,
    check_classes,
    check_target_mode,
    non_negative_int,
    ranked_class,
    threat_norm,
    view_rows,
)
from edgeattack.attacks.whitebox.rowrandom import draw_rows, row_generators
from edgeattack.attacks.whitebox.validation import positive_float, positive_int
from edgeattack.errors import ConfigError

START_SCALE = {"linf": 0.3, "l2": 1.0}
"""The reference's restart radius without eps (times the width of the bounds)."""


class FAB(WhiteBoxAttack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020), L-inf or L2.

    Args:
        eps: None for the minimal-norm attack; a radius to count only results within it (AutoAttack).
        norm: "linf" or "l2".
        steps: iterations per run (AutoAttack: 100).
        n_restarts: runs per target; all but the first start from a random point.
        n_target_classes: 0 for the untargeted FAB (or `target=`); k > 0 for FAB-T over the top k classes.
        alpha_max: the largest weight of the step from the clean image (0.1).
        eta: overshoot of the projections (1.05).
        beta: backward step towards the clean image after an adversarial point (0.9).
    """

    name = "fab"

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        steps: int = 100,
        n_restarts: int = 1,
        n_target_classes: int = 0,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        **common: Any,
    ) -> None:
        self.norm = threat_norm(type(self).__name__, norm)
        self.eps = None if eps is None else positive_float("eps", eps)
        self.steps = positive_int("steps", steps)
        self.n_restarts = positive_int("n_restarts", n_restarts)
        self.n_target_classes = non_negative_int("n_target_classes", n_target_classes)
        self.alpha_max = positive_float("alpha_max", alpha_max)
        self.eta = positive_float("eta", eta)
        self.beta = positive_float("beta", beta)
        if self.alpha_max > 1 or self.beta >= 1:
            raise ConfigError(f"FAB needs alpha_max in (0, 1] and beta in (0, 1), got {alpha_max!r} and {beta!r}")
        super().__init__(**common)

    @property
    def label(self) -> str:
        return "fab-t" if self.n_target_classes else "fab"

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        return RunResult(adversarial=self.perturb(model, x, y, target=target, ids=self._row_ids).adversarial)

    def perturb(
        self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None = None, ids: Any, stream: int = 0
    ) -> Perturbed:
        """The attack on batch `x` (dataset indices `ids`); images the model already gets wrong are left as they are."""
        check_target_mode(self.label, target, self.n_target_classes)
        require_gradients(model, x)
        with torch.no_grad():
            clean = model(x)
        check_classes(self.label, int(clean.shape[1]), n_target_classes=self.n_target_classes)
        pred = clean.argmax(1)
        eligible = pred != target if target is not None else pred == y
        if target is not None:
            aims: list[Tensor | None] = [target]
        elif self.n_target_classes:
            aims = [ranked_class(clean, r) for r in range(2, self.n_target_classes + 2)]
        else:
            aims = [None]
        generators = row_generators(self.seed, ids, stream)
        best = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
        for aim in aims:
            for restart in range(self.n_restarts):
                done = best_norm <= self.eps if self.eps is not None else torch.zeros_like(eligible)
                rows = (eligible & ~done).nonzero().flatten()
                if rows.numel() == 0:
                    break
                adv, norms = self._single_run(
                    model, x[rows], y[rows], None if aim is None else aim[rows],
                    success_is_aim=target is not None, generators=generators, rows=rows, random_start=restart > 0,
                )
                better = norms < best_norm[rows]
                best[rows[better]] = adv[better]
                best_norm[rows[better]] = norms[better]
        ok = best_norm <= self.eps if self.eps is not None else torch.isfinite(best_norm)
        return Perturbed(adversarial=torch.where(view_rows(ok, x), best, x), found=ok)

    # one run -------------------------------------------------------------------------------------
    def _single_run(
        self,
        model: AttackModel,
        x0: Tensor,
        y: Tensor,
        aim: Tensor | None,
        *,
        success_is_aim: bool,
        generators: list[Any],
        rows: Tensor,
        random_start: bool,
    ) -> tuple[Tensor, Tensor]:
        """(smallest adversarial found, its norm; inf where none) for each image of `x0`."""
        n = x0.shape[0]
        x1 = self._start(model, x0, generators, rows) if random_start else x0.clone()
        adv = x0.clone()
        res = torch.full((n,), float("inf"), device=x0.device)
        live = torch.ones(n, dtype=torch.bool, device=x0.device)
        for _ in range(self.steps):
            idx = live.nonzero().flatten()
            if idx.numel() == 0:
                break
            xa, xc = x1[idx], x0[idx]
            df, dg = self._boundaries(model, xa, y[idx], None if aim is None else aim[idx])
            dual = dg.flatten(2).abs().sum(2) if self.norm == "linf" else dg.flatten(2).norm(dim=2)
            nearest = (df.abs() / (dual + 1e-12)).argmin(1)
            k = torch.arange(idx.numel(), device=x0.device)
            w = dg[k, nearest].flatten(1)
            b = -df[k, nearest] + (w * xa.flatten(1)).sum(1)
            steps = project_onto_hyperplane(
                torch.cat((xa.flatten(1), xc.flatten(1))), torch.cat((w, w)), torch.cat((b, b)), self.norm, model.bounds
            )
            lengths = per_image_norm(steps, self.norm).clamp_min(1e-8)
            d1, d2 = steps[: idx.numel()].view_as(xa), steps[idx.numel() :].view_as(xa)
            a1, a2 = lengths[: idx.numel()], lengths[idx.numel() :]
            alpha = view_rows((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), xa)
            moved = model.clip((xa + self.eta * d1) * (1 - alpha) + (xc + self.eta * d2) * alpha)
            with torch.no_grad():
                pred = model(moved).argmax(1)
            hit = pred == aim[idx] if success_is_aim and aim is not None else pred != y[idx]
            if bool(hit.any()):
                norms = per_image_norm(moved[hit] - xc[hit], self.norm)
                rows_hit = idx[hit]
                smaller = norms < res[rows_hit]
                adv[rows_hit[smaller]] = moved[hit][smaller]
                res[rows_hit[smaller]] = norms[smaller]
                moved[hit] = xc[hit] + (moved[hit] - xc[hit]) * self.beta
            x1[idx] = moved
            if self.eps is not None:
                live &= ~(res <= self.eps)
        return adv, res

    def _boundaries(self, model: AttackModel, x: Tensor, y: Tensor, aim: Tensor | None) -> tuple[Tensor, Tensor]:
        """Logit differences `df` [n, K] and their input gradients `dg` [n, K, ...] at `x`.

        Untargeted: every class minus the label (the label's own entry is set to 1e10 so it is never
        the nearest); targeted: the one difference aim minus label.
        """
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = differentiable_logits(model, xg).float()
            rows = torch.arange(x.shape[0], device=x.device)
            if aim is not None:
                diff = logits[rows, aim] - logits[rows, y]
                (grad,) = torch.autograd.grad(diff.sum(), xg)
                return diff.detach().unsqueeze(1), grad.unsqueeze(1)
            classes = logits.shape[1]
            grads = [
                torch.autograd.grad(logits[:, c].sum(), xg, retain_graph=c < classes - 1)[0] for c in range(classes)
            ]
        g = torch.stack(grads, 1)
        z = logits.detach()
        df = z - z[rows, y].unsqueeze(1)
        dg = g - g[rows, y].unsqueeze(1)
        df[rows, y] = 1e10
        return df, dg

    def _start(self, model: AttackModel, x0: Tensor, generators: list[Any], rows: Tensor) -> Tensor:
        width = model.bounds[1] - model.bounds[0]
        radius = self.eps if self.eps is not None else START_SCALE[self.norm] * width
        shape = tuple(x0.shape[1:])
        if self.norm == "linf":
            t = draw_rows(generators, rows.cpu(), shape, "uniform").to(x0.device, x0.dtype) * 2 - 1
        else:
            t = draw_rows(generators, rows.cpu(), shape, "normal").to(x0.device, x0.dtype)
        t = t / view_rows(per_image_norm(t, self.norm).clamp_min(1e-12), t)
        return model.clip(x0 + 0.5 * radius * t)


class FABT(FAB):
    """AutoAttack's FAB-T: FAB towards each of the top `n_target_classes` classes (default 9), counting any
    misclassification. Args: as `FAB`, with `n_target_classes=9` by default."""

    name = "fab-t"

    def __init__(self, *, n_target_classes: int = 9, **params: Any) -> None:
        if not n_target_classes:
            raise ConfigError("fab-t is the multi-targeted FAB: n_target_classes must be at least 1 (use fab)")
        super().__init__(n_target_classes=n_target_classes, **params)


__all__ = ["FAB", "FABT", "START_SCALE"]
