"""AdaViT (Meng et al., "AdaViT: Adaptive Vision Transformers for Efficient Image Recognition", CVPR 2022).

`AdaViT` reuses a timm `VisionTransformer`'s modules (so it starts from a trained teacher) and
gives every block a light decision network (`DecisionNet`) that reads the block's normalised
input (`block.norm1(x)`) and derives three usage policies for that block, as in the reference:

- **patches** (every block): one linear logit per patch token; a patch the block does not use
  passes through it unchanged (no attention output, no MLP output) and takes no part in the
  attention of the others. The class token is always used.
- **heads** (blocks from `keep_layers` on): one logit per head, from the class token; an unused
  head contributes zero to the attention output (head masking).
- **block** (blocks from `keep_layers` on): one logit from the class token; an unused block is
  skipped as a whole, and it processes **0 tokens** (not even the class token) in the counts.

Training (`model.train()`, `forward` -> `AdaViTOutput`): hard Gumbel-sigmoid decisions with a
straight-through gradient; nothing is gathered, the residual updates are multiplied by the
decisions and the attention keys are masked. Inference (`model.eval()`): a policy is on when
its logit is > 0 (sigmoid > 0.5), and in the default `drop_mode="physical"` each block gathers
the tokens it uses (per batch the largest count, each image's tokens first in their order, the
rest padding slots hidden from attention) and scatters the results back, so an image's logits do
not depend on its batch and at batch 1 the compute really shrinks. `drop_mode="masked"` runs
all tokens with masks (fixed shapes). Both export to ONNX (opset 17, no data-dependent Python).

The token-sparse contract shared with the other mechanisms: `forward_counts(x)` -> (logits,
int64 counts [N, depth] of tokens incl. the class token each block processes), `usage(x)` ->
(logits, float [N, depth] differentiable surrogate of counts / num_tokens), `token_cap` (a
defence, `set_token_cap`: at most that many tokens, class token included, enter each block; the
ones with the highest keep logit win), `mechanism = "adavit"`; see `edgeattack.sparsity.base`,
whose `TokenSparseViT` this builds on. Unlike the other mechanisms a block here may keep no token
at all (block skip), so its attention lets every token attend to itself as well: no softmax row is
ever empty, and padding stays finite.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, NamedTuple

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.sparsity.base import (
    DROP_MODES,
    TokenSparseViT,
    apply_token_cap,
    check_drop_mode,
    compaction_order,
    gather_tokens,
    split_qkv,
)
from edgeattack.zoo.config import ModelConfig

torch = require("torch", feature="AdaViT")
nn = torch.nn

__all__ = ["DROP_MODES", "AdaViT", "AdaViTOutput", "DecisionNet", "build_adavit", "gumbel_sigmoid"]


class AdaViTOutput(NamedTuple):
    """What the training losses need (returned by `forward` in training mode)."""

    logits: Any  # (B, classes)
    token_keep: Any  # (B, depth, patches) hard patch decisions (straight-through)
    head_keep: Any  # (B, gated blocks, heads) hard head decisions (straight-through), or None
    block_keep: Any  # (B, gated blocks) hard block decisions (straight-through), or None


def gumbel_sigmoid(logits: Any, tau: float = 1.0, noise: float = 1.0) -> Any:
    """Hard 0/1 samples of Bernoulli(sigmoid(logits)) with the straight-through gradient of sigmoid((l + g)/tau).

    g is `noise` times the difference of two Gumbel(0, 1) draws (a logistic variable), so at
    noise 1, P(1) = sigmoid(logits) whatever `tau` (`tau` only softens the surrogate the gradient
    flows through); at noise 0 the decisions are the inference ones, logits > 0.
    """
    gumbel = -torch.empty_like(logits).exponential_().log() + torch.empty_like(logits).exponential_().log()
    soft = torch.sigmoid((logits + noise * gumbel) / tau)
    hard = (soft > 0.5).to(logits.dtype)
    return hard - soft.detach() + soft


class DecisionNet(nn.Module):
    """One block's decision network: patch, head and block logits from the block's normalised input."""

    def __init__(self, embed_dim: int, num_heads: int, *, heads: bool, block: bool, init_bias: float) -> None:
        super().__init__()
        self.token = nn.Linear(embed_dim, 1)
        self.head = nn.Linear(embed_dim, num_heads) if heads else None
        self.block = nn.Linear(embed_dim, 1) if block else None
        for layer in (self.token, self.head, self.block):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.constant_(layer.bias, init_bias)

    def forward(self, h: Any) -> tuple[Any, Any, Any]:
        """(patch logits (B, P), head logits (B, H) or None, block logits (B,) or None) of `h` (B, 1+P, C)."""
        token = self.token(h[:, 1:]).squeeze(-1)
        cls = h[:, 0]
        head = self.head(cls) if self.head is not None else None
        block = self.block(cls).squeeze(-1) if self.block is not None else None
        return token, head, block


class AdaViT(TokenSparseViT):
    """A timm ViT with AdaViT's patch/head/block usage policies; see the module docstring. Build with `from_vit`."""

    mechanism = "adavit"

    def __init__(
        self,
        net: Any,
        *,
        keep_layers: int = 1,
        head_policy: bool = True,
        block_policy: bool = True,
        token_cap: Sequence[int] | int | None = None,
        drop_mode: str = "physical",
        tau: float = 1.0,
        init_bias: float = 2.0,
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        if not 0 <= keep_layers <= self.depth:
            raise ConfigError(f"keep_layers must be between 0 and {self.depth}, got {keep_layers}")
        if tau <= 0:
            raise ConfigError(f"tau must be positive, got {tau}")
        self.num_heads = int(net.blocks[0].attn.num_heads)
        self.keep_layers = int(keep_layers)
        self.tau = float(tau)
        self.noise = 1.0  # scale of the Gumbel noise in training (annealed by train_adavit)
        self.decisions = nn.ModuleList(
            DecisionNet(
                self.embed_dim,
                self.num_heads,
                heads=head_policy and index >= keep_layers,
                block=block_policy and index >= keep_layers,
                init_bias=init_bias,
            )
            for index in range(self.depth)
        )

    @classmethod
    def from_vit(cls, net: Any, **kwargs: Any) -> AdaViT:
        """An AdaViT on a copy of `net`'s weights (the teacher stays untouched), decision networks fresh."""
        return cls(copy.deepcopy(net), **kwargs)

    # -- settings --------------------------------------------------------------------------------
    @property
    def gated_blocks(self) -> tuple[int, ...]:
        """Blocks with head and block policies (every block has a patch policy)."""
        return tuple(i for i, d in enumerate(self.decisions) if d.head is not None or d.block is not None)

    # -- the contract ----------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """Logits in eval mode; an `AdaViTOutput` (Gumbel decisions, masked) in training mode."""
        if self.training:
            return self.forward_train(x)
        return self._infer(x, want_usage=False)[0]

    def forward_counts(self, x: Any) -> tuple[Any, Any]:
        """(logits, int64 (N, depth) tokens incl. the class token each block processes; 0 for a skipped block)."""
        logits, counts, _ = self._infer(x, want_usage=False)
        return logits, counts

    def usage(self, x: Any) -> tuple[Any, Any]:
        """(logits, float (N, depth) in [0,1]): sigmoid(block logit) · (1 + Σ sigmoid(patch logits)) / num_tokens.

        The smooth surrogate of counts / num_tokens (before any `token_cap`), differentiable in `x`,
        computed along the same inference pass as the logits.
        """
        logits, _, usage = self._infer(x, want_usage=True)
        return logits, usage

    def keep_masks(self, x: Any) -> tuple[Any, Any]:
        """(logits, keep bool [B, depth, num_tokens]): the tokens each block uses (none if skipped); sums to the counts."""
        trace: list[Any] = []
        logits, _, _ = self._infer(x, want_usage=False, trace=trace)
        return logits, torch.stack(trace, dim=1)

    # -- inference -------------------------------------------------------------------------------
    def _infer(self, x: Any, *, want_usage: bool, trace: list[Any] | None = None) -> tuple[Any, Any, Any]:
        """(logits, counts, usage or None); `trace`, when given, receives each block's keep mask (B, tokens).

        Tokens keep their positions here (physical blocks scatter back), so the keep masks are over
        the original tokens.
        """
        x = self.embed(x)
        tokens = x.shape[1]
        physical = check_drop_mode(self.drop_mode) == "physical"
        counts: list[Any] = []
        usage: list[Any] = []
        for index, (block, decide) in enumerate(zip(self.blocks, self.decisions, strict=True)):
            h = block.norm1(x)
            token_logit, head_logit, block_logit = decide(h)
            keep = torch.cat([torch.ones_like(token_logit[:, :1], dtype=torch.bool), token_logit > 0], dim=1)
            if block_logit is not None:
                keep = keep & (block_logit > 0).unsqueeze(1)
            if self.token_cap is not None and self.token_cap[index] < self.num_tokens:
                first = torch.full_like(token_logit[:, :1], float("inf"))
                keep = apply_token_cap(keep, torch.cat([first, token_logit], dim=1), self.token_cap[index])
            heads = None if head_logit is None else (head_logit > 0).to(x.dtype)
            counts.append(keep.sum(dim=1))
            if trace is not None:
                trace.append(keep)
            if want_usage:
                used = (1.0 + torch.sigmoid(token_logit).sum(dim=1)) / tokens
                usage.append(used if block_logit is None else used * torch.sigmoid(block_logit))
            x = _physical_block(block, x, h, keep, heads) if physical else _policy_block(block, x, h, keep, None, heads)
        logits = self.classify(x)
        usage_t = torch.stack(usage, dim=1) if want_usage else None
        return logits, torch.stack(counts, dim=1).to(torch.int64), usage_t

    # -- training --------------------------------------------------------------------------------
    def forward_train(self, x: Any) -> AdaViTOutput:
        """Sampled hard decisions (straight-through), all tokens in memory; `token_cap` is not applied."""
        x = self.embed(x)
        token_keep: list[Any] = []
        head_keep: list[Any] = []
        block_keep: list[Any] = []
        for block, decide in zip(self.blocks, self.decisions, strict=True):
            h = block.norm1(x)
            token_logit, head_logit, block_logit = decide(h)
            patches = gumbel_sigmoid(token_logit, self.tau, self.noise)
            token_keep.append(patches)
            gate = torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)
            keys = gate.detach() > 0.5
            if block_logit is not None:
                whole = gumbel_sigmoid(block_logit, self.tau, self.noise)
                block_keep.append(whole)
                gate = gate * whole.unsqueeze(1)
            heads = None
            if head_logit is not None:
                heads = gumbel_sigmoid(head_logit, self.tau, self.noise)
                head_keep.append(heads)
            x = _policy_block(block, x, h, keys, gate, heads)
        return AdaViTOutput(
            self.classify(x),
            torch.stack(token_keep, dim=1),
            torch.stack(head_keep, dim=1) if head_keep else None,
            torch.stack(block_keep, dim=1) if block_keep else None,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, keep_layers={self.keep_layers}, tau={self.tau}"


def _physical_block(block: Any, x: Any, h: Any, keep: Any, heads: Any) -> Any:
    """Run `block` on each image's kept tokens only (gathered, padded, scattered back).

    The padding slots of `compaction_order` hold distinct dropped tokens, which leave the block
    unchanged (their gate is 0), so scattering every slot back is exact.
    """
    order, valid = compaction_order(keep)
    out = _policy_block(block, gather_tokens(x, order), gather_tokens(h, order), valid, None, heads)
    return x.scatter(1, order.unsqueeze(-1).expand_as(out), out)


def _policy_block(block: Any, x: Any, h: Any, keys: Any, gate: Any, heads: Any) -> Any:
    """A timm `Block` under a usage policy; `h` is `block.norm1(x)`.

    `keys` (B, T) bool: the tokens the others may attend to (each token also attends to itself,
    so every row of the softmax has a key); `gate` (B, T) multiplies both residual updates (None:
    `keys` as 0/1, so unused tokens leave the block unchanged); `heads` (B, H) multiplies each
    head's output (None: all heads).
    """
    gate = keys.to(x.dtype) if gate is None else gate
    gate = gate.unsqueeze(-1)
    x = x + block.drop_path1(block.ls1(_attention(block.attn, h, keys, heads))) * gate
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))) * gate


