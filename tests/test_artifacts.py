"""The perturbation artifact contract: validation, apply by kind, safe loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact, quantize_to_grid
from edgeattack.errors import ArtifactError


def meta(kind: str, size=(1, 2, 2)) -> ArtifactMeta:
    return ArtifactMeta(kind=kind, method="m", norm="linf", eps=0.1, input_size=size, dataset="d", split="s", seed=0)


def test_universal_applies_to_every_image_and_clips():
    art = PerturbationArtifact(np.full((1, 1, 2, 2), 0.1, np.float32), meta("universal"))
    images = np.array([[[[0.0, 0.5], [0.95, 1.0]]]], np.float32).repeat(3, axis=0)
    out = art.apply(images)
    assert out.shape == images.shape and out.max() == 1.0 and np.isclose(out[0, 0, 0, 0], 0.1)


def test_per_image_applies_by_dataset_index_not_position():
    delta = np.stack([np.full((1, 2, 2), v, np.float32) for v in (0.1, 0.2, 0.3)])
    art = PerturbationArtifact(delta, meta("per_image"), indices=np.array([10, 20, 30]))
    out = art.apply(np.zeros((2, 1, 2, 2), np.float32), indices=np.array([30, 10]))
    assert np.allclose(out[:, 0, 0, 0], [0.3, 0.1])
    assert art.covers(np.array([10, 11])).tolist() == [True, False]
    with pytest.raises(ArtifactError, match="no perturbation for 1"):
        art.apply(np.zeros((1, 1, 2, 2), np.float32), indices=np.array([11]))


def test_class_universal_uses_the_label():
    delta = np.stack([np.full((1, 2, 2), 0.1 * (k + 1), np.float32) for k in range(3)])
    art = PerturbationArtifact(delta, meta("class_universal"))
    out = art.apply(np.zeros((2, 1, 2, 2), np.float32), labels=np.array([2, 0]))
    assert np.allclose(out[:, 0, 0, 0], [0.3, 0.1])


def test_validation_errors():
    with pytest.raises(ArtifactError, match="unknown artifact kind"):
        PerturbationArtifact(np.zeros((1, 1, 2, 2)), meta("weird"))
    with pytest.raises(ArtifactError, match="disagrees with meta input_size"):
        PerturbationArtifact(np.zeros((1, 1, 3, 3)), meta("universal"))
    with pytest.raises(ArtifactError, match="one delta"):
        PerturbationArtifact(np.zeros((2, 1, 2, 2)), meta("universal"))
    with pytest.raises(ArtifactError, match="repeated"):
        PerturbationArtifact(np.zeros((2, 1, 2, 2)), meta("per_image"), indices=np.array([1, 1]))
    art = PerturbationArtifact(np.zeros((1, 1, 2, 2)), meta("universal"))
    with pytest.raises(ArtifactError, match="inputs of size"):
        art.apply(np.zeros((1, 3, 2, 2), np.float32))


def test_round_trip_and_quantized_apply(tmp_path: Path):
    rng = np.random.default_rng(0)
    art = PerturbationArtifact(rng.uniform(-0.1, 0.1, (4, 1, 2, 2)), meta("per_image"), indices=np.arange(4))
    path = art.save(tmp_path / "a")
    assert path.suffix == ".npz"
    loaded = PerturbationArtifact.load(path)
    assert np.array_equal(loaded.delta, art.delta) and loaded.meta.to_json() and loaded.meta.kind == "per_image"
    images = rng.uniform(0, 1, (4, 1, 2, 2)).astype(np.float32)
    rounded = loaded.apply(images, indices=np.arange(4), quantize=True)
    assert np.allclose(rounded * 255, np.round(rounded * 255), atol=1e-4)
    assert np.array_equal(quantize_to_grid(rounded), rounded)


def test_newer_schema_and_garbage_files(tmp_path: Path):
    doc = json.loads(meta("universal").to_json())
    doc["schema_version"] = 99
    np.savez(tmp_path / "new.npz", delta=np.zeros((1, 1, 2, 2), np.float32), meta=np.asarray(json.dumps(doc)))
    with pytest.raises(ArtifactError, match="newer"):
        PerturbationArtifact.load(tmp_path / "new.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="corrupt"):
        PerturbationArtifact.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "nometa.npz", delta=np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(ArtifactError, match="no 'meta'"):
        PerturbationArtifact.load(tmp_path / "nometa.npz")
    with pytest.raises(ArtifactError, match="does not exist"):
        PerturbationArtifact.load(tmp_path / "missing.npz")


def test_universal_replays_on_another_split_of_its_dataset_per_image_does_not(tmp_path: Path):
    """A UAP fitted on a folder's train split replays on its val split; a per-image artifact only on its own split."""
    from PIL import Image

    from edgeattack.artifacts import check_replay
    from edgeattack.data import PreprocessConfig, load_dataset

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "root" / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "root" / split / cls / "x.png")
    load = {
        split: load_dataset(str(tmp_path / "root"), split=split, preprocess=PreprocessConfig(input_size=(3, 4, 4), crop_pct=1.0))
        for split in ("train", "val")
    }
    assert load["train"].name == load["val"].name and load["train"].split == "train"

    def artifact(kind: str) -> PerturbationArtifact:
        m = ArtifactMeta(kind=kind, method="m", norm="linf", eps=0.1, input_size=(3, 4, 4),
                         dataset=load["train"].name, split="train", seed=0)
        count = 1 if kind == "universal" else 2
        return PerturbationArtifact(np.zeros((count, 3, 4, 4), np.float32), m,
                                    indices=np.arange(count) if kind == "per_image" else np.zeros(0, np.int64))

    checked = check_replay(artifact("universal"), load["val"], label="uap", input_size=(3, 4, 4), engine="e")
    assert checked.positions.tolist() == [0, 1]
    with pytest.raises(ArtifactError, match="replays only on the split it was crafted on"):
        check_replay(artifact("per_image"), load["val"], label="pgd", input_size=(3, 4, 4), engine="e")
    assert check_replay(artifact("per_image"), load["train"], label="pgd", input_size=(3, 4, 4), engine="e").skipped == 0
