"""Analytic FLOP counts of Vision Transformers, and model-size units; pure Python (no torch).

Convention (DESIGN.md, `gflops`): **one multiply-add is one FLOP**, and only the matrix products
are counted, as fvcore's `FlopCountAnalysis` does for the matmul/linear/conv operators that DeiT
and DynamicViT report with:

* patch embedding: the stride-`p` convolution, `patches x embed_dim x (in_chans x p x p)`;
* per block with `N` tokens (prefix tokens included) and width `C`, hidden width `H = int(C x mlp_ratio)`:
  qkv `3NC^2`, `q @ k^T` `N^2 C` (summed over heads), `attn @ v` `N^2 C`, proj `NC^2`,
  MLP fc1 + fc2 `2NCH`;
* the classifier head on the pooled token(s): `C x classes` per head (2 heads with distillation).

Not counted: bias additions, softmax, GELU, residual adds, scaling, token gathering, and (unless
`include_norms=True`) LayerNorms. With `include_norms` a LayerNorm over `n` elements counts `5n`,
fvcore's figure for an affine LayerNorm; it adds about 0.2 % (DeiT-S: 4.599 -> 4.608 G). Either way
DeiT-Ti / S / B at 224 come out at 1.25 / 4.60 / 17.56 G, the 1.3 / 4.6 / 17.6 G that the DeiT
paper prints (one decimal).

Token-sparse models (DynamicViT, and the per-image token counts behind `gflops` under attack) are
counted from the tokens each block actually processes (`tokens_per_block`); the count is not linear
in the tokens (attention is quadratic), so average the FLOPs of per-image counts, not the counts.

DynamicViT (Rao et al., NeurIPS 2021; reference code raoyongming/DynamicViT `vit.py`): before the
blocks at `prune_locations` (0-based; 3, 6, 9 for 12 blocks) a `PredictorLG` scores the remaining
patch tokens and keeps `int(num_patches * rho ** k)` of them (k = 1, 2, 3; `num_patches` is the
initial 196, the class token is always kept). The predictor is LayerNorm, Linear(C, C), GELU, then
Linear(C, C/2), GELU, Linear(C/2, C/4), GELU, Linear(C/4, 2), run on the tokens it prunes from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DEIT_BASE",
    "DEIT_SMALL",
    "DEIT_TINY",
    "DYNAMICVIT_PRUNE_LOCATIONS",
    "LAYERNORM_FLOPS_PER_ELEMENT",
    "MB",
    "MIB",
    "FlopsBreakdown",
    "VitArch",
    "bytes_to_mb",
    "bytes_to_mib",
    "dynamicvit_flops",
    "dynamicvit_keep_schedule",
    "dynamicvit_kept_patches",
    "dynamicvit_predictor_flops",
    "human_size",
    "vit_flops",
]

MB = 10**6  # megabyte: what `size_*_mb` fields use
MIB = 2**20  # mebibyte: what `size_*_mib` fields (and `ls -h`, `du -h`) use
LAYERNORM_FLOPS_PER_ELEMENT = 5  # fvcore's count for an affine LayerNorm (only with include_norms)
DYNAMICVIT_PRUNE_LOCATIONS = (3, 6, 9)  # DynamicViT's DeiT / ViT setting, 0-based block indices


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class VitArch:
    """The shape of a plain ViT / DeiT: what its FLOPs depend on.

    `img_size` and `patch_size` take an int or (height, width) and are stored as pairs.
    `num_prefix_tokens` is 1 (class token) or 2 (class and distillation tokens, DeiT-distilled),
    plus any register tokens; `num_heads_out` is the number of classifier heads (2 with distillation).
    """

    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    num_prefix_tokens: int = 1
    num_heads_out: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", _pair(self.img_size))
        object.__setattr__(self, "patch_size", _pair(self.patch_size))
        for name in ("in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"VitArch.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_prefix_tokens < 0 or self.num_heads_out < 0 or self.num_classes < 0:
            raise ValueError("num_prefix_tokens, num_heads_out and num_classes must be non-negative")
        if min(self.grid) < 1:
            raise ValueError(f"patch size {self.patch_size} is larger than the image {self.img_size}")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block: patches plus prefix tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # as timm's Block does

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["img_size"], doc["patch_size"] = list(self.img_size), list(self.patch_size)
        return doc


DEIT_TINY = VitArch(224, 16, 3, 192, 12, 3)
DEIT_SMALL = VitArch(224, 16, 3, 384, 12, 6)
DEIT_BASE = VitArch(224, 16, 3, 768, 12, 12)


@dataclass(frozen=True)
class FlopsBreakdown:
    """FLOPs (one multiply-add = one FLOP) of one image, by part; `total` and `gflops` sum them.

    `blocks` holds each block's FLOPs (qkv + attention + proj + MLP, and its norms when counted);
    `tokens_per_block` the tokens each block processed.
    """

    patch_embed: float
    qkv: float
    attn_scores: float  # q @ k^T
    attn_values: float  # attn @ v
    proj: float
    mlp: float
    head: float
    predictor: float = 0.0
    transforms: float = 0.0  # MiniViT's head mixing and depth-wise MLP convs; Mini-DeiT's head mixing and iRPE lookups
    norms: float = 0.0
    tokens_per_block: tuple[float, ...] = field(default=())
    blocks: tuple[float, ...] = field(default=())
    convention: str = "1 multiply-add = 1 FLOP; matmuls and convs only"

    @property
    def total(self) -> float:
        return (
            self.patch_embed
            + self.qkv
            + self.attn_scores
            + self.attn_values
            + self.proj
            + self.mlp
            + self.head
            + self.predictor
            + self.transforms
            + self.norms
        )

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["tokens_per_block"] = list(self.tokens_per_block)
        doc["blocks"] = list(self.blocks)
        doc["total"] = self.total
        doc["gflops"] = self.gflops
        return doc


def vit_flops(
    arch: VitArch,
    tokens_per_block: Sequence[float] | None = None,
    *,
    predictor_flops: float = 0.0,
    include_norms: bool = False,
    final_tokens: float | None = None,
) -> FlopsBreakdown:
    """FLOPs of one image through `arch` (see the module docstring for what is counted).

    `tokens_per_block[i]` is the number of tokens (prefix tokens included) block `i` processes;
    None means every block sees all `arch.num_tokens`. `predictor_flops` adds the FLOPs of
    token-scoring modules (DynamicViT's predictors). `include_norms` adds fvcore's 5 FLOPs per
    LayerNorm element: two per block and the final norm over `final_tokens` (default: the tokens
    of the last block).
    """
    if tokens_per_block is None:
        tokens: tuple[float, ...] = (float(arch.num_tokens),) * arch.depth
    else:
        tokens = tuple(float(n) for n in tokens_per_block)
        if len(tokens) != arch.depth:
            raise ValueError(f"{len(tokens)} token counts for {arch.depth} blocks")
        if any(not math.isfinite(n) or n < 1 or n > arch.num_tokens for n in tokens):
            raise ValueError(f"token counts must lie in [1, {arch.num_tokens}], got {list(tokens)}")
    if predictor_flops < 0:
        raise ValueError(f"predictor_flops must be non-negative, got {predictor_flops}")
    c = float(arch.embed_dim)
    hidden = float(arch.mlp_hidden_dim)
    kh, kw = arch.patch_size
    patch_embed = arch.num_patches * c * arch.in_chans * kh * kw
    qkv = sum(3 * n * c * c for n in tokens)
    attn_scores = sum(n * n * c for n in tokens)
    attn_values = sum(n * n * c for n in tokens)
    proj = sum(n * c * c for n in tokens)
    mlp = sum(2 * n * c * hidden for n in tokens)
    head = float(arch.num_heads_out) * c * arch.num_classes
    ln = LAYERNORM_FLOPS_PER_ELEMENT * c if include_norms else 0.0
    norms = sum(2 * ln * n for n in tokens) + ln * (tokens[-1] if final_tokens is None else final_tokens)
    blocks = tuple(4 * n * c * c + 2 * n * n * c + 2 * n * c * hidden + 2 * ln * n for n in tokens)
    return FlopsBreakdown(
        patch_embed=patch_embed,
        qkv=qkv,
        attn_scores=attn_scores,
        attn_values=attn_values,
        proj=proj,
        mlp=mlp,
        head=head,
        predictor=float(predictor_flops),
        norms=norms,
        tokens_per_block=tokens,
        blocks=blocks,
        convention="1 multiply-add = 1 FLOP; matmuls and convs only"
        + ("; LayerNorm 5 per element (fvcore)" if include_norms else ""),
    )


def dynamicvit_kept_patches(
    rho: float, num_patches: int = 196, num_stages: int = len(DYNAMICVIT_PRUNE_LOCATIONS)
) -> tuple[int, ...]:
    """Patch tokens kept after each pruning stage: `int(num_patches * rho ** k)`, k = 1..num_stages.

    As the reference code does it (`token_ratio = [rho, rho ** 2, rho ** 3]`,
    `num_keep_node = int(init_n * token_ratio[k])`), floats and truncation included:
    rho = 0.7 keeps 137, 96, 67 of 196.
    """
    if not 0 < rho <= 1:
        raise ValueError(f"DynamicViT's keep ratio rho must lie in (0, 1], got {rho}")
    from edgeattack.sparsity.schedule import kept_patches

    return tuple(kept_patches(num_patches, rho ** (k + 1)) for k in range(num_stages))


def dynamicvit_keep_schedule(
    depth: int = 12,
    rho: float = 0.7,
    num_patches: int = 196,
    prune_locations: Sequence[int] = DYNAMICVIT_PRUNE_LOCATIONS,
    *,
    num_prefix_tokens: int = 1,
) -> tuple[int, ...]:
    """Tokens each of `depth` blocks processes in DynamicViT at inference (prefix tokens included).

    Pruning happens just before the blocks at the 0-based `prune_locations`; with (3, 6, 9) of 12,
    blocks 0-2 see all tokens, 3-5 keep rho, 6-8 rho^2 and 9-11 rho^3 of the patches.
    """
    locations = tuple(int(i) for i in prune_locations)
    if list(locations) != sorted(set(locations)) or any(not 0 <= i < depth for i in locations):
        raise ValueError(f"prune locations must be increasing block indices below {depth}, got {locations}")
    kept = dynamicvit_kept_patches(rho, num_patches, len(locations))
    schedule = []
    patches = num_patches
    stage = 0
    for block in range(depth):
        if stage < len(locations) and block == locations[stage]:
            patches = kept[stage]
            stage += 1
        schedule.append(patches + num_prefix_tokens)
    return tuple(schedule)


def dynamicvit_predictor_flops(embed_dim: int, num_tokens: float, *, include_norms: bool = False) -> float:
    """FLOPs of one `PredictorLG` scoring `num_tokens` patch tokens of width `embed_dim`.

    Linear(C, C) + Linear(C, C//2) + Linear(C//2, C//4) + Linear(C//4, 2) per token (the global
    average it mixes in is a sum, not counted); with `include_norms`, its LayerNorm at 5 per element.
    """
    c = int(embed_dim)
    per_token = c * c + c * (c // 2) + (c // 2) * (c // 4) + (c // 4) * 2
    if include_norms:
        per_token += LAYERNORM_FLOPS_PER_ELEMENT * c
    return float(num_tokens) * per_token


def dynamicvit_flops(
    arch: VitArch,
    rho: float,
    prune_locations: Sequence[int] = DYNAMICVIT_PRUNE_LOCATIONS,
    *,
    include_predictors: bool = True,
    include_norms: bool = False,
) -> FlopsBreakdown:
    """FLOPs of DynamicViT on backbone `arch` at keep ratio `rho` (inference: fixed keep counts).

    The predictor at stage k scores the patch tokens left before it (196, then 137, 96 at rho=0.7).
    `include_predictors=False` gives the backbone alone.
    """
    schedule = dynamicvit_keep_schedule(
        arch.depth, rho, arch.num_patches, prune_locations, num_prefix_tokens=arch.num_prefix_tokens
    )
    predictor = 0.0
    if include_predictors:
        scored = (arch.num_patches, *dynamicvit_kept_patches(rho, arch.num_patches, len(prune_locations))[:-1])
        predictor = sum(dynamicvit_predictor_flops(arch.embed_dim, n, include_norms=include_norms) for n in scored)
    return vit_flops(arch, schedule, predictor_flops=predictor, include_norms=include_norms)


# sizes -------------------------------------------------------------------------------------


def bytes_to_mb(num_bytes: int) -> float:
    """Megabytes, 10^6 bytes."""
    return num_bytes / MB


def bytes_to_mib(num_bytes: int) -> float:
    """Mebibytes, 2^20 bytes."""
    return num_bytes / MIB


def human_size(num_bytes: int, *, si: bool = False) -> str:
    """A size as GNU `ls -lh` prints it: powers of 1024 (1000 with `si`, like `ls --si`), rounded up,
    one decimal below 10 ("6.2M", "22M", "331M")."""
    if num_bytes < 0:
        raise ValueError("a size cannot be negative")
    base = 1000 if si else 1024
    value = float(num_bytes)
    unit = ""
    for candidate in ("K", "M", "G", "T", "P"):
        if value < base:
            break
        value /= base
        unit = candidate
    if not unit:
        return str(int(num_bytes))
    if value < 10:
        shown = math.ceil(value * 10 - 1e-9) / 10
        if shown < 10:
            return f"{shown:.1f}{unit}"
    return f"{math.ceil(value - 1e-9)}{unit}"
