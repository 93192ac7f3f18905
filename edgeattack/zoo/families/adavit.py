"""AdaViT (Meng et al. 2022): per-input patch, head and block usage policies (no torch here).

`adavit_tiny_digits` is fine-tuned from `vit_tiny_digits` by `edgeattack compress --method adavit`
(shipped); `adavit_deit_small_patch16_224` has random decision networks until a checkpoint is
passed with --checkpoint. See `edgeattack.sparsity.adavit`.
"""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

_TARGET = "edgeattack.sparsity.adavit:build_adavit"

register_model(
    "adavit_tiny_digits",
    _TARGET,
    dataclasses.replace(DIGITS_CONFIG, family="adavit"),
    description="AdaViT on vit_tiny_digits: patch policy in all 6 blocks, head/block policies in 2-6 (shipped)",
    shipped=True,
)
register_model(
    "adavit_deit_small_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.9, interpolation="bicubic", family="adavit"),
    description="AdaViT on DeiT-S (random decision networks; --checkpoint for trained ones)",
)
