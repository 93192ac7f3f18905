"""AutoAttack end to end: the CLI artifact keeps `broken_by`, shards merge with it, replay reports it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeattack import results
from edgeattack.artifact_merge import merge_artifacts
from edgeattack.artifacts import ArtifactMeta, ArtifactWriter, PerturbationArtifact
from edgeattack.cli.app import app
from edgeattack.errors import ArtifactError
from edgeattack.replay_breakdown import ReplayBreakdown, replay_breakdown

runner = CliRunner()
N = 6
TINY = ["--eps", "2/255", "--steps", "2", "--param", "n_queries=10", "--param", "n_target_classes=1", "-b", "8"]
BREAKERS = ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def craft(out: Path, *extra: str) -> PerturbationArtifact:
    invoke("attack", "-m", "autoattack", "-o", out, "--limit", N, *TINY, *extra)
    return PerturbationArtifact.load(out)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("aa") / "aa.npz"
    craft(out)
    return out


def test_cli_autoattack_artifact_keeps_a_consistent_breakdown(crafted):
    artifact = PerturbationArtifact.load(crafted)
    params = artifact.meta.params
    assert artifact.broken_by is not None and artifact.broken_by.shape == (N,)
    assert params["breakers"] == BREAKERS
    assert params["steps"] == 2 and params["n_queries"] == 10 and params["n_target_classes"] == 1
    robust = float((artifact.broken_by == -1).mean())
    assert robust == pytest.approx(params["adv_acc"])
    counts = params["broken_count"]
    assert sum(counts.values()) == N and counts["robust"] == int((artifact.broken_by == -1).sum())
    assert float((artifact.broken_by == 0).mean()) == pytest.approx(1 - params["clean_acc"])


def test_two_shard_merge_keeps_the_breakdown(crafted, tmp_path):
    parts = [craft(tmp_path / f"s{i}.npz", "--shard", f"{i}/2") for i in range(2)]
    assert all(p.broken_by is not None for p in parts)
    merged = PerturbationArtifact.load(merge_artifacts([tmp_path / "s1.npz", tmp_path / "s0.npz"], tmp_path / "m.npz"))
    whole = PerturbationArtifact.load(crafted)
    np.testing.assert_array_equal(merged.indices, whole.indices)
    np.testing.assert_array_equal(merged.broken_by, whole.broken_by)
    np.testing.assert_array_equal(np.asarray(merged.delta), np.asarray(whole.delta))
    assert merged.meta.params["broken_count"] == whole.meta.params["broken_count"]


# writer, loader and merge without torch ------------------------------------------------------


def synthetic(rows: int, *, broken_by: np.ndarray | None, start: int = 0) -> PerturbationArtifact:
    delta = np.random.default_rng(start).uniform(-2 / 255, 2 / 255, (rows, 3, 32, 32)).astype(np.float32)
    params = {"breakers": BREAKERS} if broken_by is not None else {}
    meta = ArtifactMeta(
        kind="per_image", method="autoattack", norm="linf", eps=2 / 255, input_size=(3, 32, 32),
        dataset="digits", split="test", seed=0, params=params,
    )
    return PerturbationArtifact(delta=delta, meta=meta, indices=np.arange(start, start + rows), broken_by=broken_by)


def test_writer_round_trip_and_refuses_mixed_rows(tmp_path):
    broken = np.array([1, -1, 0, 4, 2], dtype=np.int64)
    artifact = synthetic(5, broken_by=broken)
    path = artifact.save(tmp_path / "a.npz", shard_size=2)
    np.testing.assert_array_equal(PerturbationArtifact.load(path).broken_by, broken)
    assert PerturbationArtifact.load(synthetic(3, broken_by=None).save(tmp_path / "old.npz")).broken_by is None
    with ArtifactWriter(tmp_path / "mixed.npz", artifact.meta) as writer:
        writer.add(np.asarray(artifact.delta[:2]), np.arange(2), broken_by=broken[:2])
        with pytest.raises(ArtifactError, match="every add"):
            writer.add(np.asarray(artifact.delta[2:]), np.arange(2, 5))
    with ArtifactWriter(tmp_path / "bad.npz", artifact.meta) as writer, pytest.raises(ArtifactError, match="one integer"):
        writer.add(np.asarray(artifact.delta[:2]), np.arange(2), broken_by=np.zeros(3, dtype=np.int64))


def test_merge_refuses_shards_with_and_without_a_breakdown(tmp_path):
    a = synthetic(3, broken_by=np.array([1, -1, 0])).save(tmp_path / "a.npz")
    b = synthetic(3, broken_by=None, start=3)
    b = PerturbationArtifact(delta=b.delta, meta=PerturbationArtifact.load(a).meta, indices=b.indices)
    b_path = b.save(tmp_path / "b.npz")
    with pytest.raises(ArtifactError, match="broken_by"):
        merge_artifacts([a, b_path], tmp_path / "m.npz")


# replay on an engine -------------------------------------------------------------------------


def test_replay_breakdown_counts():
    broken = np.array([0, 1, 1, 2, -1, -1])
    labels = np.array([0, 1, 2, 3, 4, 5])
    adv = np.array([9, 9, 2, 9, 9, 5])  # engine: wrong on 0, 1, 3, 4
    out = replay_breakdown(broken, ["clean", "a", "b"], labels, adv)
    assert [(r.name, r.source, r.engine_broken) for r in out.rows] == [
        ("clean", 1, 1), ("a", 2, 1), ("b", 1, 1), ("robust", 2, 1)
    ]
    assert out.robust_source_broken_engine == 1 and out.broken_source_robust_engine == 1
    assert out.source_robust_acc == pytest.approx(2 / 6) and out.engine_robust_acc == pytest.approx(2 / 6)
    assert ReplayBreakdown.from_dict(json.loads(json.dumps(out.to_dict()))) == out


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_evaluate import export_vit_tiny_digits

    return export_vit_tiny_digits(tmp_path_factory.mktemp("engine") / "vit_tiny_digits.onnx")


def test_evaluate_reports_the_breakdown_on_the_engine(crafted, onnx_path, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeattack.data import load_dataset
    from edgeattack.evaluate import evaluate

    artifact = PerturbationArtifact.load(crafted)
    dataset = load_dataset("digits", split="test", limit=N)
    result = evaluate(onnx_path, dataset, [crafted], batch_size=4, measure_latency=False)
    item = result.perturbations[0]
    breakdown = item.breakdown
    assert breakdown is not None and breakdown.images == N
    assert breakdown.engine_robust_acc == pytest.approx(item.metrics.adv_acc)
    assert breakdown.source_robust_acc == pytest.approx(float((artifact.broken_by == -1).mean()))
    assert [r.name for r in breakdown.rows] == [*BREAKERS, "robust"]
    assert [r.source for r in breakdown.rows] == [artifact.meta.params["broken_count"][n] for n in [*BREAKERS, "robust"]]
    # the fp32 ONNX export is the source model: what broke it breaks the engine, and nothing more
    assert breakdown.robust_source_broken_engine == 0 and breakdown.broken_source_robust_engine == 0
    loaded = results.load(result.save(tmp_path / "r.json"))
    assert loaded.perturbations[0].breakdown == breakdown
    row = result.rows()[-1]
    assert row["aa_broken_robust"] == f"0/{breakdown.row('robust').source}"
    doc = json.loads(result.to_json())
    del doc["perturbations"][0]["breakdown"]
    assert results.EvaluationResult.from_dict(doc).perturbations[0].breakdown is None


def test_cli_evaluate_prints_the_breakdown(crafted, onnx_path, tmp_path):
    pytest.importorskip("onnxruntime")
    out = invoke("evaluate", "--engine", onnx_path, "-p", crafted, "--limit", N, "--no-latency", "-o", tmp_path).output
    assert "per-attack breakdown" in out and "robust on source, broken on engine: 0" in out
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["perturbations"][0]["breakdown"]["images"] == N
