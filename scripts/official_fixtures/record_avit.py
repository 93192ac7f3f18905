"""Record the A-ViT fixture with NVlabs/A-ViT's own model code (run outside edgeattack).

Usage (a Python with torch and scipy; A-ViT's vendored timm is put first on sys.path):

    python scripts/official_fixtures/record_avit.py --official /path/to/A-ViT --out tests/fixtures/official

Builds the vendored `timm.models.act_vision_transformer.VisionTransformer` with
`models_act.avit_small_patch16_224`'s constructor at the fixture width (embed_dim 48, 3 heads,
depth 12) and main_act.py's `create_model` keywords, under the args of the README's A-ViT-S command
(gate 10/75, ponder 5e-4, prior 1e-3) parsed by main_act.py's own parser; seeded, then perturbed so
that tokens, the class token included, halt at different blocks for different images (see
`perturb`). Saves it as main_act.py saves `checkpoint.pth` (model, optimizer, lr_scheduler, epoch,
model_ema, scaler, args) and writes `avit/expected.npz`: the eval logits; from the masks the official
forward passes to every block, the tokens each block processes (`keep`, `counts`); the official
counter_token (`depth`), rho_token (`rho`), per-block halting_score_layer (`halting_layer`), the
distributional target and the two loss terms engine_act.py adds (`ponder_loss`, `prior_loss`).
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fixture_io import normalised_inputs, save_main_checkpoint
from torch import nn

WIDTH = {"patch_size": 16, "embed_dim": 48, "depth": 12, "num_heads": 3, "mlp_ratio": 4, "qkv_bias": True}
README_SMALL = [  # the README's A-ViT-S training command, less data/output paths, --pretrained and --tensorboard
    "--model", "avit_small_patch16_224", "--batch-size", "96", "--lr", "0.0003", "--epochs", "100",
    "--gate_scale", "10.0", "--gate_center", "75", "--warmup-epochs", "5",
    "--ponder_token_scale", "0.0005", "--distr_prior_alpha", "0.001",
]  # fmt: skip
EMBED_GAIN, BLOCK_RATE, PROJ_GAIN = 3.0, 0.6, 5.0
MIN_MARGIN = 1e-3


def shim_runtime() -> None:
    """What A-ViT's code needs on a CPU-only torch 2 without OpenCV: `.cuda()` as a no-op, a `cv2` stub."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the forward allocates its state with .cuda()
    cv2 = types.ModuleType("cv2")  # engine_act.py (imported by main_act.py) uses cv2 only to draw demos
    cv2.INTER_CUBIC = 2
    sys.modules["cv2"] = cv2
    six = types.ModuleType("torch._six")
    six.inf = math.inf
    sys.modules.setdefault("torch._six", six)


def perturb(model: nn.Module, initial: dict[str, torch.Tensor], seed: int) -> None:
    """From the seeded weights `initial`, re-draw what steers channel 0 (the halting channel), from `seed`.

    patch_embed.proj.weight[0] ~ N(0, EMBED_GAIN²/fan_in) spreads channel 0 over the patches;
    in every block mlp.fc2.bias[0] = BLOCK_RATE raises it block by block and attn.proj.weight[0] ~
    N(0, PROJ_GAIN²/fan_in) makes the rise depend on the image (the class token's too).
    """
    model.load_state_dict(initial)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed = model.patch_embed.proj.weight
        embed[0].copy_(torch.randn(embed[0].shape, generator=generator) * EMBED_GAIN / embed[0].numel() ** 0.5)
        for block in model.blocks:
            block.mlp.fc2.bias[0] = BLOCK_RATE
            proj = block.attn.proj.weight
            proj[0].copy_(torch.randn(proj.shape[1], generator=generator) * PROJ_GAIN / proj.shape[1] ** 0.5)


