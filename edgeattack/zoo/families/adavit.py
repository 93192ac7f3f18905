"""AdaViT (Meng et al. 2022): per-input patch, head and layer usage policies (no torch here).

The default mechanism is the official one (MengLcool/AdaViT's Ada-DeiT-S): patch gates from
norm1(x) used at sigmoid > 0.6 in every block; head gates and separate attention/MLP gates
(`layer_select`, [2, D]) from the raw class token in blocks 1 on, an unused head also masking its
channels of the MLP input. `variant="edgeattack-v1"` is edgeattack's earlier mechanism.
`adavit_tiny_digits` is fine-tuned from `vit_tiny_digits` by `edgeattack compress --method adavit`
(shipped); `adavit_deit_small_patch16_224` has random decision networks until a checkpoint is
passed with --checkpoint: edgeattack's own, or the official repository's (`model_best.pth.tar`,
its `state_dict_ema` preferred). See `edgeattack.sparsity.adavit`.
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
    description="AdaViT on vit_tiny_digits: patch policy in all 6 blocks, head/attention/MLP policies in 2-6 (shipped)",
    shipped=True,
)
register_model(
    "adavit_deit_small_patch16_224",
    _TARGET,
    ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.9, interpolation="bicubic", family="adavit"),
    description="Ada-DeiT-S (random decision networks; --checkpoint for trained ones, official layout included)",
)
