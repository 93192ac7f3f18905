"""ImageFolder-style directories (`root/<class>/<image>`) with a model's preprocessing config.

This is the real-scale path (ImageNet val folders); it needs only Pillow and numpy, so it runs on a
board without torch. Images are decoded lazily, a batch at a time, with timm's exact eval
transform (`edgeattack.data.lazy`, `edgeattack.data.preprocess`). Classes are the sorted
sub-directory names, as torchvision's ImageFolder does, mapped by name to the model's own labels when they are given (`edgeattack.data.labels`); which
sub-folder is a split is `edgeattack.data.splits`' rule, and `limit` takes a seeded
class-stratified subset (`edgeattack.data.subset`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeattack.data.base import ImageDataset
from edgeattack.data.labels import folder_labels
from edgeattack.data.lazy import FolderImages
from edgeattack.data.preprocess import PreprocessConfig, preprocess_for
from edgeattack.data.splits import IMAGE_SUFFIXES
from edgeattack.data.subset import select_subset
from edgeattack.errors import DataError

__all__ = ["PreprocessConfig", "list_image_folder", "load_image_folder", "preprocess_for"]

logger = logging.getLogger(__name__)


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
    lazy: bool = True,
    name: str | None = None,
) -> ImageDataset:
    """Open an ImageFolder tree (`root/<class>/<image>`) as an ImageDataset.

    The images are lazy (`FolderImages`): listed here, decoded with `preprocess` (timm's eval
    transform) when indexed, so a whole split costs memory for its file names only; a file that
    cannot be read is a DataError naming it when it is decoded. `lazy=False` decodes them all now.

    Labels: `class_names` (the model's label list, ImageNet synsets for instance) and/or
    `num_classes` map the class folders to the model's labels by name, never renumbering a subset
    (`edgeattack.data.labels`); without either, the sorted folders are numbered 0..k-1.

    `limit` loads only that many images, chosen by `selection` (`edgeattack.data.subset`):
    "stratified" (the default: a seeded class-stratified subset), "random" (a seeded uniform
    draw; what `shuffle=True` asks for) or "first" (the first files in sorted order). `indices`
    are the positions in the sorted file list, so artifacts stay valid across runs with the same
    folder, limit and seed; `ImageDataset.selection` records the choice.

    `name` is the dataset's name as artifacts record it (default `folder:<root>`); `load_dataset`
    names a split root's splits after the root, so `train` and `val` are splits of one dataset.
    """
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
    images = FolderImages([files[p] for p in order], preprocess)
    return ImageDataset(
        images=images if lazy else np.asarray(images),
        labels=labels[order],
        name=name or f"folder:{root.resolve()}",
        split=split,
        seed=seed,
        indices=order.astype(np.int64),
        class_names=classes,
        selection=chosen,
    )
