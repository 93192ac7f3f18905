"""Black-box attacks by name, and the `NAME[:key=value,...]` specs of `edgeattack evaluate --blackbox`.

`parse_spec("square:eps=8/255,norm=linf,target=3")` gives a `BlackBoxSpec`; `spec.build()` makes
the attack. Unknown names and parameters are a ConfigError that lists the valid ones; values are
converted to the type of the parameter's default (`8/255` is accepted for floats). Three keys are
not attack hyper-parameters: `target` (a class index, or `random` for a seeded random class other
than the label per image), `budget` (overrides the evaluation's per-image query budget) and `label`
(a name for the result). No torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from edgeattack.attacks.blackbox.base import BlackBoxAttack
from edgeattack.budget import format_eps
from edgeattack.errors import ConfigError, did_you_mean

__all__ = ["BLACKBOX_ATTACKS", "BlackBoxSpec", "attack_class", "describe_attacks", "parse_spec"]

BLACKBOX_ATTACKS: dict[str, str] = {
    "spatial": "edgeattack.attacks.blackbox.spatial:Spatial",
    "salt_and_pepper": "edgeattack.attacks.blackbox.noise:SaltAndPepper",
    "blended_noise": "edgeattack.attacks.blackbox.noise:BlendedUniformNoise",
    "hopskipjump": "edgeattack.attacks.blackbox.hopskipjump:HopSkipJump",
    "square": "edgeattack.attacks.blackbox.square:SquareAttack",
}
"""Name -> "module:Class"; every class is a BlackBoxAttack."""

ALIASES = {"saltandpepper": "salt_and_pepper", "sp": "salt_and_pepper", "hsj": "hopskipjump", "blended": "blended_noise"}
RUN_KEYS = ("target", "budget", "label")


def attack_class(name: str) -> type[BlackBoxAttack]:
    """The class of attack `name` (or an alias); ConfigError listing the valid names."""
    key = ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    if key not in BLACKBOX_ATTACKS:
        raise ConfigError(
            f"unknown black-box attack {name!r}{did_you_mean(name, BLACKBOX_ATTACKS)}; "
            f"choose one of {', '.join(BLACKBOX_ATTACKS)}"
        )
    module, _, attr = BLACKBOX_ATTACKS[key].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def describe_attacks() -> dict[str, dict[str, Any]]:
    """Every attack's kind, norms and hyper-parameters with defaults (for `--help` and errors)."""
    described = {}
    for name in BLACKBOX_ATTACKS:
        cls = attack_class(name)
        described[name] = {"kind": cls.kind, "norms": cls.norms, "minimal": cls.minimal, "params": cls.parameters()}
    return described


@dataclass(frozen=True)
class BlackBoxSpec:
    """One attack to run: its class name, hyper-parameters and run settings."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    target: int | str | None = None
    budget: int | None = None
    label: str | None = None
    text: str | None = None
    """The spec as the user wrote it (`parse_spec` keeps it), so results are labelled in their spelling."""

    @property
    def display(self) -> str:
        """The label of results: `label=`, else the user's own spelling, else one built from the fields
        (ε as `k/255` where it is one, the target and budget included)."""
        if self.label:
            return self.label
        if self.text:
            return self.text
        shown = [f"{k}={format_eps(v) if k == 'eps' else v}" for k, v in self.params.items()]
        shown += [f"{k}={v}" for k, v in (("target", self.target), ("budget", self.budget)) if v is not None]
        return f"{self.name}:{','.join(shown)}" if shown else self.name

    def build(self, **defaults: Any) -> BlackBoxAttack:
        """The attack; `defaults` (e.g. seed) apply where the spec does not set them."""
        cls = attack_class(self.name)
        params = {**{k: v for k, v in defaults.items() if k in cls.parameters()}, **self.params}
        return cls(**params)

    def targets_for(self, labels: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray | None:
        """Per-image target classes, or None for an untargeted attack."""
        if self.target is None:
            return None
        if self.target == "random":
            rng = np.random.default_rng(seed)
            shift = rng.integers(1, num_classes, size=labels.shape)
            return (labels + shift) % num_classes
        target = int(self.target)
        if not 0 <= target < num_classes:
            raise ConfigError(f"target class {target} is outside 0..{num_classes - 1}")
        return np.full(labels.shape, target, dtype=np.int64)


def _convert(attack: str, key: str, raw: str, default: Any) -> Any:
    text = raw.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or (default is None and key in ("eps", "p_init")):
            return None if text.lower() == "none" else float(Fraction(text))
        if default is None:
            if text.lower() == "none":
                return None
            try:
                return float(Fraction(text))
            except ValueError:
                return text
        return text
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{attack}: cannot read {key}={raw!r} as {type(default).__name__}") from exc


def parse_spec(text: str) -> BlackBoxSpec:
    """`NAME[:key=value,...]` -> BlackBoxSpec, checked against the attack's parameters."""
    name, _, rest = text.strip().partition(":")
    if not name:
        raise ConfigError(f"empty black-box attack spec {text!r}; expected NAME[:key=value,...]")
    cls = attack_class(name)
    valid = cls.parameters()
    params: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"{cls.name}: expected key=value, got {item!r}")
        if key in RUN_KEYS:
            run[key] = value.strip()
            continue
        if key not in valid:
            raise ConfigError(
                f"{cls.name} has no parameter {key!r}{did_you_mean(key, valid)}; valid: "
                f"{', '.join(f'{k}={v}' for k, v in valid.items())}, and {', '.join(RUN_KEYS)}"
            )
        params[key] = _convert(cls.name, key, value, valid[key])
    target: int | str | None = run.get("target")
    if target is not None and target != "random":
        try:
            target = int(target)
        except ValueError as exc:
            raise ConfigError(f"target must be a class index or 'random', got {target!r}") from exc
    budget = None
    if "budget" in run:
        try:
            budget = int(run["budget"])
        except ValueError as exc:
            raise ConfigError(f"budget must be an integer, got {run['budget']!r}") from exc
        if budget < 1:
            raise ConfigError(f"the query budget must be at least 1, got {budget}")
    written = ",".join(part.strip() for part in rest.split(",") if part.strip())
    spec = BlackBoxSpec(
        name=cls.name,
        params=params,
        target=target,
        budget=budget,
        label=run.get("label"),
        text=f"{name.strip()}:{written}" if written else name.strip(),
    )
    spec.build()  # hyper-parameter values are checked now, before anything runs
    return spec
