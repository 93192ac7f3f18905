"""edgeattack: compressed Vision Transformers under attack, as deployed.

Importing the package is cheap: torch, timm, onnxruntime and tensorrt are imported only by the
modules that need them (see DESIGN.md, "the torch line").
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgeattack.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    EdgeAttackError,
    EngineError,
    MissingDependencyError,
    ModelNotFoundError,
)

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "EdgeAttackError",
    "EngineError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "__version__",
]
