"""Typed model configs: how a model wants its inputs, and what its outputs mean (no torch)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """A zoo model's input contract (timm's PretrainedCfg, trimmed to what edgeattack uses).

    Images enter every model as float32 NCHW in `bounds`; `mean`/`std` are applied inside it.
    `input_size`, `crop_pct`, `interpolation` and `crop_mode` are the eval preprocessing, as in
    the pretrained_cfg of the timm model the entry is built from
    (`edgeattack.data.preprocess_for(config)` turns them into a `PreprocessConfig`).
    """

    input_size: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bounds: tuple[float, float] = (0.0, 1.0)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    """timm's eval crop mode: "center", "squash" or "border" (`edgeattack.data.preprocess`)."""
    labels: tuple[str, ...] = field(default=())
    family: str = "original"
    dataset: str = "imagenet"

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class names: `labels`, ImageNet-1k's WordNet synsets (`n01440764`, ...) for an ImageNet
        model, else `0`..`N-1`. A folder's class sub-directories are matched to these by name."""
        if self.labels:
            return self.labels
        if self.dataset == "imagenet" and self.num_classes == len(imagenet_synsets()):
            return imagenet_synsets()
        return tuple(str(i) for i in range(self.num_classes))


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """ImageNet-1k's 1000 WordNet ids in the standard class order (torchvision's / timm's), shipped with the package."""
    text = (Path(__file__).parent / "imagenet_synsets.txt").read_text(encoding="ascii")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
