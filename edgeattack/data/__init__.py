"""Datasets as float32 NCHW images in [0,1] with int64 labels (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from edgeattack.data.base import ImageDataset, check_images
from edgeattack.data.digits import DIGITS_SPLITS, load_digits_dataset
from edgeattack.data.folder import PreprocessConfig, load_image_folder
from edgeattack.errors import DataError

__all__ = [
    "DIGITS_SPLITS",
    "ImageDataset",
    "PreprocessConfig",
    "check_images",
    "load_dataset",
    "load_digits_dataset",
    "load_image_folder",
]


def load_dataset(
    data: str,
    *,
    split: str = "test",
    seed: int = 0,
    limit: int | None = None,
    preprocess: PreprocessConfig | None = None,
    shuffle: bool = False,
) -> ImageDataset:
    """Open `data`: "digits" (the embedded default) or the path of an ImageFolder directory.

    For a folder, `split` names a sub-directory when one exists (`root/val/<class>/...`), and
    `shuffle` makes `limit` pick a seeded random subset instead of the first files (so a
    calibration set is not all of the first classes).
    """
    if data == "digits":
        dataset = load_digits_dataset(split, seed=seed)
        return dataset.take(limit)
    root = Path(data)
    if not root.exists():
        raise DataError(f"dataset {data!r} is neither 'digits' nor an existing folder")
    if (root / split).is_dir():
        root = root / split
    return load_image_folder(root, preprocess=preprocess, limit=limit, seed=seed, split=split, shuffle=shuffle)
