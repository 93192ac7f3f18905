"""ImageFolder-style directories (`root/<class>/<image>`) with a model's preprocessing config.

This is the real-scale path (ImageNet val folders); it needs only Pillow and numpy, so it runs on a
board without torch. Classes are the sorted sub-directory names, as torchvision's ImageFolder does,
mapped by name to the model's own labels when they are given (`edgeattack.data.labels`); which
sub-folder is a split is `edgeattack.data.splits`' rule, and `limit` takes a seeded
class-stratified subset (`edgeattack.data.subset`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeattack.data.base import ImageDataset
from edgeattack.data.labels import folder_labels
from edgeattack.data.splits import IMAGE_SUFFIXES
from edgeattack.data.subset import select_subset
from edgeattack.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its images: resize the short side, center crop to `input_size`.

    `crop_pct` follows timm: the short side is resized to `input_size / crop_pct` before the crop
    (DeiT: 224 / 0.875 = 256). Mean/std are not here: normalisation lives inside the model.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or min(self.input_size) <= 0:
            raise DataError(f"input_size must be (C, H, W) with positive sizes, got {self.input_size}")
        if self.input_size[0] not in (1, 3):
            raise DataError(f"input_size must have 1 or 3 channels, got {self.input_size[0]}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise DataError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in _RESAMPLE_NAMES:
            raise DataError(
                f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(_RESAMPLE_NAMES)}"
            )

    @property
    def resize_to(self) -> int:
        """The short side after resizing, before the crop."""
        return math.floor(max(self.input_size[1:]) / self.crop_pct)

    def apply(self, image: object) -> np.ndarray:
        """A PIL image -> float32 CHW in [0, 1]."""
        from PIL import Image

        assert isinstance(image, Image.Image)
        channels, height, width = self.input_size
        image = image.convert("RGB" if channels == 3 else "L")
        scale = self.resize_to / min(image.size)
        new_size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        image = image.resize(new_size, _resample(self.interpolation))
        left = (image.size[0] - width) // 2
        top = (image.size[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[None]
        else:
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array)


_RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos")


def _resample(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.NEAREST,
        "bilinear": Image.BILINEAR,
        "bicubic": Image.BICUBIC,
        "lanczos": Image.LANCZOS,
    }[name]


def list_image_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Files, labels (0..k-1 over the sorted class folders) and class folder names, sorted for a stable order."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"image folder {root} has no class sub-directories (expected root/<class>/<image>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                files.append(path)
                labels.append(label)
    if not files:
        raise DataError(f"image folder {root} holds no images with suffixes {', '.join(IMAGE_SUFFIXES)}")
    return files, np.asarray(labels, dtype=np.int64), classes


def load_image_folder(
    root: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    limit: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    split: str = "folder",
    selection: str | None = None,
) -> ImageDataset:
    """Load an ImageFolder tree (`root/<class>/<image>`) into memory as an ImageDataset.

    Labels: `class_names` (the model's label list, ImageNet synsets for instance) and/or
    `num_classes` map the class folders to the model's labels by name, never renumbering a subset
    (`edgeattack.data.labels`); without either, the sorted folders are numbered 0..k-1.

    `limit` loads only that many images, chosen by `selection` (`edgeattack.data.subset`):
    "stratified" (the default: a seeded class-stratified subset), "random" (a seeded uniform
    draw; what `shuffle=True` asks for) or "first" (the first files in sorted order). `indices`
    are the positions in the sorted file list, so artifacts stay valid across runs with the same
    folder, limit and seed; `ImageDataset.selection` records the choice.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    preprocess = preprocess or PreprocessConfig()
    files, folder_label, folders = list_image_folder(root)
    label_of_folder, classes = folder_labels(folders, root, class_names=class_names, num_classes=num_classes)
    labels = label_of_folder[folder_label]
    order, chosen = select_subset(folder_label, limit, seed, selection or ("random" if shuffle else "stratified"))
    if chosen == "stratified":
        logger.info(
            "%s: using a seeded class-stratified subset of %d of %d images (seed %d, %d classes)",
            root,
            len(order),
            len(files),
            seed,
            len(folders),
        )
    elif chosen in ("random", "first"):
        logger.info("%s: using a %s subset of %d of %d images (seed %d)", root, chosen, len(order), len(files), seed)
    images = np.empty((len(order), *preprocess.input_size), dtype=np.float32)
    for slot, position in enumerate(order):
        try:
            with Image.open(files[position]) as image:
                images[slot] = preprocess.apply(image)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {files[position]}: {exc}") from exc
    return ImageDataset(
        images=images,
        labels=labels[order],
        name=f"folder:{root.resolve()}",
        split=split,
        seed=seed,
        indices=order.astype(np.int64),
        class_names=classes,
        selection=chosen,
    )
