"""A-ViT (Yin et al., "A-ViT: Adaptive Tokens for Efficient Vision Transformer", CVPR 2022) around a timm ViT.

The mechanism of NVlabs/A-ViT (`timm/models/act_vision_transformer.py`, `act_mode` 4), by default
(`halting="official"`). Every token, the class token included, carries a cumulative halting score
c, a remainder R (1 at first) and a running flag. Block b runs on the running tokens: a halted
token enters it as zeros, its normed inputs to the attention and the MLP are zeroed too, and it is
masked out of every attention as a key by adding -1000 to its attention logits (the reference's
`Masked_Attention`). From the block's output x the halting score of every token is
h = sigmoid(x[..., 0] · gate_scale − gate_center) (channel 0 of the block output, before any
norm; no parameters; NVlabs uses 10/30 for DeiT-T and 10/75 for DeiT-S; computed as in `_sigmoid`),
and h = 1 in the last block. Then, per running token, with c ← c + h:

- c > 1 − eps (eps = 0.01): the token halts here; its output x counts with weight R;
- c < 1 − eps: it runs on; x counts with weight h, and R ← R − h.

The logits are the head on the final norm of the class token's halting-weighted output Σ weight · x
(its output accumulated over the blocks it ran), not on the last block's tokens. Once the class token
has halted the logits are fixed, yet the other tokens run on until they halt, as in the reference.

`halting="keep-class"` keeps edgeattack's earlier variant: the class token's h is 0 before the last
block, so it never halts and the logits are the head on its output after the last block (the weight
of every earlier block is 0, of the last R = 1); patch tokens halt as above.

Token counts: `counts[n, b]` is the number of tokens (class token included) running in block b for
image n, i.e. the tokens whose running flag (the reference's `mask_token`) is set when block b
starts; `keep_masks` gives those flags per original token and `counts` is their sum.

Execution (`drop_mode`):
- "physical" (default, eval): before each block the running tokens of every image are gathered
  first in their original order, the batch keeps the largest running count (at least one slot), and
  the padded slots are zeroed and masked like halted tokens, never counted. An image's logits and
  counts do not depend on the rest of its batch, and at batch 1 the blocks really run on fewer
  tokens. The shapes come from the data (cumulative sums, ScatterElements, GatherElements: see
  `edgeattack.sparsity.base`), without `.item()` or Python branches on values, so `forward_counts`
  exports to ONNX (opset 17, `dynamo=False`) and ONNX Runtime reproduces the counts.
- "masked": the reference's own computation: fixed shapes, every token computed, halted ones zeroed
  and masked. Training always runs masked (see `forward_halting`).

`token_cap` (a defence against availability attacks): at most `token_cap[b]` tokens (class token
included) run in block b; when it bites, a running class token stays first, then the running tokens
with the lowest cumulative halting score (ties: lower position first); the others stop for good and
add nothing more to the outputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from edgeattack._lazy import require
from edgeattack.errors import ConfigError
from edgeattack.sparsity.base import (
    DROP_MODES,
    TokenSparseViT,
    apply_token_cap,
    compaction_order,
    gather_tokens,
    original_tokens,
    split_qkv,
)
from edgeattack.zoo.config import ModelConfig

torch = require("torch", feature="A-ViT")
logger = logging.getLogger(__name__)

__all__ = ["DROP_MODES", "HALTING_MODES", "AViT", "AViTOutput", "build_avit", "gate_center_for"]

HALT_EPS = 0.01
GATE_SCALE = 10.0
# the reference's gate centres (DeiT-T 30, DeiT-S 75); the digits ViT's first channel is O(1), so 10
GATE_CENTERS = {"tiny_digits": 10.0, "deit_tiny": 30.0, "deit_small": 75.0, "deit_base": 75.0}
GATE_OPTIONS = ("gate_scale", "gate_center")
HALTING_MODES = ("official", "keep-class")
MASKED_SOFTMAX_BIAS = -1000.0
"""Added to the attention logits of halted keys, as the reference's `Masked_Attention` does."""


class AViTOutput(NamedTuple):
    """What A-ViT's losses need (`forward_halting`, training mode's forward); all per image."""

    logits: Any  # (B, classes)
    ponder: Any  # (B, tokens) the reference's rho_token: blocks each token ran + its remainder at halting
    halting: Any  # (B, depth) per block, the mean over all tokens of the halting score h as computed
    counts: Any  # (B, depth) float, tokens (class token included) each block processed (detached)