def _attention(attn: Any, x: Any, keys: Any, heads: Any) -> Any:
    """timm `Attention` whose queries see only the `keys` tokens (and themselves), heads scaled by `heads`."""
    batch, tokens, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = split_qkv(attn, x)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    position = torch.arange(tokens, device=x.device)
    allowed = keys.unsqueeze(1).unsqueeze(1) | (position.unsqueeze(1) == position.unsqueeze(0))
    weights = attn.attn_drop(scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1))
    out = weights @ v
    if heads is not None:
        out = out * heads.unsqueeze(-1).unsqueeze(-1)
    out = out.transpose(1, 2).reshape(batch, tokens, attn.num_heads * attn.head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def build_adavit(name: str, config: ModelConfig, *, pretrained: bool = False, **kwargs: Any) -> AdaViT:
    """Zoo builder: the AdaViT of `name` (adavit_<base>) on the ViT `<base>`, decision networks random.

    Keyword arguments of `AdaViT` (keep_layers, token_cap, drop_mode, ...) pass through, the rest
    go to the ViT builder. timm has no AdaViT weights, so `pretrained=True` is refused: train one
    with `train_adavit` from the teacher or load a checkpoint with --checkpoint.
    """
    if pretrained:
        raise ConfigError(
            f"{name}: there are no pretrained AdaViT weights to download; pass --checkpoint or train one "
            "from its teacher (edgeattack compress --method adavit)"
        )
    own = {k: kwargs.pop(k) for k in _ADAVIT_KWARGS if k in kwargs}
    base = name.removeprefix("adavit_")
    if config.dataset == "digits":
        from edgeattack.zoo.vit import build_digits_vit

        net = build_digits_vit(f"vit_{base}", config, **kwargs)
    else:
        from edgeattack.zoo.vit import build_timm_vit

        net = build_timm_vit(base, config, **kwargs)
    return AdaViT(net, **own)


_ADAVIT_KWARGS = ("keep_layers", "head_policy", "block_policy", "token_cap", "drop_mode", "tau", "init_bias")
