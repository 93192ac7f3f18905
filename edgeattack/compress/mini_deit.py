"""Mini-DeiT as MiniViT's authors built it (Zhang et al., CVPR 2022, arXiv:2204.07154; microsoft/Cream).

The architecture of Cream's `mini_deit_{tiny,small,base}_patch16_224` (MiniViT/Mini-DeiT), so that
its released checkpoints load as they are and compute the same logits:

- **weight multiplexing**: the 12 blocks are 6 groups of `share` = 2 consecutive layers; the layers
  of a group run one after the other with the *same* qkv, proj and MLP (fc1, fc2) weights;
- **per-layer parts** (one instance per layer of the group, Cream's `RepeatedModuleList`, keys
  `...instances.<layer>...`): the two LayerNorms, the iRPE lookup table, and the attention
  transformation: two 1x1 convolutions over the heads (`conv_l`, `conv_w`, no bias), one on the
  attention logits before the softmax and one on the attention weights after it. The MLP has no
  transformation in Mini-DeiT (the shared MLP is applied as it is);
- **iRPE on keys** (`edgeattack.compress.irpe`): contextual, product method, ratio 1.9, shared by
  the heads, no skip token, added to q·kᵀ with the scaled queries;
- **no class token**: the position embedding covers the 196 patches only, and the head reads the
  mean of the final-norm tokens.

Attention of layer `r` of a group: a = q·kᵀ·scale + iRPE_r(q·scale); a = conv_l_r(a);
a = softmax(a); a = conv_w_r(a); out = proj(a·v). The state dict has Cream's key names
(`blocks.<group>.block.attn.qkv.weight`, `blocks.<group>.block.norm1.instances.<r>.weight`,
`blocks.<group>.block.attn.rpe_k.instances.<r>.lookup_table_weight`, ...), so `{"model": ...}`
checkpoints from Cream's main.py load directly. Dropout and stochastic depth are left out: the
network is for inference and attacks (training Mini-DeiT itself is Cream's main.py).

`build_mini_deit` (the zoo builder of the `mini_deit_*_patch16_224` names) builds this by default;
`variant="class-token"` builds edgeattack's earlier class-token MiniViT of the same width instead
(`edgeattack.compress.minivit`, what `compress minivit` distils from a DeiT teacher).
"""

from __future__ import annotations

import logging
from typing import Any

from edgeattack._lazy import require
from edgeattack.compress.irpe import IRPE, RPEConfig
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.zoo.config import ModelConfig

torch = require("torch", feature="Mini-DeiT")
nn = torch.nn
timm_layers = require("timm.layers", feature="Mini-DeiT")

logger = logging.getLogger(__name__)

__all__ = ["MINI_DEIT_ARCHS", "MINI_DEIT_RPE", "VARIANTS", "MiniDeiT", "build_mini_deit"]

MINI_DEIT_RPE = RPEConfig(ratio=1.9, method="product", mode="ctx", shared_head=True, skip=0, rpe_on="k")
"""Cream's `get_deit_rpe_config()`: the iRPE of every Mini-DeiT."""
MINI_DEIT_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "num_heads": 3},
    "small": {"embed_dim": 384, "num_heads": 6},
    "base": {"embed_dim": 768, "num_heads": 12},
}
VARIANTS = ("official", "class-token")


class PerLayer(nn.Module):
    """One module per layer of a weight-shared group (Cream's `RepeatedModuleList`: `instances.<r>`)."""

    def __init__(self, modules: list[Any]) -> None:
        super().__init__()
        self.instances = nn.ModuleList(modules)

    def __getitem__(self, layer: int) -> Any:
        return self.instances[layer]

    def __len__(self) -> int:
        return len(self.instances)


