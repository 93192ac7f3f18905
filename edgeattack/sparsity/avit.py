"""A-ViT (Yin et al., "A-ViT: Adaptive Tokens for Efficient Vision Transformer", CVPR 2022) around a timm ViT.

Every token carries an ACT-style cumulative halting score. After block b a running token's halting
score is taken from the first channel of its embedding, h = sigmoid(gate_scale · e_0 − gate_center)
(no new parameters; NVlabs/A-ViT uses 10/30 for DeiT-T and 10/75 for DeiT-S); the token stops
(halts) once its cumulative score c = Σ h reaches 1 − eps (eps = 0.01). A halted token takes no
further part: it is masked out of every later block's attention (as in the reference's masked
attention) and, at inference, removed. The last block's h is 1, so every token halts there.

Deviations from the reference, each for the token-sparse contract shared with ATS/AdaViT:
- the class token never halts (its h is 0), so the logits are the ordinary head on the class token
  after the last block. Patch tokens' halting-weighted outputs (the reference's output tokens)
  then never reach the logits, so inference does not compute them; a halted token keeps the
  representation it had at its halting block (masked mode), or is gone (physical mode).
- the halting-depth distribution for the prior loss is the per-image mean over patch tokens of the
  ACT halting mass (h at the blocks before halting, the remainder R at the halting block), which
  sums to 1 over the blocks, instead of the normalised per-block mean halting score.

Execution (`drop_mode`):
- "physical" (default, eval): before each block the running tokens of every image are gathered
  first in their original order (the class token stays first), the batch keeps the largest running
  count, the padded slots are masked out of attention as keys and never counted. An image's logits
  and counts do not depend on the rest of its batch, and at batch 1 the blocks really run on fewer
  tokens. The shapes come from the data (cumulative sums, ScatterElements, GatherElements: see
  `edgeattack.sparsity.base`), without `.item()` or Python branches on values, so `forward_counts`
  exports to ONNX (opset 17, `dynamo=False`) and ONNX Runtime reproduces the counts.
- "masked": fixed shapes, every token computed, halted ones masked out of attention and frozen.
  Training always runs masked (see `forward`).

`token_cap` (a defence against availability attacks): at most `token_cap[b]` tokens (class token
included) run in block b; when it bites, the running tokens with the lowest cumulative halting
score stay (ties: lower position first) and the others halt for good.
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
    check_token_cap,
    compaction_order,
    gather_tokens,
    masked_block,
    original_tokens,
)
from edgeattack.zoo.config import ModelConfig

torch = require("torch", feature="A-ViT")

__all__ = ["DROP_MODES", "AViT", "AViTOutput", "build_avit", "gate_center_for"]

HALT_EPS = 0.01
GATE_SCALE = 10.0
# the reference's gate centres (DeiT-T 30, DeiT-S 75); the digits ViT's first channel is O(1), so 10
GATE_CENTERS = {"tiny_digits": 10.0, "deit_tiny": 30.0, "deit_small": 75.0, "deit_base": 75.0}


class AViTOutput(NamedTuple):
    """What the A-ViT losses need (`forward` in training mode); all per image."""

    logits: Any  # (B, classes)
    ponder: Any  # (B,) mean over patch tokens of the ACT ponder cost (blocks run + remainder)
    halting: Any  # (B, depth) mean over patch tokens of the halting mass per block (rows sum to 1)
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
        token_cap: int | Sequence[int] | None = None,
        drop_mode: str = "physical",
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"A-ViT's halting eps must lie in (0, 1), got {eps}")
        if gate_scale <= 0:
            raise ConfigError(f"A-ViT's gate_scale must be positive, got {gate_scale}")
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        self.gate_scale = float(gate_scale)
        self.gate_center = float(gate_center)
        self.eps = float(eps)

    @classmethod
    def from_vit(cls, net: Any, **kwargs: Any) -> AViT:
        """An A-ViT on a copy of `net`'s weights (the teacher stays untouched)."""
        return cls(copy.deepcopy(net), **kwargs)

    def set_token_cap(self, token_cap: int | Sequence[int] | None) -> None:
        """Change (or remove, with None) the per-block token cap."""
        self.token_cap = check_token_cap(token_cap, self.depth, self.num_tokens)

    # -- public contract -----------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """Logits in eval mode (per `drop_mode`); an `AViTOutput` in training mode (masked, ACT accounting)."""
        if self.training:
            return self._run(self.embed(x), physical=False, account=True)
        return self.forward_counts(x)[0]

    def forward_counts(self, x: Any) -> tuple[Any, Any]:
        """(logits, counts): counts int64 (B, depth), tokens (class token included) block b processes."""
        out = self._run(self.embed(x), physical=self.drop_mode == "physical" and not self.training)
        return out["logits"], out["counts"]

    def usage(self, x: Any) -> tuple[Any, Any]:
        """(logits, usage): usage (B, depth) in [0, 1], differentiable in `x`.

        Per block, the mean over all tokens of the "still running" soft mask clamp(1 − c, 0, 1),
        c the cumulative halting score before that block (the class token counts 1). The clamp
        passes gradients straight through, so tokens that already halted still pull their halting
        scores down. Runs masked (fixed shapes), whatever `drop_mode` says.
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

        `c` is the cumulative halting score and `alive` marks the tokens below the threshold, per
        slot; in physical mode the slots are re-gathered before every block, the class token first.
        `trace`, when given, receives each block's `original_tokens` mask.
        """
        batch, tokens = z.shape[0], z.shape[1]
        c = z.new_zeros(batch, tokens)
        alive = torch.ones_like(c, dtype=torch.bool)
        counts: list[Any] = []
        usage: list[Any] = []
        acct = _Accounting(c) if account else None
        last = self.depth - 1
        positions = None if trace is None else torch.arange(tokens, device=z.device).expand(batch, -1)
        for index, block in enumerate(self.blocks):
            running = self._apply_cap(alive, c, index)
            if acct is not None:
                acct.capped(running)
            counts.append(running.sum(dim=1))
            if trace is not None:
                trace.append(original_tokens(positions, running, self.num_tokens))
            if soft:
                usage.append(_clamp_straight_through(1.0 - c).mean(dim=1))
            if physical:
                order, running = compaction_order(running)
                z, c = gather_tokens(z, order), gather_tokens(c, order)
                if trace is not None:
                    positions = gather_tokens(positions, order)
            out = masked_block(block, z, running)
            z = out if physical else torch.where(running.unsqueeze(-1), out, z)
            if index == last:
                if acct is not None:
                    acct.finish(running)
                break
            h = torch.sigmoid(self.gate_scale * out[..., 0] - self.gate_center) * running.to(out.dtype)
            h = torch.cat([torch.zeros_like(h[:, :1]), h[:, 1:]], dim=1)  # the class token never halts
            c = c + h
            alive = running & (c < 1.0 - self.eps)
            if acct is not None:
                acct.step(running, alive, h)
        logits = self.classify(z)
        count_tensor = torch.stack(counts, dim=1).to(torch.int64)
        if acct is not None:
            ponder, halting = acct.result()
            return AViTOutput(logits, ponder, halting, count_tensor.to(z.dtype).detach())
        result = {"logits": logits, "counts": count_tensor}
        if soft:
            result["usage"] = torch.stack(usage, dim=1)
        return result

    def _apply_cap(self, running: Any, c: Any, index: int) -> Any:
        """`running` limited to token_cap[index] tokens: lowest cumulative halting first (class token first)."""
        if self.token_cap is None or self.token_cap[index] >= self.num_tokens:
            return running
        scores = torch.cat([torch.full_like(c[:, :1], 2.0), -c[:, 1:]], dim=1)
        return apply_token_cap(running, scores, self.token_cap[index])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate_scale={self.gate_scale}, gate_center={self.gate_center}, eps={self.eps}"


