"""ATS, the Adaptive Token Sampler (Fayyaz et al., "Adaptive Token Sampling for Efficient Vision
Transformers", ECCV 2022), around a timm ViT: parameter-free, so it works on a trained ViT as is.

The default reproduces the official code (adaptivetokensampling/ATS, `ats_block.py`, `vit.py`, with
`configs/ImageNet/DeiT_S.yaml`) for each image alone. At each ATS stage (blocks
`ats_stages_for(depth)`: 3..11 of DeiT-S's 12 as ATS_BLOCKS in that config, 2..5 of the digits
ViT's 6) the sampler sits inside the block's attention, after the attention weights:

1. significance scores of the patch tokens: the class token's attention to token j, summed over
   the heads, times the L2 norm of token j's value vector (all heads), normalised to sum to 1;
2. the scores in ascending order, accumulated into a CDF, min-max normalised to [0, 1];
3. K fixed sample points, evenly spaced from the smallest non-zero normalised CDF value to 1
   (K = `num_tokens` - 1, 196 for DeiT-S, the official `n_ref_tokens - 1`; `max_tokens` changes
   it): each picks the token whose normalised CDF value is nearest, and duplicates collapse, so the
   kept count depends on the input (concentrated attention keeps few tokens);
4. the kept tokens' attention rows and residuals go on through the projection and the MLP, in
   ascending score order after the class token (the official DROP_TOKENS compaction); the others
   are dropped for the rest of the network. The class token always stays.

Every block attends as the official `softmax_with_policy`. The arithmetic is in
`edgeattack.sparsity.ats_sampling`, whose "quantile" sampler (`sampler="quantile"`) is edgeattack's
earlier one: quantiles (k + 0.5) / K of the unnormalised CDF, K the available tokens.

The official code is batch dependent (with DROP_TOKENS an image is zero-padded to the batch's
longest, and the padding enters its CDF as zero scores and its softmax's eps / N); this class
computes every image as the official code does at batch 1, whatever the batch. Its NUM_TOKENS
config only bounds it (it fails when a block gets more tokens than its entry), so it changes no
sample. Official checkpoints ({'epoch', 'model_state', 'optimizer_state', 'cfg'}) load through
`adapt_checkpoint` (`edgeattack.sparsity.ats_checkpoint`).

`counts[:, b]` of an ATS block is the tokens it keeps (those its projection and MLP process); its
qkv and attention keys run on those that entered it (`gflops_from_counts(..., sampled_in_attention=True)`).

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
from edgeattack.sparsity.ats_sampling import (
    attention_output,
    attention_weights,
    check_sampler,
    expected_distinct,
    nearest_cdf_keep,
    official_block,
    quantile_keep,
    sample_points,
    score_order,
    significance_scores,
)
from edgeattack.sparsity.base import (
    TokenSparseViT,
    apply_token_cap,
    compaction_order,
    gather_tokens,
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

__all__ = ["ATS", "ats_stages_for", "build_ats", "compress_ats"]

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


class ATS(TokenSparseViT):
    """A timm ViT with Adaptive Token Sampling; see the module docstring. Build with `from_vit`.

    `stages`: blocks with a sampler (default `ats_stages_for(depth)`; an official checkpoint's
    ATS_BLOCKS when it has them and `stages` is not given); `max_tokens`: the sample points K per
    stage (an int for all stages or one per stage; default `num_tokens - 1` for the official
    sampler, the available tokens for "quantile"); `sampler`: "official" or "quantile";
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
        sampler: str = "official",
        token_cap: int | Sequence[int] | None = None,
        drop_mode: str = "physical",
    ) -> None:
        """Take over the modules of timm VisionTransformer `net` (not copied: use `from_vit` to copy)."""
        super().__init__(net, token_cap=token_cap, drop_mode=drop_mode)
        self.sampler = check_sampler(sampler)
        self.stages_given = stages is not None
        self._max_tokens_option = max_tokens
        self.set_stages(ats_stages_for(self.depth) if stages is None else stages)

    def set_stages(self, stages: Sequence[int]) -> None:
        """Put the samplers in blocks `stages` (with the `max_tokens` given at construction)."""
        self.stages = _check_stages(stages, self.depth)
        max_tokens = self._max_tokens_option
        if max_tokens is None or isinstance(max_tokens, int):
            limits: Sequence[int | None] = [max_tokens] * len(self.stages)
        else:
            limits = list(max_tokens)
        if len(limits) != len(self.stages) or any(m is not None and int(m) < 1 for m in limits):
            raise ConfigError(
                f"max_tokens must be a positive int or one per stage ({len(self.stages)}), got {max_tokens!r}"
            )
        if self.sampler == "official":
            limits = [self.num_tokens - 1 if m is None else m for m in limits]
        self.max_tokens: tuple[int | None, ...] = tuple(None if m is None else int(m) for m in limits)
        self._samples = dict(zip(self.stages, self.max_tokens, strict=True))
        self._points = {s: sample_points(k) for s, k in self._samples.items() if self.sampler == "official" and k}
        self._caps = stages_cap(self.token_cap, self.stages, self.depth, self.num_tokens)

    def _token_cap_changed(self) -> None:
        self._caps = stages_cap(self.token_cap, self.stages, self.depth, self.num_tokens)

    @classmethod
    def from_vit(cls, net: Any, **kwargs: Any) -> ATS:
        """An ATS on a copy of `net`'s modules (the ViT stays untouched); see the class for `kwargs`."""
        return cls(copy.deepcopy(net), **kwargs)

    def adapt_checkpoint(self, checkpoint: Any) -> dict[str, Any]:
        """The state dict of an official ATS checkpoint (or a DeiT / edgeattack one) in this net's names."""
        from edgeattack.sparsity.ats_checkpoint import adapt_state

        return adapt_state(self, checkpoint)

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
                x = official_block(block, x, key_mask)
            counts.append(token_counts(key_mask))
            usage.append(current)
            if trace is not None:
                trace.append(original_tokens(positions, key_mask, self.num_tokens))
        logits = self.classify(x)
        return logits, torch.stack(counts, dim=1), torch.stack(usage, dim=1) if soft else None

    def _keep(self, index: int, scores: Any, valid: Any, order: Any, rank: Any) -> tuple[Any, Any]:
        """(keep (B, N-1) bool in token order, the samples K (B, 1)) of the stage in block `index`."""
        limit = self._samples[index]
        if self.sampler == "official":
            points = self._points[index].to(device=scores.device)
            kept = nearest_cdf_keep(gather_tokens(scores, order), gather_tokens(valid, order), points)
            samples = torch.full_like(rank[:, :1], points.shape[1])
            return gather_tokens(kept, rank), samples
        samples = valid.to(torch.int64).sum(dim=1, keepdim=True)
        if limit is not None:
            samples = samples.clamp(max=limit)
        return quantile_keep(scores, samples) & valid, samples

    def _sample_block(
        self, index: int, block: Any, x: Any, key_mask: Any, *, physical: bool, soft: bool
    ) -> tuple[Any, Any, Any, Any]:
        """Block `index` with its sampler: (tokens out, their key mask, expected tokens or None, the
        order of the tokens kept, None when masked)."""
        attn = block.attn
        q, k, v = split_qkv(attn, block.norm1(x))
        valid = key_mask[:, 1:]
        scores = significance_scores(attention_weights(q[:, :, :1], k, key_mask, attn.scale)[:, :, 0], v, valid)
        rank, order = score_order(scores, valid)
        keep, samples = self._keep(index, scores, valid, order, rank)
        cap = self._caps[index]
        if cap is not None:
            keep = apply_token_cap(keep, scores, cap - 1)
        expected = None
        if soft:
            expected = 1.0 + expected_distinct(scores, samples, valid)
            if cap is not None:
                expected = expected.clamp(max=float(cap))
        if physical:  # class token, then the kept tokens in ascending score order (the official compaction)
            first = torch.ones_like(keep[:, :1])
            slots, new_mask = compaction_order(torch.cat([first, gather_tokens(keep, order)], dim=1))
            tokens = gather_tokens(torch.cat([torch.zeros_like(order[:, :1]), order + 1], dim=1), slots)
            weights = attention_weights(gather_tokens(q, tokens, dim=2), k, key_mask, attn.scale)  # the kept rows
            x = gather_tokens(x, tokens) + block.drop_path1(block.ls1(attention_output(attn, weights, v)))
        else:
            weights = attention_weights(q, k, key_mask, attn.scale)
            x = x + block.drop_path1(block.ls1(attention_output(attn, weights, v)))
            new_mask = key_mask & torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
            tokens = None
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, new_mask, expected, tokens

    def extra_repr(self) -> str:
        limits = "all" if all(m is None for m in self.max_tokens) else list(self.max_tokens)
        return f"{super().extra_repr()}, sampler={self.sampler!r}, stages={list(self.stages)}, max_tokens={limits}"


# -- zoo builder ---------------------------------------------------------------------------------
_ATS_KWARGS = ("stages", "max_tokens", "sampler", "token_cap", "drop_mode")


def _base_name(name: str) -> str:
    if name == "ats_tiny_digits":
        return DIGITS_BASE
    return name.removeprefix("ats_")


def _load_digits_weights(net: Any) -> None:
    """Load vit_tiny_digits' shipped weights into the bare ViT `net` (ATS has no weights of its own)."""
    from edgeattack.zoo.checkpoint import read_state_dict
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
    `max_tokens`, `sampler`, `token_cap` and `drop_mode` go to `ATS`; the rest to the ViT.
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

    Parameters: `stages`, `max_tokens`, `sampler`, `token_cap`, `drop_mode`, `name` (default: the zoo name,
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
        "sampler": net.sampler,
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
