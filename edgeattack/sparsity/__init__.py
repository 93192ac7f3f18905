"""Token sparsification: DynamicViT (`edgeattack.sparsity.dynamicvit`) and its training.

Importing this package imports no torch; the names below load their module on first use.
"""

from __future__ import annotations

from edgeattack._lazy import lazy_exports

_LAZY = {
    "DynamicViT": "edgeattack.sparsity.dynamicvit",
    "DynamicViTOutput": "edgeattack.sparsity.dynamicvit",
    "PredictorLG": "edgeattack.sparsity.dynamicvit",
    "KEEP_RATES": "edgeattack.sparsity.dynamicvit",
    "build_dynamicvit": "edgeattack.sparsity.dynamicvit",
    "kept_token_counts": "edgeattack.sparsity.dynamicvit",
    "keep_ratios_for": "edgeattack.sparsity.dynamicvit",
    "prune_locations_for": "edgeattack.sparsity.dynamicvit",
    "DynamicViTTrainConfig": "edgeattack.sparsity.dynamicvit_train",
    "DynamicViTTrainReport": "edgeattack.sparsity.dynamicvit_train",
    "TrainingDivergedError": "edgeattack.sparsity.dynamicvit_train",
    "dynamicvit_loss": "edgeattack.sparsity.dynamicvit_train",
    "train_dynamicvit": "edgeattack.sparsity.dynamicvit_train",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
