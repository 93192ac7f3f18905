"""DynamicViT (Rao et al., "Dynamic Token Sparsification", NeurIPS 2021) around a timm ViT.

`DynamicViT` reuses a timm `VisionTransformer`'s modules (so it starts from a trained teacher)
and adds a prediction module (`PredictorLG`: local token features + the mean of the kept tokens'
global features -> log-probabilities of keep/drop) before the blocks given by
`edgeattack.sparsity.schedule.prune_locations_for` (3/6/9 of 12, 2/3/4 of 6), keeping ρ, ρ², ρ³
of the initial patch tokens:

- training (`model.train()`): every predictor samples a hard keep mask with Gumbel-softmax
  (straight-through), multiplied by the previous stage's mask; nothing is dropped physically, the
  attention of every later block is masked instead (a token attends to the kept tokens and to
  itself, never to dropped ones), so the predictors get gradients. `forward` returns a
  `DynamicViTOutput` (logits, final patch-token features, final keep mask, per-stage masks).
- inference (`model.eval()`): each stage keeps the static top-k (k = int(N·ρ^s)) patch tokens by
  predictor score among the surviving ones and gathers them (the class token always stays), so
  the later blocks really run on fewer tokens; `forward` returns logits only, and ONNX export
  gives TopK + GatherElements nodes with a dynamic batch axis.

The state dict uses the names of the authors' release (`blocks.*`, `score_predictor.*`,
`in_conv`/`out_conv`), so their DeiT checkpoints load with `--checkpoint`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.sparsity.base import check_token_vit
from edgeattack.sparsity.schedule import (
    KEEP_RATES,
    check_keep_rate,
    check_prune_locations,
    keep_ratios_for,
    kept_patches,
    prune_locations_for,
    rate_from_name,
)
from edgeattack.zoo.config import ModelConfig

torch = require("torch", feature="DynamicViT")
nn = torch.nn
F = torch.nn.functional

__all__ = [
    "KEEP_RATES",
    "DynamicViT",
    "DynamicViTOutput",
    "PredictorLG",
    "build_dynamicvit",
    "keep_ratios_for",
    "kept_token_counts",
    "prune_locations_for",
]


class DynamicViTOutput(NamedTuple):
    """What the training losses need (returned by `forward` in training mode)."""

    logits: Any  # (B, classes)
    tokens: Any  # (B, N, C) patch tokens after the final norm, at their original positions
    keep_mask: Any  # (B, N) the last stage's hard keep decisions (detached), for token distillation
    decisions: list[Any]  # per stage (B, N) hard keep decisions (straight-through), for the ratio loss


class PredictorLG(nn.Module):
    """DynamicViT's prediction module: per-token local features + the kept tokens' mean global feature."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim < 4:
            raise ConfigError(f"DynamicViT's predictor needs an embedding width of at least 4, got {embed_dim}")
        self.in_conv = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2),
            nn.GELU(),
            nn.Linear(embed_dim // 2, embed_dim // 4),
            nn.GELU(),
            nn.Linear(embed_dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: Any, policy: Any = None) -> Any:
        """Log-probabilities (keep, drop) of patch tokens `x` (B, N, C); `policy` (B, N, 1) marks the kept ones."""
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:]
        if policy is None:  # every token present is kept (inference, after gathering)
            pooled = glob.mean(dim=1, keepdim=True)
        else:
            pooled = (glob * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True).clamp_min(1.0)
        return self.out_conv(torch.cat([local, pooled.expand_as(glob)], dim=-1))


