"""ATS, the parameter-free Adaptive Token Sampler (Fayyaz et al., ECCV 2022) (no torch here).

ATS samples tokens inside the attention of blocks 2..5 of the digits ViT's 6 (3..11 of DeiT-S's
12, the official DeiT-S config's ATS_BLOCKS) from the class token's attention times the value
norms, as the official code does (adaptivetokensampling/ATS: fixed sample points over the
min-max normalised CDF, nearest token), so the kept count varies per image; see
`edgeattack.sparsity.ats`. Having no parameters, it needs no training: `ats_tiny_digits` runs on
vit_tiny_digits' shipped weights (loaded by its builder, no weights file of its own). The 224 names
load DeiT's release ({'model': ...}) and the official ATS checkpoints
(`checkpoint_epoch_*.pyth`: {'epoch', 'model_state', 'optimizer_state', 'cfg'}).
"""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

_TARGET = "edgeattack.sparsity.ats:build_ats"

register_model(
    "ats_tiny_digits",
    _TARGET,
    dataclasses.replace(DIGITS_CONFIG, family="ats"),
    description=(
        "ATS on vit_tiny_digits, adaptive token sampling in blocks 2..5, parameter-free "
        "(runs on vit_tiny_digits' shipped weights, no training)"
    ),
    weights_of="vit_tiny_digits",
)
register_model(
    "ats_deit_tiny_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.9, interpolation="bicubic", family="ats"),
    description=(
        "ATS on DeiT-Ti, adaptive token sampling in blocks 3..11, parameter-free "
        "(random weights; timm's DeiT-Ti when pretrained online, or --checkpoint: DeiT or official ATS files)"
    ),
)
register_model(
    "ats_deit_small_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.9, interpolation="bicubic", family="ats"),
    description=(
        "ATS on DeiT-S, adaptive token sampling in blocks 3..11, parameter-free "
        "(random weights; timm's DeiT-S when pretrained online, or --checkpoint: DeiT or official ATS files)"
    ),
)
