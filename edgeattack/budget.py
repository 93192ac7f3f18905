"""Perturbation budgets: ε as users write it and read it, and the check that a perturbation keeps to it.

`format_eps(0.0313725, "linf")` gives `8/255` (an L∞ budget on the 1/255 grid is shown as one, so
tables keep the spelling users gave); `measured_norms(delta, norm)` is the per-delta norm in the
budget's own norm; `within_budget(norm_value, eps)` is the comparison every replay applies, with the
float32 slack that clipping in float32 leaves. No torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "BUDGET_ABS_TOLERANCE",
    "BUDGET_REL_TOLERANCE",
    "format_eps",
    "measured_norms",
    "over_budget_note",
    "selection_note",
    "within_budget",
]

BUDGET_REL_TOLERANCE = 1e-5
"""Relative slack of the budget check: float32 clipping (`x0 + clip(delta)` then `- x0`) and a float32
eps can overshoot a float64 eps by a few ulps, never by 1e-5."""

BUDGET_ABS_TOLERANCE = 1e-6
"""Absolute slack of the budget check, for budgets near 0 (one float32 ulp of a [0, 1] pixel is 6e-8)."""


def format_eps(eps: Any, norm: str | None = None) -> str:
    """ε as shown: `8/255` for an L∞ (or unspecified-norm) budget on the 1/255 grid, 4 significant digits
    otherwise (and always for L2, whose budgets are not pixel levels); `-` when there is none."""
    if eps is None:
        return "-"
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    if not math.isfinite(value):
        return str(value)
    if str(norm or "").lower() not in ("l2", "2"):
        scaled = value * 255.0
        if round(scaled) != 0 and abs(scaled - round(scaled)) < 1e-6 * max(1.0, abs(scaled)):
            return f"{round(scaled)}/255"
    return f"{value:.4g}"


def measured_norms(delta: np.ndarray, norm: str) -> np.ndarray | None:
    """Per-delta norm of `delta` [K, ...] in `norm` ("linf" or "l2"; None for any other norm)."""
    if norm not in ("linf", "l2"):
        return None
    flat = np.asarray(delta, dtype=np.float64).reshape(delta.shape[0], -1)
    if flat.shape[1] == 0:
        return np.zeros(flat.shape[0])
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat**2).sum(axis=1))


def within_budget(value: float | np.ndarray, eps: float) -> bool | np.ndarray:
    """Whether a measured norm keeps to `eps`, up to the float32 slack of `BUDGET_*_TOLERANCE`."""
    return value <= eps * (1.0 + BUDGET_REL_TOLERANCE) + BUDGET_ABS_TOLERANCE


def over_budget_note(label: str, norm: str | None, eps: float | None, measured: float | None) -> str:
    """The line a replay of an over-budget artifact prints beside its results."""
    return (
        f"{label}: OVER BUDGET, replayed with --allow-over-budget: declared {norm} eps {format_eps(eps, norm)}, "
        f"measured largest delta {format_eps(measured, norm)}"
    )


def selection_note(selection: str) -> str:
    """How a split's images were chosen, for a table title: '' for all of them."""
    shown = {"stratified": "a seeded class-stratified subset", "random": "a seeded random subset", "first": "the first of the split"}
    return f"; {shown[selection]}" if selection in shown else ""
