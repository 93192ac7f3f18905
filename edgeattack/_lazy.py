"""Import heavy optional modules on first use, with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

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
