"""AdaViT (Meng et al., "AdaViT: Adaptive Vision Transformers for Efficient Image Recognition", CVPR 2022).

`AdaViT` reuses a timm `VisionTransformer`'s modules (so it starts from a trained teacher) and
gives every block a light decision network (`DecisionNet`) that derives usage policies for that
block, as the official code (MengLcool/AdaViT, `StepAdaBlock`, Ada-DeiT-S: --ada-head --ada-layer
--ada-token-with-mlp, keep_layers 1) does at inference:

- **patches** (every block): one logit per patch token from the block's normalised input
  (`norm1(x)`, the official `token_select` inside the attention); a patch is used when
  sigmoid(logit) > 0.6. A patch the block does not use takes no part in the attention of the others
  and passes through it unchanged (no attention output, no MLP output). The class token is always used.
- **heads** (blocks from `keep_layers` on): one logit per head from the block's *raw* class token
  (`x[:, 0]`); a head is used when sigmoid > 0.5. An unused head contributes nothing to the
  attention output, and its channels of the MLP input (`norm2(x)`) are zeroed before `fc1`, as the
  official `width_select` masks fc1's input columns.
- **layers** (blocks from `keep_layers` on): two logits from the raw class token (official
  `layer_select`, [2, D]): the attention and the MLP are each skipped when their sigmoid is <= 0.5.
  A block whose attention and MLP are both skipped processes **0 tokens** (not even the class token).

`variant="edgeattack-v1"` keeps the mechanism edgeattack used before it followed the official code
(gates read `norm1(x)[:, 0]`, one block logit `decisions.i.block` [1, D] skipping attention and MLP
together, patches kept at logit > 0, heads masked in the attention only), so weights trained with
it still load and behave as they did.

Training (`model.train()`, `forward` -> `AdaViTOutput`): hard Gumbel-sigmoid decisions (the
official thresholds) with a straight-through gradient; nothing is gathered, the residual updates
are multiplied by the decisions and the attention keys are masked. Inference (`model.eval()`): in
the default `drop_mode="physical"` each block gathers the tokens it uses (per batch the largest
count, each image's tokens first in their order, the rest padding slots hidden from attention) and
scatters the results back, so an image's logits do not depend on its batch and at batch 1 the
compute really shrinks. `drop_mode="masked"` runs all tokens with masks (fixed shapes). Both export
to ONNX (opset 17, no data-dependent Python).

The token-sparse contract (see `edgeattack.sparsity.base`): `forward_counts(x)` -> (logits, int64
counts [N, depth]: per block the used tokens, class token included, or 0 when both its layers are
skipped), `usage(x)` -> (logits, float [N, depth] differentiable surrogate of counts / num_tokens),
`keep_masks`, `token_cap` (at most that many tokens, class token included, enter each block; the
highest patch logits win), `mechanism = "adavit"`. Unlike the other mechanisms a block here may
keep no token at all, so its attention lets every token attend to itself as well: no softmax row is
ever empty (the official pre-softmax mask does the same). Official checkpoints (timm trainer
layout, `state_dict_ema` preferred, separate query/key/value) load through `adapt_checkpoint`
(`edgeattack.sparsity.adavit_checkpoint`).
"""

from __future__ import annotations

import copy
import math
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

__all__ = ["DROP_MODES", "VARIANTS", "AdaViT", "AdaViTOutput", "DecisionNet", "build_adavit", "gumbel_sigmoid"]


class _Variant(NamedTuple):
    gate_from_norm1: bool  # head/layer logits from norm1(x)[:, 0] instead of the raw class token
    layer_gates: int  # 2: attention and MLP skipped separately; 1: the whole block
    layer_name: str  # the decision network's attribute (and state-dict name) of those logits
    token_threshold: float  # a patch is used when sigmoid(logit) > this
    mask_mlp_inputs: bool  # an unused head's channels of norm2(x) are zeroed before fc1


