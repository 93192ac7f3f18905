"""Token metrics of token-sparse ViTs (ATS, A-ViT, AdaViT) from per-block token counts; numpy only.

Every function takes `counts`, an integer array [N, depth]: the tokens (class token included)
block b processed for image n, as `forward_counts` and the exported `token_counts` output give
them (DESIGN.md "Metric definitions"):

- `tur` (token utilisation ratio): kept tokens summed over blocks / (blocks x tokens), per image,
  then averaged over the images.
- `gflops_from_counts`: per-image GFLOPs from the counts, one multiply-add = one FLOP, matmuls and
  convolutions only, exactly `edgeattack.metrics.flops.vit_flops` (so the dense counts of DeiT-S at
  224 give 4.6 GFLOPs, as `edgeattack.zoo.profile.flops_of` does). FLOPs are not linear in the
  counts (attention is quadratic): they are computed per image, then averaged.
- `gap_closed`: the share of the gap between the clean value and the maximum that an attack
  closes, (adv - clean) / (max - clean), DeSparsify's way of reporting TUR and GFLOPs.

Where an ATS block samples its tokens inside its attention (the queries, keys and values of all
the tokens that enter it are computed, and only the sampled ones go on), pass
`sampled_in_attention=True`: block b's count is the tokens it keeps, and its qkv projection and
attention keys run on the previous block's count. The engine metadata says which applies
(`EngineMetadata.token_sparsity`, read by `arch_from_metadata` and `gflops_from_metadata`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from edgeattack.metrics.flops import VitArch

__all__ = [
    "TOKEN_METRIC_DEFINITIONS",
    "TokenArch",
    "TokenMetric",
    "arch_from_metadata",
    "check_counts",
    "gap_closed",
    "gflops_from_counts",
    "gflops_from_metadata",
    "tur",
]

TOKEN_METRIC_DEFINITIONS: dict[str, str] = {
    "tur": "token utilisation ratio: kept tokens summed over blocks / (blocks x tokens), per image, averaged",
    "gflops": "per-image GFLOPs from the per-block token counts (1 multiply-add = 1 FLOP), averaged",
    "gap_closed": "(adv - clean) / (max - clean): the share of the gap to the dense maximum an attack closes",
}


class TokenMetric(NamedTuple):
    """A per-image metric and its mean over the images (None for no images)."""

    per_image: np.ndarray
    mean: float | None


@dataclass(frozen=True)
class TokenArch:
    """What the FLOPs of a ViT depend on once its per-block token counts are known.

    `num_tokens` counts the class token; `patch_flops` are the FLOPs of the patch embedding (they
    do not depend on the counts); the head is one Linear(embed_dim, num_classes) on the class token.
    """

    embed_dim: int
    mlp_ratio: float
    num_heads: int
    depth: int
    num_tokens: int
    num_classes: int
    patch_flops: float

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_heads", "depth", "num_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TokenArch.{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0 or self.patch_flops < 0 or self.mlp_ratio <= 0:
            raise ValueError("TokenArch.num_classes and patch_flops must be non-negative, mlp_ratio positive")

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # as timm's Block does

    @classmethod
    def from_vit_arch(cls, arch: VitArch) -> TokenArch:
        """The TokenArch of a plain ViT (`edgeattack.zoo.profile.arch_of` reads one off a model)."""
        kh, kw = arch.patch_size
        return cls(
            embed_dim=arch.embed_dim,
            mlp_ratio=float(arch.mlp_ratio),
            num_heads=arch.num_heads,
            depth=arch.depth,
            num_tokens=arch.num_tokens,
            num_classes=arch.num_classes * arch.num_heads_out,  # head FLOPs: C x classes per head
            patch_flops=float(arch.num_patches * arch.embed_dim * arch.in_chans * kh * kw),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TokenArch:
        try:
            return cls(
                embed_dim=int(doc["embed_dim"]),
                mlp_ratio=float(doc["mlp_ratio"]),
                num_heads=int(doc["num_heads"]),
                depth=int(doc["depth"]),
                num_tokens=int(doc["num_tokens"]),
                num_classes=int(doc["num_classes"]),
                patch_flops=float(doc["patch_flops"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a TokenArch document: {exc!r}") from exc


def check_counts(counts: Any, num_tokens: int, depth: int | None = None) -> np.ndarray:
    """`counts` as int64 [N, depth], or ValueError when it is not integral or outside [0, num_tokens]
    (0: a block skipped as a whole, as AdaViT's block policy does)."""
    array = np.asarray(counts)
    if array.ndim != 2:
        raise ValueError(f"token counts must be [images, blocks], got shape {array.shape}")
    if depth is not None and array.shape[1] != depth:
        raise ValueError(f"token counts have {array.shape[1]} blocks, the architecture {depth}")
    if array.size and (not np.all(np.isfinite(array)) or not np.all(array == np.round(array))):
        raise ValueError("token counts must be integers")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > num_tokens):
        raise ValueError(f"token counts must lie in [0, {num_tokens}], got [{array.min()}, {array.max()}]")
    return array


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def tur(counts: Any, num_tokens: int) -> TokenMetric:
    """Token utilisation ratio per image (sum over blocks / (blocks x num_tokens)) and its mean."""
    array = check_counts(counts, num_tokens)
    depth = array.shape[1]
    per_image = array.sum(axis=1) / float(max(depth, 1) * num_tokens)
    return TokenMetric(per_image, _mean(per_image))


