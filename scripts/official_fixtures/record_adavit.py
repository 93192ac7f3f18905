"""Record the AdaViT fixture with MengLcool/AdaViT's own model code (run outside edgeattack).

Usage (a Python with timm 0.4.12):

    python scripts/official_fixtures/record_adavit.py --official /path/to/AdaViT --out tests/fixtures/official

Parses ada_main.py's arguments for the README's Ada-DeiT-S command (--model
ada_step_deit_small_patch16_224 --ada-head --ada-layer --ada-token-with-mlp), builds
`models.ada_t2t_vit.AdaStepT2T_ViT` as `ada_step_deit_small_patch16_224` and ada_main.py's
`create_model` call do, at the fixture width (embed_dim 48, 3 heads, depth 12), seeded, with the
backbone and decision Linear weights re-drawn from a seeded generator so that tokens, heads,
attention and MLP layers are really dropped, differently per image. Takes timm's `ModelEma` of it,
then re-draws the live model's classifier (standing in for the training steps the EMA lags
behind, so `state_dict` and `state_dict_ema` differ), saves it with the repository's
`MyCheckpointSaver` (`adavit/model_best.pth.tar`: epoch, arch, state_dict, optimizer, version,
args, state_dict_ema, metric), reloads it into a fresh model with the official
`utils.ada_load_state_dict` (which prefers `state_dict_ema`), and writes `adavit/expected.npz`:
the eval logits, and from the masks the official forward returns (token_select [4, 12, 197],
head_select [4, 11, 3], layer_select [4, 11, 2]) the tokens each block processes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fixture_io import normalised_inputs

WIDTH = {"patch_size": 16, "embed_dim": 48, "depth": 12, "num_heads": 3, "mlp_ratio": 4, "qkv_bias": True}
COMMAND = ["--model", "ada_step_deit_small_patch16_224", "--ada-head", "--ada-layer", "--ada-token-with-mlp"]
TOKEN_THRESHOLD = 0.6  # AdaAttention's ada_token_threshold (SimpleTokenSelect); heads and layers use 0.5
MIN_GAP = 1e-3


def shim_imports() -> None:
    """What ada_main.py needs from older libraries: numpy.lib.arraysetops (numpy < 2), timm.data.Dataset (timm 0.3)."""
    arraysetops = types.ModuleType("numpy.lib.arraysetops")
    arraysetops.isin = np.isin
    sys.modules["numpy.lib.arraysetops"] = arraysetops
    import timm.data

    timm.data.Dataset = timm.data.ImageDataset


def build(args: argparse.Namespace) -> torch.nn.Module:
    """`ada_step_deit_small_patch16_224` at the fixture width with ada_main.py's create_model arguments."""
    from models.ada_t2t_vit import AdaStepT2T_ViT

    torch.manual_seed(0)
    return AdaStepT2T_ViT(
        use_t2t=False,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        **WIDTH,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        img_size=args.img_size,
        keep_layers=args.keep_layers,
        head_select_bias=args.head_select_bias,
        layer_select_bias=args.layer_select_bias,
        norm_policy=args.norm_policy,
        ada_layer=args.ada_layer,
        ada_block=args.ada_block,
        ada_head=args.ada_head,
        ada_head_v2=args.ada_head_v2,
        dyna_data=args.dyna_data,
        ada_token=args.ada_token,
        ada_token_nonstep=args.ada_token_nonstep,
        ada_token_with_mlp=args.ada_token_with_mlp,
        ada_head_attn=args.ada_head_attn,
        head_slowfast=args.head_slowfast,
        ada_token_start_layer=args.ada_token_start_layer,
        ada_token_pre_softmax=args.ada_token_pre_softmax,
        ada_token_detach_attn=args.ada_token_detach_attn,
        ada_token_detach_attn_at_mlp=args.ada_token_detach_attn_at_mlp,
        layer_select_tau=args.layer_select_tau,
        head_select_tau=args.head_select_tau,
        token_select_tau=args.token_select_tau,
    ).eval()


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Re-draw the blocks' Linear weights as N(0, 1/fan_in) and the decision heads' as N(0, 9/fan_in).

    With the official init (trunc_normal std 0.02, bias 0) every patch has sigmoid(logit) ~ 0.5 < 0.6
    (all dropped) and the class token hardly depends on the image (all images the same heads and
    layers). Patch logits get bias logit(0.6) (about half kept), head logits 0.5, layer logits 1.0.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            for linear in (attn.query, attn.key, attn.value, attn.proj, mlp.fc1, mlp.fc2):
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) / linear.in_features**0.5)
            selects = (
                (attn.token_select, math.log(TOKEN_THRESHOLD / (1 - TOKEN_THRESHOLD))),
                (block.head_select, 0.5),
                (block.layer_select, 1.0),
            )
            for select, bias in selects:
                if select is not None:
                    linear = select.mlp_head
                    linear.weight.copy_(
                        torch.randn(linear.weight.shape, generator=generator) * 3 / linear.in_features**0.5
                    )
                    linear.bias.fill_(bias)


