"""How a table cell is shown: the formatters of the report's tables, and MISSING for a missing value.

Shared by `tables` and `pivots`. A missing value (None, NaN) is shown as `–`, a boolean as yes/no,
and a value a formatter cannot format as its text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from edgeattack.report.data import compact_floats, is_missing

__all__ = [
    "MISSING",
    "Formatter",
    "fixed1",
    "fixed2",
    "general",
    "integer",
    "is_numeric_text",
    "label",
    "milli",
    "ms",
    "per_255",
    "percent",
    "percent_list",
    "providers",
    "text",
    "times",
]

MISSING = "–"

_NUMERIC = re.compile(r"^[-+−]?\d[\d.,]*( \d[\d.,]*)*\s?(%|×|/255)?$")
Formatter = Callable[[Any], str]


def _guard(fmt: Formatter) -> Formatter:
    """`fmt` with missing values shown as MISSING and values it cannot format shown as text."""

    def guarded(value: Any) -> str:
        if is_missing(value):
            return MISSING
        if isinstance(value, bool):
            return "yes" if value else "no"
        try:
            return fmt(value)
        except (TypeError, ValueError, OverflowError):
            return str(value)

    return guarded


text = _guard(str)
label = _guard(lambda v: compact_floats(str(v)))
percent = _guard(lambda v: f"{float(v) * 100:.1f}")
ms = _guard(lambda v: f"{float(v):.2f}")
fixed1 = _guard(lambda v: f"{float(v):.1f}")
fixed2 = _guard(lambda v: f"{float(v):.2f}")
times = _guard(lambda v: f"{float(v):.2f}×")
general = _guard(lambda v: f"{float(v):.4g}")
integer = _guard(lambda v: f"{int(v):d}" if float(v).is_integer() else f"{float(v):.1f}")
milli = _guard(lambda v: f"{float(v) * 1e3:.3g}")
per_255 = _guard(lambda v: f"{float(v) * 255:.2f}")
percent_list = _guard(lambda v: " ".join(f"{float(x) * 100:.0f}" for x in v) if v else MISSING)
providers = _guard(lambda v: ", ".join(p.strip().removesuffix("ExecutionProvider") for p in str(v).split(",")))


def is_numeric_text(text: str) -> bool:
    """A formatted cell that holds a number (or numbers, a ratio, an ε): right-aligned by the renderers."""
    return bool(_NUMERIC.match(text))
