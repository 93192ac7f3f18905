"""DynamicViT token pruning (Rao et al. 2021) at the paper's keep rates ρ = 0.7 / 0.6 / 0.5 (no torch here).

Every name keeps ρ, ρ², ρ³ of the patch tokens after prediction modules at depth·{1/4, 2/4, 3/4}
(blocks 2/3/4 of the digits ViT's 6, blocks 3/6/9 of DeiT-S's 12); see `edgeattack.sparsity`.
"""

from __future__ import annotations

import dataclasses

from edgeattack.sparsity.schedule import KEEP_RATES, rate_suffix
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

_TARGET = "edgeattack.sparsity.dynamicvit:build_dynamicvit"
_DIGITS = dataclasses.replace(DIGITS_CONFIG, family="dynamicvit")
_IMAGENET = ModelConfig(
    input_size=(3, 224, 224), num_classes=1000, crop_pct=0.875, interpolation="bicubic", family="dynamicvit"
)

for _rho in KEEP_RATES:
    register_model(
        f"dynamicvit_tiny_digits_{rate_suffix(_rho)}",
        _TARGET,
        _DIGITS,
        description=(
            f"DynamicViT on vit_tiny_digits, keep {_rho}/{_rho**2:.2f}/{_rho**3:.3f} before blocks 2/3/4 "
            "(shipped; rebuilt by scripts/build_zoo.sh)"
        ),
        shipped=True,
    )
    register_model(
        f"dynamicvit_deit_small_patch16_224_{rate_suffix(_rho)}",
        _TARGET,
        _IMAGENET,
        description=(
            f"DynamicViT on DeiT-S, keep {_rho}/{_rho**2:.2f}/{_rho**3:.3f} before blocks 3/6/9 "
            "(random weights; --checkpoint for trained ones)"
        ),
    )
