"""Datasets: the embedded digits split and ImageFolder directories, both float32 NCHW in [0,1]."""

from __future__ import annotations

import logging
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
    assert dataset.is_lazy
    everything = np.asarray(dataset.images)
    assert 0.0 <= everything.min() and everything.max() <= 1.0
    # resize short side to floor(24/0.875) = 27 (long side int(27 * 60 / 40) = 40), then center crop 24
    # with torchvision's rounding: top = round(1.5) = 2, left = round(8.0) = 8
    with Image.open(root / "val" / "cat" / "0.png") as image:
        resized = image.convert("RGB").resize((40, 27), Image.BICUBIC)
        expected = np.asarray(resized.crop((8, 2, 32, 26)), np.float32).transpose(2, 0, 1) / 255
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
    lazy = load_image_folder(tmp_path / "broken")  # listed now, decoded when indexed
    with pytest.raises(DataError, match=r"cannot read image .*x\.png"):
        lazy.images[0]
    with pytest.raises(DataError, match="cannot read image"):
        load_image_folder(tmp_path / "broken", lazy=False)
    with pytest.raises(DataError, match="neither 'digits' nor"):
        load_dataset("no-such-dataset")


# issue 12: splits, labels by name, stratified --limit -----------------------------------------------


def _pngs(root: Path, classes: tuple[str, ...], per_class: int = 2, size: int = 16) -> Path:
    rng = np.random.default_rng(len(classes) * 100 + per_class)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / cls / f"{i:02d}.png")
    return root


SMALL = PreprocessConfig(input_size=(3, 8, 8), crop_pct=1.0, interpolation="bilinear")


@pytest.fixture
def edgeattack_log(caplog: pytest.LogCaptureFixture):
    """caplog on the `edgeattack` logger itself (the CLI's logging setup may stop it from propagating)."""
    logger = logging.getLogger("edgeattack")
    saved = (logger.level, logger.propagate)
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(saved[0])
    logger.propagate = saved[1]


def test_unknown_split_of_a_split_root_lists_the_splits(tmp_path: Path):
    """Before: `--split vall` silently used root itself, treating train/ and val/ as two classes."""
    _pngs(tmp_path / "train", ("a", "b"))
    _pngs(tmp_path / "val", ("a", "b"))
    assert load_dataset(str(tmp_path), split="val", preprocess=SMALL).split == "val"
    with pytest.raises(DataError, match=r"split 'vall' is not in .*: its splits are train, val \(did you mean: val\?\)"):
        load_dataset(str(tmp_path), split="vall", preprocess=SMALL)
    with pytest.raises(DataError, match="its splits are train, val"):
        load_dataset(str(tmp_path), preprocess=SMALL)  # the default split 'test' is not there either
    with pytest.raises(DataError, match="its splits are train, val"):
        load_dataset(str(tmp_path), split="all", preprocess=SMALL)


def test_a_split_beside_other_folders_is_found(tmp_path: Path):
    _pngs(tmp_path / "val", ("a", "b"))
    (tmp_path / "devkit").mkdir()
    (tmp_path / "devkit" / "readme.txt").write_text("not images")
    assert len(load_dataset(str(tmp_path), split="val", preprocess=SMALL)) == 4


