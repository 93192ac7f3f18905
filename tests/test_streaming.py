"""Lazy image folders: the array-like API, batch-wise decoding, and memory that does not grow with the split."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeattack.data import FolderImages, ImageDataset, PreprocessConfig, load_dataset, load_image_folder
from edgeattack.errors import DataError

SMALL = PreprocessConfig(input_size=(3, 16, 16), crop_pct=0.875, interpolation="bilinear")


def _folder(root: Path, n_per_class: int, classes: tuple[str, ...] = ("a", "b", "c"), size: tuple[int, int] = (24, 20)) -> Path:
    rng = np.random.default_rng(n_per_class)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("lazy") / "val", 7)


@pytest.fixture(scope="module")
def pair(folder: Path) -> tuple[ImageDataset, ImageDataset]:
    """The same folder, lazy and decoded eagerly."""
    return load_image_folder(folder, preprocess=SMALL), load_image_folder(folder, preprocess=SMALL, lazy=False)


def test_lazy_images_behave_like_the_array(pair):
    lazy, eager = pair
    images, array = lazy.images, eager.images
    assert lazy.is_lazy and not eager.is_lazy and isinstance(images, FolderImages)
    assert len(images) == 21 and images.shape == array.shape == (21, 3, 16, 16)
    assert images.dtype == np.float32 and images.ndim == 4 and lazy.input_shape == (3, 16, 16)
    mask = np.arange(21) % 3 == 1
    keys = [3, -1, np.int64(5), slice(2, 9), slice(None, None, 4), slice(30, 40), np.array([4, 0, 20, 4]), [1, 2], mask,
            np.array([], dtype=np.int64), (slice(0, 3), 1), (2, 0, slice(0, 4))]
    for key in keys:
        got = images[key]
        assert isinstance(got, np.ndarray) and got.dtype == np.float32, key
        np.testing.assert_array_equal(got, array[key])
    np.testing.assert_array_equal(np.asarray(images), array)
    np.testing.assert_array_equal(np.array(images[2:5]), array[2:5])
    with pytest.raises(IndexError):
        images[21]
    with pytest.raises(IndexError):
        images[np.array([0, 99])]


def test_subset_take_and_positions_stay_lazy(pair):
    lazy, eager = pair
    positions = np.array([20, 3, 7])
    for part, reference in ((lazy.subset(positions), eager.subset(positions)), (lazy.take(5), eager.take(5))):
        assert part.is_lazy and len(part) == len(reference)
        np.testing.assert_array_equal(np.asarray(part.images), reference.images)
        np.testing.assert_array_equal(part.indices, reference.indices)
        np.testing.assert_array_equal(part.labels, reference.labels)
    sub = lazy.subset(positions)
    np.testing.assert_array_equal(sub.positions_of(np.array([7, 20])), [2, 0])


def test_batches_in_order_and_in_a_given_order(pair):
    lazy, eager = pair
    got = list(lazy.batches(4))
    assert [len(x) for x, _ in got] == [4, 4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), eager.images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), eager.labels)
    order = np.random.default_rng(1).permutation(21)
    for dataset in (lazy, eager):
        images = np.concatenate([x for x, _ in dataset.batches(5, positions=order)])
        labels = np.concatenate([y for _, y in dataset.batches(5, positions=order)])
        np.testing.assert_array_equal(images, eager.images[order])
        np.testing.assert_array_equal(labels, eager.labels[order])
    assert list(lazy.batches(3, positions=np.zeros(0, np.int64))) == []
    with pytest.raises(DataError, match="positions"):
        list(lazy.batches(3, positions=[0, 21]))
    with pytest.raises(DataError, match="batch size"):
        list(lazy.batches(0))


def test_bad_file_is_named_when_decoded(tmp_path: Path):
    root = _folder(tmp_path / "val", 3)
    (root / "b" / "00001.png").write_bytes(b"not an image")
    dataset = load_image_folder(root, preprocess=SMALL)  # listing does not decode
    np.asarray(dataset.images[:3])  # class a decodes fine
    with pytest.raises(DataError, match=r"cannot read image .*b/00001\.png"):
        list(dataset.batches(2))
    with pytest.raises(DataError, match=r"00001\.png"):
        dataset.images[4]


def test_decoded_values_are_checked_per_batch(pair):
    images = pair[0].images
    bad = np.zeros((2, 3, 16, 16), np.float32)
    images.check(bad, np.array([0, 1]))
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"a/00001\.png.*not finite"):
        images.check(bad, np.array([0, 1]))
    bad[1, 0, 0, 0] = 1.5
    with pytest.raises(DataError, match="outside"):
        images.check(bad, np.array([0, 1]))


def test_materializing_logs_its_size(pair, caplog):
    with caplog.at_level(logging.INFO, logger="edgeattack.data.lazy"):
        np.asarray(pair[0].images)
    assert any("decoding all 21 images" in r.message and "MiB" in r.message for r in caplog.records)


def test_load_dataset_limit_is_lazy_and_seeded(folder: Path):
    a = load_dataset(str(folder), split="all", limit=6, preprocess=SMALL, seed=3)
    b = load_dataset(str(folder), split="all", limit=6, preprocess=SMALL, seed=3)
    assert a.is_lazy and a.selection == "stratified"
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert not load_dataset("digits", limit=5).is_lazy


# peak memory does not grow with the split ------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
    from edgeattack.data import PreprocessConfig, load_image_folder
    from edgeattack.engines import Engine
    from edgeattack.evaluate import evaluate
    from edgeattack.export.metadata import EngineMetadata

    class MeanEngine(Engine):
        backend = "test"
        def __init__(self):
            super().__init__("mean-engine", EngineMetadata(
                input_name="images", input_shape=("batch", 3, 64, 64), output_names=("logits",), bounds=(0.0, 1.0),
                mean=(), std=(), labels=(), precision="fp32", source_model="none", source_sha256=""))
        @property
        def providers(self):
            return ["test"]
        def _activate_impl(self):
            return None
        def _infer_impl(self, images):
            return {"logits": images.mean(axis=(2, 3))}

    root, lazy = sys.argv[1], sys.argv[2] == "lazy"
    dataset = load_image_folder(root, preprocess=PreprocessConfig(input_size=(3, 64, 64)), lazy=lazy)
    delta = np.random.default_rng(0).uniform(-0.05, 0.05, (1, 3, 64, 64)).astype(np.float32)
    meta = ArtifactMeta(kind="universal", method="random", norm="linf", eps=0.05, input_size=(3, 64, 64),
                        dataset=dataset.name, split=dataset.split, seed=0)
    artifact = PerturbationArtifact(delta=delta, meta=meta, indices=np.zeros(0, np.int64))
    result = evaluate(MeanEngine(), dataset, [artifact], batch_size=32, measure_latency=False)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak_mib, "n": result.clean.n_images,
                      "replayed": result.perturbations[0].images_evaluated}))
    """
)


def _peak(root: Path, mode: str = "lazy") -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), mode], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_peak_rss_does_not_grow_with_the_split(tmp_path: Path):
    small = _folder(tmp_path / "small", 40, classes=("a", "b", "c"), size=(72, 56))
    large = _folder(tmp_path / "large", 400, classes=("a", "b", "c"), size=(72, 56))
    few, many = _peak(small), _peak(large)
    assert (few["n"], few["replayed"], many["n"], many["replayed"]) == (120, 120, 1200, 1200)
    # eager decoding would hold 1200 x 48 KiB = 56 MiB more for the large split
    assert many["peak_mib"] <= 1.2 * few["peak_mib"] + 6, (few, many)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_decodes_with_its_own_pool(folder: Path):
    """The decode pool's threads do not survive fork(): a child must not wait on them forever."""
    dataset = load_dataset(str(folder), split="all", preprocess=SMALL)
    expected = np.asarray(dataset.images[:4])  # starts the parent's pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: decode a batch, report, exit without running pytest's teardown
        try:
            ok = np.array_equal(np.asarray(dataset.images[:4]), expected)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung decoding images")
    assert os.read(read, 1) == b"1" and done[1] == 0
