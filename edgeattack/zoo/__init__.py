"""The model zoo: registered names, typed configs, shipped weights.

`list_models`, `get_entry` and the manifest need no torch; `create_model` (in
`edgeattack.zoo.factory`) builds torch modules and is imported lazily here.
"""

from __future__ import annotations

from typing import Any

from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.manifest import ManifestEntry, read_manifest
from edgeattack.zoo.registry import ModelEntry, get_entry, is_registered, list_models, register_model

__all__ = [
    "ManifestEntry",
    "ModelConfig",
    "ModelEntry",
    "create_model",
    "get_entry",
    "is_registered",
    "list_models",
    "read_manifest",
    "register_model",
]


def create_model(name: str, **kwargs: Any) -> Any:
    """Build zoo model `name` (see `edgeattack.zoo.factory.create_model`); imports torch."""
    from edgeattack.zoo.factory import create_model as _create

    return _create(name, **kwargs)
