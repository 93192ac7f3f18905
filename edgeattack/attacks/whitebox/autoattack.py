"""AutoAttack: APGD-CE, APGD-T, FAB-T and Square in sequence, the per-image worst case, with its breakdown.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), and the versions of the reference code
(fra31/auto-attack):

- `standard`: APGD-CE (1 restart), APGD-T (targeted DLR, 9 target classes, 1 restart each), FAB-T
  (9 target classes, 1 restart each), Square (5000 queries, p_init 0.8); 100 iterations for APGD and FAB;
- `plus`: APGD-CE and APGD-DLR (5 restarts each), FAB (untargeted, 5 restarts), Square, APGD-T, FAB-T;
- `rand` (randomised defences): APGD-CE and APGD-DLR with EOT over 20 passes, 1 restart each.

Each attack runs only on the images that every earlier one left correctly classified, and an image
counts as broken when a fresh forward pass on the attack's output misclassifies it; robust accuracy
is the fraction no attack broke. The output records for every image which attack broke it
(`broken_by`, an index into ("clean", *attack names); -1 for robust images, 0 for images the model
gets wrong without an attack), and that breakdown goes into the per-image artifact. A robust
image keeps, of the attacks' final points, the one with the smallest margin (label logit minus the
best other), so its delta is the closest call when the artifact is replayed on a deployed engine.

All random draws are per image (seed, dataset index, attack number), so the result of an image does
not depend on the batch or on which other images are still robust.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeattack.artifact_breakdown import CLEAN, NOT_BROKEN
from edgeattack.attacks.whitebox.apgd import APGD, default_eps
from edgeattack.attacks.whitebox.apgd_core import require_gradients
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.fab import FAB
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.outputs import RunResult
from edgeattack.attacks.whitebox.robust_checks import Perturbed, check_classes, threat_norm
from edgeattack.attacks.whitebox.square import Square
from edgeattack.attacks.whitebox.validation import choice, positive_int

logger = logging.getLogger(__name__)

VERSIONS = ("standard", "plus", "rand")
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
"""The attacks of each version, in the order they run (the reference's `attacks_to_run`)."""
PLUS_RESTARTS = 5
RAND_EOT_ITER = 20


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Per image: the label's logit minus the best other one (negative = misclassified)."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    return own - logits.scatter(1, y[:, None], float("-inf")).amax(1)


class AutoAttack(WhiteBoxAttack):
    """AutoAttack (Croce & Hein 2020): a fixed sequence of attacks, the worst case per image.

    Args:
        eps: radius of the `norm` ball (default 8/255 L-inf, 0.5 L2).
        norm: "linf" or "l2".
        version: "standard", "plus" or "rand" (see the module doc).
        steps: iterations of APGD and FAB (AutoAttack: 100).
        n_target_classes: target classes of APGD-T and FAB-T (AutoAttack: 9; the model needs more classes).
        n_queries: Square's query budget (AutoAttack: 5000).
        eot_iter: EOT passes per APGD gradient; None: 20 for "rand", 1 otherwise.

    Untargeted only. `broken_by` in the output and the artifact names the attack that broke each image.
    """

    name = "autoattack"
    supports_targeted = False

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        version: str = "standard",
        steps: int = 100,
        n_target_classes: int = 9,
        n_queries: int = 5000,
        eot_iter: int | None = None,
        **common: Any,
    ) -> None:
        self.norm = threat_norm("AutoAttack", norm)
        self.eps = default_eps(eps, self.norm)
        self.version = choice("version", version, VERSIONS)
        self.steps = positive_int("steps", steps)
        self.n_target_classes = positive_int("n_target_classes", n_target_classes)
        self.n_queries = positive_int("n_queries", n_queries)
        default_eot = RAND_EOT_ITER if self.version == "rand" else 1
        self.eot_iter = default_eot if eot_iter is None else positive_int("eot_iter", eot_iter)
        super().__init__(**common)
        self.components = tuple((label, self._component(label)) for label in VERSION_ATTACKS[self.version])

    @property
    def breakers(self) -> tuple[str, ...]:
        """The names `broken_by` indexes: "clean", then the attacks in the order they run."""
        return (CLEAN, *(label for label, _ in self.components))

    def _component(self, label: str) -> APGD | FAB | Square:
        common = {"seed": self.seed, "batch_size": self.batch_size, "precision": self.precision}
        restarts = PLUS_RESTARTS if self.version == "plus" else 1
        apgd = {"eps": self.eps, "norm": self.norm, "steps": self.steps, "eot_iter": self.eot_iter, **common}
        fab = {"eps": self.eps, "norm": self.norm, "steps": self.steps, **common}
        if label in ("apgd-ce", "apgd-dlr"):
            return APGD(loss=label[5:], n_restarts=restarts, **apgd)
        if label == "apgd-t":
            return APGD(loss="dlr", n_target_classes=self.n_target_classes, n_restarts=1, **apgd)
        if label == "fab":
            return FAB(n_restarts=restarts, **fab)
        if label == "fab-t":
            return FAB(n_target_classes=self.n_target_classes, n_restarts=1, **fab)
        return Square(eps=self.eps, norm=self.norm, n_queries=self.n_queries, p_init=0.8, n_restarts=1, **common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        with torch.no_grad():
            clean_logits = model(x)
        self._check(model, x, int(clean_logits.shape[1]))
        ids = np.asarray(self._row_ids, dtype=np.int64)
        n = x.shape[0]
        robust = clean_logits.argmax(1) == y
        broken_by = torch.where(robust, NOT_BROKEN, 0).to(torch.int64)
        out, logits_out = x.clone(), clean_logits.clone()
        closest = margin(clean_logits, y)
        for number, (label, attack) in enumerate(self.components, start=1):
            rows = robust.nonzero().flatten()
            if rows.numel() == 0:
                break
            result: Perturbed = attack.perturb(model, x[rows], y[rows], ids=ids[rows.cpu().numpy()], stream=number)
            with torch.no_grad():
                logits = model(result.adversarial)
            gap = margin(logits, y[rows])
            broke = gap < 0
            take = broke | (gap < closest[rows])
            out[rows[take]] = result.adversarial[take]
            logits_out[rows[take]] = logits[take]
            closest[rows[take]] = gap[take]
            broken_by[rows[broke]] = number
            robust[rows[broke]] = False
            logger.info("%s: robust accuracy after %s: %.4f", self.name, label, float(robust.float().mean()))
        evaluated = torch.ones(n, dtype=torch.bool, device=x.device)
        return RunResult(
            adversarial=out,
            logits=logits_out,
            evaluated=evaluated,
            clean_logits=clean_logits,
            broken_by=broken_by,
            breakers=self.breakers,
        )

    def _check(self, model: AttackModel, x: Tensor, num_classes: int) -> None:
        """Every component's class requirement, and a differentiable model, before any attack runs."""
        labels = VERSION_ATTACKS[self.version]
        targeted = any(label in ("apgd-t", "fab-t") for label in labels)
        fewest = 4 if "apgd-t" in labels else 3
        check_classes(
            f"autoattack ({self.version})",
            num_classes,
            n_target_classes=self.n_target_classes if targeted else 0,
            targeted="apgd-t" in labels,
            fewest=fewest,
        )
        require_gradients(model, x)


__all__ = ["VERSIONS", "VERSION_ATTACKS", "AutoAttack", "margin"]