def test_plain_class_folder_is_used_whole_only_when_asked(tmp_path: Path, edgeattack_log: pytest.LogCaptureFixture):
    """Before: any split name on a folder without split sub-folders silently used the whole folder."""
    root = _pngs(tmp_path / "plain", ("a", "b", "c"))
    whole = load_dataset(str(root), split="all", preprocess=SMALL)
    assert len(whole) == 6 and whole.split == "all" and whole.class_names == ("a", "b", "c")
    default = load_dataset(str(root), preprocess=SMALL)  # the commands' default split, "test"
    again = load_dataset(str(root), split="test", preprocess=SMALL)
    assert default.split == again.split == "all" and len(default) == 6
    warned = [r for r in edgeattack_log.records if "whole folder" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING"  # said once
    with pytest.raises(DataError, match=r"has no split 'val': it is a plain class folder .*3 classes: a, b, c.*--split all"):
        load_dataset(str(root), split="val", preprocess=SMALL)


def test_a_subset_of_the_model_classes_keeps_the_model_labels(tmp_path: Path):
    """Before: with class_names=None, 4 synset folders of a 1000-class model became labels 0..3."""
    synsets = tuple(f"n{i:08d}" for i in range(1000))
    chosen = (synsets[3], synsets[10], synsets[500], synsets[999])
    root = _pngs(tmp_path / "imagenet-4", chosen)
    dataset = load_dataset(str(root), split="all", preprocess=SMALL, class_names=synsets)
    assert dataset.labels.tolist() == [3, 3, 10, 10, 500, 500, 999, 999]
    assert dataset.class_names == synsets and dataset.num_classes == 1000
    with pytest.raises(DataError, match=r"1 of the 2 class folders .* not among the model's 1000 labels: cat"):
        load_dataset(str(_pngs(tmp_path / "mixed", (synsets[0], "cat"))), split="all", class_names=synsets)


def test_unnamed_model_classes_need_every_class_folder(tmp_path: Path):
    """A model with N classes and no names (labels "0".."N-1", timm's DeiT): only N folders can be numbered."""
    placeholders = tuple(str(i) for i in range(4))
    four = _pngs(tmp_path / "four", ("w", "x", "y", "z"))
    dataset = load_dataset(str(four), split="all", preprocess=SMALL, class_names=placeholders)
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    two = _pngs(tmp_path / "two", ("w", "x"))
    with pytest.raises(DataError, match="2 class folders but the model has 4 classes without names"):
        load_dataset(str(two), split="all", preprocess=SMALL, class_names=placeholders)
    with pytest.raises(DataError, match="2 class folders but the model has 4 classes without names"):
        load_image_folder(two, preprocess=SMALL, num_classes=4)
    # folders named like the placeholder labels are matched by name ("digits" folders 1 and 3)
    digits = load_dataset(str(_pngs(tmp_path / "d", ("1", "3"))), split="all", preprocess=SMALL, class_names=placeholders)
    assert digits.labels.tolist() == [1, 1, 3, 3]
    # without a model, the sorted folders are numbered as torchvision's ImageFolder does
    assert load_image_folder(two, preprocess=SMALL).labels.tolist() == [0, 0, 1, 1]


def test_limit_on_a_folder_is_a_seeded_class_stratified_subset(tmp_path: Path, edgeattack_log: pytest.LogCaptureFixture):
    """Before: limit=6 took the first 6 sorted files, i.e. 5 of class a and 1 of class b."""
    root = _pngs(tmp_path / "three", ("a", "b", "c"), per_class=5)
    first = load_dataset(str(root), split="all", limit=6, seed=0, preprocess=SMALL)
    assert np.bincount(first.labels, minlength=3).tolist() == [2, 2, 2]
    assert first.indices.tolist() == sorted(first.indices.tolist()) and first.selection == "stratified"
    said = "seeded class-stratified subset of 6 of 15 images (seed 0, 3 classes)"
    assert any(said in r.getMessage() for r in edgeattack_log.records)
    again = load_dataset(str(root), split="all", limit=6, seed=0, preprocess=SMALL)
    assert np.array_equal(again.indices, first.indices) and np.array_equal(again.images, first.images)
    other = load_dataset(str(root), split="all", limit=6, seed=1, preprocess=SMALL)
    assert not np.array_equal(other.indices, first.indices)
    assert np.bincount(other.labels, minlength=3).tolist() == [2, 2, 2]
    # a smaller limit picks a subset of a larger one's images (artifacts of --limit 4 replay on --limit 6)
    four = load_dataset(str(root), split="all", limit=4, seed=0, preprocess=SMALL)
    assert set(four.indices.tolist()) <= set(first.indices.tolist())
    # the indices are positions in the sorted file list: the image at index i is that file
    whole = load_dataset(str(root), split="all", preprocess=SMALL)
    assert whole.selection == "all"
    assert np.array_equal(whole.images[first.indices], first.images)
    assert np.array_equal(whole.labels[first.indices], first.labels)
    # shuffle keeps its seeded uniform draw; digits keeps its first N
    assert load_dataset(str(root), split="all", limit=6, shuffle=True, preprocess=SMALL).selection == "random"
    digits = load_dataset("digits", split="test", limit=7)
    assert np.array_equal(digits.indices, load_digits_dataset("test").indices[:7]) and digits.selection == "first"


def test_stratified_subset_with_uneven_classes():
    """A class that runs out drops from the rounds; the others fill the limit."""
    from edgeattack.data.subset import select_subset, stratified_subset

    labels = np.array([0] * 10 + [1] * 2 + [2] * 6)
    picked = stratified_subset(labels, 9, seed=3)
    assert len(np.unique(picked)) == 9
    assert sorted(np.bincount(labels[picked], minlength=3).tolist()) == [2, 3, 4]
    assert np.bincount(labels[picked], minlength=3)[1] == 2
    with pytest.raises(DataError, match="limit must be positive"):
        select_subset(labels, 0, 0, "stratified")
