"""The built-in zoo: the embedded digits ViTs and the timm DeiT names (registration only, no torch)."""

from __future__ import annotations

import dataclasses

from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.registry import register_model

DIGITS_CONFIG = ModelConfig(
    input_size=(3, 32, 32),
    num_classes=10,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=1.0,
    interpolation="bilinear",
    labels=tuple(str(d) for d in range(10)),
    family="original",
    dataset="digits",
)

_VIT = "edgeattack.zoo.vit"

register_model(
    "vit_tiny_digits",
    f"{_VIT}:build_digits_vit",
    DIGITS_CONFIG,
    description="DeiT-style ViT for 32x32 digits: patch 4, dim 96, depth 6, 3 heads (shipped weights)",
    shipped=True,
)

# timm's pretrained_cfg of deit_*_patch16_224 and deit_*_distilled_patch16_224: crop_pct 0.9, bicubic, center.
DEIT_CONFIG = ModelConfig(input_size=(3, 224, 224), num_classes=1000, crop_pct=0.9, interpolation="bicubic")
_IMAGENET = DEIT_CONFIG
for _size, _what in (("tiny", "DeiT-Ti"), ("small", "DeiT-S"), ("base", "DeiT-B")):
    register_model(
        f"deit_{_size}_patch16_224",
        f"{_VIT}:build_timm_vit",
        _IMAGENET,
        description=f"{_what} from timm (pretrained online or --checkpoint offline)",
    )
    register_model(
        f"deit_{_size}_distilled_patch16_224",
        f"{_VIT}:build_timm_vit",
        dataclasses.replace(DEIT_CONFIG, family="distill"),
        description=f"{_what} with the distillation token, from timm (logits: mean of both heads)",
    )


def _register_families() -> None:
    import importlib
    import pkgutil

    from edgeattack.zoo import families

    for info in sorted(pkgutil.iter_modules(families.__path__), key=lambda m: m.name):
        importlib.import_module(f"{families.__name__}.{info.name}")


_register_families()
