"""Which `limit` images of a folder to load: a seeded class-stratified subset by default.

The files of a folder are sorted by class, so its first N files are its first few classes (the
first 100 of ImageNet val are two classes). `stratified_subset` instead visits the classes in a
seeded order, one image of each per round, each class's images in a seeded order, and takes the
first `limit`: every class gets `limit // classes` images or one more, the same seed gives the same
images, and a smaller limit picks a subset of a larger one's images (so an artifact crafted on
`--limit 100` replays on `--limit 200`). The positions come back sorted, as positions in the
sorted file list (what `ImageDataset.indices` and per-image artifacts refer to).
"""

from __future__ import annotations

import numpy as np

from edgeattack.errors import DataError

__all__ = ["SELECTIONS", "random_subset", "select_subset", "stratified_subset"]

SELECTIONS = ("stratified", "random", "first")


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of `limit` items of `labels`, round-robin over the classes (see the module docstring)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    rank = np.empty(len(labels), dtype=np.int64)  # position of an item in its class's seeded order
    turn = np.empty(len(labels), dtype=np.int64)  # its class's position in the seeded class order
    for slot, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        rank[members] = np.arange(len(members))
        turn[members] = slot
    order = np.lexsort((turn, rank))  # round 0 of every class, then round 1, ...
    return np.sort(order[:limit]).astype(np.int64)


def random_subset(count: int, limit: int, seed: int) -> np.ndarray:
    """Sorted positions of `limit` of `count` items, a seeded uniform draw."""
    return np.sort(np.random.default_rng(seed).permutation(count)[:limit]).astype(np.int64)


def select_subset(labels: np.ndarray, limit: int | None, seed: int, selection: str) -> tuple[np.ndarray, str]:
    """(positions, the selection used): all of them, sorted ("all"), when `limit` is None or not smaller.

    Positions are sorted, except "random" without a limit: every position in a seeded order.
    """
    count = len(labels)
    if selection not in SELECTIONS:
        raise DataError(f"unknown subset selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be positive, got {limit}")
    if limit is None and selection == "random":  # every image, in a seeded order (as `shuffle` always did)
        return np.random.default_rng(seed).permutation(count).astype(np.int64), "random order"
    if limit is None or limit >= count:
        return np.arange(count, dtype=np.int64), "all"
    if selection == "stratified":
        return stratified_subset(labels, limit, seed), selection
    if selection == "random":
        return random_subset(count, limit, seed), selection
    return np.arange(limit, dtype=np.int64), selection
