"""White-box attacks (PyTorch): FGSM, PGD, MI-FGSM, universal perturbations and DeSparsify.

    from edgeattack.attacks.whitebox import PGD, make_attack
    out = PGD(eps=8 / 255, steps=10)(model, dataset)       # AttackOutput
    out.to_artifact().save("pgd.npz")                      # per-image PerturbationArtifact
    uap = make_attack("uap-sgd", eps=10 / 255)(model, train_split).to_artifact()
    tur = make_attack("desparsify", variant="universal")(create_model("ats_tiny_digits"), train_split)

This package imports torch; `edgeattack.attacks` itself does not.
"""

from __future__ import annotations

from typing import Any

from edgeattack.attacks.whitebox.base import UniversalAttack, WhiteBoxAttack
from edgeattack.attacks.whitebox.desparsify import DeSparsify, DeSparsifyPatch, DeSparsifyUniversal, PatchOutput
from edgeattack.attacks.whitebox.gradient import FGSM, L2PGD, MIFGSM, PGD, LinfPGD
from edgeattack.attacks.whitebox.model import AttackModel, attack_mode
from edgeattack.attacks.whitebox.outputs import AttackOutput, RunResult, UniversalOutput
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
}
"""Registry: attack name -> class (the name is also the artifact's `method`).

`DeSparsify(variant=...)` builds the per-image class for "single"/"ensemble" and
`DeSparsifyUniversal` / `DeSparsifyPatch` for "universal"/"class-universal"/"patch"; all record
`method="desparsify"`.
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
    "FGSM",
    "L2PGD",
    "MIFGSM",
    "PGD",
    "UAPSGD",
    "WHITEBOX_ATTACKS",
    "AttackModel",
    "AttackOutput",
    "DeSparsify",
    "DeSparsifyPatch",
    "DeSparsifyUniversal",
    "LinfPGD",
    "PatchOutput",
    "RunResult",
    "UAPDeepFool",
    "UniversalAttack",
    "UniversalOutput",
    "WhiteBoxAttack",
    "attack_mode",
    "deepfool",
    "make_attack",
]
