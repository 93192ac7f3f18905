"""Datasets as float32 NCHW images in [0,1] with int64 labels (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeattack.data.base import ImageDataset, check_images
from edgeattack.data.digits import DIGITS_SPLITS, load_digits_dataset
from edgeattack.data.folder import load_image_folder
from edgeattack.data.lazy import FolderImages
from edgeattack.data.preprocess import PreprocessConfig, preprocess_for
from edgeattack.data.splits import ALL_SPLIT, DEFAULT_SPLIT, resolve_folder_split
from edgeattack.errors import DataError

__all__ = [
    "ALL_SPLIT",
    "DEFAULT_SPLIT",
    "DIGITS_SPLITS",
    "FolderImages",
    "ImageDataset",
    "PreprocessConfig",
    "check_images",
    "load_dataset",
    "load_digits_dataset",
    "load_image_folder",
    "preprocess_for",
]


def load_dataset(
    data: str,
    *,
    split: str = DEFAULT_SPLIT,
    seed: int = 0,
    limit: int | None = None,
    preprocess: PreprocessConfig | None = None,
    shuffle: bool = False,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> ImageDataset:
    """Open `data`: "digits" (the embedded default) or the path of an ImageFolder directory.

    Digits: `split` is train, val, test or all of the fixed seeded split, and `limit` takes its
    first images (unchanged, so recorded figures stay valid).

    A folder is either a split root, `root/<split>/<class>/<image>` (its sub-folders hold only
    folders), where `split` must name one of the splits (an unknown one is a DataError listing
    them), or a plain class folder, `root/<class>/<image>`, used whole: `split="all"`, or the
    default `"test"` (which warns once that the whole folder is used); any other split name is a
    DataError (`edgeattack.data.splits`). A plain folder is recorded as split "all".

    `class_names` / `num_classes` are the model's labels: class folders are mapped to them by
    name, and a folder that cannot be mapped is refused rather than renumbered
    (`edgeattack.data.labels`). `limit` on a folder loads a seeded class-stratified subset
    (`shuffle=True`: a seeded random one instead); `indices` stay positions in the sorted file list.
    """
    if data == "digits":
        dataset = load_digits_dataset(split, seed=seed)
        return dataset.take(limit)
    root = Path(data)
    if not root.exists():
        raise DataError(f"dataset {data!r} is neither 'digits' nor an existing folder")
    folder, recorded = resolve_folder_split(root, split)
    return load_image_folder(
        folder,
        preprocess=preprocess,
        limit=limit,
        seed=seed,
        split=recorded,
        shuffle=shuffle,
        class_names=class_names or None,
        num_classes=num_classes,
        name=f"folder:{root.resolve()}",
    )
