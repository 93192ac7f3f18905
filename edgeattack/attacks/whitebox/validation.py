"""Argument checks shared by the attacks: hyper-parameter validators and array conversion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.attacks.whitebox.model import torch
from edgeattack.errors import ConfigError, DataError, did_you_mean


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (int, np.integer)):
        return np.asarray(value)
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numpy array or torch tensor, got {type(value).__name__}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1, or ConfigError."""
    return _positive_int(name, value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """`value` as a finite float > 0 (or >= 0), or ConfigError."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")
    return number


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, or ConfigError naming them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}{did_you_mean(str(value), choices)}")
    return str(value)


__all__ = [
    "choice",
    "positive_float",
    "positive_int",
]
