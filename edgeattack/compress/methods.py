"""`compress(method, teacher, ...)`: one entry point over every compressed family.

Each method takes a trained teacher ZooModel and the digits/ImageFolder splits and returns the
compressed ZooModel (in eval mode, named as its zoo entry) and a JSON-ready report. The methods
live in their own modules and are imported only when used.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, did_you_mean

METHODS: dict[str, str] = {
    "int8-dynamic": "edgeattack.compress.int8_torch:compress_int8_dynamic",
    "distill": "edgeattack.compress.distill:compress_distill",
    "minivit": "edgeattack.compress.minivit:compress_minivit",
    "dynamicvit": "edgeattack.compress.methods:compress_dynamicvit",
    "sparse24": "edgeattack.compress.sparse24:compress_sparse24",
    "avit": "edgeattack.sparsity.avit_train:compress_avit",
    "ats": "edgeattack.sparsity.ats:compress_ats",
    "adavit": "edgeattack.sparsity.adavit_train:compress_adavit",
}
"""Method name -> "module:function" with the signature (teacher, train, val, **params) -> (model, report)."""


def compress(
    method: str, teacher: Any, train: ImageDataset, val: ImageDataset | None = None, **params: Any
) -> tuple[Any, dict[str, Any]]:
    """Compress `teacher` with `method`; unknown methods raise ConfigError listing the valid ones."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown compression method {method!r}{did_you_mean(method, METHODS)}; "
            f"choose one of {', '.join(METHODS)}"
        )
    module_name, _, attr = METHODS[method].partition(":")
    function = getattr(importlib.import_module(module_name), attr)
    return function(teacher, train, val, **params)


def compress_dynamicvit(
    teacher: Any, train: ImageDataset, val: ImageDataset | None = None, **params: Any
) -> tuple[Any, dict[str, Any]]:
    """DynamicViT at keep rate `rho` (0.7, 0.6 or 0.5; required), trained from the teacher."""
    from edgeattack.sparsity.dynamicvit_train import train_dynamicvit

    if "rho" not in params:
        raise ConfigError("dynamicvit needs a keep rate: --rho 0.7, 0.6 or 0.5")
    allowed = {"rho", "epochs", "lr", "name", "prune_locations", "seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"unknown dynamicvit parameter(s) {unknown}; valid: {', '.join(sorted(allowed))}")
    seed = params.pop("seed", None)
    if seed is not None:
        import torch

        torch.manual_seed(int(seed))
    model, report = train_dynamicvit(teacher, train, val, **params)
    return model, dataclasses.asdict(report)
