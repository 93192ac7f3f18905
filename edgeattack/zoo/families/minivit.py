"""MiniViT family: weight-multiplexed ViTs (registration only, no torch).

`mini_deit_*_patch16_224` are Cream's Mini-DeiT (`edgeattack.compress.mini_deit`: iRPE on keys, no
class token, mean-pooled head; Cream's checkpoints load as they are), with `variant="class-token"`
for edgeattack's class-token MiniViT of the same width. `minivit_tiny_digits` is that class-token
MiniViT on the digits ViT, with shipped weights.
"""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

_MODULE = "edgeattack.compress.minivit"

register_model(
    "minivit_tiny_digits",
    f"{_MODULE}:build_digits_minivit",
    dataclasses.replace(DIGITS_CONFIG, family="minivit"),
    description=(
        "digits ViT with weights shared by pairs of blocks (3 multiplexed blocks for depth 6), per-layer "
        "head mixing and depth-wise MLP conv; distilled from vit_tiny_digits"
    ),
    shipped=True,
)

for _size, _what in (("tiny", "Mini-DeiT-Ti"), ("small", "Mini-DeiT-S"), ("base", "Mini-DeiT-B")):
    register_model(
        f"mini_deit_{_size}_patch16_224",
        "edgeattack.compress.mini_deit:build_mini_deit",
        ModelConfig(
            input_size=(3, 224, 224), num_classes=1000, crop_pct=0.875, interpolation="bicubic", family="minivit"
        ),
        description=(
            f"{_what} (Cream's MiniViT): pairs of blocks share weights, per-layer iRPE on keys and head-mixing "
            "convs, no class token; pass Cream's released checkpoint with --checkpoint (variant=class-token: "
            "edgeattack's class-token MiniViT, what compress minivit trains)"
        ),
    )
