"""Compressed families (int8, distillation, MiniViT, 2:4 sparsity) and the int8 fake-quant twin.

`compress(method, teacher, train, val, **params)` dispatches to every family (DynamicViT lives in
`edgeattack.sparsity`).

Importing this package imports no torch; the names below load their module on first use.
"""

from __future__ import annotations

from edgeattack._lazy import lazy_exports

_LAZY = {
    "FakeQuantLinear": "edgeattack.compress.fakequant",
    "FakeQuantTwin": "edgeattack.compress.fakequant",
    "twin_agreement": "edgeattack.compress.fakequant",
    "METHODS": "edgeattack.compress.methods",
    "compress": "edgeattack.compress.methods",
    "compress_distill": "edgeattack.compress.distill",
    "TrainingError": "edgeattack.compress.distill",
    "fit_student": "edgeattack.compress.distill",
    "compress_minivit": "edgeattack.compress.minivit",
    "MiniVisionTransformer": "edgeattack.compress.minivit",
    "MiniDeiT": "edgeattack.compress.mini_deit",
    "compress_sparse24": "edgeattack.compress.sparse24",
    "is_2to4_sparse": "edgeattack.compress.sparse24",
    "prune_2to4": "edgeattack.compress.sparse24",
    "compress_int8_dynamic": "edgeattack.compress.int8_torch",
    "quantize_dynamic_int8": "edgeattack.compress.int8_torch",
    "save_int8_dynamic": "edgeattack.compress.int8_torch",
    "load_int8_dynamic": "edgeattack.compress.int8_torch",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
