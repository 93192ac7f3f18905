"""timm's eval transform, exactly, with Pillow and numpy only (no torch).

`PreprocessConfig.apply` reproduces `timm.data.create_transform(**resolve_data_config({}, model=m))`
in eval mode image for image, without the normalisation (mean/std live inside edgeattack's models):

- "center" (timm's default): resize the short side to `floor(size / crop_pct)` as torchvision's
  `Resize(int)` does (the long side is `int(short * long / short_in)`, truncated; nothing happens
  when the size already matches), then torchvision's `CenterCrop` (`top = int(round((h - ch) / 2))`,
  Python's round half to even; zero padding where the image is smaller than the crop). A non-square
  `input_size` resizes with timm's `ResizeKeepRatio` (each side `round(side / min ratio)`) instead.
- "squash": resize both sides to `floor(size / crop_pct)` ignoring the aspect ratio, then crop.
- "border": timm's `ResizeKeepRatio(longest=1)` (the long side fits), then `CenterCropOrPad` with
  the mean colour (`pad_fill`) around the image.

Then `ToTensor`: uint8 -> float32 / 255, CHW. Images are converted to RGB (or L for 1 channel)
first, as timm's and torchvision's loaders do.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeattack.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CROP_MODES", "INTERPOLATIONS", "PreprocessConfig", "preprocess_for"]

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its images (timm's data config, eval): resize, crop to `input_size`, /255.

    `crop_pct` follows timm: the image is resized to `floor(input_size / crop_pct)` before the crop
    (DeiT in timm: 224 / 0.9 = 248); `crop_mode` is timm's ("center", "squash" or "border");
    `pad_fill` is the RGB colour "border" pads with (timm: `round(255 * mean)`). Mean/std are not
    applied: normalisation lives inside the model.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    pad_fill: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) <= 0:
            raise DataError(f"input_size must be (C, H, W) with positive sizes, got {self.input_size}")
        if self.input_size[0] not in (1, 3):
            raise DataError(f"input_size must have 1 or 3 channels, got {self.input_size[0]}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise DataError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise DataError(f"unknown crop mode {self.crop_mode!r}; choose one of {', '.join(CROP_MODES)}")
        object.__setattr__(self, "input_size", tuple(int(d) for d in self.input_size))

    @classmethod
    def from_model_config(cls, config: Any) -> PreprocessConfig:
        """The preprocessing of a zoo `ModelConfig` (or anything with its fields: input_size, crop_pct, ...)."""
        mean = getattr(config, "mean", (0.0, 0.0, 0.0))
        return cls(
            input_size=tuple(config.input_size),  # type: ignore[arg-type]
            crop_pct=float(getattr(config, "crop_pct", 0.875)),
            interpolation=str(getattr(config, "interpolation", "bicubic")),
            crop_mode=str(getattr(config, "crop_mode", "center") or "center"),
            pad_fill=tuple(round(255 * float(v)) for v in mean[:3]),  # type: ignore[arg-type]
        )

    @property
    def scale_size(self) -> tuple[int, int]:
        """(H, W) the image is resized to before the crop: `floor(side / crop_pct)`, as timm computes it."""
        return math.floor(self.input_size[1] / self.crop_pct), math.floor(self.input_size[2] / self.crop_pct)

    @property
    def resize_to(self) -> int:
        """The short side after resizing, before the crop (center mode, square input)."""
        return max(self.scale_size)

    def apply(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> float32 CHW in [0, 1], exactly as timm's eval transform (less the normalisation)."""
        channels, height, width = self.input_size
        image = image.convert("RGB" if channels == 3 else "L")
        fill: tuple[int, ...] | int = 0
        if self.crop_mode == "squash":
            image = _resize(image, self.scale_size, self.interpolation)
        elif self.crop_mode == "border":
            image = _resize(image, _keep_ratio_size(image, self.scale_size, longest=1.0), self.interpolation)
            fill = self.pad_fill if channels == 3 else self.pad_fill[0]
        elif self.scale_size[0] == self.scale_size[1]:
            image = _resize(image, _short_side_size(image, self.scale_size[0]), self.interpolation)
        else:
            image = _resize(image, _keep_ratio_size(image, self.scale_size, longest=0.0), self.interpolation)
        array = _center_crop_or_pad(np.asarray(image), height, width, fill)
        array = array.astype(np.float32) / np.float32(255.0)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)


def preprocess_for(source: Any) -> PreprocessConfig:
    """The preprocessing of a model: the one helper every command uses.

    `source` is a zoo `ModelConfig` (anything with `crop_pct`), or an engine's metadata
    (`EngineMetadata`: its `source_model` is looked up in the zoo, and its config used when the
    input sizes agree; otherwise timm's defaults at the engine's input size, logged).
    """
    if hasattr(source, "crop_pct"):
        return PreprocessConfig.from_model_config(source)
    input_size = tuple(int(d) for d in source.input_size)
    name = str(getattr(source, "source_model", "") or "")
    if name:
        from edgeattack.errors import ModelNotFoundError
        from edgeattack.zoo.registry import get_entry

        try:
            config = get_entry(name).config
        except ModelNotFoundError:
            config = None
        if config is not None and tuple(config.input_size) == input_size:
            return PreprocessConfig.from_model_config(config)
    logger.info("no zoo config for %r: preprocessing with crop_pct 0.875, bicubic, center crop", name or source)
    return PreprocessConfig(input_size=input_size)  # type: ignore[arg-type]


def _short_side_size(image: Image.Image, short: int) -> tuple[int, int]:
    """torchvision `Resize(int)`: (H, W) with the short side `short` and the long side truncated."""
    w, h = image.size
    low, high = (w, h) if w <= h else (h, w)
    long = int(short * high / low)
    return (long, short) if w <= h else (short, long)


def _keep_ratio_size(image: Image.Image, target: tuple[int, int], *, longest: float) -> tuple[int, int]:
    """timm `ResizeKeepRatio.get_params` without randomness: (H, W)."""
    w, h = image.size
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h * 1.0 / ratio), round(w * 1.0 / ratio)


def _resize(image: Image.Image, size_hw: tuple[int, int], interpolation: str) -> Image.Image:
    """torchvision's `F.resize` on a PIL image: a no-op at the same size, else Pillow's resize."""
    from PIL import Image as PILImage

    if (image.size[1], image.size[0]) == tuple(size_hw):
        return image
    resample = {
        "nearest": PILImage.Resampling.NEAREST,
        "bilinear": PILImage.Resampling.BILINEAR,
        "bicubic": PILImage.Resampling.BICUBIC,
        "box": PILImage.Resampling.BOX,
        "hamming": PILImage.Resampling.HAMMING,
        "lanczos": PILImage.Resampling.LANCZOS,
    }[interpolation]
    return image.resize((size_hw[1], size_hw[0]), resample)


def _center_crop_or_pad(array: np.ndarray, crop_h: int, crop_w: int, fill: tuple[int, ...] | int) -> np.ndarray:
    """torchvision `CenterCrop` / timm `CenterCropOrPad` on an HW(C) uint8 array."""
    h, w = array.shape[:2]
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        padded = np.empty((h + top + bottom, w + left + right, *array.shape[2:]), dtype=array.dtype)
        padded[...] = np.asarray(fill, dtype=array.dtype)
        padded[top : top + h, left : left + w] = array
        array = padded
        h, w = array.shape[:2]
        if (h, w) == (crop_h, crop_w):
            return array
    top = round((h - crop_h) / 2.0)  # Python rounds half to even, as torchvision does
    left = round((w - crop_w) / 2.0)
    return array[top : top + crop_h, left : left + crop_w]
