"""Streamed per-image crafting: chunk by chunk into the artifact, independent of batching and sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner

from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.whitebox import L2PGD, MIFGSM, PGD, UAPSGD
from edgeattack.attacks.whitebox.streaming import craft_per_image
from edgeattack.cli.app import app
from edgeattack.data import load_digits_dataset
from edgeattack.distributed import Shard
from edgeattack.errors import ConfigError
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.factory import ZooModel, create_model

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def mlp() -> ZooModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    return ZooModel(net, DIGITS_CONFIG, "mlp")


@pytest.fixture(scope="module")
def dataset():
    # not starting at index 0, so dataset indices differ from positions
    return load_digits_dataset("test").subset(np.arange(7, 7 + 37))


def _loaded_rows(path) -> tuple[np.ndarray, np.ndarray]:
    artifact = PerturbationArtifact.load(path)
    return np.asarray(artifact.delta), artifact.indices


def _strip(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "wall_s"}


@pytest.mark.parametrize("cls", [PGD, L2PGD, MIFGSM])
def test_random_starts_do_not_depend_on_the_batching(mlp, dataset, cls) -> None:
    make = lambda batch: cls(eps=16 / 255 if cls is not L2PGD else 1.0, steps=3, random_start=True, batch_size=batch)  # noqa: E731
    four = make(4)(mlp, dataset)
    eight = make(8)(mlp, dataset)
    np.testing.assert_allclose(four.delta, eight.delta, atol=1e-6)
    # a chunk of the split gets the same deltas as the same images inside the whole split
    part = make(8)(mlp, dataset.subset(np.arange(10, 20)))
    np.testing.assert_allclose(part.delta, four.delta[10:20], atol=1e-6)
    # and a different seed changes them
    other = cls(eps=16 / 255 if cls is not L2PGD else 1.0, steps=3, random_start=True, seed=1)(mlp, dataset)
    assert not np.allclose(other.delta, four.delta)


@pytest.mark.parametrize("target", [None, 3])
def test_streamed_artifact_and_summary_equal_the_whole_split(mlp, dataset, tmp_path, target) -> None:
    attack = PGD(eps=8 / 255, steps=4, random_start=True, batch_size=4, quantize=True)
    whole = attack(mlp, dataset, target=target)
    calls = []
    path, summary = craft_per_image(
        attack, mlp, dataset, tmp_path / "s.npz", chunk=10, target=target,
        progress=lambda done, total: calls.append((done, total)), params={"device": "cpu"}, shard_size=16,
    )
    assert _strip(summary) == pytest.approx(_strip(whole.summary()))
    assert summary["success_rate"] == whole.success_rate
    delta, indices = _loaded_rows(path)
    np.testing.assert_array_equal(indices, dataset.indices)
    np.testing.assert_allclose(delta, whole.delta, atol=1e-6)
    assert np.array_equal(np.round(delta * 255), np.round(whole.delta * 255))
    meta = PerturbationArtifact.load(path).meta
    reference = whole.to_artifact(dataset).meta
    for key in ("success_rate", "clean_acc", "adv_acc", "targeted", "steps", "seed", "batch_size", "bounds"):
        assert meta.params[key] == pytest.approx(reference.params[key]), key
    assert meta.params["device"] == "cpu"
    if target is not None:
        assert meta.params["target"] == reference.params["target"]
    assert (meta.kind, meta.method, meta.dataset, meta.split) == ("per_image", "pgd", "digits", "test")
    assert calls[-1] == (len(dataset), len(dataset))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_streaming_holds_one_chunk(mlp, dataset, tmp_path, monkeypatch) -> None:
    seen = []
    original = type(dataset).subset

    def spy(self, positions):
        seen.append(len(positions))
        return original(self, positions)

    monkeypatch.setattr(type(dataset), "subset", spy)
    craft_per_image(PGD(eps=8 / 255, steps=2, batch_size=4), mlp, dataset, tmp_path / "c.npz")
    assert max(seen) == 16 and sum(seen) == len(dataset)  # default chunk: 4 batches


def test_failure_leaves_no_file(mlp, dataset, tmp_path) -> None:
    class Boom(PGD):
        def run(self, model, x, y, *, target):
            if int(self._row_ids[0]) > 20:
                raise RuntimeError("boom")
            return super().run(model, x, y, target=target)

    out = tmp_path / "x.npz"
    with pytest.raises(RuntimeError, match="boom"):
        craft_per_image(Boom(eps=8 / 255, steps=1, batch_size=4), mlp, dataset, out, chunk=8)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_universal_attacks_do_not_stream(mlp, dataset, tmp_path) -> None:
    with pytest.raises(ConfigError, match="universal"):
        craft_per_image(UAPSGD(eps=8 / 255), mlp, dataset, tmp_path / "u.npz")


def _merge(paths, out):
    try:
        from edgeattack.artifact_merge import merge_artifacts
    except ImportError:
        return None
    return merge_artifacts(paths, out)


def test_shards_give_the_rows_of_one_process(mlp, dataset, tmp_path) -> None:
    attack = PGD(eps=8 / 255, steps=3, random_start=True, batch_size=8)
    whole, _ = craft_per_image(attack, mlp, dataset, tmp_path / "whole.npz")
    parts = []
    for index in range(3):
        positions = Shard(index, 3).positions(len(dataset))
        path, _ = craft_per_image(attack, mlp, dataset.subset(positions), tmp_path / f"part{index}.npz")
        parts.append(path)
    rows = [_loaded_rows(p) for p in parts]
    reference_delta, reference_indices = _loaded_rows(whole)
    np.testing.assert_array_equal(np.concatenate([i for _, i in rows]), reference_indices)
    np.testing.assert_allclose(np.concatenate([d for d, _ in rows]), reference_delta, atol=1e-6)
    merged = _merge(parts, tmp_path / "merged.npz")
    if merged is not None:
        delta, indices = _loaded_rows(merged)
        np.testing.assert_array_equal(indices, reference_indices)
        np.testing.assert_allclose(delta, reference_delta, atol=1e-6)


# -- the command ------------------------------------------------------------------------------------
def _attack(*args) -> object:
    return runner.invoke(app, ["attack", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def vit():
    return create_model("vit_tiny_digits")


def test_cli_shards_and_records(tmp_path, monkeypatch) -> None:
    common = ("--method", "pgd", "--eps", "8/255", "--steps", "2", "--limit", "12", "--param", "random_start=true",
              "--device", "cpu", "--batch-size", "5")
    full = _attack(*common, "-o", tmp_path / "full.npz")
    assert full.exit_code == 0, full.output
    assert "cpu, fp32, batch 5" in full.output
    shards = []
    for index in range(2):
        result = _attack(*common, "--shard", f"{index}/2", "-o", tmp_path / f"s{index}.npz")
        assert result.exit_code == 0, result.output
        shards.append(tmp_path / f"s{index}.npz")
    meta = PerturbationArtifact.load(shards[1]).meta
    assert meta.params["shard"] == "1/2" and meta.params["device"] == "cpu"
    assert meta.params["precision"] == "fp32" and meta.params["batch_size"] == 5
    rows = [_loaded_rows(p) for p in shards]
    delta, indices = _loaded_rows(tmp_path / "full.npz")
    np.testing.assert_array_equal(np.concatenate([i for _, i in rows]), indices)
    np.testing.assert_allclose(np.concatenate([d for d, _ in rows]), delta, atol=1e-6)
    # under torchrun the rank picks the shard and the file name
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranked = _attack(*common, "-o", tmp_path / "r.npz")
    assert ranked.exit_code == 0, ranked.output
    delta_r, indices_r = _loaded_rows(tmp_path / "r.rank1-of-2.npz")
    np.testing.assert_array_equal(indices_r, rows[1][1])
    np.testing.assert_allclose(delta_r, rows[1][0], atol=1e-6)
    assert PerturbationArtifact.load(tmp_path / "r.rank1-of-2.npz").meta.params["shard"] == "1/2"


def test_cli_batch_size_option_and_errors(tmp_path) -> None:
    help_text = runner.invoke(app, ["attack", "--help"], terminal_width=200).output
    for option in ("--batch-size", "--device", "--precision", "--shard", "--pretrained", "--random-weights"):
        assert option in help_text
    both = _attack("--method", "fgsm", "--batch-size", "4", "--param", "batch_size=8", "-o", tmp_path / "a.npz")
    assert both.exit_code != 0 and "--batch-size" in both.output
    universal = _attack("--method", "uap-sgd", "--shard", "0/2", "-o", tmp_path / "u.npz")
    assert universal.exit_code != 0 and "--shard" in universal.output
    bad = _attack("--method", "fgsm", "--shard", "2/2", "-o", tmp_path / "b.npz")
    assert bad.exit_code != 0 and "shard" in bad.output
    # --param batch_size keeps working and is recorded
    ok = _attack("--method", "fgsm", "--limit", "6", "--param", "batch_size=3", "-o", tmp_path / "f.npz")
    assert ok.exit_code == 0, ok.output
    assert PerturbationArtifact.load(tmp_path / "f.npz").meta.params["batch_size"] == 3


def test_auto_batch_size() -> None:
    from edgeattack.cli.attack import auto_batch_size, rank_out_path

    assert auto_batch_size((3, 32, 32), "cpu") == 256
    assert auto_batch_size((3, 224, 224), "cpu") == 32
    assert rank_out_path(__import__("pathlib").Path("a/pgd.npz"), 0, 4).name == "pgd.rank0-of-4.npz"


def test_summary_without_eligible_images(mlp, dataset, tmp_path) -> None:
    wrong = dataclasses.replace(dataset, labels=np.full(len(dataset), 9))
    attack = PGD(eps=1 / 255, steps=1)
    whole = attack(mlp, wrong)
    _, summary = craft_per_image(attack, mlp, wrong, tmp_path / "w.npz", chunk=7)
    assert _strip(summary) == pytest.approx(_strip(whole.summary()))
