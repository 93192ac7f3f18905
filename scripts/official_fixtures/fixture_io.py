"""What every recording script shares: the shared inputs as the official models take them.

The scripts run outside edgeattack (a Python with the timm version the official code pins), from
this folder, so they import this module by its file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalised_inputs(fixtures: Path) -> torch.Tensor:
    """`fixtures/inputs.npz` as float32 NCHW: ((images / 255) - ImageNet mean) / std, as edgeattack's ZooModel computes it."""
    with np.load(fixtures / "inputs.npz", allow_pickle=False) as data:
        images = data["images"]
    x = torch.from_numpy((images.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2).copy())
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def save_main_checkpoint(path: Path, model: torch.nn.Module, *, args: Any, ema: dict, epoch: int) -> None:
    """The training checkpoint DeiT's main.py writes (and A-ViT's main_act.py, Cream's Mini-DeiT main.py).

    The optimizer, scheduler and loss scaler are built from `args` as those scripts build them
    (timm's `create_optimizer` / `create_scheduler`, `NativeScaler`), with no step taken. `ema` is the
    `model_ema` state the fixture stores: the recordings make it differ from `model`, so a loader
    that read the EMA instead of `model` would fail its test.
    """
    from timm.optim import create_optimizer
    from timm.scheduler import create_scheduler
    from timm.utils import NativeScaler

    optimizer = create_optimizer(args, model)
    scheduler, _ = create_scheduler(args, optimizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "model_ema": ema,
            "scaler": NativeScaler().state_dict(),
            "args": args,
        },
        path,
    )
