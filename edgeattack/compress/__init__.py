"""Compression: int8 and its differentiable fake-quant twin (`edgeattack.compress.fakequant`).

Importing this package imports no torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FakeQuantLinear": "edgeattack.compress.fakequant",
    "FakeQuantTwin": "edgeattack.compress.fakequant",
    "twin_agreement": "edgeattack.compress.fakequant",
}

__all__ = ["FakeQuantLinear", "FakeQuantTwin", "twin_agreement"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
