"""ATS, the Adaptive Token Sampler (Fayyaz et al., "Adaptive Token Sampling for Efficient Vision
Transformers", ECCV 2022), around a timm ViT: parameter-free, so it works on a trained ViT as is.

At each ATS stage (blocks `ats_stages_for(depth)`: 2..5 of the digits ViT's 6, 3..11 of DeiT's 12
as in the paper) the sampler sits inside the block's attention, after the attention weights:

1. significance scores of the patch tokens: the class token's attention to token j, averaged over
   the heads, times the L2 norm of token j's value vector (all heads), normalised to sum to 1;
2. the scores sorted in ascending order and accumulated into a CDF;
3. K inverse-transform samples at the fixed quantiles (k + 0.5) / K, k = 0..K-1 (deterministic in
   eval, the same in ONNX): a sample picks the token whose CDF interval contains it, so a token is
   kept when at least one quantile falls into its interval and duplicates collapse. K is the
   number of patch tokens available to the image at that stage (capped by `max_tokens`), so the
   kept count depends on the input: concentrated attention keeps few tokens, uniform attention
   keeps them all;
4. the kept tokens' attention outputs (and residuals) go on through the projection and the MLP,
   the others are dropped for the rest of the network. The class token always stays.

`counts[:, b]` of an ATS block is the tokens it keeps (those its projection and MLP process); its
qkv projection and attention keys run on the tokens that entered it
(`edgeattack.metrics.tokens.gflops_from_counts(..., sampled_in_attention=True)`).

Sorting is done with an (N, N) comparison (ties broken by position) instead of a sort, and the
quantile hits with `floor(K * cdf + 1/2)`, so torch and ONNX Runtime keep the same tokens.

`usage(x)`, the DeSparsify surrogate, is per stage the expected number of distinct tokens that K
independent draws from the scores hit, `1 + sum_j (1 - exp(-K p_j))` (class token included), over
`num_tokens`: differentiable, and largest when the attention is uniform.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.sparsity.base import (
    TokenSparseViT,
    apply_token_cap,
    attend,
    compaction_order,
    gather_tokens,
    key_bias,
    masked_block,
    original_tokens,
    split_qkv,
    stages_cap,
    token_arch_of,
    token_counts,
)
from edgeattack.zoo.config import ModelConfig

logger = logging.getLogger(__name__)

torch = require("torch", feature="ATS")
nn = torch.nn

__all__ = [
    "ATS",
    "ats_keep",
    "ats_stages_for",
    "build_ats",
    "compress_ats",
    "significance_scores",
]

DIGITS_BASE = "vit_tiny_digits"
"""The trained ViT whose shipped weights `ats_tiny_digits` uses (ATS has no weights of its own)."""


def ats_stages_for(depth: int) -> tuple[int, ...]:
    """Blocks holding an ATS sampler: from ceil(depth / 4) to the last (3..11 of 12, 2..5 of 6)."""
    if depth < 2:
        raise ConfigError(f"ATS needs at least 2 blocks, got {depth}")
    return tuple(range(max(1, math.ceil(depth / 4)), depth))


def _check_stages(stages: Sequence[int], depth: int) -> tuple[int, ...]:
    values = tuple(int(s) for s in stages)
    if not values or list(values) != sorted(set(values)) or values[0] < 0 or values[-1] >= depth:
        raise ConfigError(f"ATS stages must be increasing block indices in [0, {depth}), got {list(stages)}")
    return values


def significance_scores(cls_attention: Any, values: Any) -> Any:
    """(B, N-1) normalised ATS scores of the patch tokens.

    `cls_attention` (B, H, N): the class token's attention weights (0 for padded / dropped keys);
    `values` (B, H, N, d): the value vectors. Score_j = mean_h A[h, 0, j] * ||V_j|| (V_j over all heads).
    """
    batch, heads, tokens, dim = values.shape
    value_norm = values.transpose(1, 2).reshape(batch, tokens, heads * dim).norm(dim=-1)
    score = (cls_attention.mean(dim=1) * value_norm)[:, 1:].float()  # the CDF in float32, also for fp16 models
    return score / score.sum(dim=1, keepdim=True).clamp_min(1e-12)


def ats_keep(scores: Any, samples: Any) -> Any:
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


class ATS(TokenSparseViT):
    """A timm ViT with Adaptive Token Sampling; see the module docstring. Build with `from_vit`.

    `stages`: blocks with a sampler (default `ats_stages_for(depth)`); `max_tokens`: the most
    samples K per stage (an int for all stages or one per stage; default: every available token);
    `token_cap`: the defence of the token-sparse contract (`edgeattack.sparsity.base`), enforced at
    the stages by keeping the highest-scoring tokens; `drop_mode`: "physical" or "masked".
    """

    mechanism = "ats"
    sampled_in_attention = True

    def __init__(
        self,
        net: Any,
        *,
        stages: Sequence[int] | None = None,
        max_tokens: int | Sequence[int] | None = None,
        token_cap: int | Sequence[int] | None = None,
        drop_mode: str = "physical",
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        self.stages = ats_stages_for(self.depth) if stages is None else _check_stages(stages, self.depth)
        if max_tokens is None or isinstance(max_tokens, int):
            limits: Sequence[int | None] = [max_tokens] * len(self.stages)
        else:
            limits = list(max_tokens)
        if len(limits) != len(self.stages) or any(m is not None and int(m) < 1 for m in limits):
            raise ConfigError(
                f"max_tokens must be a positive int or one per stage ({len(self.stages)}), got {max_tokens!r}"
            )
        self.max_tokens: tuple[int | None, ...] = tuple(None if m is None else int(m) for m in limits)
        self._samples = dict(zip(self.stages, self.max_tokens, strict=True))
        self._caps = stages_cap(self.token_cap, self.stages, self.depth, self.num_tokens)

    def _token_cap_changed(self) -> None:
        self._caps = stages_cap(self.token_cap, self.stages, self.depth, self.num_tokens)

    @classmethod
    def from_vit(cls, net: Any, **kwargs: Any) -> ATS:
        """An ATS on a copy of `net`'s modules (the ViT stays untouched); see the class for `kwargs`."""
        return cls(copy.deepcopy(net), **kwargs)

    # -- the contract ----------------------------------------------------------------------------
    def forward_counts(self, x: Any) -> tuple[Any, Any]:
        """(logits, counts int64 [B, depth]) of normalised images, dropping tokens as `drop_mode` says."""
        logits, counts, _ = self._run(x, physical=self.drop_mode == "physical", soft=False)
        return logits, counts

    def usage(self, x: Any) -> tuple[Any, Any]:
        """(logits, usage [B, depth]): the differentiable expected-token surrogate over `num_tokens`.

        Runs with fixed shapes (masked dropping); the logits equal `forward`'s up to float error.
        """
        logits, _, usage = self._run(x, physical=False, soft=True)
        return logits, usage

    def keep_masks(self, x: Any) -> tuple[Any, Any]:
        """(logits, keep bool [B, depth, num_tokens]): the original tokens each block keeps; sums to the counts."""
        trace: list[Any] = []
        logits, _, _ = self._run(x, physical=self.drop_mode == "physical", soft=False, trace=trace)
        return logits, torch.stack(trace, dim=1)

    # -- the computation -------------------------------------------------------------------------
    def _run(self, x: Any, *, physical: bool, soft: bool, trace: list[Any] | None = None) -> tuple[Any, Any, Any]:
        """(logits, counts, usage or None); `trace`, when given, receives each block's `original_tokens` mask."""
        x = self.embed(x)
        key_mask = self.all_tokens_mask(x)
        positions = None if trace is None else torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        counts: list[Any] = []
        usage: list[Any] = []
        current = torch.ones_like(x[:, 0, 0])  # soft tokens / num_tokens, 1 before the first stage
        for index, block in enumerate(self.blocks):
            if index in self._samples:
                x, key_mask, expected, order = self._sample_block(
                    index, block, x, key_mask, physical=physical, soft=soft
                )
                if trace is not None and order is not None:
                    positions = gather_tokens(positions, order)
                if soft:
                    current = expected / self.num_tokens
            else:
                x = masked_block(block, x, key_mask)
            counts.append(token_counts(key_mask))
            usage.append(current)
            if trace is not None:
                trace.append(original_tokens(positions, key_mask, self.num_tokens))
        logits = self.classify(x)
        return logits, torch.stack(counts, dim=1), torch.stack(usage, dim=1) if soft else None

    def _sample_block(
        self, index: int, block: Any, x: Any, key_mask: Any, *, physical: bool, soft: bool
    ) -> tuple[Any, Any, Any, Any]:
        """Block `index` with its sampler: (tokens out, their key mask, expected tokens or None, the
        `compaction_order` applied, None when masked)."""
        attn = block.attn
        h = block.norm1(x)
        q, k, v = split_qkv(attn, h)
        bias = key_bias(key_mask, q.dtype)
        cls_attention = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)[:, :, 0]
        scores = significance_scores(cls_attention, v)
        valid = key_mask[:, 1:]
        samples = valid.to(torch.int64).sum(dim=1, keepdim=True)
        limit = self._samples[index]
        if limit is not None:
            samples = samples.clamp(max=limit)
        keep = ats_keep(scores, samples) & valid
        cap = self._caps[index]
        if cap is not None:
            keep = apply_token_cap(keep, scores, cap - 1)
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        expected = order = None
        if soft:
            expected = 1.0 + expected_distinct(scores, samples, valid)
            if cap is not None:
                expected = expected.clamp(max=float(cap))
        if physical:
            order, new_mask = compaction_order(keep)
            kept = gather_tokens(h, order)
            out = attend(attn, gather_tokens(q, order, dim=2), k, v, bias, gate_input=kept)
            x = gather_tokens(x, order) + block.drop_path1(block.ls1(out))
        else:
            x = x + block.drop_path1(block.ls1(attend(attn, q, k, v, bias, gate_input=h)))
            new_mask = key_mask & keep
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, new_mask, expected, order

    def extra_repr(self) -> str:
        limits = "all" if all(m is None for m in self.max_tokens) else list(self.max_tokens)
        return f"{super().extra_repr()}, stages={list(self.stages)}, max_tokens={limits}"


