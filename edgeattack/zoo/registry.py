"""Model registry: names -> lazily imported entry points (timm-style, without importing every model).

An entry is registered by name with a "module:function" target, its config and family, so listing
the zoo imports nothing heavy; `create_model` imports the target on first use.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeattack.errors import ModelNotFoundError, did_you_mean
from edgeattack.zoo.config import ModelConfig


@dataclass(frozen=True)
class ModelEntry:
    """One registered model name."""

    name: str
    target: str
    config: ModelConfig
    description: str = ""
    shipped: bool = False
    weights_of: str = ""
    """The shipped model whose weights this entry runs on (a parameter-free mechanism such as ATS)."""

    @property
    def family(self) -> str:
        return self.config.family

    def load_target(self) -> Callable[..., Any]:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    target: str,
    config: ModelConfig,
    *,
    description: str = "",
    shipped: bool = False,
    weights_of: str = "",
) -> ModelEntry:
    """Register `name`; `target` is "module:function" called as function(name, config, **kwargs)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    entry = ModelEntry(
        name=name, target=target, config=config, description=description, shipped=shipped, weights_of=weights_of
    )
    _REGISTRY[name] = entry
    return entry


def get_entry(name: str) -> ModelEntry:
    """The entry of `name`, or ModelNotFoundError suggesting close names."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}") from None


def list_models(pattern: str = "*", *, family: str | None = None) -> list[ModelEntry]:
    """Entries whose name matches the glob `pattern` (and `family`), sorted by name."""
    _ensure_builtin()
    return [
        entry
        for name, entry in sorted(_REGISTRY.items())
        if fnmatch.fnmatch(name, pattern) and (family is None or entry.family == family)
    ]


def is_registered(name: str) -> bool:
    _ensure_builtin()
    return name in _REGISTRY


def _ensure_builtin() -> None:
    importlib.import_module("edgeattack.zoo.catalog")