class AViT(TokenSparseViT):
    """A timm ViT with A-ViT adaptive token halting; see the module docstring. Build with `from_vit`."""

    mechanism = "avit"

    def __init__(
        self,
        net: Any,
        *,
        gate_scale: float = GATE_SCALE,
        gate_center: float = 10.0,
        eps: float = HALT_EPS,
        halting: str = "official",
        token_cap: int | Sequence[int] | None = None,
        drop_mode: str = "physical",
        explicit_gate: Iterable[str] = (),
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy).

        `explicit_gate` names the gate options (gate_scale, gate_center) the caller chose; a
        checkpoint's saved training args set the others (`adapt_checkpoint`).
        """
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"A-ViT's halting eps must lie in (0, 1), got {eps}")
        if gate_scale <= 0:
            raise ConfigError(f"A-ViT's gate_scale must be positive, got {gate_scale}")
        if halting not in HALTING_MODES:
            raise ConfigError(f"A-ViT's halting must be one of {', '.join(HALTING_MODES)}, got {halting!r}")
        unknown = set(explicit_gate) - set(GATE_OPTIONS)
        if unknown:
            raise ConfigError(f"explicit_gate names {sorted(unknown)}; the gate options are {', '.join(GATE_OPTIONS)}")
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        self.gate_scale = float(gate_scale)
        self.gate_center = float(gate_center)
        self.eps = float(eps)
        self.halting = halting
        self.explicit_gate = frozenset(explicit_gate)

    @classmethod
    def from_vit(cls, net: Any, **kwargs: Any) -> AViT:
        """An A-ViT on a copy of `net`'s weights (the teacher stays untouched)."""
        return cls(copy.deepcopy(net), **kwargs)

    def adapt_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """The weights of an A-ViT checkpoint (NVlabs' main_act.py layout or edgeattack's own), names unchanged.

        The official state dict uses timm's names, so it loads as it is. When the checkpoint saved its
        training args (`checkpoint.args`, main_act.py's `argparse.Namespace`), their gate_scale and
        gate_center become this net's gate, except those the builder was given explicitly; an
        `act_mode` other than 4 (the only token-halting mode) is refused.
        """
        args = checkpoint.args
        act_mode = args.get("act_mode", 4)
        if act_mode != 4:
            raise ConfigError(
                f"{checkpoint.path}: A-ViT act_mode {act_mode!r} is not supported (only 4, per-token halting)"
            )
        for option in GATE_OPTIONS:
            if option not in args or option in self.explicit_gate:
                continue
            value = args[option]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{checkpoint.path}: saved args {option}={value!r} is not a number")
            if option == "gate_scale" and value <= 0:
                raise ConfigError(f"{checkpoint.path}: saved args gate_scale={value} must be positive")
            setattr(self, option, float(value))
        if any(option in args for option in GATE_OPTIONS):
            logger.info("A-ViT gate from %s: scale %g, centre %g", checkpoint.path, self.gate_scale, self.gate_center)
        return dict(checkpoint.state)

    # -- public contract -----------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """Logits in eval mode (per `drop_mode`); an `AViTOutput` in training mode (`forward_halting`)."""
        if self.training:
            return self.forward_halting(x)
        return self.forward_counts(x)[0]

    def forward_halting(self, x: Any) -> AViTOutput:
        """The masked (reference) computation with the quantities of A-ViT's losses, whatever the mode."""
        return self._run(self.embed(x), physical=False, account=True)

    def forward_counts(self, x: Any) -> tuple[Any, Any]:
        """(logits, counts): counts int64 (B, depth), tokens (class token included) block b processes."""
        out = self._run(self.embed(x), physical=self.drop_mode == "physical" and not self.training)
        return out["logits"], out["counts"]

    def usage(self, x: Any) -> tuple[Any, Any]:
        """(logits, usage): usage (B, depth) in [0, 1], differentiable in `x`.

        Per block, the mean over all tokens of the "still running" soft mask clamp(1 − c, 0, 1),
        c the cumulative halting score before that block. The clamp passes gradients straight
        through, so tokens that already halted still pull their halting scores down. Runs masked
        (fixed shapes), whatever `drop_mode` says.
        """
        out = self._run(self.embed(x), physical=False, soft=True)
        return out["logits"], out["usage"]

    def keep_masks(self, x: Any) -> tuple[Any, Any]:
        """(logits, keep bool [B, depth, num_tokens]): the original tokens each block runs; sums to the counts."""
        trace: list[Any] = []
        out = self._run(self.embed(x), physical=self.drop_mode == "physical" and not self.training, trace=trace)
        return out["logits"], torch.stack(trace, dim=1)

    # -- the halting loop ----------------------------------------------------------------------------
    def _run(
        self, z: Any, *, physical: bool, account: bool = False, soft: bool = False, trace: list[Any] | None = None
    ) -> Any:
        """Run the blocks with halting on embedded tokens `z` (B, N, C); a dict, or an AViTOutput if `account`.

        Per slot: `c` the cumulative halting score, `remainder` R, `alive` the tokens below the
        threshold, `positions` the original token (0: the class token). In physical mode the slots
        are re-gathered before every block. `trace`, when given, receives each block's
        `original_tokens` mask.
        """
        batch, tokens = z.shape[0], z.shape[1]
        c = z.new_zeros(batch, tokens)
        remainder = z.new_ones(batch, tokens)
        alive = torch.ones_like(c, dtype=torch.bool)
        positions = torch.arange(tokens, device=z.device).unsqueeze(0).expand(batch, -1)
        cls_out = z.new_zeros(batch, z.shape[2])
        threshold = 1.0 - self.eps
        counts: list[Any] = []
        usage: list[Any] = []
        acct = _Accounting(c) if account else None
        last = self.depth - 1
        for index, block in enumerate(self.blocks):
            running = self._apply_cap(alive, c, positions, index)
            if acct is not None:
                acct.capped(alive, running, remainder)
            count = running.to(torch.int64).sum(dim=1)
            counts.append(count)
            if trace is not None:
                trace.append(original_tokens(positions, running, self.num_tokens))
            if soft:
                usage.append(_clamp_straight_through(1.0 - c).mean(dim=1))
            if physical:
                slots = running | ((count == 0).unsqueeze(1) & _first_slot(running))  # at least one slot
                order, _ = compaction_order(slots)
                z, c, remainder, positions = (gather_tokens(t, order) for t in (z, c, remainder, positions))
                running = gather_tokens(running.to(torch.int64), order) > 0
            out = _block(block, z, running)
            h = _sigmoid(out[..., 0] * self.gate_scale - self.gate_center)
            if self.halting == "keep-class":
                h = torch.where(positions == 0, torch.zeros_like(h), h)
            if acct is not None:
                acct.scores.append(h.mean(dim=1))
            if index == last:
                h = torch.ones_like(h)
            total = c + h
            reached = running & (total > threshold)
            continuing = running & (total < threshold)
            weight = torch.where(reached, remainder, torch.where(continuing, h, torch.zeros_like(h)))
            if acct is not None:
                acct.step(running, reached, remainder)
            cls_weight = torch.where(positions[:, 0] == 0, weight[:, 0], torch.zeros_like(weight[:, 0]))
            cls_out = cls_out + out[:, 0] * cls_weight.unsqueeze(1)  # slot 0 holds the class token while it runs
            c = torch.where(running, total, c)
            remainder = torch.where(continuing, remainder - h, remainder)
            alive = continuing
            z = out
        logits = self.classify(cls_out.unsqueeze(1))
        count_tensor = torch.stack(counts, dim=1)
        if acct is not None:
            ponder, halting = acct.result()
            return AViTOutput(logits, ponder, halting, count_tensor.to(z.dtype).detach())
        result = {"logits": logits, "counts": count_tensor}
        if soft:
            result["usage"] = torch.stack(usage, dim=1)
        return result

    def _apply_cap(self, alive: Any, c: Any, positions: Any, index: int) -> Any:
        """`alive` limited to token_cap[index] tokens: a running class token first, then the lowest c."""
        if self.token_cap is None or self.token_cap[index] >= self.num_tokens:
            return alive
        scores = torch.where(positions == 0, torch.full_like(c, 2.0), -c)
        return apply_token_cap(alive, scores, self.token_cap[index])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, halting={self.halting!r}, gate_scale={self.gate_scale}, "
            f"gate_center={self.gate_center}, eps={self.eps}"
        )