# -- zoo builder ---------------------------------------------------------------------------------
_ATS_KWARGS = ("stages", "max_tokens", "token_cap", "drop_mode")


def _base_name(name: str) -> str:
    if name == "ats_tiny_digits":
        return DIGITS_BASE
    return name.removeprefix("ats_")


def _load_digits_weights(net: Any) -> None:
    """Load vit_tiny_digits' shipped weights into the bare ViT `net` (ATS has no weights of its own)."""
    from edgeattack.zoo.factory import read_state_dict
    from edgeattack.zoo.manifest import shipped_weights

    found = shipped_weights(DIGITS_BASE)
    if found is None:
        logger.warning("no shipped weights for %s yet: ATS runs on random weights", DIGITS_BASE)
        return
    state = {
        key.removeprefix("net."): value for key, value in read_state_dict(found[0]).items() if key.startswith("net.")
    }
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"{DIGITS_BASE}'s shipped weights do not fit this ViT (architecture overrides?): {str(exc)[:200]}"
        ) from exc


def build_ats(name: str, config: ModelConfig, *, pretrained: bool = False, **kwargs: Any) -> ATS:
    """Zoo builder: ATS (parameter-free) on the ViT that `name` is based on.

    `ats_tiny_digits` runs on vit_tiny_digits' shipped weights as they are (no training, no file of
    its own; a --checkpoint replaces them). Other names build their timm ViT (`ats_deit_small_...`
    -> `deit_small_...`) with random weights, timm's with `pretrained=True`. `stages`,
    `max_tokens`, `token_cap` and `drop_mode` go to `ATS`; other keyword arguments to the ViT.
    """
    options = {key: kwargs.pop(key) for key in _ATS_KWARGS if key in kwargs}
    base = _base_name(name)
    if config.dataset == "digits":
        from edgeattack.zoo.vit import build_digits_vit

        net = build_digits_vit(base, config, **kwargs)
        if base == DIGITS_BASE:
            _load_digits_weights(net)
    else:
        from edgeattack.zoo.vit import build_timm_vit

        net = build_timm_vit(base, config, pretrained=pretrained, **kwargs)
    return ATS(net, **options)


