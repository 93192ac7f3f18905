"""Import heavy optional modules on first use, with an error that says what to install."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from edgeattack.errors import MissingDependencyError

_EXTRA_OF = {
    "torch": "torch",
    "timm": "torch",
    "safetensors": "torch",
    "onnx": "torch",
    "onnxscript": "torch",
    "onnxruntime": "cpu",
    "tensorrt": None,
    "cuda": None,
}


def require(module: str, *, feature: str = "") -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        extra = _EXTRA_OF.get(root)
        hint = (
            f"pip install 'edgeattack[{extra}]'" if extra else f"install {root} (see the README)"
        )
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(f"{root} is needed{what} but cannot be imported ({exc}); {hint}") from exc


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `table[name]` (a module path) on first access of `name`."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
