"""Checks and small pieces shared by the AutoAttack components (APGD, FAB, Square, AutoAttack, CW, DeepFool).

Each raises a `ConfigError` that says what to do instead: a norm an attack does not support, a
targeted run with no class to target (one class, or `n_target_classes` not below the number of
classes), a loss the model has too few classes for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeattack.attacks.whitebox.model import Tensor
from edgeattack.attacks.whitebox.norms import NORMS
from edgeattack.errors import ConfigError


def threat_norm(attack: str, norm: Any, supported: tuple[str, ...] = NORMS) -> str:
    """`norm` if `attack` supports it, else ConfigError naming the supported ones."""
    if norm not in supported:
        extra = " (AutoAttack's L1 version is not implemented)" if str(norm).lower() in ("l1", "1") else ""
        raise ConfigError(f"{attack} supports norm {' or '.join(supported)}, not {norm!r}{extra}")
    return str(norm)


def non_negative_int(name: str, value: Any) -> int:
    """`value` as an int >= 0, or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_classes(
    attack: str, num_classes: int, *, n_target_classes: int = 0, targeted: bool = False, fewest: int = 2
) -> None:
    """ConfigError when a model with `num_classes` classes cannot be attacked this way.

    `fewest`: the classes the loss needs (DLR: 3, targeted DLR: 4); `n_target_classes` the top
    classes a multi-targeted run (APGD-T, FAB-T) aims at, which must be fewer than the classes.
    """
    if num_classes < 2:
        raise ConfigError(
            f"{attack}: the model has {num_classes} class; an adversarial example needs another class to reach"
        )
    if n_target_classes >= num_classes:
        raise ConfigError(
            f"{attack}: n_target_classes={n_target_classes} needs a model with more than {n_target_classes} classes, "
            f"this one has {num_classes}: pass n_target_classes={num_classes - 1} or fewer"
        )
    if num_classes < fewest:
        kind = "targeted DLR" if targeted else "DLR"
        raise ConfigError(
            f"{attack}: the {kind} loss needs at least {fewest} classes, the model has {num_classes}: use loss='ce'"
        )


def check_target_mode(attack: str, target: Tensor | None, n_target_classes: int) -> None:
    """ConfigError for a run with both an explicit `target` and `n_target_classes` (two kinds of targeting)."""
    if target is not None and n_target_classes:
        raise ConfigError(
            f"{attack}: give either target= (reach that class) or n_target_classes (AutoAttack's multi-targeted "
            "version, which aims at the top classes and counts any misclassification), not both"
        )


def ranked_class(clean_logits: Tensor, rank: int) -> Tensor:
    """Per image, the class with the `rank`-th largest clean logit (rank 2: the runner-up)."""
    return clean_logits.argsort(dim=1)[:, -rank]


def view_rows(values: Tensor, like: Tensor) -> Tensor:
    """A per-image vector shaped to broadcast against images `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class Perturbed:
    """What a component attack gives AutoAttack for a batch: images and whether each one succeeded.

    `adversarial[i]` is the adversarial image where `found[i]`, else the attack's best attempt
    (highest loss, lowest margin) or the clean image.
    """

    adversarial: Tensor
    found: Tensor


__all__ = [
    "Perturbed",
    "check_classes",
    "check_target_mode",
    "non_negative_int",
    "ranked_class",
    "threat_norm",
    "view_rows",
]