# -- compression method --------------------------------------------------------------------------
def _ats_name(teacher_name: str) -> str:
    return "ats_" + teacher_name.removeprefix("vit_")


def evaluate_tokens(model: Any, dataset: ImageDataset, batch_size: int = 128) -> dict[str, Any]:
    """Accuracy, TUR and GFLOPs of a token-sparse ZooModel on `dataset` (no gradients)."""
    from edgeattack.metrics.tokens import gflops_from_counts, tur

    correct = 0
    all_counts = []
    model.eval()
    with torch.no_grad():
        for images, labels in dataset.batches(batch_size):
            logits, counts = model.forward_counts(torch.from_numpy(images))
            correct += int((logits.argmax(1).numpy() == labels).sum())
            all_counts.append(counts.numpy())
    counts = np.concatenate(all_counts) if all_counts else np.zeros((0, model.net.depth), dtype=np.int64)
    arch = token_arch_of(model)
    sampled = bool(getattr(model.net, "sampled_in_attention", False))
    return {
        "acc": correct / max(len(dataset), 1),
        "tur": tur(counts, model.net.num_tokens).mean,
        "gflops": gflops_from_counts(counts, arch, sampled_in_attention=sampled).mean,
        "dense_gflops": float(gflops_from_counts(np.full((1, arch.depth), arch.num_tokens), arch).mean or 0.0),
        "mean_counts": [float(c) for c in counts.mean(axis=0)] if len(counts) else [],
        "n_images": len(dataset),
    }


