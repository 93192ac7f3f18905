"""Availability on deployed token-sparse engines (TUR, GFLOPs, latency, energy, ratios) and the
token-cap defence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.availability import ENERGY_ESTIMATE_METHOD, evaluate_availability, load_availability
from edgeattack.errors import ArtifactError, ConfigError

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ats_model():
    from edgeattack.zoo import create_model

    return create_model("ats_tiny_digits")


@pytest.fixture(scope="module")
def small(test_set):
    return test_set.subset(np.arange(24))


@pytest.fixture(scope="module")
def ats_engine(tmp_path_factory, ats_model):
    from edgeattack.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("ats") / "ats.onnx"
    export_onnx(ats_model, path)
    return path


def _artifact(delta: np.ndarray, kind: str = "universal", indices=None) -> PerturbationArtifact:
    meta = ArtifactMeta(kind=kind, method="noise", norm="linf", eps=0.1, input_size=(3, 32, 32),
                        dataset="digits", split="test", seed=0)
    extra = {} if indices is None else {"indices": indices}
    return PerturbationArtifact(delta=delta.astype(np.float32), meta=meta, **extra)


def test_availability_measures_tokens_from_the_engine(ats_engine, ats_model, small, tmp_path):
    noise = _artifact(np.random.default_rng(0).uniform(-0.1, 0.1, (1, 3, 32, 32)))
    result = evaluate_availability(ats_engine, small, [noise], latency_images=4, latency_rounds=2, meter="auto")
    clean, noisy = result.passes
    with torch.no_grad():
        counts = ats_model.forward_counts(torch.from_numpy(small.images))[1].numpy()
    assert clean.tur == pytest.approx(counts.sum(1).mean() / (6 * 65))
    assert 0 < clean.tur < 1 and clean.tur_per_block[0] == 1.0
    assert clean.gflops < 0.0483 and clean.latency.batch_size == 1 and clean.latency.runs == 4
    assert noisy.prediction_kept is not None and clean.prediction_kept is None
    assert noisy.ratios["tur"] == pytest.approx(noisy.tur / clean.tur)
    assert noisy.gap_closed["tur"] == pytest.approx((noisy.tur - clean.tur) / (1 - clean.tur))
    assert noisy.ratios["latency_median"] > 0 and noisy.ratios["energy_estimate"] == pytest.approx(
        noisy.gflops / clean.gflops
    )
    assert clean.energy["measured_mj"] is None and "no energy meter" in clean.energy["reason"]
    assert clean.energy["estimate_method"] == ENERGY_ESTIMATE_METHOD and "estimate" in ENERGY_ESTIMATE_METHOD
    saved = result.save(tmp_path / "a.json")
    assert load_availability(saved).to_dict() == json.loads(saved.read_text())


def test_engine_without_token_counts_gives_null_tur_with_reason(onnx_engines, small):
    result = evaluate_availability(onnx_engines["fp32"], small, latency_images=2, latency_rounds=1)
    assert result.clean.tur is None and result.clean.gflops is None
    assert "no token_counts output" in result.tur_reason
    assert result.clean.accuracy > 0.9


def test_per_image_artifact_must_cover_the_split(ats_engine, small):
    partial = _artifact(np.zeros((2, 3, 32, 32)), kind="per_image", indices=small.indices[:2])
    with pytest.raises(ArtifactError, match="does not cover every image"):
        evaluate_availability(ats_engine, small, [partial], latency_images=0)


def test_token_cap_defence_bounds_counts(ats_model, small, test_set, tmp_path):
    from edgeattack.data import load_digits_dataset
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.sparsity.defence import parse_token_cap, token_cap_from_clean, with_token_cap

    caps = token_cap_from_clean(ats_model, load_digits_dataset("val").take(64), quantile=0.9)
    assert len(caps) == 6 and all(1 <= c <= 65 for c in caps) and caps[-1] < 65
    capped = with_token_cap(ats_model, caps)
    assert ats_model.net.token_cap is None, "the original stays uncapped"
    x = torch.from_numpy(small.images)
    with torch.no_grad():
        counts = capped.forward_counts(x)[1].numpy()
    assert (counts <= np.array(caps)).all()
    path = tmp_path / "capped.onnx"
    export_onnx(capped, path)
    result = evaluate_availability(path, small, latency_images=0)
    assert result.token_sparsity["token_cap"] == list(caps)
    noise = _artifact(np.random.default_rng(1).uniform(-0.1, 0.1, (1, 3, 32, 32)))
    assert evaluate_availability(path, small, [noise], latency_images=0).passes[1].tur <= sum(caps) / 390
    assert parse_token_cap("auto:0.8") == ("auto", 0.8) and parse_token_cap("40,30") == ("fixed", (40, 30))
    with pytest.raises(ConfigError, match="token-cap"):
        parse_token_cap("lots")


def test_token_cap_refuses_dense_models(model):
    from edgeattack.sparsity.defence import with_token_cap

    with pytest.raises(ConfigError, match="not token-sparse"):
        with_token_cap(model, 10)


def test_availability_cli(ats_engine, tmp_path):
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    done = CliRunner().invoke(
        app, ["availability", "-e", str(ats_engine), "--limit", "8", "--latency-images", "2", "-o", str(tmp_path)]
    )
    assert done.exit_code == 0, done.output
    assert "tur" in done.output and "estimate, not a measurement" in done.output
    assert next(tmp_path.glob("availability-*.json")).exists()