def decision_gap(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The smallest distance, over every decision of every image, between a logit and its threshold's logit."""
    gaps: list[float] = []
    token_bias = math.log(TOKEN_THRESHOLD / (1 - TOKEN_THRESHOLD))
    handles = []
    for block in model.blocks:
        handles.append(
            block.attn.token_select.mlp_head.register_forward_hook(
                lambda m, a, out: gaps.append(float((out - token_bias).abs().min()))
            )
        )
        for select in (block.head_select, block.layer_select):
            if select is not None:
                handles.append(
                    select.mlp_head.register_forward_hook(lambda m, a, out: gaps.append(float(out.abs().min())))
                )
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return min(gaps)


def block_counts(token_select: torch.Tensor, layer_select: torch.Tensor, keep_layers: int) -> torch.Tensor:
    """Tokens (class token included) each block processes: its token_select, or none when both its layers are off."""
    keep = token_select > 0.5  # (B, depth, tokens); the class token is always 1
    runs = torch.ones(keep.shape[:2], dtype=torch.bool)
    runs[:, keep_layers:] = (layer_select > 0.5).any(dim=-1)
    return keep & runs.unsqueeze(-1)


def exercised(keep: torch.Tensor, heads: torch.Tensor, layers: torch.Tensor) -> bool:
    """Tokens kept and dropped, counts per image distinct, heads and layers on and off and differing per image."""
    counts = keep.sum(-1)
    distinct = len({tuple(row) for row in counts.tolist()}) == counts.shape[0]
    both_off = bool((layers.sum(-1) == 0).any())
    varied = all(bool((t != t[:1]).any()) for t in (heads, layers))
    return bool(counts.max() > 1) and bool((counts < keep.shape[-1]).all()) and distinct and both_off and varied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of MengLcool/AdaViT")
    parser.add_argument("--out", type=Path, required=True, help="tests/fixtures/official")
    options = parser.parse_args()
    shim_imports()
    sys.path.insert(0, str(options.official))
    sys.argv = [sys.argv[0], "/path/to/imagenet", *COMMAND]
    import ada_main
    from saver import MyCheckpointSaver
    from timm.optim import create_optimizer
    from timm.utils import ModelEma
    from utils import ada_load_state_dict

    args, _ = ada_main._parse_args()
    x = normalised_inputs(options.out)
    for seed in range(1, 200):  # the first draw that exercises every policy, no decision within MIN_GAP
        model = build(args)
        perturb(model, seed)
        with torch.no_grad():
            _, heads, layers, tokens, _ = model(x)
        if decision_gap(model, x) > MIN_GAP and exercised(
            block_counts(tokens, layers, args.keep_layers), heads, layers
        ):
            break
    else:
        raise SystemExit(f"no seed exercises every policy with a decision gap above {MIN_GAP}")
    print(f"decision seed {seed}: smallest gap to a threshold {decision_gap(model, x):.4g}")

    model_ema = ModelEma(model, decay=args.model_ema_decay)
    with torch.no_grad():  # the live weights move on after the EMA copy, as in training
        generator = torch.Generator().manual_seed(10_000 + seed)
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator) * 0.02)
    optimizer = create_optimizer(args, model)
    folder = options.out / "adavit"
    folder.mkdir(parents=True, exist_ok=True)
    epoch = args.epochs - 1
    with tempfile.TemporaryDirectory() as tmp:
        saver = MyCheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema, checkpoint_dir=tmp)
        saver.save_checkpoint(epoch, metric=0.0)
        (Path(tmp) / "model_best.pth.tar").replace(folder / "model_best.pth.tar")

    loaded = build(args)
    with torch.serialization.safe_globals([argparse.Namespace]):  # torch >= 2.6 loads weights_only by default
        ada_load_state_dict(str(folder / "model_best.pth.tar"), loaded, use_qkv=False, strict=True)
    with torch.no_grad():
        logits, heads, layers, tokens, _ = loaded.eval()(x)
        live_logits = model(x)[0]
    keep = block_counts(tokens, layers, args.keep_layers)
    print(f"EMA vs live classifier: max |dlogit| {float((logits - live_logits).abs().max()):.3g}")
    print("tokens per block:", keep.sum(-1).tolist())
    np.savez(
        folder / "expected.npz",
        logits=logits.numpy(),
        counts=keep.sum(-1).to(torch.int64).numpy(),
        keep=keep.numpy(),
        heads=(heads > 0.5).numpy(),
        layers=(layers > 0.5).numpy(),
    )


if __name__ == "__main__":
    main()
