"""A-ViT adaptive token halting (Yin et al. 2022) on the digits ViT, DeiT-Ti and DeiT-S (no torch here).

NVlabs/A-ViT's mechanism: every token, the class token included, halts once its cumulative halting
score (channel 0 of each block's output through sigmoid(10·x − centre)) passes 0.99, and the head
reads the class token's halting-weighted output; `halting="keep-class"` keeps edgeattack's earlier
variant. The DeiT names load NVlabs' checkpoint.pth as it is, the gate from its saved args. See
`edgeattack.sparsity.avit`.
"""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

_TARGET = "edgeattack.sparsity.avit:build_avit"

register_model(
    "avit_tiny_digits",
    _TARGET,
    dataclasses.replace(DIGITS_CONFIG, family="avit"),
    description="A-ViT on vit_tiny_digits, input-dependent token halting (shipped; rebuilt by scripts/build_zoo.sh)",
    shipped=True,
)
register_model(
    "avit_deit_tiny_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.875, interpolation="bicubic", family="avit"),
    description="A-ViT on DeiT-Ti, gate 10/30 as in NVlabs/A-ViT (random weights; --checkpoint: an NVlabs/A-ViT checkpoint)",
)
register_model(
    "avit_deit_small_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.875, interpolation="bicubic", family="avit"),
    description="A-ViT on DeiT-S, gate 10/75 as in NVlabs/A-ViT (random weights; --checkpoint: an NVlabs/A-ViT checkpoint)",
)
