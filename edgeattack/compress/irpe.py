"""Image relative position encoding (iRPE) in plain PyTorch: Wu et al., ICCV 2021, arXiv:2107.14222.

iRPE adds to the attention logits a term that depends on the 2-D offset between the query's and the
key's patch. MiniViT's Mini-DeiT (microsoft/Cream) puts it on the keys, in the paper's *contextual*
mode with the *product* method, shared by all heads and with no skip (class) token:

    logits[b, h, i, j] = q[b, h, i] . k[b, h, j] + q[b, h, i] . r[bucket(i, j)]

where `q` is already scaled by 1/sqrt(head_dim) and `r` (`lookup_table_weight`, [heads or 1,
head_dim, buckets]) holds one learnt vector per bucket. The bucket of a pair of patches comes from
their offset (Δrow, Δcol) = position(i) - position(j) (query minus key), each coordinate mapped
through the paper's piecewise index function (Eq. 18)

    g(x) = round(x)                                                       if |x| <= α
    g(x) = sign(x) · min(β, round(α + ln(|x|/α) / ln(γ/α) · (β - α)))    otherwise

and truncated to an integer, with α = ratio, β = 2·ratio, γ = 8·ratio (ratio 1.9 in Mini-DeiT:
offsets 0 and ±1 stay, ±2 and ±3 become ±2, every farther one ±3). *product* buckets are
(g(Δrow) + ⌊β⌋) · (2⌊β⌋ + 1) + g(Δcol) + ⌊β⌋, so 49 of them for ratio 1.9; *euc* buckets
g(round(√(Δrow² + Δcol²))) + ⌊β⌋ and *quant* buckets g(Δrow² + Δcol²) + ⌊β⌋, 2⌊β⌋ + 1 of them.
With `skip` extra tokens in front of the patches, every pair that involves one of them shares one
more bucket. On queries (`rpe_on` "q") the term is k[j] · r[bucket(j, i)] with `k` scaled, i.e. the same
table transposed; the *bias* mode learns a scalar per bucket instead of a vector.

The bucket table is computed once per grid and gathered with a constant index, so the module exports
to ONNX (MatMul + Gather, opset 17) with no custom operator; Cream's optional CUDA kernel
(`rpe_ops`) computes the same gather. The *cross* method and iRPE on values are not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import ConfigError

torch = require("torch", feature="iRPE")
nn = torch.nn

__all__ = ["IRPE", "RPEConfig", "bucket_ids", "piecewise_index"]

METHODS = ("product", "euc", "quant")
MODES = ("ctx", "bias")
_MODE_ALIASES = {"contextual": "ctx", "ctx": "ctx", "bias": "bias"}


@dataclass(frozen=True)
class RPEConfig:
    """Where and how iRPE is applied; the defaults are Mini-DeiT's (`get_deit_rpe_config` in Cream)."""

    ratio: float = 1.9
    method: str = "product"
    mode: str = "ctx"
    shared_head: bool = True
    skip: int = 0
    rpe_on: str = "k"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", str(self.method).lower())
        mode = _MODE_ALIASES.get(str(self.mode).lower())
        if mode is None:
            raise ConfigError(f"iRPE mode must be one of ctx (contextual), bias; got {self.mode!r}")
        object.__setattr__(self, "mode", mode)
        if self.method not in METHODS:
            raise ConfigError(
                f"iRPE method must be one of {', '.join(METHODS)} (cross is not implemented), got {self.method!r}"
            )
        if not self.rpe_on or set(self.rpe_on) - {"q", "k"}:
            raise ConfigError(
                f"iRPE applies to queries and/or keys here (rpe_on 'q', 'k' or 'qk'), got {self.rpe_on!r}"
            )
        if self.ratio <= 0 or self.skip < 0:
            raise ConfigError(f"iRPE needs ratio > 0 and skip >= 0, got ratio {self.ratio}, skip {self.skip}")

    @property
    def alpha(self) -> float:
        return 1 * self.ratio

    @property
    def beta(self) -> float:
        return 2 * self.ratio

    @property
    def gamma(self) -> float:
        return 8 * self.ratio

    @property
    def num_buckets(self) -> int:
        """Buckets of the lookup table: the offsets' ones, plus one shared by the skip tokens."""
        side = 2 * int(self.beta) + 1
        return (side**2 if self.method == "product" else side) + (1 if self.skip > 0 else 0)


