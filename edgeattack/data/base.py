"""The one dataset type every part of edgeattack exchanges: float32 NCHW images in [0,1], int64 labels.

`images` is an ndarray (digits, anything built in memory) or a lazy array-like that decodes on
indexing (`edgeattack.data.lazy.FolderImages`, what image folders give): index it a batch at a time
(`images[a:b]`, `images[positions]`) or iterate `batches()`; `np.asarray(images)` decodes it all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeattack.errors import DataError


@dataclass(frozen=True)
class ImageDataset:
    """Images (in memory or decoded on indexing, `is_lazy`) and labels, with where they came from.

    `indices` are the positions of each image in its split (what per-image perturbation artifacts
    refer to); `name`, `split` and `seed` identify the split so an artifact can be checked against it.
    `selection` records how the images were chosen from the split when not all of them were:
    "stratified" (a seeded class-stratified subset, folders' `limit`), "random" (a seeded uniform
    draw), "first" (the first N, `take`); "all" or "" (not recorded) otherwise.
    """

    images: np.ndarray | Any
    """float32 NCHW: an ndarray, or a lazy array-like (`FolderImages`) that decodes when indexed."""
    labels: np.ndarray
    name: str
    split: str
    seed: int = 0
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_names: tuple[str, ...] = ()
    selection: str = ""

    def __post_init__(self) -> None:
        lazy = bool(getattr(self.images, "is_lazy", False))
        images = self.images if lazy else np.ascontiguousarray(self.images, dtype=np.float32)
        labels = np.asarray(self.labels, dtype=np.int64)
        if len(images.shape) != 4:
            raise DataError(f"{self.name}: images must be NCHW (4 dimensions), got shape {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"{self.name}: {images.shape[0]} images but labels of shape {labels.shape}"
            )
        if not lazy:  # lazy images are checked batch by batch as they are decoded
            check_images(images, what=f"dataset {self.name}:{self.split}")
        indices = np.asarray(self.indices, dtype=np.int64)
        if indices.size == 0:
            indices = np.arange(images.shape[0], dtype=np.int64)
        if indices.shape != labels.shape:
            raise DataError(f"{self.name}: indices of shape {indices.shape} for {labels.shape[0]} images")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "indices", indices)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def is_lazy(self) -> bool:
        """True when `images` decode on indexing (an image folder) rather than sit in memory."""
        return bool(getattr(self.images, "is_lazy", False))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.labels.max(initial=-1)) + 1

    @property
    def spec(self) -> str:
        """A short identifier, `name:split`, as written into artifacts and results."""
        return f"{self.name}:{self.split}"

    def subset(self, positions: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at `positions` (positions in this object, not dataset indices); lazy stays lazy."""
        pos = np.asarray(positions, dtype=np.int64)
        return ImageDataset(
            images=self.images.select(pos) if self.is_lazy else self.images[pos],
            labels=self.labels[pos],
            name=self.name,
            split=self.split,
            seed=self.seed,
            indices=self.indices[pos],
            class_names=self.class_names,
            selection=self.selection,
        )

    def take(self, limit: int | None) -> ImageDataset:
        """The first `limit` images (all of them when `limit` is None)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise DataError(f"limit must be positive, got {limit}")
        return dataclasses.replace(self.subset(np.arange(limit)), selection="first")

    def positions_of(self, indices: np.ndarray) -> np.ndarray:
        """Positions in this object of the given dataset indices; a DataError names any missing one."""
        lookup = {int(i): p for p, i in enumerate(self.indices)}
        missing = [int(i) for i in indices if int(i) not in lookup]
        if missing:
            raise DataError(
                f"{len(missing)} dataset indices are not in {self.spec} (first: {missing[:5]})"
            )
        return np.fromiter((lookup[int(i)] for i in indices), dtype=np.int64, count=len(indices))

    def batches(
        self, batch_size: int, *, positions: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels), `batch_size` at a time, in order or in the order of `positions`.

        `positions` (positions in this object, e.g. a seeded permutation for training) picks and
        orders the images without decoding the others. Lazy images are decoded batch by batch, the
        next batch on the decode pool while the caller works on this one.
        """
        if batch_size <= 0:
            raise DataError(f"batch size must be positive, got {batch_size}")
        order = None if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
        n = len(self) if order is None else len(order)
        if order is not None and n and (order.min() < 0 or order.max() >= len(self)):
            raise DataError(f"positions must lie in [0, {len(self)}), got {order.min()}..{order.max()}")
        parts = [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
        if not self.is_lazy:
            for part in parts:
                if order is None:
                    yield self.images[part], self.labels[part]
                else:
                    yield self.images[order[part]], self.labels[order[part]]
            return
        chosen = [np.arange(p.start, p.stop) if order is None else order[p] for p in parts]
        pending = self.images.submit(chosen[0]) if chosen else None
        for k, pos in enumerate(chosen):
            images = pending.result()
            pending = self.images.submit(chosen[k + 1]) if k + 1 < len(chosen) else None
            yield images, self.labels[pos]


def check_images(images: np.ndarray, *, what: str = "images", bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Raise DataError unless `images` are finite and within `bounds`."""
    if images.size == 0:
        return
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).sum())
        raise DataError(f"{what}: {bad} values are NaN or infinite")
    low, high = float(images.min()), float(images.max())
    if low < bounds[0] - 1e-6 or high > bounds[1] + 1e-6:
        raise DataError(f"{what}: values span [{low:.4g}, {high:.4g}], outside the bounds {list(bounds)}")