def _sigmoid(value: Any) -> Any:
    """sigmoid(value) as 1 / (1 + exp(−value)), with value clamped at −80 (where it is below 2e-35).

    The same values in PyTorch and ONNX Runtime, whose Sigmoid is off by up to 2e-4 relative below
    −10 and returns 0 below −18: that reorders the token cap's ranking of small halting scores. The
    clamp keeps exp finite, so the gradients stay finite.
    """
    return 1.0 / (1.0 + torch.exp(-value.clamp_min(-80.0)))


def _first_slot(running: Any) -> Any:
    """(1, W) bool, True in slot 0 only: the slot kept for an image with no running token."""
    return (torch.arange(running.shape[1], device=running.device) == 0).unsqueeze(0)


def _block(block: Any, z: Any, running: Any) -> Any:
    """A timm `Block` as the reference's `Block_ACT.forward_act` runs it under a halting mask.

    Tokens not `running` (B, N) enter as zeros, their normed inputs to the attention and the MLP
    are zeroed, and their keys get MASKED_SOFTMAX_BIAS; running tokens get the ordinary block over
    the running keys (the masked keys' weights underflow to exactly 0).
    """
    keep = running.unsqueeze(-1).to(z.dtype)
    bias = ((1.0 - keep.squeeze(-1)) * MASKED_SOFTMAX_BIAS).unsqueeze(1).unsqueeze(1)
    x = z * keep
    x = x + block.drop_path1(block.ls1(_attention(block.attn, block.norm1(x) * keep, bias)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x * keep) * keep)))


