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
    "TrainingDivergedError": "edgeattack.errors",
    "TokenSparseTrainer": "edgeattack.sparsity.token_trainer",
    "dynamicvit_loss": "edgeattack.sparsity.dynamicvit_train",
    "train_dynamicvit": "edgeattack.sparsity.dynamicvit_train",
    "AViT": "edgeattack.sparsity.avit",
    "AViTOutput": "edgeattack.sparsity.avit",
    "build_avit": "edgeattack.sparsity.avit",
    "AViTTrainConfig": "edgeattack.sparsity.avit_train",
    "AViTTrainReport": "edgeattack.sparsity.avit_train",
    "avit_loss": "edgeattack.sparsity.avit_train",
    "compress_avit": "edgeattack.sparsity.avit_train",
    "train_avit": "edgeattack.sparsity.avit_train",
    "ATS": "edgeattack.sparsity.ats",
    "ats_stages_for": "edgeattack.sparsity.ats",
    "build_ats": "edgeattack.sparsity.ats",
    "compress_ats": "edgeattack.sparsity.ats",
    "TokenSparseNet": "edgeattack.sparsity.base",
    "TokenSparseViT": "edgeattack.sparsity.base",
    "apply_token_cap": "edgeattack.sparsity.base",
    "compact_tokens": "edgeattack.sparsity.base",
    "compaction_order": "edgeattack.sparsity.base",
    "is_token_sparse": "edgeattack.sparsity.base",
    "masked_block": "edgeattack.sparsity.base",
    "token_sparsity_info": "edgeattack.sparsity.base",
    "AdaViT": "edgeattack.sparsity.adavit",
    "AdaViTOutput": "edgeattack.sparsity.adavit",
    "DecisionNet": "edgeattack.sparsity.adavit",
    "build_adavit": "edgeattack.sparsity.adavit",
    "AdaViTTrainConfig": "edgeattack.sparsity.adavit_train",
    "AdaViTTrainReport": "edgeattack.sparsity.adavit_train",
    "adavit_loss": "edgeattack.sparsity.adavit_train",
    "train_adavit": "edgeattack.sparsity.adavit_train",
    "compress_adavit": "edgeattack.sparsity.adavit_train",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
