"""What every recording script shares: the shared inputs as the official models take them.

The scripts run outside edgeattack (a Python with the timm version the official code pins), from
this folder, so they import this module by its file name.
"""

from __future__ import annotations

from pathlib import Path

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