def gflops_from_counts(counts: Any, arch: TokenArch, *, sampled_in_attention: bool = False) -> TokenMetric:
    """GFLOPs of each image from its per-block token counts, and their mean.

    A block that processes n tokens costs `4 n C^2 + 2 n^2 C + 2 n C H` (qkv, q@k^T, attn@v, proj,
    MLP); with `sampled_in_attention` a block keeping n of the m tokens that entered it costs
    `3 m C^2 + 2 n m C + n C^2 + 2 n C H` (m = the previous block's count, all tokens for block 0).
    """
    array = check_counts(counts, arch.num_tokens, arch.depth).astype(np.float64)
    c = float(arch.embed_dim)
    hidden = float(arch.mlp_hidden_dim)
    if sampled_in_attention:
        entering = np.concatenate([np.full((array.shape[0], 1), float(arch.num_tokens)), array[:, :-1]], axis=1)
    else:
        entering = array
    blocks = 3 * entering * c * c + 2 * array * entering * c + array * c * c + 2 * array * c * hidden
    total = arch.patch_flops + blocks.sum(axis=1) + c * arch.num_classes
    per_image = total / 1e9
    return TokenMetric(per_image, _mean(per_image))


def _token_sparsity(metadata: Any) -> Mapping[str, Any]:
    info = getattr(metadata, "token_sparsity", metadata)
    if not isinstance(info, Mapping) or not info:
        raise ValueError("this engine's metadata describes no token-sparse model (no token_sparsity)")
    return info


def arch_from_metadata(metadata: Any) -> TokenArch:
    """The TokenArch recorded in an engine's metadata (`EngineMetadata` or its `token_sparsity` dict)."""
    info = _token_sparsity(metadata)
    if "arch" not in info:
        raise ValueError("the engine's token_sparsity metadata records no architecture")
    return TokenArch.from_dict(info["arch"])


def gflops_from_metadata(counts: Any, metadata: Any) -> TokenMetric:
    """`gflops_from_counts` with the architecture and counting rule recorded in an engine's metadata."""
    info = _token_sparsity(metadata)
    return gflops_from_counts(
        counts, arch_from_metadata(info), sampled_in_attention=bool(info.get("sampled_in_attention", False))
    )


def gap_closed(clean: float, adv: float, maximum: float) -> float | None:
    """(adv - clean) / (maximum - clean), the share of the gap to the maximum an attack closes.

    None when the clean value already is the maximum (the share is undefined).
    """
    clean, adv, maximum = float(clean), float(adv), float(maximum)
    if not all(np.isfinite(v) for v in (clean, adv, maximum)):
        raise ValueError("gap_closed needs finite values")
    if maximum == clean:
        return None
    return (adv - clean) / (maximum - clean)
