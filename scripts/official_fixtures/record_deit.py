"""Record DeiT and DeiT-distilled fixtures with facebookresearch/deit's own model code (run outside edgeattack).

Usage (a Python with timm 0.4.12, as the official requirements pin):

    python scripts/official_fixtures/record_deit.py --official /path/to/deit --out tests/fixtures/official

Builds `VisionTransformer` (deit_small_patch16_224's constructor) and deit's own
`DistilledVisionTransformer` at the fixture width (embed_dim 48, 3 heads, depth 12), seeded, and
saves them as deit's main.py saves them: the training checkpoint (`model`, `optimizer`,
`lr_scheduler`, `epoch`, `model_ema`, `scaler`, and the `argparse.Namespace` of its parser under
`args`), and the released layout (`{"model": ...}`) for the distilled one. Writes
`deit/checkpoint.pth`, `deit/expected.npz`, `deit_distilled/deit_distilled.pth`,
`deit_distilled/expected.npz`.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fixture_io import normalised_inputs, save_main_checkpoint
from torch import nn

WIDTH = {"patch_size": 16, "embed_dim": 48, "depth": 12, "num_heads": 3, "mlp_ratio": 4, "qkv_bias": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of facebookresearch/deit")
    parser.add_argument("--out", type=Path, required=True, help="tests/fixtures/official")
    options = parser.parse_args()
    sys.path.insert(0, str(options.official))
    sys.argv = [sys.argv[0]]
    import main as deit_main
    import models as deit_models
    from timm.models.vision_transformer import VisionTransformer

    x = normalised_inputs(options.out)
    norm = partial(nn.LayerNorm, eps=1e-6)

    torch.manual_seed(0)
    plain = VisionTransformer(**WIDTH, norm_layer=norm).eval()
    args = deit_main.get_args_parser().parse_args([])
    args.model = "deit_small_patch16_224"
    ema = {key: value * 0.5 for key, value in plain.state_dict().items()}  # a different EMA: 'model' must be read
    folder = options.out / "deit"
    save_main_checkpoint(
        folder / "checkpoint.pth",
        plain,
        args=args,
        ema=ema,
        epoch=299,
    )
    with torch.no_grad():
        np.savez(folder / "expected.npz", logits=plain(x).numpy())

    torch.manual_seed(1)
    distilled = deit_models.DistilledVisionTransformer(**WIDTH, norm_layer=norm).eval()
    folder = options.out / "deit_distilled"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": distilled.state_dict()}, folder / "deit_distilled.pth")
    with torch.no_grad():
        np.savez(folder / "expected.npz", logits=distilled(x).numpy())


if __name__ == "__main__":
    main()
