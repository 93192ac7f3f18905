"""The architecture of a zoo network as the FLOP count sees it: `arch_of` and `flops_of`.

`arch_of` reads a `VitArch` (image and patch size, width, depth, heads, MLP ratio, prefix tokens,
heads out) off a ZooModel or a timm `VisionTransformer`; `flops_of` counts one image's FLOPs with
`edgeattack.metrics.flops`, using a token-pruned network's static per-block token counts and a
weight-multiplexed network's extra transformations. Nothing here imports the exporters or the
profiler, so the token-sparse networks (`edgeattack.sparsity.base`) and the exporters can both use
it: data flows zoo.arch -> sparsity -> export.
"""

from __future__ import annotations

from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.metrics.flops import FlopsBreakdown, VitArch, vit_flops

torch = require("torch", feature="architecture reading")
nn = torch.nn

__all__ = ["arch_of", "flops_of", "network_of"]


def network_of(model: Any) -> Any:
    """The network inside a ZooModel (or the module itself)."""
    return getattr(model, "net", model)


def arch_of(model: Any) -> VitArch:
    """The `VitArch` of a ZooModel or a timm `VisionTransformer` (plain ViT / DeiT blocks only).

    A network whose blocks are not timm's (Mini-DeiT's multiplexed layers) describes itself with a
    `vit_arch()` method. Raises ConfigError for networks whose FLOPs the ViT count does not describe
    (a hybrid or non-conv patch embedding, blocks of different widths, attention-pool heads).
    """
    net = network_of(model)
    own = getattr(net, "vit_arch", None)
    if callable(own):
        return own()
    name = type(net).__name__
    try:
        embed = net.patch_embed
        proj = embed.proj
        blocks = list(net.blocks)
        embed_dim = int(net.embed_dim)
        num_prefix = int(getattr(net, "num_prefix_tokens", 1))
        num_classes = int(getattr(net, "num_classes", 0))
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"cannot read a ViT architecture from {name}: {exc}") from exc
    if not isinstance(proj, nn.Conv2d) or not blocks:
        raise ConfigError(f"{name} has no plain conv patch embedding and ViT blocks: no analytic FLOP count")
    if getattr(net, "attn_pool", None) is not None:
        raise ConfigError(f"{name} pools with attention: the ViT FLOP count does not cover its head")
    patch_size = tuple(int(k) for k in proj.kernel_size)
    if tuple(int(s) for s in proj.stride) != patch_size:
        raise ConfigError(f"{name}'s patch embedding overlaps (kernel {patch_size}, stride {proj.stride})")
    img_size = getattr(embed, "img_size", None)
    if img_size is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ConfigError(f"{name} has a dynamic image size: profile it as a zoo model")
        img_size = tuple(config.input_size[1:])
    try:
        first = blocks[0]
        num_heads = int(first.attn.num_heads)
        hidden = int(first.mlp.fc1.out_features)
        for block in blocks:
            if int(block.attn.qkv.out_features) != 3 * embed_dim or int(block.mlp.fc1.out_features) != hidden:
                raise ConfigError(f"{name}'s blocks differ in width: the uniform ViT FLOP count does not apply")
    except AttributeError as exc:
        raise ConfigError(f"{name}'s blocks are not timm ViT blocks (attn.qkv, mlp.fc1): {exc}") from exc
    head_dist = getattr(net, "head_dist", None)
    heads_out = 1 + int(isinstance(head_dist, nn.Linear))
    if not isinstance(getattr(net, "head", None), nn.Linear):
        num_classes = 0
    return VitArch(
        img_size=tuple(int(s) for s in img_size),  # type: ignore[arg-type]
        patch_size=patch_size,  # type: ignore[arg-type]
        in_chans=int(proj.in_channels),
        embed_dim=embed_dim,
        depth=len(blocks),
        num_heads=num_heads,
        mlp_ratio=hidden / embed_dim,
        num_classes=num_classes,
        num_prefix_tokens=num_prefix,
        num_heads_out=heads_out if num_classes else 0,
    )


def flops_of(model: Any) -> FlopsBreakdown:
    """Analytic FLOPs of one image through a ZooModel or timm ViT (see `edgeattack.metrics.flops`).

    A token-pruning network that exposes `token_schedule` (tokens, prefix included, per block at
    inference) is counted with those counts; when it also has `score_predictor` (one module per
    stage), `keep_counts` (patch tokens kept per stage) and `num_patches`, as
    `edgeattack.sparsity.DynamicViT` does, the predictors' Linear layers are counted on the
    tokens each one scores (all patches, then those kept by the previous stage).
    """
    net = network_of(model)
    own = getattr(net, "analytic_flops", None)
    if callable(own):  # a network that counts itself (Mini-DeiT: head mixing and iRPE on top of the ViT count)
        return own()
    if getattr(net, "share", None) is not None and hasattr(net.blocks[0], "layers"):
        return _multiplexed_flops(net)
    arch = arch_of(model)
    schedule = getattr(net, "token_schedule", None)
    if schedule is None:
        return vit_flops(arch)
    predictor = 0.0
    predictors = getattr(net, "score_predictor", None)
    keep_counts = getattr(net, "keep_counts", None)
    if predictors is not None and keep_counts is not None:
        scored = (int(getattr(net, "num_patches", arch.num_patches)), *(int(k) for k in keep_counts))
        for stage, module in enumerate(predictors):
            macs_per_token = sum(
                layer.in_features * layer.out_features for layer in module.modules() if isinstance(layer, nn.Linear)
            )
            predictor += scored[stage] * macs_per_token
    return vit_flops(arch, tuple(schedule), predictor_flops=predictor)


def _multiplexed_flops(net: Any) -> FlopsBreakdown:
    """MiniViT: every layer computes like a ViT layer (shared weights are still applied once per
    layer), plus its head-mixing matmuls ([H,H] over the N x N maps) and depth-wise MLP convolutions."""
    import dataclasses

    first = net.blocks[0]
    embed = net.patch_embed
    arch = VitArch(
        img_size=tuple(int(s) for s in embed.img_size),
        patch_size=tuple(int(k) for k in embed.proj.kernel_size),
        in_chans=int(embed.proj.in_channels),
        embed_dim=int(net.embed_dim),
        depth=sum(len(block.layers) for block in net.blocks),
        num_heads=int(first.num_heads),
        mlp_ratio=first.mlp.fc1.out_features / net.embed_dim,
        num_classes=int(net.num_classes),
        num_prefix_tokens=int(getattr(net, "num_prefix_tokens", 1)),
    )
    tokens, patches = arch.num_tokens, arch.num_patches
    transforms = 0.0
    for block in net.blocks:
        for layer in block.layers:
            if layer.mix_pre is not None:
                transforms += 2 * block.num_heads**2 * tokens**2
            if layer.dwconv is not None:
                transforms += layer.dwconv.kernel_size[0] * layer.dwconv.kernel_size[1] * arch.embed_dim * patches
    return dataclasses.replace(vit_flops(arch), transforms=transforms)
