"""The arithmetic of ATS's token sampler, as the official code does it (adaptivetokensampling/ATS,
`libs/models/transformers/ats_block.py`), per image and exportable to ONNX.

- `attention_weights`: the official `softmax_with_policy`: exp(a - max) over the image's real keys,
  then (e + 1e-6 / n) / (sum e + 1e-6), n the image's real token count, the logits being
  (q @ k^T) * scale;
- `significance_scores`: the class token's attention summed over the heads times the L2 norm of
  each token's value vector (all heads), over the patch tokens, normalised to sum to 1;
- `score_order`: the ascending order of the scores (padding first, ties by position), from an
  (N, N) comparison rather than a sort;
- `nearest_cdf_keep` (sampler "official"): the scores' cumulative sum in that order, min-max
  normalised; K sample points evenly spaced from the smallest non-zero normalised value to 1
  (K = 196 for DeiT-S: the official `n_ref_tokens - 1`, whatever the block's NUM_TOKENS); each
  point picks the token whose normalised CDF value is nearest (the lower position on a tie), and
  duplicates collapse. The lowest-scoring token sits at 0, below the first point, so it is never
  picked; the highest sits at 1, the last point, so it always is;
- `quantile_keep` (sampler "quantile", edgeattack's earlier sampler): K = the image's available
  patch tokens, the quantiles (k + 0.5) / K of the unnormalised CDF, a token kept when one falls in
  its CDF interval;
- `expected_distinct`: the DeSparsify surrogate, the expected number of distinct tokens hit by K
  independent draws from the scores, sum_j 1 - exp(-K p_j).

The CDF is accumulated in float64 and rounded to float32, which is what `torch.cumsum` does with
float32 on the CPU, so torch and ONNX Runtime (CumSum in double) round it alike.
"""

from __future__ import annotations

from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.sparsity.base import split_qkv as _split_qkv

torch = require("torch", feature="ATS")

__all__ = [
    "EPS",
    "SAMPLERS",
    "attention_output",
    "attention_weights",
    "check_sampler",
    "expected_distinct",
    "nearest_cdf_keep",
    "official_block",
    "quantile_keep",
    "sample_points",
    "score_order",
    "significance_scores",
]

SAMPLERS: tuple[str, ...] = ("official", "quantile")
"""ATS samplers: the official nearest-CDF sampler (default), edgeattack's earlier quantile sampler."""
EPS = 1e-6
"""The official `softmax_with_policy` epsilon."""


