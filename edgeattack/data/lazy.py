"""Images decoded on indexing: a folder split without holding it in memory (no torch).

`FolderImages` is the array-like an `ImageDataset` holds for an image folder: an index of files
and the model's `PreprocessConfig`. It answers `len()`, `.shape`, `.dtype`, `.ndim` at once and
decodes only what is indexed (`[int]`, `[slice]`, `[int array]`, `[bool array]`), as float32
arrays, a batch at a time on a small thread pool (Pillow releases the GIL while decoding and
resizing). Each decoded batch is checked (finite, in [0, 1]); a file that cannot be read is a
DataError naming it, raised when it is decoded. `select(positions)` is a lazy subset;
`np.asarray(images)` decodes everything (logged with its size: ImageNet val at 224x224 is 29 GB).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack.data.preprocess import PreprocessConfig
from edgeattack.errors import DataError

__all__ = ["FolderImages", "PendingBatch", "decode_workers"]

logger = logging.getLogger(__name__)

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_LARGE_BYTES = 2 * 1024**3
_CHUNK = 256


def decode_workers() -> int:
    """Threads that decode images: `EDGEATTACK_DECODE_WORKERS`, else min(8, CPU count)."""
    env = os.environ.get("EDGEATTACK_DECODE_WORKERS", "")
    if env.strip():
        try:
            return max(1, int(env))
        except ValueError:
            raise DataError(f"EDGEATTACK_DECODE_WORKERS must be an integer, got {env!r}") from None
    return max(1, min(8, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=decode_workers(), thread_name_prefix="edgeattack-decode")
        return _POOL


def _forget_pool_after_fork() -> None:
    """A forked child inherits the pool object but not its threads: it must start its own."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _decode(path: str, preprocess: PreprocessConfig) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return preprocess.apply(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


class PendingBatch:
    """A batch being decoded on the pool; `result()` waits for it and checks it."""

    def __init__(self, images: FolderImages, positions: np.ndarray) -> None:
        self._images = images
        self._positions = positions
        pool = _pool() if len(positions) > 1 else None
        self._futures: list[Future[np.ndarray]] | None = (
            [pool.submit(_decode, images.files[p], images.preprocess) for p in positions] if pool else None
        )

    def result(self) -> np.ndarray:
        out = np.empty((len(self._positions), *self._images.preprocess.input_size), dtype=np.float32)
        if self._futures is None:
            for slot, p in enumerate(self._positions):
                out[slot] = _decode(self._images.files[p], self._images.preprocess)
        else:
            try:
                for slot, future in enumerate(self._futures):
                    out[slot] = future.result()
            finally:
                for future in self._futures:
                    future.cancel()
        self._images.check(out, self._positions)
        return out


class FolderImages:
    """A lazy float32 NCHW array of image files, decoded with `preprocess` when indexed."""

    is_lazy = True
    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, files: Sequence[str | Path], preprocess: PreprocessConfig) -> None:
        self.files: tuple[str, ...] = tuple(str(f) for f in files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), *self.preprocess.input_size)  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"FolderImages({len(self)} files, shape={self.shape}, {self.preprocess})"

    def positions(self, key: Any) -> np.ndarray:
        """The positions (int64) that a first-axis `key` selects: slice, int/bool array or sequence."""
        n = len(self.files)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        pos = np.asarray(key)
        if pos.dtype == bool:
            if pos.shape != (n,):
                raise IndexError(f"boolean index of shape {pos.shape} for {n} images")
            return np.flatnonzero(pos).astype(np.int64)
        if pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        if pos.dtype.kind not in "iu" or pos.ndim != 1:
            raise IndexError(f"cannot index images with {key!r}")
        pos = pos.astype(np.int64)
        if pos.min() < -n or pos.max() >= n:
            raise IndexError(f"image position out of range for {n} images")
        return np.where(pos < 0, pos + n, pos)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            head, rest = (key[0], key[1:]) if key else (slice(None), ())
            decoded = self[head]
            return decoded[rest] if isinstance(head, (int, np.integer)) else decoded[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            n = len(self.files)
            if not -n <= int(key) < n:
                raise IndexError(f"image {int(key)} out of range for {n} images")
            return self.decode(np.asarray([int(key) % n]))[0]
        return self.decode(self.positions(key))

    def decode(self, positions: np.ndarray) -> np.ndarray:
        """The images at `positions`, decoded (in parallel) and checked."""
        return self.submit(positions).result()

    def submit(self, positions: np.ndarray) -> PendingBatch:
        """Start decoding the images at `positions` on the pool (`.result()` gives them)."""
        return PendingBatch(self, np.asarray(positions, dtype=np.int64))

    def select(self, positions: Sequence[int] | np.ndarray) -> FolderImages:
        """A lazy subset: the files at `positions` (any first-axis key), same preprocessing."""
        return FolderImages([self.files[p] for p in self.positions(positions)], self.preprocess)

    def check(self, images: np.ndarray, positions: np.ndarray) -> None:
        """DataError naming the first file whose decoded values are not finite or leave [0, 1]."""
        if images.size == 0:
            return
        flat = images.reshape(len(images), -1)
        bad = ~np.isfinite(flat).all(axis=1) | (flat.min(axis=1, initial=0.0) < 0.0) | (flat.max(axis=1, initial=0.0) > 1.0)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"image {self.files[int(positions[first])]} decoded to values that are not finite or outside [0, 1]"
            )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("lazy images cannot be viewed as an array without a copy")
        level = logging.WARNING if self.nbytes >= _LARGE_BYTES else logging.INFO
        logger.log(level, "decoding all %d images into memory (%.1f MiB)", len(self), self.nbytes / 2**20)
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, len(self), _CHUNK):
            out[start : start + _CHUNK] = self.decode(np.arange(start, min(start + _CHUNK, len(self))))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Any:
        for p in range(len(self)):
            yield self[p]
