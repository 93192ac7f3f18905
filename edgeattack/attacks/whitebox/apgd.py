"""Auto-PGD: APGD with the CE or DLR loss, targeted, and AutoAttack's multi-targeted APGD-T.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690). The iteration, step-size schedule, losses and
EOT are in `apgd_core`; this module adds random starts, restarts and the choice of targets:

- `APGD(loss="ce" | "dlr")`: untargeted; with `target=` at call time, targeted (success = reaching
  the target; -CE of the target or the targeted DLR loss);
- `APGD(n_target_classes=k)` / `APGDT`: AutoAttack's APGD-T, the targeted DLR loss towards each of
  the k classes with the largest clean logits after the prediction in turn (one run of `n_restarts`
  per target, on the images still robust), success = any misclassification.

Each restart starts from a random point of the eps-ball's surface (L-inf: `eps * t / ||t||_inf`
with `t` uniform in [-1, 1]; L2: `eps * t / ||t||_2`, `t` Gaussian), drawn per image from (seed,
dataset index), and runs only on the images not yet broken. An image that is never broken returns
the point of highest loss found (not the clean image), so its delta still transfers when replayed
on a deployed engine.
"""

from __future__ import annotations

from typing import Any

from edgeattack.attacks.whitebox.apgd_core import LOSSES, Objective, apgd_run, min_classes, require_gradients
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
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
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.errors import ConfigError

DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


def default_eps(eps: float | None, norm: str) -> float:
    """`eps`, or the usual budget of the norm (8/255 L-inf, 0.5 L2)."""
    return DEFAULT_EPS[norm] if eps is None else positive_float("eps", eps)


class APGD(WhiteBoxAttack):
    """Auto-PGD (Croce & Hein 2020), L-inf or L2, with the CE or DLR loss.

    Args:
        eps: radius of the `norm` ball in the units of the bounds (default 8/255 L-inf, 0.5 L2).
        norm: "linf" or "l2".
        loss: "ce" (cross-entropy) or "dlr" (Difference of Logits Ratio, invariant to shifting and
            scaling the logits; needs 3 classes, 4 for its targeted form).
        steps: iterations per run (AutoAttack: 100); the checkpoints scale with it.
        n_restarts: random restarts (each on the images still robust).
        n_target_classes: 0 for the untargeted (or `target=`) attack; k > 0 for AutoAttack's
            multi-targeted version over the k top classes after the prediction.
        rho: the fraction of loss increases below which the step size is halved (0.75).
        eot_iter: forward/backward passes averaged per gradient (Expectation over Transformation,
            for randomised models; AutoAttack's rand version uses 20).
        early_stop: an image leaves a run at its first adversarial iterate (robust accuracy unchanged).
    """

    name = "apgd"

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        loss: str = "ce",
        steps: int = 100,
        n_restarts: int = 1,
        n_target_classes: int = 0,
        rho: float = 0.75,
        eot_iter: int = 1,
        early_stop: bool = True,
        **common: Any,
    ) -> None:
        self.norm = threat_norm(type(self).__name__, norm)
        self.eps = default_eps(eps, self.norm)
        self.loss = choice("loss", loss, LOSSES)
        self.steps = positive_int("steps", steps)
        self.n_restarts = positive_int("n_restarts", n_restarts)
        self.n_target_classes = non_negative_int("n_target_classes", n_target_classes)
        self.rho = positive_float("rho", rho)
        if self.rho > 1:
            raise ConfigError(f"rho must be in (0, 1], got {rho!r}")
        self.eot_iter = positive_int("eot_iter", eot_iter)
        self.early_stop = bool(early_stop)
        super().__init__(**common)

    @property
    def label(self) -> str:
        """The AutoAttack name of this configuration: apgd-ce, apgd-dlr, apgd-t (or apgd-t-ce)."""
        if self.n_target_classes:
            return "apgd-t" if self.loss == "dlr" else "apgd-t-ce"
        return f"apgd-{self.loss}"

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        result = self.perturb(model, x, y, target=target, ids=self._row_ids)
        return RunResult(adversarial=result.adversarial)

    def perturb(
        self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None = None, ids: Any, stream: int = 0
    ) -> Perturbed:
        """The attack on batch `x` whose images have dataset indices `ids` (random streams `stream`).

        Images already misclassified (untargeted) or of the target class are left unchanged.
        """
        check_target_mode(self.label, target, self.n_target_classes)
        require_gradients(model, x)
        with torch.no_grad():
            clean = model(x)
        targeted = target is not None or self.n_target_classes > 0
        check_classes(
            self.label,
            int(clean.shape[1]),
            n_target_classes=self.n_target_classes,
            targeted=targeted,
            fewest=min_classes(self.loss, targeted),
        )
        pred = clean.argmax(1)
        eligible = pred != target if target is not None else pred == y
        if target is not None:
            objectives = [Objective(self.loss, y, aim=target, success_is_aim=True)]
        elif self.n_target_classes:
            ranks = range(2, self.n_target_classes + 2)
            objectives = [Objective(self.loss, y, aim=ranked_class(clean, r)) for r in ranks]
        else:
            objectives = [Objective(self.loss, y)]
        generators = row_generators(self.seed, ids, stream)
        out = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for objective in objectives:
            for _ in range(self.n_restarts):
                rows = (eligible & ~found).nonzero().flatten()
                if rows.numel() == 0:
                    return Perturbed(out, found)
                start = self._start(model, x[rows], generators, rows)
                outcome = apgd_run(
                    model, x[rows], start, objective, rows,
                    eps=self.eps, norm=self.norm, steps=self.steps, rho=self.rho,
                    eot_iter=self.eot_iter, early_stop=self.early_stop,
                )
                keep = outcome.found | (outcome.loss > best[rows])
                out[rows[keep]] = outcome.adversarial[keep]
                best[rows[keep]] = outcome.loss[keep]
                found[rows[outcome.found]] = True
        return Perturbed(out, found)

    def _start(self, model: AttackModel, x: Tensor, generators: list[Any], rows: Tensor) -> Tensor:
        """A random point on the eps-sphere around each image (the reference's start), clipped to the bounds."""
        shape = tuple(x.shape[1:])
        if self.norm == "linf":
            t = draw_rows(generators, rows.cpu(), shape, "uniform").to(x.device, x.dtype) * 2 - 1
            t = t / view_rows(per_image_norm(t, "linf").clamp_min(1e-12), t)
        else:
            t = draw_rows(generators, rows.cpu(), shape, "normal").to(x.device, x.dtype)
            t = t / view_rows(per_image_norm(t, "l2") + 1e-12, t)
        return model.clip(x + self.eps * t)


class APGDT(APGD):
    """AutoAttack's APGD-T: APGD on the targeted DLR loss towards each of the top `n_target_classes`
    classes in turn (default 9, as AutoAttack's standard version), success = misclassification.

    Args: as `APGD`, with `loss="dlr"` and `n_target_classes=9` by default.
    """

    name = "apgd-t"

    def __init__(self, *, loss: str = "dlr", n_target_classes: int = 9, **params: Any) -> None:
        if not n_target_classes:
            raise ConfigError("apgd-t is the multi-targeted APGD: n_target_classes must be at least 1 (use apgd)")
        super().__init__(loss=loss, n_target_classes=n_target_classes, **params)


__all__ = ["APGD", "APGDT", "DEFAULT_EPS", "default_eps"]