def compress_ats(
    teacher: Any, train: ImageDataset, val: ImageDataset | None = None, **params: Any
) -> tuple[Any, dict[str, Any]]:
    """ATS on `teacher`'s ViT, no training (ATS is parameter-free): (ZooModel, report).

    Parameters: `stages`, `max_tokens`, `token_cap`, `drop_mode`, `name` (default: the zoo name,
    `vit_tiny_digits` -> `ats_tiny_digits`); `seed` is accepted and unused. The report has the
    clean accuracy, mean TUR and GFLOPs of the ATS model and the teacher's accuracy on `val` (on
    `train` when there is no `val`).
    """
    from edgeattack.zoo.factory import ZooModel, state_dict_sha256
    from edgeattack.zoo.train import evaluate_accuracy

    allowed = {*_ATS_KWARGS, "name", "seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"unknown ats parameter(s) {unknown}; valid: {', '.join(sorted(allowed))}")
    if not hasattr(teacher, "net") or not hasattr(teacher, "config"):
        raise ConfigError("ats compresses a zoo model (edgeattack.zoo.create_model), not a bare module")
    params.pop("seed", None)
    name = str(params.pop("name", None) or _ats_name(teacher.model_name))
    net = ATS.from_vit(teacher.net, **params)
    model = ZooModel(net, dataclasses.replace(teacher.config, family="ats"), name).eval()
    model.weights_sha256 = state_dict_sha256(model)
    split = val if val is not None else train
    try:
        measured = evaluate_tokens(model, split)
    except ValueError as exc:
        raise EdgeAttackError(f"ATS on {teacher.model_name} produced invalid token counts: {exc}") from exc
    report = {
        "method": "ats",
        "teacher": teacher.model_name,
        "name": name,
        "trained": False,
        "stages": list(net.stages),
        "max_tokens": list(net.max_tokens),
        "token_cap": None if net.token_cap is None else list(net.token_cap),
        "drop_mode": net.drop_mode,
        "eval_split": split.spec,
        "teacher_acc": evaluate_accuracy(teacher, split),
        **measured,
    }
    logger.info(
        "%s: acc %.4f (teacher %.4f), TUR %.3f, %.4f of %.4f GFLOPs on %s",
        name, report["acc"], report["teacher_acc"], report["tur"] or 0.0, report["gflops"] or 0.0,
        report["dense_gflops"], split.spec,
    )
    return model, report