def _attention(attn: Any, x: Any, bias: Any) -> Any:
    """timm `Attention` on `x` (B, N, C) with an additive key bias (B, 1, 1, N), in the reference's order."""
    q, k, v = split_qkv(attn, x)
    weights = ((q @ k.transpose(-2, -1)) * attn.scale + bias).softmax(dim=-1)
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    return attn.proj_drop(attn.proj(out))


class _Accounting:
    """The reference's training bookkeeping (masked mode, fixed slots), per token.

    `ponder` is its rho_token: +1 for every block a token runs, + R at the block where it halts (or,
    under a token cap, where it was stopped); `scores` the per-block mean over all tokens of h as
    computed (before the last block's h = 1), the input of the distributional prior.
    """

    def __init__(self, c: Any) -> None:
        self.ponder = torch.zeros_like(c)
        self.scores: list[Any] = []

    def capped(self, alive: Any, running: Any, remainder: Any) -> None:
        """Tokens a cap stops before this block halt there, with their remainder."""
        self.ponder = self.ponder + remainder * (alive & ~running).to(self.ponder.dtype)

    def step(self, running: Any, reached: Any, remainder: Any) -> None:
        """Block bookkeeping with the remainder before this block's update (as the reference's rho)."""
        self.ponder = self.ponder + running.to(remainder.dtype) + remainder * reached.to(remainder.dtype)

    def result(self) -> tuple[Any, Any]:
        """(ponder (B, N), halting (B, depth))."""
        return self.ponder, torch.stack(self.scores, dim=1)


def _clamp_straight_through(value: Any) -> Any:
    """clamp(value, 0, 1) in the forward pass, the identity's gradient in the backward pass."""
    return value + (value.clamp(0.0, 1.0) - value).detach()


def gate_center_for(name: str) -> float:
    """The gate centre for a zoo name (the reference's per-model value, 10 for the digits ViT)."""
    for key, value in GATE_CENTERS.items():
        if key in name:
            return value
    return GATE_CENTERS["deit_tiny"]


def build_avit(name: str, config: ModelConfig, *, pretrained: bool = False, **kwargs: Any) -> AViT:
    """Zoo builder: the A-ViT of `name` (`avit_<base>`) on the ViT its name is based on (random weights).

    The gate is fixed, not learned, as in the reference: `gate_scale=`/`gate_center=` when given,
    else a checkpoint's saved training args (`AViT.adapt_checkpoint`), else scale 10 and the centre of
    `gate_center_for(name)`. `halting` ("official" or "keep-class"), `eps`, `token_cap` and
    `drop_mode` are the AViT options; the rest (embed_dim, num_heads, ...) go to the ViT. timm has no
    A-ViT weights: `pretrained=True` is refused; pass an A-ViT checkpoint (NVlabs' checkpoint.pth
    loads as it is) with --checkpoint.
    """
    if pretrained:
        raise ConfigError(
            f"{name}: timm has no pretrained A-ViT weights; pass --checkpoint with an A-ViT checkpoint "
            "or train one from its teacher (edgeattack compress --method avit)"
        )
    explicit = [option for option in GATE_OPTIONS if option in kwargs]
    options = {
        "gate_scale": kwargs.pop("gate_scale", GATE_SCALE),
        "gate_center": kwargs.pop("gate_center", gate_center_for(name)),
        "eps": kwargs.pop("eps", HALT_EPS),
        "halting": kwargs.pop("halting", "official"),
        "token_cap": kwargs.pop("token_cap", None),
        "drop_mode": kwargs.pop("drop_mode", "physical"),
        "explicit_gate": explicit,
    }
    base = name.removeprefix("avit_")
    if config.dataset == "digits":
        from edgeattack.zoo.vit import build_digits_vit

        net = build_digits_vit(base, config, **kwargs)
    else:
        from edgeattack.zoo.vit import build_timm_vit

        net = build_timm_vit(base, config, **kwargs)
    return AViT(net, **options)
