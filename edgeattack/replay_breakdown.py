"""The per-attack breakdown of a worst-case artifact (AutoAttack) replayed on one engine. No torch.

An artifact with `broken_by` (`artifact_breakdown`) says, per image, which sub-attack produced the
delta that broke the *source* model (0 "clean": wrong without attack; -1: robust on the source).
Replayed on an engine, `replay_breakdown` counts per name (clean, each sub-attack, robust):

- `source`: images of that name on the source (for a sub-attack: the images whose delta it
  produced, all of which it broke on the source; for "robust": the images no attack broke there);
- `engine_broken`: of those, how many the engine misclassifies after the perturbation;

plus the transfer counts `robust_source_broken_engine` (robust on the source, misclassified by the
engine) and `broken_source_robust_engine` (broken on the source, right on the engine), and the
robust accuracy on both sides over the replayed images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeattack.artifact_breakdown import NOT_BROKEN

if TYPE_CHECKING:
    from edgeattack.artifacts import PerturbationArtifact

__all__ = ["BreakdownRow", "ReplayBreakdown", "artifact_replay_breakdown", "replay_breakdown"]

ROBUST = "robust"


@dataclass(frozen=True)
class BreakdownRow:
    """One name of the breakdown: images of it on the source, and how many the engine gets wrong."""

    name: str
    source: int
    engine_broken: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "engine_broken": self.engine_broken}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> BreakdownRow:
        return cls(str(doc["name"]), int(doc["source"]), int(doc["engine_broken"]))


@dataclass(frozen=True)
class ReplayBreakdown:
    """The breakdown of one replayed artifact on one engine (module docstring)."""

    images: int
    rows: tuple[BreakdownRow, ...]
    robust_source_broken_engine: int
    broken_source_robust_engine: int

    @property
    def source_robust_acc(self) -> float | None:
        """Robust accuracy on the source model over the replayed images (fraction never broken)."""
        return self._fraction(self.row(ROBUST).source)

    @property
    def engine_robust_acc(self) -> float | None:
        """Robust accuracy on the engine over the same images (fraction it classifies correctly)."""
        broken = sum(row.engine_broken for row in self.rows)
        return self._fraction(self.images - broken)

    def _fraction(self, count: int) -> float | None:
        return count / self.images if self.images else None

    def row(self, name: str) -> BreakdownRow:
        """The row called `name`; KeyError if there is none."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI summary."""

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        parts = [f"{row.name} {row.engine_broken}/{row.source}" for row in self.rows]
        return [
            f"robust accuracy: source {pct(self.source_robust_acc)}, engine {pct(self.engine_robust_acc)} "
            f"({self.images} images)",
            "misclassified on the engine / images per source breaker: " + ", ".join(parts),
            f"robust on source, broken on engine: {self.robust_source_broken_engine}; "
            f"broken on source, robust on engine: {self.broken_source_robust_engine}",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "rows": [row.to_dict() for row in self.rows],
            "robust_source_broken_engine": self.robust_source_broken_engine,
            "broken_source_robust_engine": self.broken_source_robust_engine,
            "source_robust_acc": self.source_robust_acc,
            "engine_robust_acc": self.engine_robust_acc,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ReplayBreakdown:
        return cls(
            images=int(doc["images"]),
            rows=tuple(BreakdownRow.from_dict(row) for row in doc["rows"]),
            robust_source_broken_engine=int(doc["robust_source_broken_engine"]),
            broken_source_robust_engine=int(doc["broken_source_robust_engine"]),
        )

    def flat(self, prefix: str = "aa_") -> dict[str, Any]:
        """Columns for result rows and tables: `{prefix}broken_<name>` = "engine_broken/source", transfers."""
        out: dict[str, Any] = {
            f"{prefix}source_robust_acc": self.source_robust_acc,
            f"{prefix}robust_source_broken_engine": self.robust_source_broken_engine,
            f"{prefix}broken_source_robust_engine": self.broken_source_robust_engine,
        }
        for row in self.rows:
            out[f"{prefix}broken_{row.name}"] = f"{row.engine_broken}/{row.source}"
        return out


def replay_breakdown(
    broken_by: np.ndarray, breakers: Sequence[str], labels: np.ndarray, adv_pred: np.ndarray
) -> ReplayBreakdown:
    """The breakdown of rows `broken_by` (source) given the engine's predictions `adv_pred` on them."""
    broken_by = np.asarray(broken_by, dtype=np.int64)
    wrong = np.asarray(adv_pred) != np.asarray(labels)
    if broken_by.shape != wrong.shape:
        raise ValueError(f"broken_by {broken_by.shape} and predictions {wrong.shape} differ in shape")
    codes = [*range(len(breakers)), NOT_BROKEN]
    names = [*breakers, ROBUST]
    rows = tuple(
        BreakdownRow(name, int((broken_by == code).sum()), int((wrong & (broken_by == code)).sum()))
        for name, code in zip(names, codes, strict=True)
    )
    robust = broken_by == NOT_BROKEN
    return ReplayBreakdown(
        images=int(broken_by.size),
        rows=rows,
        robust_source_broken_engine=int((robust & wrong).sum()),
        broken_source_robust_engine=int((~robust & ~wrong).sum()),
    )


def artifact_replay_breakdown(
    artifact: PerturbationArtifact, indices: np.ndarray, labels: np.ndarray, adv_pred: np.ndarray
) -> ReplayBreakdown | None:
    """The breakdown of `artifact` replayed on the dataset `indices`, or None when it carries none."""
    if artifact.broken_by is None or artifact.meta.kind != "per_image":
        return None
    rows = artifact.positions_for(np.asarray(indices))
    return replay_breakdown(artifact.broken_by[rows], artifact.meta.params.get("breakers") or (), labels, adv_pred)