def official_run(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eval logits and, from the official forward's own state, the running masks and halting scores per block."""
    masks: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    originals = []
    for block in model.blocks:
        original = block.forward_act
        originals.append((block, original))

        def forward_act(x, mask=None, _original=original):
            masks.append(1.0 - mask)  # the official mask marks halted tokens with 1
            out, halting = _original(x, mask)
            scores.append(halting[1])
            return out, halting

        block.forward_act = forward_act
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for block, _ in originals:
            del block.forward_act
    return {
        "logits": logits,
        "keep": torch.stack(masks, dim=1) > 0.5,
        "h": torch.stack(scores, dim=1),
        "depth": model.counter_token.clone(),
        "rho": model.rho_token.clone(),
        "halting_layer": torch.stack(model.halting_score_layer),
    }


def margin(run: dict[str, torch.Tensor], eps: float) -> float:
    """The smallest |c − (1 − eps)| over the halting decisions of running tokens (blocks before the last)."""
    c = run["h"][:, :-1].cumsum(dim=1)
    return float((c - (1.0 - eps)).abs()[run["keep"][:, :-1]].min())


def exercises_halting(run: dict[str, torch.Tensor], eps: float) -> bool:
    """Class tokens halt at >= 3 different blocks, one before the last; every image its own counts; clear margins."""
    cls_depth = run["depth"][:, 0]
    counts = run["keep"].sum(-1)
    return (
        len(set(cls_depth.tolist())) >= 3
        and bool((cls_depth < counts.shape[1]).any())
        and bool((counts[:, -1] > 0).all())
        and len({tuple(row) for row in counts.tolist()}) == counts.shape[0]
        and margin(run, eps) > MIN_MARGIN
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of NVlabs/A-ViT")
    parser.add_argument("--out", type=Path, required=True, help="tests/fixtures/official")
    options = parser.parse_args()
    shim_runtime()
    sys.path.insert(0, str(options.official))  # before site-packages: A-ViT's own timm
    sys.argv = [sys.argv[0]]
    import main_act
    import utils as avit_utils
    from timm.models.act_vision_transformer import VisionTransformer
    from timm.utils import ModelEma, get_state_dict

    args = main_act.get_args_parser().parse_args(README_SMALL)
    avit_utils.init_distributed_mode(args)  # as main() does: no distributed environment here
    args.nb_classes = 1000  # set by build_dataset for ImageNet
    args.lr = args.lr * args.batch_size * avit_utils.get_world_size() / 512.0  # main()'s linear scaling

    torch.manual_seed(0)
    model = VisionTransformer(
        **WIDTH,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=args.nb_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        args=args,
    ).eval()
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    x = normalised_inputs(options.out)
    for seed in range(1, 200):
        perturb(model, initial, seed)
        run = official_run(model, x)
        if exercises_halting(run, model.eps):
            break
    else:
        raise SystemExit("no perturbation seed exercises the halting")
    counts = run["keep"].sum(-1)
    assert torch.equal(run["depth"].long(), run["keep"].sum(1)), "counter_token disagrees with the masks"
    print(f"perturbation seed {seed}: margin {margin(run, model.eps):.3g}, class token depths "
          f"{run['depth'][:, 0].long().tolist()}, tokens per image {counts.sum(1).tolist()}")  # fmt: skip

    ponder_loss = run["rho"].mean() * args.ponder_token_scale  # engine_act.train_one_epoch's two terms
    distribution = run["halting_layer"] / run["halting_layer"].sum()
    distribution = torch.clamp(distribution, 0.01, 0.99)
    prior_loss = args.distr_prior_alpha * model.kl_loss(distribution.log(), model.distr_target)

    ema = ModelEma(model, decay=args.model_ema_decay, device="", resume="")
    ema_state = get_state_dict(ema)
    ema_state["head.weight"] = ema_state["head.weight"] * 0.5  # the EMA lags: 'model' must be the one read
    folder = options.out / "avit"
    save_main_checkpoint(
        folder / "checkpoint.pth",
        model,
        args=args,
        ema=ema_state,
        epoch=99,
    )
    np.savez(
        folder / "expected.npz",
        logits=run["logits"].numpy(),
        counts=counts.numpy().astype(np.int64),
        keep=run["keep"].numpy(),
        depth=run["depth"].numpy().astype(np.int64),
        rho=run["rho"].numpy(),
        halting_layer=run["halting_layer"].numpy(),
        distr_target=model.distr_target.numpy(),
        ponder_loss=np.float32(ponder_loss),
        prior_loss=np.float32(prior_loss),
        perturbation_seed=np.int64(seed),
    )


if __name__ == "__main__":
    main()
