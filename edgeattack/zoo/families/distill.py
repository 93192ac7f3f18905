"""Distillation family: DeiT students with a distillation token (registration only, no torch)."""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.registry import register_model

register_model(
    "deit_tiny_digits_distilled",
    "edgeattack.compress.distill:build_digits_deit_distilled",
    dataclasses.replace(DIGITS_CONFIG, family="distill"),
    description=(
        "digits ViT (patch 4, dim 96, depth 6, 3 heads) with a distillation token, hard-distilled "
        "from vit_tiny_digits (born-again); logits: mean of both heads"
    ),
    shipped=True,
)
