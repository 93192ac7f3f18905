"""Record the ATS fixture with adaptivetokensampling/ATS's own model code (run outside edgeattack).

Usage (a Python with timm 0.4.12, fvcore, yacs, iopath and simplejson, e.g. /work/official/venv):

    python scripts/official_fixtures/record_ats.py --official /path/to/ATS --out tests/fixtures/official

Builds the official `ViT` with `libs.models.build_model` from `configs/ImageNet/DeiT_S.yaml` (ATS in
blocks 3..11, NUM_TOKENS 197 everywhere, DROP_TOKENS True) at the fixture width (VIT.EMBED_DIM 48,
VIT.NUM_HEADS 3, NUM_GPUS 0), seeded, with the q and k rows of every `qkv` weight multiplied by
`QK_GAIN` so the attention is peaked enough for ATS to drop many tokens. Saves it with the official
`libs.utils.checkpoint.save_checkpoint` (`checkpoint_epoch_00001.pyth`: epoch, model_state,
optimizer_state, cfg) and writes `ats/expected.npz`:

- `logits` float32 [4, 1000], `counts` int64 [4, 12], `keep` bool [4, 12, 197]: each image run alone
  (batch 1). `counts[:, b]` is the tokens (class token included) block b's projection and MLP
  process: the sum of the `policy` an `ATSBlock` returns (its kept tokens), or of the `policy` a plain
  `Block` is called with. `keep[:, b]` marks which original tokens those are, followed through the
  official sort (`score_assignment_step`'s indices) and selection (`get_unique_indices`).
- `logits_batch4`, `counts_batch4`: the same four images in one batch. The official code is batch
  dependent: with DROP_TOKENS an image shorter than the batch's longest is zero-padded, the padding
  enters its CDF as zero scores, which moves the min-max normalisation and keeps its lowest-scoring
  token; the softmax's eps / N also uses the padded N.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fixture_io import normalised_inputs

WIDTH = ["VIT.EMBED_DIM", 48, "VIT.NUM_HEADS", 3, "NUM_GPUS", 0]
QK_GAIN = 8.0


class Recorder:
    """Per-block token counts, the original tokens each block keeps, and the sampling margins of one run."""

    def __init__(self, model: torch.nn.Module, sampler: Any) -> None:
        self.counts: list[torch.Tensor] = []
        self.keep: list[torch.Tensor] = []
        self.margins: list[float] = []
        self.positions = torch.zeros(0)
        self.tokens = 0
        self._sorted: torch.Tensor | None = None
        self._unique: torch.Tensor | None = None
        for block in model.blocks:
            block.register_forward_pre_hook(self._start, with_kwargs=True)
            block.register_forward_hook(self._finish, with_kwargs=True)
        self._wrap(sampler, "score_assignment_step", self._scored)
        self._wrap(sampler, "get_unique_indices", self._unique_indices)
        self._wrap(sampler, "create_ys", self._sample_points)

    @staticmethod
    def _wrap(cls: Any, name: str, after: Callable[..., Any]) -> None:
        original = getattr(cls, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return after(original(*args, **kwargs), *args, **kwargs)

        setattr(cls, name, staticmethod(wrapped))

    def reset(self, batch: int, tokens: int) -> None:
        self.counts.clear()
        self.keep.clear()
        self.tokens = tokens
        self.positions = torch.arange(tokens).expand(batch, -1)

    def _scored(self, result: tuple[torch.Tensor, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        self._sorted = result[1]
        return result

    def _unique_indices(self, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._unique = result
        return result

    def _sample_points(self, ys: torch.Tensor, normalized_cdf: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Record how close each sample point came to having another nearest token (float64)."""
        distance = (ys.double()[:, :, None] - normalized_cdf.double()[:, None, :]).abs().sort(dim=2).values
        self.margins.append(float((distance[..., 1] - distance[..., 0]).min()))
        return ys

    def _start(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._sorted = self._unique = None

    def _finish(self, block: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if isinstance(output, tuple):  # ATSBlock: (x, policy of the kept tokens)
            policy = output[1][..., 0]
            patches = self.positions[:, 1:].gather(1, self._sorted)
            patches = torch.nn.functional.pad(patches, (0, 1), value=-1).gather(1, self._unique[:, : patches.shape[1]])
            self.positions = torch.cat([self.positions[:, :1], patches], dim=1)[:, : policy.shape[1]]
        else:
            policy = kwargs["policy"][..., 0]
        slots = (policy > 0).to(torch.int64)  # padding (position -1) adds nothing
        kept = torch.zeros(policy.shape[0], self.tokens, dtype=torch.int64).scatter_add(
            1, self.positions.clamp(min=0), slots
        )
        self.counts.append(slots.sum(dim=1))
        self.keep.append(kept > 0)


def build(official: Path) -> tuple[Any, Any]:
    import libs.models.transformers  # noqa: F401  (registers ViT in MODEL_REGISTRY)
    from libs.config.defaults import get_cfg
    from libs.models import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(official / "configs" / "ImageNet" / "DeiT_S.yaml"))
    cfg.merge_from_list(WIDTH)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.in_features
            block.attn.qkv.weight[: 2 * dim] *= QK_GAIN
    return cfg, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of adaptivetokensampling/ATS")
    parser.add_argument("--out", type=Path, required=True, help="tests/fixtures/official")
    options = parser.parse_args()
    official = options.official.resolve()
    sys.path.insert(0, str(official))
    from libs.models.optimizer import construct_optimizer
    from libs.models.transformers.ats_block import AdaptiveTokenSampler
    from libs.utils.checkpoint import save_checkpoint

    folder = options.out / "ats"
    folder.mkdir(parents=True, exist_ok=True)
    x = normalised_inputs(options.out)
    with tempfile.TemporaryDirectory() as job:
        cfg, model = build(official)
        optimizer = construct_optimizer(model, cfg)
        saved = save_checkpoint(job, model, optimizer, 0, cfg)
        shutil.copy(saved, folder / Path(saved).name)
    recorder = Recorder(model, AdaptiveTokenSampler)
    tokens = model.patch_embed.num_patches + 1
    logits, counts, keep = [], [], []
    with torch.no_grad():
        for index in range(x.shape[0]):
            recorder.reset(1, tokens)
            out, _ = model(x[index : index + 1])
            logits.append(out)
            counts.append(torch.stack(recorder.counts, dim=1))
            keep.append(torch.stack(recorder.keep, dim=1))
        margin = min(recorder.margins)
        recorder.reset(x.shape[0], tokens)
        batch_logits, _ = model(x)
        batch_counts = torch.stack(recorder.counts, dim=1)
    counts_np = torch.cat(counts).numpy().astype(np.int64)
    print(f"counts (batch 1):\n{counts_np}\nsmallest nearest-token margin over the sample points: {margin:.3g}")
    np.savez(
        folder / "expected.npz",
        logits=torch.cat(logits).numpy(),
        counts=counts_np,
        keep=torch.cat(keep).numpy(),
        logits_batch4=batch_logits.numpy(),
        counts_batch4=batch_counts.numpy().astype(np.int64),
    )


if __name__ == "__main__":
    main()