class MiniAttention(nn.Module):
    """Shared qkv / proj; per-layer iRPE and head-mixing 1x1 convolutions before and after the softmax."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool,
        share: int,
        grid: tuple[int, int],
        rpe: RPEConfig | None,
        transform: bool,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        on = rpe.rpe_on if rpe is not None else ""
        self.rpe_q = PerLayer([IRPE(rpe, self.head_dim, num_heads, grid) for _ in range(share)]) if "q" in on else None
        self.rpe_k = PerLayer([IRPE(rpe, self.head_dim, num_heads, grid) for _ in range(share)]) if "k" in on else None
        if transform:
            self.conv_l = PerLayer([nn.Conv2d(num_heads, num_heads, 1, bias=False) for _ in range(share)])
            self.conv_w = PerLayer([nn.Conv2d(num_heads, num_heads, 1, bias=False) for _ in range(share)])
        else:
            self.conv_l = self.conv_w = None

    def forward(self, x: Any, layer: int) -> Any:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.rpe_k is not None:
            attn = attn + self.rpe_k[layer](q)
        if self.rpe_q is not None:
            attn = attn + self.rpe_q[layer](k * self.scale).transpose(2, 3)
        if self.conv_l is not None:
            attn = self.conv_l[layer](attn)
        attn = attn.softmax(dim=-1)
        if self.conv_w is not None:
            attn = self.conv_w[layer](attn)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class MiniBlock(nn.Module):
    """A pre-norm transformer layer whose attention and MLP are shared by the `share` layers of a group."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, share: int, **attn: Any) -> None:
        super().__init__()
        self.norm1 = PerLayer([nn.LayerNorm(dim, eps=1e-6) for _ in range(share)])
        self.norm2 = PerLayer([nn.LayerNorm(dim, eps=1e-6) for _ in range(share)])
        self.attn = MiniAttention(dim, num_heads, share=share, **attn)
        self.mlp = timm_layers.Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Any, layer: int) -> Any:
        x = x + self.attn(self.norm1[layer](x), layer)
        return x + self.mlp(self.norm2[layer](x))


class SharedGroup(nn.Module):
    """`share` consecutive layers computed by one `MiniBlock` (Cream's `RepeatedMiniBlock`)."""

    def __init__(self, share: int, **block: Any) -> None:
        super().__init__()
        self.share = share
        self.block = MiniBlock(share=share, **block)

    def forward(self, x: Any) -> Any:
        for layer in range(self.share):
            x = self.block(x, layer)
        return x


