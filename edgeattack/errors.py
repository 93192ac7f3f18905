"""The errors a user can act on. The CLI turns each into one line and a non-zero exit."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class EdgeAttackError(Exception):
    """Base class of every error edgeattack raises on purpose."""


class DataError(EdgeAttackError):
    """A dataset that cannot be read, or holds values it must not (NaN, inf, wrong shape)."""


class ArtifactError(EdgeAttackError):
    """A perturbation artifact that is corrupt, unsafe, or does not fit the data it is replayed on."""


class EngineError(EdgeAttackError):
    """An engine that cannot be opened or run, or whose inputs do not match."""


class ConfigError(EdgeAttackError):
    """An option or parameter whose value is not allowed."""


class ModelNotFoundError(EdgeAttackError, KeyError):
    """A model name the zoo does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResultError(EdgeAttackError):
    """A result document that cannot be read, is malformed, or comes from a newer edgeattack."""


class TrainingDivergedError(EdgeAttackError):
    """Training stopped at a non-finite loss or gradient; `model` holds the last good weights."""

    def __init__(self, message: str, model: Any = None, report: Any = None) -> None:
        super().__init__(message)
        self.model = model
        self.report = report


class MissingDependencyError(EdgeAttackError, ImportError):
    """An optional dependency that this feature needs is not installed."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' suffix with the closest choices, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
