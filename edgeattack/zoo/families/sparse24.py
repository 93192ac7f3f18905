"""2:4 sparse family: ViTs whose Linear weights are 2:4 structured sparse (registration only, no torch)."""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.registry import register_model

register_model(
    "vit_tiny_digits_sparse24",
    "edgeattack.compress.sparse24:build_digits_vit_sparse24",
    dataclasses.replace(DIGITS_CONFIG, family="sparse24"),
    description=(
        "vit_tiny_digits pruned to 2:4 in every block Linear (magnitude, fixed masks) and fine-tuned with "
        "distillation from the dense model; input of TensorRT sparse engines"
    ),
    shipped=True,
)