def piecewise_index(relative: Any, alpha: float, beta: float, gamma: float) -> Any:
    """The paper's Eq. 18 on a tensor of offsets (int or float): an int64 tensor in [-⌊β⌋, ⌊β⌋].

    Near offsets (|x| <= α) keep their rounded value; far ones are compressed logarithmically,
    rounded, capped at β and truncated towards zero (float32 arithmetic, as in the reference).
    """
    magnitude = relative.abs()
    far = alpha + torch.log(magnitude / alpha) / math.log(gamma / alpha) * (beta - alpha)
    far = torch.sign(relative) * far.round().clamp(max=beta)
    near = relative.round() if relative.is_floating_point() else relative
    return torch.where(magnitude <= alpha, near.to(far.dtype), far).to(torch.long)


@lru_cache(maxsize=16)
def _cached_bucket_ids(config: RPEConfig, height: int, width: int) -> Any:
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    d_row = rows[:, None] - rows[None, :]  # query position minus key position
    d_col = cols[:, None] - cols[None, :]
    args = (config.alpha, config.beta, config.gamma)
    offset = int(config.beta)
    if config.method == "product":
        ids = (piecewise_index(d_row, *args) + offset) * (2 * offset + 1) + piecewise_index(d_col, *args) + offset
    elif config.method == "euc":
        ids = piecewise_index((d_row.square() + d_col.square()).float().sqrt().round(), *args) + offset
    else:
        ids = piecewise_index(d_row.square() + d_col.square(), *args) + offset
    if config.skip > 0:
        length = height * width + config.skip
        padded = torch.full((length, length), config.num_buckets - 1, dtype=torch.long)
        padded[config.skip :, config.skip :] = ids
        ids = padded
    return ids


def bucket_ids(config: RPEConfig, height: int, width: int) -> Any:
    """Bucket of every (query, key) pair of a `height` x `width` grid: int64 [L, L], L = skip + h·w."""
    return _cached_bucket_ids(config, int(height), int(width)).clone()


class IRPE(nn.Module):
    """iRPE on queries or keys for one grid: `forward(x)` is the term added to the attention logits.

    `x` is [B, H, L, head_dim] (the scaled queries for iRPE on keys, the scaled keys for iRPE on
    queries); the result is [B, H, L, L] (contextual) or [1, H or 1, L, L] (bias), indexed
    [query, key] for keys and [key, query] for queries (transpose it before adding). The parameter is
    Cream's `lookup_table_weight` [heads, head_dim, buckets] or `lookup_table_bias` [heads, buckets],
    with heads 1 when shared; it starts at zero, as there.
    """

    def __init__(self, config: RPEConfig, head_dim: int, num_heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.num_heads = int(num_heads)
        heads = 1 if config.shared_head else num_heads
        buckets = config.num_buckets
        ids = bucket_ids(config, *grid)
        self.length = int(ids.shape[0])
        if config.mode == "ctx":
            self.lookup_table_weight = nn.Parameter(torch.zeros(heads, head_dim, buckets))
            # row i of the [L, buckets] per-query table starts at i * buckets once flattened
            ids = ids + torch.arange(self.length)[:, None] * buckets
        else:
            self.lookup_table_bias = nn.Parameter(torch.zeros(heads, buckets))
        self.register_buffer("index", ids.flatten(), persistent=False)

    def forward(self, x: Any) -> Any:
        if x.shape[-2] != self.length:
            raise ConfigError(f"iRPE was built for {self.length} tokens, got {x.shape[-2]}")
        if self.config.mode == "ctx":
            table = torch.matmul(x, self.lookup_table_weight)  # [B, H, L, buckets]
            # constant target shapes keep the exported graph's ranks static (ORT's symbolic shape inference)
            flat = table.reshape(-1, self.num_heads, self.length * table.shape[-1]).index_select(2, self.index)
            return flat.reshape(-1, self.num_heads, self.length, self.length)
        return self.lookup_table_bias.index_select(1, self.index).view(1, -1, self.length, self.length)

    def extra_repr(self) -> str:
        c = self.config
        return f"method={c.method}, mode={c.mode}, ratio={c.ratio}, shared_head={c.shared_head}, skip={c.skip}"

    def macs(self) -> int:
        """Multiply-adds of one image: the per-query lookup tables, L x head_dim x buckets for every head."""
        if self.config.mode != "ctx":
            return 0
        _, head_dim, buckets = (int(s) for s in self.lookup_table_weight.shape)
        return self.length * head_dim * buckets * self.num_heads
