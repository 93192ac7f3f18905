"""scikit-learn's handwritten digits as the embedded default dataset: 32x32 RGB, fixed seeded split.

The 1,797 8x8 images (16 grey levels) ship inside scikit-learn, so nothing is downloaded. They are
scaled to [0,1], resized to 32x32 with bilinear interpolation, and repeated over three channels,
then split by a seeded stratified permutation into train / val / test.
"""

from __future__ import annotations

import functools

import numpy as np

from edgeattack.data.base import ImageDataset
from edgeattack.errors import DataError

DIGITS_SPLITS = ("train", "val", "test", "all")
DIGITS_SIZE = 32
DEFAULT_SEED = 0
_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}


@functools.lru_cache(maxsize=4)
def _digits_arrays(size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images / 16.0).astype(np.float32)
    resized = np.stack(
        [
            np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)
            for img in small
        ]
    )
    resized = np.clip(resized, 0.0, 1.0)
    rgb = np.repeat(resized[:, None, :, :], 3, axis=1)
    rgb.setflags(write=False)
    labels = bunch.target.astype(np.int64)
    labels.setflags(write=False)
    return rgb, labels


def _split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _FRACTIONS}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_train = round(len(members) * _FRACTIONS["train"])
        n_val = round(len(members) * _FRACTIONS["val"])
        parts["train"].append(members[:n_train])
        parts["val"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def load_digits_dataset(split: str = "test", *, seed: int = DEFAULT_SEED, size: int = DIGITS_SIZE) -> ImageDataset:
    """The digits split `split` ("train", "val", "test" or "all") for `seed`.

    `indices` are positions in scikit-learn's full digits array, so they stay valid whichever split
    an image is found in.
    """
    if split not in DIGITS_SPLITS:
        raise DataError(f"unknown digits split {split!r}; choose one of {', '.join(DIGITS_SPLITS)}")
    if size < 8:
        raise DataError(f"digits image size must be at least 8, got {size}")
    images, labels = _digits_arrays(size)
    if split == "all":
        chosen = np.arange(len(labels))
    else:
        chosen = _split_indices(labels, seed)[split]
    return ImageDataset(
        images=images[chosen],
        labels=labels[chosen],
        name="digits",
        split=split,
        seed=seed,
        indices=chosen,
        class_names=tuple(str(d) for d in range(10)),
    )
