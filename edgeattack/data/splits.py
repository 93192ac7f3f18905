"""Which directory a split of an ImageFolder-style dataset lives in.

A folder is either

* a **split root**, `root/<split>/<class>/<image>` (ImageNet's `train/` and `val/`): its
  sub-folders hold only folders. `split` must name one of them; any other name is a DataError
  that lists the splits there are (with a did-you-mean), never a silent fallback; or
* a **plain class folder**, `root/<class>/<image>`: it has no splits, so it is used whole. Ask
  for that with the split name `all`; the commands' default split (`test`) means the same here
  and says so once with a warning, and any other split name is a DataError.

A split that exists as a folder of class folders is taken even when other sub-folders are not
splits (a `devkit/` beside `val/`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeattack.errors import DataError, did_you_mean

__all__ = ["ALL_SPLIT", "DEFAULT_SPLIT", "IMAGE_SUFFIXES", "resolve_folder_split"]

logger = logging.getLogger(__name__)

ALL_SPLIT = "all"  # a plain class folder, used whole
DEFAULT_SPLIT = "test"  # what the commands pass when --split is not given
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

_warned: set[str] = set()


def _visible_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_images(folder: Path) -> bool:
    """True when `folder` directly holds an image file (a class folder does; a split folder does not)."""
    with os.scandir(folder) as entries:
        return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in entries)


def _is_split_folder(folder: Path) -> bool:
    """A folder of class folders: at least one visible sub-folder and no images of its own."""
    with os.scandir(folder) as entries:
        has_dir = False
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                return False
            has_dir = has_dir or entry.is_dir()
    return has_dir


def resolve_folder_split(root: Path, split: str) -> tuple[Path, str]:
    """(the directory of `split`'s class folders, the split name to record) under `root`.

    See the module docstring for the rule; a plain class folder is recorded as split `all`.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    candidate = root / split
    if split.strip("./") and candidate.is_dir() and _is_split_folder(candidate):
        return candidate, split
    subdirs = _visible_dirs(root)
    if not subdirs:
        raise DataError(
            f"image folder {root} has no sub-folders (expected root/<class>/<image> or root/<split>/<class>/<image>)"
        )
    splits = [d.name for d in subdirs if _is_split_folder(d)]
    if splits and not any(_holds_images(d) for d in subdirs):
        raise DataError(
            f"split {split!r} is not in {root}: its splits are {', '.join(splits)}{did_you_mean(split, splits)}"
        )
    if split == ALL_SPLIT:
        return root, ALL_SPLIT
    if split == DEFAULT_SPLIT:
        key = str(root.resolve())
        if key not in _warned:
            _warned.add(key)
            logger.warning(
                "using the whole folder %s for the default split: it has no split sub-folders "
                "(root/<split>/<class>), only %d class folders; --split %s says so explicitly",
                root,
                len(subdirs),
                ALL_SPLIT,
            )
        return root, ALL_SPLIT
    shown = ", ".join(d.name for d in subdirs[:5]) + (", ..." if len(subdirs) > 5 else "")
    raise DataError(
        f"{root} has no split {split!r}: it is a plain class folder (root/<class>/<image>; "
        f"{len(subdirs)} classes: {shown}); use --split {ALL_SPLIT} for the whole folder"
    )