class DynamicViT(nn.Module):
    """A timm ViT with DynamicViT token pruning; see the module docstring. Build with `from_vit`."""

    def __init__(self, net: Any, rho: float, prune_locations: Sequence[int] | None = None) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        super().__init__()
        _check_vit(net)
        rho = check_keep_rate(rho, allowed=None)
        depth = len(net.blocks)
        locations = (
            prune_locations_for(depth) if prune_locations is None else check_prune_locations(prune_locations, depth)
        )
        self.patch_embed = net.patch_embed
        self.cls_token = net.cls_token
        self.pos_embed = net.pos_embed
        self.pos_drop = net.pos_drop
        self.patch_drop = net.patch_drop
        self.norm_pre = net.norm_pre
        self.blocks = net.blocks
        self.norm = net.norm
        self.fc_norm = net.fc_norm
        self.head_drop = net.head_drop
        self.head = net.head
        self.embed_dim = int(net.embed_dim)
        self.num_classes = int(net.num_classes)
        self.num_patches = int(net.patch_embed.num_patches)
        self.img_size = tuple(int(s) for s in net.patch_embed.img_size)
        self.rho = rho
        self.prune_locations = locations
        self.keep_ratios = keep_ratios_for(rho, len(locations))
        self.keep_counts = tuple(kept_patches(self.num_patches, r) for r in self.keep_ratios)
        self.score_predictor = nn.ModuleList(PredictorLG(self.embed_dim) for _ in locations)

    @classmethod
    def from_vit(cls, net: Any, rho: float = 0.7, prune_locations: Sequence[int] | None = None) -> DynamicViT:
        """A DynamicViT on a copy of `net`'s weights (the teacher stays untouched), predictors freshly initialised."""
        _check_vit(net)
        return cls(copy.deepcopy(net), rho, prune_locations)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def token_schedule(self) -> tuple[int, ...]:
        """Tokens (class token included) each block processes at inference."""
        counts, current, stage = [], self.num_patches + 1, 0
        for block in range(self.depth):
            if stage < len(self.prune_locations) and block == self.prune_locations[stage]:
                current = self.keep_counts[stage] + 1
                stage += 1
            counts.append(current)
        return tuple(counts)

    def forward(self, x: Any) -> Any:
        """Logits in eval mode (tokens gathered); a `DynamicViTOutput` in training mode (Gumbel masks)."""
        if self.training:
            return self.forward_masked(x, sample=True)
        return self.forward_pruned(x, record=False)[0]

    # -- inference: physical pruning -------------------------------------------------------------
    def forward_pruned(self, x: Any, *, record: bool = True) -> tuple[Any, list[int], list[Any]]:
        """(logits, tokens per block, per-stage kept patch positions (B, k_s) in the original grid).

        With `record=False` (what `forward` and so the ONNX graph use) the last two are empty.
        """
        x = self._embed(x)
        positions = None
        if record:
            positions = torch.arange(self.num_patches, device=x.device).unsqueeze(0).expand(x.shape[0], -1)
        counts: list[int] = []
        kept: list[Any] = []
        stage = 0
        for index, block in enumerate(self.blocks):
            if stage < len(self.prune_locations) and index == self.prune_locations[stage]:
                patches = x[:, 1:]
                score = self.score_predictor[stage](patches)[..., 0]
                order = torch.topk(score, self.keep_counts[stage], dim=1).indices  # static k
                patches = torch.gather(patches, 1, order.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
                if positions is not None:
                    positions = torch.gather(positions, 1, order)
                    kept.append(positions)
                x = torch.cat([x[:, :1], patches], dim=1)
                stage += 1
            if record:
                counts.append(int(x.shape[1]))
            x = block(x)
        return self._head(self.norm(x)), counts, kept

    # -- training: masking -----------------------------------------------------------------------
    def forward_masked(self, x: Any, *, sample: bool = True) -> DynamicViTOutput:
        """All tokens kept in memory, dropped ones masked out of attention.

        `sample=True` draws hard Gumbel-softmax decisions (training); `sample=False` takes the same
        static top-k as inference, so its logits equal `forward_pruned`'s (gathering == masking).
        """
        x = self._embed(x)
        batch = x.shape[0]
        prev = x.new_ones(batch, self.num_patches, 1)
        cls_keep = x.new_ones(batch, 1, 1)
        policy = None
        decisions: list[Any] = []
        stage = 0
        for index, block in enumerate(self.blocks):
            if stage < len(self.prune_locations) and index == self.prune_locations[stage]:
                log_probs = self.score_predictor[stage](x[:, 1:], prev)
                if sample:
                    keep = F.gumbel_softmax(log_probs, hard=True)[..., :1] * prev
                else:
                    score = log_probs[..., 0].masked_fill(prev[..., 0] <= 0, float("-inf"))
                    order = torch.topk(score, self.keep_counts[stage], dim=1).indices
                    keep = torch.zeros_like(score).scatter(1, order, 1.0).unsqueeze(-1)
                decisions.append(keep[..., 0])
                policy = torch.cat([cls_keep, keep], dim=1)
                prev = keep
                stage += 1
            x = block(x) if policy is None else _block_with_policy(block, x, policy)
        x = self.norm(x)
        return DynamicViTOutput(self._head(x), x[:, 1:], prev[..., 0].detach(), decisions)

    # -- shared ----------------------------------------------------------------------------------
    def _embed(self, x: Any) -> Any:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def _head(self, x: Any) -> Any:
        return self.head(self.head_drop(self.fc_norm(x[:, 0])))

    def kept_token_counts(self, x: Any) -> Any:
        """(B, depth) int64: tokens (class token included) each block processes for inputs `x`.

        In eval mode the blocks' actual sequence lengths (the static schedule); in training mode
        the kept tokens of each image's sampled masks.
        """
        with torch.no_grad():
            if not self.training:
                _, counts, _ = self.forward_pruned(x)
                return torch.tensor(counts, dtype=torch.int64).unsqueeze(0).expand(x.shape[0], -1).clone()
            out = self.forward_masked(x, sample=True)
        per_stage = [d.sum(dim=1).round().long() + 1 for d in out.decisions]
        full = torch.full((x.shape[0],), self.num_patches + 1, dtype=torch.int64)
        columns, stage, current = [], 0, full
        for index in range(self.depth):
            if stage < len(self.prune_locations) and index == self.prune_locations[stage]:
                current = per_stage[stage]
                stage += 1
            columns.append(current)
        return torch.stack(columns, dim=1)

    def extra_repr(self) -> str:
        return (
            f"rho={self.rho}, prune_locations={list(self.prune_locations)}, keep_counts={list(self.keep_counts)}, "
            f"num_patches={self.num_patches}"
        )


def _block_with_policy(block: Any, x: Any, policy: Any) -> Any:
    """A timm `Block` whose attention ignores the tokens that `policy` (B, N, 1) drops."""
    x = x + block.drop_path1(block.ls1(_masked_attention(block.attn, block.norm1(x), policy)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _masked_attention(attn: Any, x: Any, policy: Any) -> Any:
    """timm `Attention` with DynamicViT's masked softmax.

    Query i may attend to key j when j is kept or j == i (a dropped token still attends to itself,
    so every row has a key). The weights are exp(s - max_allowed) · allowed / sum, which is exactly
    the softmax over the allowed keys for 0/1 masks, and differentiable in the (straight-through)
    mask, which is how the predictors learn.
    """
    batch, tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    keep = policy.reshape(batch, 1, 1, tokens).to(scores.dtype)
    eye = torch.eye(tokens, dtype=scores.dtype, device=scores.device).view(1, 1, tokens, tokens)
    allowed = keep + (1.0 - keep) * eye
    row_max = scores.masked_fill(allowed <= 0, float("-inf")).amax(dim=-1, keepdim=True).detach()
    weights = torch.exp((scores - row_max).clamp(max=0.0)) * allowed
    weights = attn.attn_drop(weights / weights.sum(dim=-1, keepdim=True))
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def _check_vit(net: Any) -> None:
    """ConfigError unless `net` is a plain timm ViT with a class token that DynamicViT can prune."""
    check_token_vit(net, "DynamicViT")


def kept_token_counts(model: Any, images: Any) -> Any:
    """(B, depth) tokens per block for [0,1] `images` of a ZooModel wrapping a DynamicViT (or a bare one)."""
    net = getattr(model, "net", model)
    if not isinstance(net, DynamicViT):
        raise ConfigError(f"{getattr(model, 'model_name', type(model).__name__)} is not a DynamicViT model")
    if net is not model:
        images = (images - model.mean) / model.std
    return net.kept_token_counts(images)


def build_dynamicvit(name: str, config: ModelConfig, *, pretrained: bool = False, **kwargs: Any) -> DynamicViT:
    """Zoo builder: the DynamicViT of `name` (`..._r07` -> ρ = 0.7) on the ViT its name is based on.

    Weights are random (predictors included) until a checkpoint is loaded; timm has no DynamicViT
    weights, so `pretrained=True` is refused: train one with `train_dynamicvit` from the teacher
    or pass the authors' checkpoint with --checkpoint.
    """
    if pretrained:
        raise ConfigError(
            f"{name}: timm has no pretrained DynamicViT weights; pass --checkpoint with a DynamicViT "
            "checkpoint or train one from its teacher (edgeattack.sparsity.train_dynamicvit)"
        )
    rho = kwargs.pop("rho", None)
    rho = rate_from_name(name) if rho is None else check_keep_rate(rho)
    prune_locations = kwargs.pop("prune_locations", None)
    base = name.removeprefix("dynamicvit_").rsplit("_r", 1)[0]
    if config.dataset == "digits":
        from edgeattack.zoo.vit import build_digits_vit

        net = build_digits_vit(base, config, **kwargs)
    else:
        from edgeattack.zoo.vit import build_timm_vit

        net = build_timm_vit(base, config, **kwargs)
    return DynamicViT(net, rho, prune_locations)
