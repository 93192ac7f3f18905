"""The per-attack breakdown of a worst-case (AutoAttack) run: which attack broke which image. No torch.

`broken_by[i]` is an index into the run's `breakers` names (kept in the artifact's
`meta.params["breakers"]`), or `NOT_BROKEN` (-1) for an image still classified correctly after
every attack. Entry 0 is always "clean": the model already gets the image wrong without any attack
(or after its perturbation was rounded to the 1/255 grid, when nothing broke it); entry k >= 1 the
k-th attack of the sequence, the first one that misclassified it. Robust accuracy is therefore
exactly the fraction of images with `NOT_BROKEN`, and the robust accuracy after the k-th attack the
fraction not broken by any of attacks 0..k.

In an artifact the array is stored as `broken_by.npy` (int16) beside the deltas, one entry per row
(the same order as `indices`), and the counts per name as `meta.params["broken_count"]`; artifacts
without it load as before (`broken_by` None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.errors import ArtifactError

__all__ = [
    "CLEAN",
    "NOT_BROKEN",
    "breakdown_counts",
    "check_broken_by",
    "reconcile",
    "robust_after",
]

NOT_BROKEN = -1
CLEAN = "clean"


def check_broken_by(broken_by: Any, rows: int, breakers: Sequence[str] | None) -> np.ndarray | None:
    """`broken_by` as int64 [rows], or None; ArtifactError if it has the wrong shape or indexes no name."""
    if broken_by is None:
        return None
    values = np.asarray(broken_by)
    if values.shape != (rows,) or (values.size and values.dtype.kind not in "iu"):
        raise ArtifactError(f"broken_by must hold one integer per delta ({rows}), got {values.dtype} {values.shape}")
    values = values.astype(np.int64)
    names = list(breakers or [])
    if values.size and (values.min() < NOT_BROKEN or values.max() >= len(names)):
        raise ArtifactError(
            f"broken_by holds indices {int(values.min())}..{int(values.max())} but meta.params['breakers'] "
            f"names {len(names)} attacks"
        )
    return values


def reconcile(broken_by: np.ndarray, labels: np.ndarray, clean_pred: np.ndarray, adv_pred: np.ndarray) -> np.ndarray:
    """The breakdown made consistent with the final predictions (after clipping and grid rounding).

    Wrong when clean -> 0 ("clean"); right after the attack -> NOT_BROKEN; wrong after the attack
    but claimed by no attack (rounding flipped it) -> 0.
    """
    out = np.asarray(broken_by, dtype=np.int64).copy()
    out[clean_pred != labels] = 0
    out[(adv_pred == labels) & (clean_pred == labels)] = NOT_BROKEN
    out[(adv_pred != labels) & (out == NOT_BROKEN)] = 0
    return out


def breakdown_counts(broken_by: np.ndarray, breakers: Sequence[str]) -> dict[str, int]:
    """Images per breaker name, plus "robust" (NOT_BROKEN)."""
    counts = {name: int((broken_by == k).sum()) for k, name in enumerate(breakers)}
    counts["robust"] = int((broken_by == NOT_BROKEN).sum())
    return counts


def robust_after(broken_by: np.ndarray, breakers: Sequence[str]) -> dict[str, float]:
    """Robust accuracy after each stage: "clean" (clean accuracy), then after each attack in turn."""
    n = max(len(broken_by), 1)
    result = {}
    for k, name in enumerate(breakers):
        still = (broken_by == NOT_BROKEN) | (broken_by > k)
        result[name] = float(still.sum()) / n
    return result
