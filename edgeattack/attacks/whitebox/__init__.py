"""White-box attacks (PyTorch): FGSM, PGD, MI-FGSM, APGD, FAB, Square, AutoAttack, CW-L2, DeepFool,
universal perturbations and DeSparsify.

    from edgeattack.attacks.whitebox import PGD, make_attack
    out = PGD(eps=8 / 255, steps=10)(model, dataset)       # AttackOutput
    out.to_artifact().save("pgd.npz")                      # per-image PerturbationArtifact
    uap = make_attack("uap-sgd", eps=10 / 255)(model, train_split).to_artifact()
    tur = make_attack("desparsify", variant="universal")(create_model("ats_tiny_digits"), train_split)
    aa = make_attack("autoattack", eps=8 / 255, version="standard")(model, dataset)
    aa.summary()["broken_count"]                           # images broken by each attack, and robust

This package imports torch; `edgeattack.attacks` itself does not.
"""

from __future__ import annotations

from typing import Any

from edgeattack.attacks.whitebox.apgd import APGD, APGDT
from edgeattack.attacks.whitebox.autoattack import AutoAttack
from edgeattack.attacks.whitebox.base import UniversalAttack, WhiteBoxAttack
from edgeattack.attacks.whitebox.desparsify import DeSparsify, DeSparsifyPatch, DeSparsifyUniversal, PatchOutput
from edgeattack.attacks.whitebox.fab import FAB, FABT
from edgeattack.attacks.whitebox.gradient import FGSM, L2PGD, MIFGSM, PGD, LinfPGD
from edgeattack.attacks.whitebox.minimal_norm import CarliniWagnerL2, DeepFool
from edgeattack.attacks.whitebox.model import AttackModel, attack_mode
from edgeattack.attacks.whitebox.outputs import AttackOutput, RunResult, UniversalOutput
from edgeattack.attacks.whitebox.square import Square
from edgeattack.attacks.whitebox.uap import UAPSGD, UAPDeepFool, deepfool
from edgeattack.errors import ConfigError, did_you_mean

WHITEBOX_ATTACKS: dict[str, type[WhiteBoxAttack | UniversalAttack]] = {
    "fgsm": FGSM,
    "pgd": LinfPGD,
    "pgd-l2": L2PGD,
    "mifgsm": MIFGSM,
    "uap": UAPDeepFool,
    "uap-sgd": UAPSGD,
    "desparsify": DeSparsify,
    "apgd": APGD,
    "apgd-t": APGDT,
    "fab": FAB,
    "fab-t": FABT,
    "square": Square,
    "autoattack": AutoAttack,
    "cw-l2": CarliniWagnerL2,
    "deepfool": DeepFool,
}
"""Registry: attack name -> class (the name is also the artifact's `method`).

`DeSparsify(variant=...)` builds the per-image class for "single"/"ensemble" and
`DeSparsifyUniversal` / `DeSparsifyPatch` for "universal"/"class-universal"/"patch"; all record
`method="desparsify"`.

Robustness of record (Croce & Hein 2020; `norm="linf"` or `"l2"`, eps in the units of the bounds):

- "apgd": Auto-PGD, `loss="ce"` or `"dlr"`; targeted with `target=` at call time, or AutoAttack's
  multi-targeted version with `n_target_classes=k` (targeted losses, any misclassification counts);
  `eot_iter` averages gradients over passes of a randomised model.
- "apgd-t": APGD-T, the targeted DLR loss towards the top 9 classes (`n_target_classes`).
- "fab" / "fab-t": the Fast Adaptive Boundary attack, untargeted / towards the top 9 classes;
  minimal-norm without `eps`, counting only results within `eps` when given.
- "square": the Square Attack on the torch model (gradient-free, 5000 queries, p_init 0.8).
- "autoattack": `version="standard"` (APGD-CE, APGD-T, FAB-T, Square), `"plus"` or `"rand"` (EOT);
  the per-image worst case, with `broken_by` naming the attack that broke each image.
- "cw-l2" (Carlini-Wagner L2, binary search over c) and "deepfool" (L2 or L-inf): minimal-norm
  attacks whose result per image is the smallest perturbation found; with `eps`, success means a
  norm within eps.
"""


def make_attack(name: str, **params: Any) -> WhiteBoxAttack | UniversalAttack:
    """The attack registered as `name`, built with `params`; ConfigError for an unknown name or parameter."""
    try:
        cls = WHITEBOX_ATTACKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown white-box attack {name!r}{did_you_mean(name, WHITEBOX_ATTACKS)}; "
            f"choose one of {', '.join(WHITEBOX_ATTACKS)}"
        ) from None
    return cls(**params)


__all__ = [
    "APGD",
    "APGDT",
    "FAB",
    "FABT",
    "FGSM",
    "L2PGD",
    "MIFGSM",
    "PGD",
    "UAPSGD",
    "WHITEBOX_ATTACKS",
    "AttackModel",
    "AttackOutput",
    "AutoAttack",
    "CarliniWagnerL2",
    "DeSparsify",
    "DeSparsifyPatch",
    "DeSparsifyUniversal",
    "DeepFool",
    "LinfPGD",
    "PatchOutput",
    "RunResult",
    "Square",
    "UAPDeepFool",
    "UniversalAttack",
    "UniversalOutput",
    "WhiteBoxAttack",
    "attack_mode",
    "deepfool",
    "make_attack",
]
