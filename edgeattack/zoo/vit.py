"""ViT builders: the tiny DeiT-style ViT for digits, and timm's DeiT models by name.

Both return timm `VisionTransformer` modules that take normalised images; `edgeattack.zoo.factory`
wraps them with the normalisation so every zoo model takes [0,1] images.
"""

from __future__ import annotations

from typing import Any

from edgeattack._lazy import require
from edgeattack.zoo.config import ModelConfig

DIGITS_VIT_ARGS: dict[str, Any] = {
    "patch_size": 4,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
}


def build_digits_vit(name: str, config: ModelConfig, **overrides: Any) -> Any:
    """A DeiT-style ViT sized for 32x32 digits (65 tokens of width 96)."""
    vision_transformer = require("timm.models.vision_transformer", feature="the ViT zoo")
    args = {**DIGITS_VIT_ARGS, **overrides}
    return vision_transformer.VisionTransformer(
        img_size=config.input_size[1],
        in_chans=config.input_size[0],
        num_classes=config.num_classes,
        global_pool="token",
        **args,
    )


def build_timm_vit(name: str, config: ModelConfig, *, pretrained: bool = False, **overrides: Any) -> Any:
    """timm's model `name`; `pretrained` downloads its weights (set HF_HUB_OFFLINE=1 to fail fast offline)."""
    timm = require("timm", feature="timm models")
    return timm.create_model(name, pretrained=pretrained, num_classes=config.num_classes, **overrides)
