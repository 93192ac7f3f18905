"""Record the Mini-DeiT fixture with microsoft/Cream's own MiniViT code (run outside edgeattack).

Usage (a Python with timm 0.4.12, as Mini-DeiT's requirements pin):

    python scripts/official_fixtures/record_mini_deit.py --official /path/to/Cream/MiniViT/Mini-DeiT \
        --out tests/fixtures/official

Builds Cream's `mini_vision_transformer.VisionTransformer` with the arguments of
`mini_deit_small_patch16_224` (deit_small's constructor plus `rpe_config=get_deit_rpe_config()`,
`use_cls_token=False`, `repeated_times=2`, `use_transform=True`) at the fixture width (embed_dim 48,
3 heads, depth 12), seeded, through its pure-PyTorch iRPE path (no `rpe_ops` extension). Official
init leaves iRPE at zero and every layer of a group with the same LayerNorms and near-zero head
mixers, so the per-layer parts are re-drawn from a second seed (see `exercise_per_layer_parts`).
Saves it as main.py saves a checkpoint (`mini_deit/checkpoint.pth`: model, optimizer, lr_scheduler,
epoch, model_ema, scaler, args) and writes `mini_deit/expected.npz` with the eval logits.
`easydict` (imported by Cream's irpe.py) is replaced at run time by a small dict with attribute access.
"""

from __future__ import annotations

import argparse
import sys
import types
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fixture_io import normalised_inputs, save_main_checkpoint
from torch import nn

WIDTH = {"patch_size": 16, "embed_dim": 48, "depth": 12, "num_heads": 3, "mlp_ratio": 4, "qkv_bias": True}
MINI_DEIT = {"use_cls_token": False, "repeated_times": 2, "use_transform": True}
PERTURB_SEED = 1
RPE_STD = 3.0


def install_easydict_shim() -> None:
    """`easydict.EasyDict` as irpe.py uses it: a dict whose keys are also attributes."""

    class EasyDict(dict):
        def __getattr__(self, key: str) -> Any:
            try:
                return self[key]
            except KeyError as exc:
                raise AttributeError(key) from exc

        def __setattr__(self, key: str, value: Any) -> None:
            self[key] = value

    module = types.ModuleType("easydict")
    module.EasyDict = EasyDict  # type: ignore[attr-defined]
    sys.modules.setdefault("easydict", module)


def exercise_per_layer_parts(model: nn.Module, seed: int) -> None:
    """Re-draw every per-layer (`instances.<r>`) parameter from `seed` so each one shows in the logits.

    iRPE lookup tables N(0, 3²) (official init: zero), head-mixing 1x1 convs identity + N(0, 0.3²)
    (official: N(0, 0.02²), which nearly zeroes the attention), LayerNorm weights 1 + N(0, 0.2²) and
    biases N(0, 0.2²) (official: 1 and 0 in both layers of a group, which would hide a layer mix-up).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".instances." not in name:
                continue
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("lookup_table_weight"):
                param.copy_(RPE_STD * noise)
            elif ".conv_" in name:
                heads = param.shape[0]
                param.copy_(torch.eye(heads).view(heads, heads, 1, 1) + 0.3 * noise)
            elif name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of Cream's MiniViT/Mini-DeiT")
    parser.add_argument("--out", type=Path, required=True, help="tests/fixtures/official")
    options = parser.parse_args()
    install_easydict_shim()
    sys.path.insert(0, str(options.official))
    sys.argv = [sys.argv[0]]
    import irpe
    import main as mini_main
    import mini_deit_models
    from mini_vision_transformer import VisionTransformer

    if irpe.RPEIndexFunction is not None:
        raise SystemExit("rpe_ops is built in this environment: record with the pure-PyTorch iRPE path")
    x = normalised_inputs(options.out)
    torch.manual_seed(0)
    model = VisionTransformer(
        **WIDTH,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        rpe_config=mini_deit_models.get_deit_rpe_config(),
        **MINI_DEIT,
    ).eval()
    exercise_per_layer_parts(model, PERTURB_SEED)
    args = mini_main.get_args_parser().parse_args([])
    args.model = "mini_deit_small_patch16_224"
    ema = {key: value * 0.5 for key, value in model.state_dict().items()}  # a different EMA: 'model' must be read
    folder = options.out / "mini_deit"
    save_main_checkpoint(
        folder / "checkpoint.pth",
        model,
        args=args,
        ema=ema,
        epoch=299,
    )
    with torch.no_grad():
        logits = model(x)
    np.savez(folder / "expected.npz", logits=logits.numpy())
    parameters = sum(p.numel() for p in model.parameters())
    print(f"logits {tuple(logits.shape)}, top-1 {logits.argmax(1).tolist()}, parameters {parameters}")


if __name__ == "__main__":
    main()