class MiniDeiT(nn.Module):
    """Cream's Mini-DeiT VisionTransformer: weight-multiplexed groups, iRPE on keys, mean-pooled head."""

    def __init__(
        self,
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        share: int = 2,
        transform: bool = True,
        rpe: RPEConfig | None = MINI_DEIT_RPE,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if share < 1 or depth % share:
            raise ConfigError(f"share must divide depth: depth {depth}, share {share}")
        if rpe is not None and rpe.skip:
            raise ConfigError("Mini-DeiT has no class token: its iRPE takes skip=0")
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 0
        self.share = share
        self.patch_embed = timm_layers.PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim
        )
        grid = tuple(int(g) for g in self.patch_embed.grid_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        block = {"dim": embed_dim, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "qkv_bias": qkv_bias}
        self.blocks = nn.ModuleList(
            SharedGroup(share, **block, grid=grid, rpe=rpe, transform=transform) for _ in range(depth // share)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Cream's initialisation: truncated normal (std 0.02) for Linear, 1x1 conv and pos_embed; iRPE at zero."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d) and module is not self.patch_embed.proj:
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        """Transformer layers (groups x share)."""
        return len(self.blocks) * self.share

    def forward_features(self, x: Any) -> Any:
        """Final-norm patch tokens [B, N, C]."""
        x = self.patch_embed(x) + self.pos_embed
        for group in self.blocks:
            x = group(x)
        return self.norm(x)

    def forward_head(self, x: Any) -> Any:
        return self.head(x.mean(dim=1))

    def forward(self, x: Any) -> Any:
        return self.forward_head(self.forward_features(x))

    # -- checkpoints ------------------------------------------------------------------------------
    def adapt_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """Cream's checkpoints already have this network's key names; refuse the class-token MiniViT clearly."""
        state = checkpoint.state
        if "cls_token" in state or any(".layers." in key for key in state):
            raise EdgeAttackError(
                f"checkpoint {checkpoint.path} holds edgeattack's class-token MiniViT (compress minivit), not Cream's "
                "Mini-DeiT: load it with the builder option variant=class-token (--model-arg variant=class-token)"
            )
        return state

    # -- what the FLOP count needs ----------------------------------------------------------------
    def vit_arch(self) -> Any:
        """The plain-ViT shape of this network (no prefix token), as `edgeattack.metrics.flops.VitArch`."""
        from edgeattack.metrics.flops import VitArch

        block = self.blocks[0].block
        return VitArch(
            img_size=tuple(int(s) for s in self.patch_embed.img_size),  # type: ignore[arg-type]
            patch_size=tuple(int(k) for k in self.patch_embed.proj.kernel_size),  # type: ignore[arg-type]
            in_chans=int(self.patch_embed.proj.in_channels),
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=block.attn.num_heads,
            mlp_ratio=block.mlp.fc1.out_features / self.embed_dim,
            num_classes=self.num_classes if isinstance(self.head, nn.Linear) else 0,
            num_prefix_tokens=0,
            num_heads_out=1 if isinstance(self.head, nn.Linear) else 0,
        )

    def transform_flops(self) -> float:
        """Multiply-adds of one image beyond a plain ViT layer's: the head-mixing convolutions and iRPE.

        Per layer, each 1x1 convolution over the heads costs heads² x N² and contextual iRPE costs
        N x head_dim x buckets per head (its gather is not counted, like the other token gathers).
        """
        total = 0.0
        tokens = self.patch_embed.num_patches
        for group in self.blocks:
            attn = group.block.attn
            for layer in range(group.share):
                if attn.conv_l is not None:
                    total += 2 * attn.num_heads**2 * tokens**2
                for rpe in (attn.rpe_q, attn.rpe_k):
                    if rpe is not None:
                        total += rpe[layer].macs()
        return total

    def analytic_flops(self) -> Any:
        """`edgeattack.metrics.flops.vit_flops` of `vit_arch()`, with `transform_flops()` as `transforms`."""
        import dataclasses

        from edgeattack.metrics.flops import vit_flops

        return dataclasses.replace(vit_flops(self.vit_arch()), transforms=self.transform_flops())


def _size_of(name: str) -> str:
    return next((size for size in MINI_DEIT_ARCHS if f"_{size}_" in name), "tiny")


def build_mini_deit(
    name: str, config: ModelConfig, *, pretrained: bool = False, variant: str = "official", **overrides: Any
) -> Any:
    """Zoo builder: Mini-DeiT-Ti/S/B at 224 (patch 16, depth 12, pairs share), random weights.

    `variant="official"` (default) is Cream's architecture (`MiniDeiT`), which loads Cream's released
    checkpoints; `variant="class-token"` is edgeattack's class-token MiniViT of the same width
    (per-layer head mixing and depth-wise MLP convolution, no iRPE), what `compress minivit`
    distils from `deit_*_patch16_224`. `overrides` are ViT width arguments (`embed_dim`,
    `num_heads`, `depth`, ...) and each variant's options (`share`, `transform`, `rpe` here;
    `share`, `attn_transform`, `mlp_transform` for the class-token variant).
    """
    if pretrained:
        raise ConfigError(
            f"{name} has no downloadable weights here: download Cream's release "
            "(github.com/DominickZhang/MiniViT-model-zoo) and pass it with --checkpoint, or train a class-token "
            "variant with compress minivit"
        )
    if variant not in VARIANTS:
        raise ConfigError(f"{name}: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    arch = {"patch_size": 16, "depth": 12, "mlp_ratio": 4.0, "qkv_bias": True, **MINI_DEIT_ARCHS[_size_of(name)]}
    if variant == "class-token":
        from edgeattack.compress.minivit import build_minivit

        options = {k: overrides.pop(k) for k in ("share", "attn_transform", "mlp_transform") if k in overrides}
        return build_minivit(config, {**arch, **overrides}, **{"share": 2, **options})
    rpe = overrides.pop("rpe", MINI_DEIT_RPE)
    if isinstance(rpe, dict):
        rpe = RPEConfig(**rpe)
    if rpe is not None and not isinstance(rpe, RPEConfig):
        raise ConfigError(f"{name}: rpe must be an RPEConfig, a dict of its fields or None (no iRPE), got {rpe!r}")
    known = {"embed_dim", "num_heads", "depth", "mlp_ratio", "qkv_bias", "patch_size", "share", "transform"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"{name}: unknown Mini-DeiT argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return MiniDeiT(
        img_size=config.input_size[1],
        in_chans=config.input_size[0],
        num_classes=config.num_classes,
        rpe=rpe,
        **{**arch, **overrides},
    )
