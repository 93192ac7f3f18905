"""Datasets: the embedded digits split and ImageFolder directories, both float32 NCHW in [0,1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeattack.data import (
    ImageDataset,
    PreprocessConfig,
    load_dataset,
    load_digits_dataset,
    load_image_folder,
)
from edgeattack.errors import DataError


def test_digits_splits_are_disjoint_seeded_and_cover_everything():
    splits = {name: load_digits_dataset(name) for name in ("train", "val", "test")}
    indices = [set(s.indices.tolist()) for s in splits.values()]
    assert not (indices[0] & indices[1]) and not (indices[0] & indices[2]) and not (indices[1] & indices[2])
    assert sum(len(s) for s in splits.values()) == 1797
    again = load_digits_dataset("test")
    assert np.array_equal(again.indices, splits["test"].indices)
    assert not np.array_equal(load_digits_dataset("test", seed=1).indices, splits["test"].indices)
    test = splits["test"]
    assert test.images.dtype == np.float32 and test.images.shape[1:] == (3, 32, 32)
    assert test.labels.dtype == np.int64 and 0.0 <= test.images.min() and test.images.max() <= 1.0
    # stratified: every class is in every split
    assert all(len(np.unique(s.labels)) == 10 for s in splits.values())


def test_unknown_split_and_limit():
    with pytest.raises(DataError, match="unknown digits split"):
        load_digits_dataset("dev")
    assert len(load_dataset("digits", split="test", limit=7)) == 7


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_images_are_refused(bad: float):
    images = np.zeros((2, 3, 4, 4), np.float32)
    images[1, 0, 0, 0] = bad
    with pytest.raises(DataError, match="NaN or infinite"):
        ImageDataset(images=images, labels=np.zeros(2), name="x", split="y")


def test_out_of_bounds_images_are_refused():
    with pytest.raises(DataError, match="outside the bounds"):
        ImageDataset(images=np.full((1, 3, 2, 2), 2.0), labels=[0], name="x", split="y")


def _write_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / "val" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "val" / cls / f"{i}.png")
    return root


def test_image_folder_with_preprocessing(tmp_path: Path):
    root = _write_folder(tmp_path / "imgs")
    config = PreprocessConfig(input_size=(3, 24, 24), crop_pct=0.875, interpolation="bicubic")
    dataset = load_dataset(str(root), split="val", preprocess=config)
    assert dataset.images.shape == (6, 3, 24, 24) and dataset.images.dtype == np.float32
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1] and dataset.class_names == ("cat", "dog")
    assert 0.0 <= dataset.images.min() and dataset.images.max() <= 1.0
    # resize short side to 24/0.875 = 27, then center crop 24: compare with PIL by hand
    with Image.open(root / "val" / "cat" / "0.png") as image:
        resized = image.convert("RGB").resize((40, 27), Image.BICUBIC)
        expected = np.asarray(resized.crop((8, 1, 32, 25)), np.float32).transpose(2, 0, 1) / 255
    assert np.allclose(dataset.images[0], expected, atol=1e-6)


def test_image_folder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        load_image_folder(tmp_path / "broken")
    with pytest.raises(DataError, match="neither 'digits' nor"):
        load_dataset("no-such-dataset")
