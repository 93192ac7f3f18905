"""Labels of an ImageFolder's class folders, matched to the model's label list by name.

A folder that holds a subset of a model's classes (4 of ImageNet's 1000 synsets) must keep the
model's label numbers: its folders are looked up by name in the model's labels, never renumbered
0..k-1. The rule (`folder_labels`):

* the model has label names: every folder must be one of them (a DataError names the others);
* the model has N classes without names (its labels are the placeholders "0".."N-1", or only a
  count is known): the folders are matched by name when they are all among "0".."N-1"; otherwise
  only a folder with exactly N classes is accepted, numbered in sorted order (torchvision's
  ImageFolder order, which is ImageNet's synset order); any other count is a DataError;
* no model (no names, no count): the sorted folders are numbered 0..k-1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeattack.errors import DataError, did_you_mean

__all__ = ["folder_labels", "is_placeholder_labels"]

logger = logging.getLogger(__name__)


def is_placeholder_labels(names: Sequence[str]) -> bool:
    """True for the labels "0", "1", ..., "N-1" that stand in for a model without label names."""
    return all(str(name) == str(i) for i, name in enumerate(names))


def folder_labels(
    folders: Sequence[str],
    root: Path,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(the label of each of the sorted `folders`, the dataset's class names) under the module's rule."""
    folders = tuple(folders)
    names = tuple(str(n) for n in class_names) if class_names else ()
    if names and num_classes is not None and num_classes != len(names):
        raise DataError(f"the model has {num_classes} classes but {len(names)} label names")
    if names:
        position = {name: i for i, name in enumerate(names)}
        unknown = [f for f in folders if f not in position]
        if not unknown:
            return np.asarray([position[f] for f in folders], dtype=np.int64), names
        if not is_placeholder_labels(names):
            raise DataError(
                f"{len(unknown)} of the {len(folders)} class folders of {root} are not among the model's "
                f"{len(names)} labels: {', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}"
                f"{did_you_mean(unknown[0], names)}"
            )
        num_classes = len(names)
    if num_classes is None:
        return np.arange(len(folders), dtype=np.int64), folders
    if len(folders) == num_classes:
        logger.info(
            "%s: the model's %d classes have no names; its %d class folders are numbered in sorted order",
            root,
            num_classes,
            len(folders),
        )
        return np.arange(len(folders), dtype=np.int64), folders
    raise DataError(
        f"{root} has {len(folders)} class folders but the model has {num_classes} classes without names, so "
        f"the folders cannot be matched to its labels (numbering them 0..{len(folders) - 1} would mislabel them): "
        f"use a folder with all {num_classes} classes, or a model whose labels (engine metadata `labels`) are "
        "the folder names"
    )