def check_sampler(sampler: str) -> str:
    """`sampler` if it is one of `SAMPLERS`, ConfigError otherwise."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"ATS sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return sampler


def attention_weights(q: Any, k: Any, key_mask: Any, scale: float) -> Any:
    """(B, H, M, N) attention of queries `q` (B, H, M, d) over keys `k` (B, H, N, d), as the official
    `softmax_with_policy` computes it for an image alone (keys `key_mask` (B, N) marks False get 0)."""
    dtype = q.dtype
    logits = ((q @ k.transpose(-2, -1)) * scale).float()
    mask = key_mask.unsqueeze(1).unsqueeze(1)
    logits = logits.masked_fill(~mask, float("-inf"))
    exp = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    real = key_mask.to(torch.float64).sum(dim=1)  # the N of the official code, which holds no padding at batch 1
    eps_n = (EPS / real).to(torch.float32).view(-1, 1, 1, 1)
    weights = (exp + eps_n * mask.to(torch.float32)) / (exp.sum(dim=-1, keepdim=True) + EPS)
    return weights.to(dtype)


def attention_output(attn: Any, weights: Any, v: Any) -> Any:
    """timm `Attention`'s output (after proj) from attention `weights` (B, H, M, N) over values `v` (B, H, N, d)."""
    out = attn.attn_drop(weights) @ v
    out = out.transpose(1, 2).reshape(weights.shape[0], weights.shape[2], attn.num_heads * attn.head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj_drop(attn.proj(out))


def official_block(block: Any, x: Any, key_mask: Any) -> Any:
    """timm `Block` `block` on `x` (B, N, C) with the official attention; keys `key_mask` marks False are not attended."""
    q, k, v = _split_qkv(block.attn, block.norm1(x))
    weights = attention_weights(q, k, key_mask, block.attn.scale)
    x = x + block.drop_path1(block.ls1(attention_output(block.attn, weights, v)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def significance_scores(cls_attention: Any, values: Any, valid: Any) -> Any:
    """(B, N-1) float32 scores of the patch tokens, summing to 1 over those `valid` (B, N-1) marks.

    `cls_attention` (B, H, N): the class token's attention weights; `values` (B, H, N, d).
    Score_j = sum_h A[h, 0, j] * ||V_j||, V_j over all heads (the official `score_assignment_step`).
    """
    batch, heads, tokens, dim = values.shape
    value_norm = torch.linalg.norm(values.transpose(1, 2).reshape(batch, tokens, heads * dim), ord=2, dim=2)
    score = (cls_attention.sum(dim=1) * value_norm)[:, 1:].float() * valid.to(torch.float32)
    return score / score.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def score_order(scores: Any, valid: Any) -> tuple[Any, Any]:
    """(rank, order), both (B, M) int64: each token's position in ascending score order and its inverse.

    Padding (`valid` False) comes first, ties go to the lower position; `order[:, r]` is the token
    at position r. Counted with an (M, M) comparison and a scatter, no sort, so torch and ONNX
    Runtime agree.
    """
    key = torch.where(valid, scores, torch.full_like(scores, -1.0))
    k_i, k_j = key.unsqueeze(2), key.unsqueeze(1)  # i: the token compared, j: the token ranked
    index = torch.arange(scores.shape[1], device=scores.device)
    earlier = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(0)
    rank = ((k_i < k_j) | ((k_i == k_j) & earlier)).to(torch.int64).sum(dim=1)
    order = torch.zeros_like(rank).scatter(1, rank, index.unsqueeze(0).expand_as(rank))
    return rank, order


def sample_points(samples: int) -> Any:
    """(2, K) float32 constants of the official `create_ys` for K = `samples` points:
    linspace(0, 1, K) * (K - 1), and 0..K-1."""
    if samples < 2:
        raise ConfigError(f"the official ATS sampler needs at least 2 sample points, got {samples}")
    return torch.stack([torch.linspace(0, 1, steps=samples) * (samples - 1), torch.arange(samples).float()])


def nearest_cdf_keep(sorted_scores: Any, sorted_valid: Any, points: Any) -> Any:
    """(B, M) bool, in ascending score order: the tokens the official sampler keeps.

    `sorted_scores`, `sorted_valid` (B, M): the scores and validity in `score_order`'s order;
    `points`: `sample_points(K)`. See the module docstring.
    """
    inf = torch.full_like(sorted_scores, float("inf"))
    cdf = torch.cumsum(sorted_scores.to(torch.float64), dim=1).to(torch.float32)
    low = torch.where(sorted_valid, cdf, inf).amin(dim=1, keepdim=True)
    high = torch.where(sorted_valid, cdf, -inf).amax(dim=1, keepdim=True)
    normalized = (cdf - low) / (high - low)
    start = torch.where(sorted_valid & (normalized != 0), normalized, inf).amin(dim=1, keepdim=True)
    samples = points.shape[1]
    scaled, steps = points[0].unsqueeze(0), points[1].unsqueeze(0)
    ys = start + ((scaled - start * steps) / (samples - 1))  # (B, K), the official create_ys
    distance = (ys.unsqueeze(2) - normalized.unsqueeze(1)).abs()
    distance = distance.masked_fill(~sorted_valid.unsqueeze(1), float("inf"))
    picked = distance.argmin(dim=2)  # (B, K): the nearest position, the lower one on a tie
    hits = torch.zeros_like(sorted_scores).scatter(1, picked, torch.ones_like(ys)) > 0
    position = torch.arange(sorted_scores.shape[1], device=sorted_scores.device).unsqueeze(0)
    top = position == sorted_scores.shape[1] - 1  # the highest score: picked, also when a lone CDF is 0 / 0
    return (hits | top) & sorted_valid


def quantile_keep(scores: Any, samples: Any) -> Any:
    """(B, M) bool: the tokens that `samples` (B, 1) evenly spaced quantiles pick from `scores` (B, M).

    Scores are sorted ascending (ties by position); token j owns the CDF interval
    (C_j - p_j, C_j]; the quantiles are (k + 0.5) / K. The number of quantiles at or below c is
    floor(K c + 1/2), so token j is hit when that number grows across its interval. Tokens with a
    zero score (padding, dropped tokens) own an empty interval and are never kept.
    """
    p_i, p_j = scores.unsqueeze(2), scores.unsqueeze(1)  # i: the token compared, j: the token placed
    index = torch.arange(scores.shape[1], device=scores.device)
    not_after = (index.unsqueeze(1) <= index.unsqueeze(0)).unsqueeze(0)
    at_or_before = (p_i < p_j) | ((p_i == p_j) & not_after)
    upper = (p_i * at_or_before.to(scores.dtype)).sum(dim=1)  # C_j
    lower = upper - scores
    k = samples.to(scores.dtype)
    return torch.floor(k * upper + 0.5) > torch.floor(k * lower + 0.5)


def expected_distinct(scores: Any, samples: Any, valid: Any) -> Any:
    """(B,) expected distinct tokens hit by `samples` independent draws from `scores`: sum_j 1 - exp(-K p_j)."""
    hit = 1.0 - torch.exp(-samples.to(scores.dtype) * scores)
    return (hit * valid.to(scores.dtype)).sum(dim=1)