class _Accounting:
    """ACT bookkeeping of the training forward (masked mode, fixed slots), per token.

    A running token's halting mass at a block is h while it stays below the threshold and the
    remainder R = 1 − Σ h at the block where it halts (or the last block it ran before a cap stopped
    it); its ponder cost is the number of blocks it ran plus that remainder (Graves' ACT).
    """

    def __init__(self, c: Any) -> None:
        self.remainder = torch.ones_like(c)
        self.ponder = torch.zeros_like(c)
        self.masses: list[Any] = []
        self.previous: Any = None

    def capped(self, running: Any) -> None:
        """Tokens a cap stopped before this block: their remainder lands on the previous block."""
        if self.previous is None:
            return
        stopped = (self.previous & ~running).to(self.remainder.dtype)
        self.masses[-1] = self.masses[-1] + self.remainder * stopped
        self.ponder = self.ponder + self.remainder * stopped

    def step(self, running: Any, alive: Any, h: Any) -> None:
        continuing = running & alive
        halted = (running & ~alive).to(h.dtype)
        self.masses.append(torch.where(continuing, h, self.remainder * halted))
        self.ponder = self.ponder + running.to(h.dtype) + self.remainder * halted
        self.remainder = self.remainder - h * continuing.to(h.dtype)
        self.previous = alive

    def finish(self, running: Any) -> None:
        ran = running.to(self.remainder.dtype)
        self.masses.append(self.remainder * ran)
        self.ponder = self.ponder + ran + self.remainder * ran

    def result(self) -> tuple[Any, Any]:
        """(ponder (B,), halting (B, depth)), both over patch tokens only."""
        halting = torch.stack(self.masses, dim=1)[:, :, 1:].mean(dim=2)
        return self.ponder[:, 1:].mean(dim=1), halting


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

    The gate (scale 10, centre per `gate_center_for`) is fixed, not learned, as in the reference;
    override it with `gate_scale=`/`gate_center=`. timm has no A-ViT weights: `pretrained=True` is
    refused; pass an A-ViT checkpoint with --checkpoint (the module names are timm's, as in the NVlabs
    release, so its state dict should load; untested here).
    """
    if pretrained:
        raise ConfigError(
            f"{name}: timm has no pretrained A-ViT weights; pass --checkpoint with an A-ViT checkpoint "
            "or train one from its teacher (edgeattack compress --method avit)"
        )
    options = {
        "gate_scale": kwargs.pop("gate_scale", GATE_SCALE),
        "gate_center": kwargs.pop("gate_center", gate_center_for(name)),
        "eps": kwargs.pop("eps", HALT_EPS),
        "token_cap": kwargs.pop("token_cap", None),
        "drop_mode": kwargs.pop("drop_mode", "physical"),
    }
    base = name.removeprefix("avit_")
    if config.dataset == "digits":
        from edgeattack.zoo.vit import build_digits_vit

        net = build_digits_vit(base, config, **kwargs)
    else:
        from edgeattack.zoo.vit import build_timm_vit

        net = build_timm_vit(base, config, **kwargs)
    return AViT(net, **options)