_VARIANTS = {
    "official": _Variant(False, 2, "layer", 0.6, True),
    "edgeattack-v1": _Variant(True, 1, "block", 0.5, False),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
GATE_THRESHOLD = 0.5
"""Heads and layers are used when sigmoid(logit) > 0.5 (the official `BlockHeadSelect` / `BlockLayerSelect`)."""


class AdaViTOutput(NamedTuple):
    """What the training losses need (returned by `forward` in training mode)."""

    logits: Any  # (B, classes)
    token_keep: Any  # (B, depth, patches) hard patch decisions (straight-through)
    head_keep: Any  # (B, gated blocks, heads) hard head decisions (straight-through), or None
    layer_keep: Any  # (B, gated blocks, 2 or 1) hard attention/MLP (or block) decisions, or None


def gumbel_sigmoid(logits: Any, tau: float = 1.0, noise: float = 1.0, threshold: float = 0.5) -> Any:
    """Hard 0/1 decisions sigmoid((l + g)/tau) > `threshold` with the straight-through gradient of the sigmoid.

    g is `noise` times the difference of two Gumbel(0, 1) draws (a logistic variable), as in the
    official `_gumbel_sigmoid`. At tau 1 the decisions are Bernoulli(sigmoid(l - logit(threshold)))
    at noise 1 and the inference ones, sigmoid(l) > threshold, at noise 0.
    """
    gumbel = -torch.empty_like(logits).exponential_().log() + torch.empty_like(logits).exponential_().log()
    soft = torch.sigmoid((logits + noise * gumbel) / tau)
    hard = (soft > threshold).to(logits.dtype)
    return hard - soft.detach() + soft


class DecisionNet(nn.Module):
    """One block's decision network: patch logits from `norm1(x)`, head and layer logits from the gate token."""

    def __init__(
        self, embed_dim: int, num_heads: int, *, heads: bool, layers: int, layer_name: str, init_bias: float
    ) -> None:
        super().__init__()
        self.token = nn.Linear(embed_dim, 1)
        self.head = nn.Linear(embed_dim, num_heads) if heads else None
        self.layer_name = layer_name
        setattr(self, layer_name, nn.Linear(embed_dim, layers) if layers else None)
        for layer in (self.token, self.head, self.gates):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.constant_(layer.bias, init_bias)

    @property
    def gates(self) -> Any:
        """The attention/MLP (or whole-block) Linear, or None in the first `keep_layers` blocks."""
        return getattr(self, self.layer_name)

    def forward(self, h: Any, gate_token: Any) -> tuple[Any, Any, Any]:
        """(patch logits (B, P) of `h` (B, 1+P, C), head logits (B, H) or None, layer logits (B, G) or None)."""
        token = self.token(h[:, 1:]).squeeze(-1)
        head = self.head(gate_token) if self.head is not None else None
        gates = self.gates(gate_token) if self.gates is not None else None
        return token, head, gates


class AdaViT(TokenSparseViT):
    """A timm ViT with AdaViT's patch/head/layer usage policies; see the module docstring. Build with `from_vit`."""

    mechanism = "adavit"
    checkpoint_layouts: tuple[str, ...] = ("state_dict_ema", "state_dict", "model")
    """The official loader (`utils.ada_load_state_dict`) prefers the EMA weights."""

    def __init__(
        self,
        net: Any,
        *,
        variant: str = "official",
        keep_layers: int = 1,
        head_policy: bool = True,
        layer_policy: bool = True,
        token_cap: Sequence[int] | int | None = None,
        drop_mode: str = "physical",
        tau: float = 1.0,
        init_bias: float = 2.0,
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        if variant not in _VARIANTS:
            raise ConfigError(f"AdaViT variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if not 0 <= keep_layers <= self.depth:
            raise ConfigError(f"keep_layers must be between 0 and {self.depth}, got {keep_layers}")
        if tau <= 0:
            raise ConfigError(f"tau must be positive, got {tau}")
        spec = _VARIANTS[variant]
        self.variant = variant
        self.num_heads = int(net.blocks[0].attn.num_heads)
        self.head_dim = int(net.blocks[0].attn.head_dim)
        self.keep_layers = int(keep_layers)
        self.token_threshold = spec.token_threshold
        self.gate_from_norm1 = spec.gate_from_norm1
        self.mask_mlp_inputs = spec.mask_mlp_inputs
        self.tau = float(tau)
        self.noise = 1.0  # scale of the Gumbel noise in training (annealed by train_adavit)
        self.decisions = nn.ModuleList(
            DecisionNet(
                self.embed_dim,
                self.num_heads,
                heads=head_policy and index >= keep_layers,
                layers=spec.layer_gates if layer_policy and index >= keep_layers else 0,
                layer_name=spec.layer_name,
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
        """Blocks with head or layer policies (every block has a patch policy)."""
        return tuple(i for i, d in enumerate(self.decisions) if d.head is not None or d.gates is not None)

    def adapt_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """The state dict of an official AdaViT checkpoint (or edgeattack's own) in this net's names."""
        from edgeattack.sparsity.adavit_checkpoint import adapt_state

        return adapt_state(self, checkpoint)

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
        """(logits, float (N, depth) in [0,1]): P(block runs) · (1 + Σ sigmoid(patch logit − logit(0.6))) / tokens.

        P(block runs) = 1 − Π (1 − sigmoid(layer logit)) over its attention and MLP gates (1 without
        gates). The smooth surrogate of counts / num_tokens (before any `token_cap`), differentiable
        in `x`, computed along the same inference pass as the logits.
        """
        logits, _, usage = self._infer(x, want_usage=True)
        return logits, usage

    def keep_masks(self, x: Any) -> tuple[Any, Any]:
        """(logits, keep bool [B, depth, num_tokens]): the tokens each block uses (none if skipped); sums to the counts."""
        trace: list[Any] = []
        logits, _, _ = self._infer(x, want_usage=False, trace=trace)
        return logits, torch.stack(trace, dim=1)

    # -- inference -------------------------------------------------------------------------------
    def _decide(self, decide: Any, x: Any, h: Any) -> tuple[Any, Any, Any]:
        return decide(h, h[:, 0] if self.gate_from_norm1 else x[:, 0])

    def _infer(self, x: Any, *, want_usage: bool, trace: list[Any] | None = None) -> tuple[Any, Any, Any]:
        """(logits, counts, usage or None); `trace`, when given, receives each block's keep mask (B, tokens).

        Tokens keep their positions here (physical blocks scatter back), so the keep masks are over
        the original tokens.
        """
        x = self.embed(x)
        tokens = x.shape[1]
        physical = check_drop_mode(self.drop_mode) == "physical"
        token_bias = math.log(self.token_threshold / (1.0 - self.token_threshold))
        counts: list[Any] = []
        usage: list[Any] = []
        for index, (block, decide) in enumerate(zip(self.blocks, self.decisions, strict=True)):
            h = block.norm1(x)
            token_logit, head_logit, layer_logit = self._decide(decide, x, h)
            patches = torch.sigmoid(token_logit) > self.token_threshold
            keep = torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)
            layers = None
            if layer_logit is not None:
                layers = (torch.sigmoid(layer_logit) > GATE_THRESHOLD).to(x.dtype)
                keep = keep & (layers.sum(dim=1, keepdim=True) > 0)
            if self.token_cap is not None and self.token_cap[index] < self.num_tokens:
                first = torch.full_like(token_logit[:, :1], float("inf"))
                keep = apply_token_cap(keep, torch.cat([first, token_logit], dim=1), self.token_cap[index])
            heads = None if head_logit is None else (torch.sigmoid(head_logit) > GATE_THRESHOLD).to(x.dtype)
            counts.append(keep.sum(dim=1))
            if trace is not None:
                trace.append(keep)
            if want_usage:
                used = (1.0 + torch.sigmoid(token_logit - token_bias).sum(dim=1)) / tokens
                if layer_logit is not None:
                    used = used * (1.0 - torch.prod(1.0 - torch.sigmoid(layer_logit), dim=1))
                usage.append(used)
            policy = _Policy(heads, layers, self.head_dim if self.mask_mlp_inputs else 0)
            if physical:
                x = _physical_block(block, x, h, keep, policy)
            else:
                x = _policy_block(block, x, h, keep, None, policy)
        logits = self.classify(x)
        usage_t = torch.stack(usage, dim=1) if want_usage else None
        return logits, torch.stack(counts, dim=1).to(torch.int64), usage_t

    # -- training --------------------------------------------------------------------------------
    def forward_train(self, x: Any) -> AdaViTOutput:
        """Sampled hard decisions (straight-through), all tokens in memory; `token_cap` is not applied."""
        x = self.embed(x)
        token_keep: list[Any] = []
        head_keep: list[Any] = []
        layer_keep: list[Any] = []
        for block, decide in zip(self.blocks, self.decisions, strict=True):
            h = block.norm1(x)
            token_logit, head_logit, layer_logit = self._decide(decide, x, h)
            patches = gumbel_sigmoid(token_logit, self.tau, self.noise, self.token_threshold)
            token_keep.append(patches)
            gate = torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)
            layers = heads = None
            if layer_logit is not None:
                layers = gumbel_sigmoid(layer_logit, self.tau, self.noise, GATE_THRESHOLD)
                layer_keep.append(layers)
            if head_logit is not None:
                heads = gumbel_sigmoid(head_logit, self.tau, self.noise, GATE_THRESHOLD)
                head_keep.append(heads)
            policy = _Policy(heads, layers, self.head_dim if self.mask_mlp_inputs else 0)
            x = _policy_block(block, x, h, gate.detach() > 0.5, gate, policy)
        return AdaViTOutput(
            self.classify(x),
            torch.stack(token_keep, dim=1),
            torch.stack(head_keep, dim=1) if head_keep else None,
            torch.stack(layer_keep, dim=1) if layer_keep else None,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}, keep_layers={self.keep_layers}, tau={self.tau}"


class _Policy(NamedTuple):
    """A block's head and layer decisions for a batch (any of them None: not gated)."""

    heads: Any  # (B, H) 0/1: the heads used
    layers: Any  # (B, G) 0/1: attention (column 0) and MLP (column -1) used
    mlp_mask_head_dim: int  # > 0: zero the unused heads' channels (this many per head) of fc1's input


def _physical_block(block: Any, x: Any, h: Any, keep: Any, policy: _Policy) -> Any:
    """Run `block` on each image's kept tokens only (gathered, padded, scattered back).

    The padding slots of `compaction_order` hold distinct dropped tokens, which leave the block
    unchanged (their gate is 0), so scattering every slot back is exact.
    """
    order, valid = compaction_order(keep)
    out = _policy_block(block, gather_tokens(x, order), gather_tokens(h, order), valid, None, policy)
    return x.scatter(1, order.unsqueeze(-1).expand_as(out), out)


def _policy_block(block: Any, x: Any, h: Any, keys: Any, gate: Any, policy: _Policy) -> Any:
    """A timm `Block` under a usage policy; `h` is `block.norm1(x)`.

    `keys` (B, T) bool: the tokens the others may attend to (each token also attends to itself,
    so every row of the softmax has a key); `gate` (B, T) multiplies both residual updates (None:
    `keys` as 0/1, so unused tokens leave the block unchanged); `policy.heads` (B, H) multiplies
    each head's output and, with `mlp_mask_head_dim`, masks those heads' channels of the MLP input;
    `policy.layers` (B, G) multiplies the attention and the MLP update of each image.
    """
    gate = (keys.to(x.dtype) if gate is None else gate).unsqueeze(-1)
    attn_gate = mlp_gate = gate
    if policy.layers is not None:
        attn_gate = gate * policy.layers[:, 0].view(-1, 1, 1)
        mlp_gate = gate * policy.layers[:, -1].view(-1, 1, 1)
    x = x + block.drop_path1(block.ls1(_attention(block.attn, h, keys, policy.heads))) * attn_gate
    z = block.norm2(x)
    if policy.heads is not None and policy.mlp_mask_head_dim:
        heads = policy.heads
        channels = heads.unsqueeze(-1).expand(-1, -1, policy.mlp_mask_head_dim).reshape(heads.shape[0], 1, -1)
        z = z * channels
    return x + block.drop_path2(block.ls2(block.mlp(z))) * mlp_gate


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

    Keyword arguments of `AdaViT` (variant, keep_layers, token_cap, drop_mode, ...) pass through,
    the rest (embed_dim, num_heads, ...) go to the ViT builder. timm has no AdaViT weights, so
    `pretrained=True` is refused: train one with `train_adavit` from the teacher or load a
    checkpoint (edgeattack's own, or the official repository's) with --checkpoint.
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


_ADAVIT_KWARGS = ("variant", "keep_layers", "head_policy", "layer_policy", "token_cap", "drop_mode", "tau", "init_bias")
