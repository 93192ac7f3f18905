"""`evaluate` on a real ONNX engine of vit_tiny_digits, checked against plain onnxruntime + numpy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeattack import results
from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact, quantize_to_grid
from edgeattack.data import ImageDataset, load_dataset
from edgeattack.engines import Engine
from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
from edgeattack.errors import ArtifactError, EngineError
from edgeattack.evaluate import evaluate
from edgeattack.export.metadata import EngineMetadata
from edgeattack.metrics import UnstableLatencyWarning

ort = pytest.importorskip("onnxruntime")

BATCH = 16
N_IMAGES = 40
FAST = {"batch_size": BATCH, "measure_latency": False}


def export_vit_tiny_digits(path: Path) -> Path:
    """The shipped vit_tiny_digits as an ONNX engine with edgeattack metadata."""
    pytest.importorskip("torch")
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    export_onnx(create_model("vit_tiny_digits"), path)
    return path


def make_artifact(
    kind: str,
    delta: np.ndarray,
    *,
    indices: np.ndarray | None = None,
    split: str = "test",
    dataset: str = "digits",
    params: dict | None = None,
    eps: float | None = None,
) -> PerturbationArtifact:
    """An artifact of `delta`, declaring eps = its largest L-inf delta unless `eps` is given."""
    meta = ArtifactMeta(
        kind=kind,
        method="random",
        norm="linf",
        eps=float(np.abs(delta).max()) if eps is None else eps,
        input_size=tuple(delta.shape[1:]),
        dataset=dataset,
        split=split,
        seed=0,
        params=params or {},
    )
    return PerturbationArtifact(
        delta=delta.astype(np.float32),
        meta=meta,
        indices=np.zeros(0, np.int64) if indices is None else indices,
    )


def reference_predictions(onnx_path: Path, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """Top-1 with a bare onnxruntime session, same batching, no edgeattack code."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preds = [
        session.run(None, {name: np.ascontiguousarray(images[i : i + batch_size])})[0].argmax(axis=1)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(preds)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_vit_tiny_digits(tmp_path_factory.mktemp("engine") / "vit_tiny_digits.onnx")


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    return load_dataset("digits", split="test", limit=N_IMAGES)


@pytest.fixture(scope="module")
def engine(onnx_path: Path):
    with OnnxRuntimeEngine(onnx_path) as eng:
        yield eng


def universal_delta(seed: int = 0, eps: float = 0.15) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-eps, eps, (1, 3, 32, 32)).astype(np.float32)


# replay equals recomputation ------------------------------------------------------------------


def test_universal_replay_matches_bare_onnxruntime(engine, onnx_path, dataset, tmp_path):
    delta = universal_delta()
    path = make_artifact("universal", delta, split="train").save(tmp_path / "uap.npz")
    result = evaluate(engine, dataset, [path], **FAST)

    x, y = dataset.images, dataset.labels
    adv = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
    clean_pred = reference_predictions(onnx_path, x)
    adv_pred = reference_predictions(onnx_path, adv)
    correct = clean_pred == y

    assert result.clean.n_images == N_IMAGES
    assert result.clean.clean_acc == pytest.approx(correct.mean())
    (p,) = result.perturbations
    m = p.metrics
    assert p.images_evaluated == N_IMAGES and p.images_skipped == 0
    assert m.adv_acc == pytest.approx((adv_pred == y).mean())
    assert m.fooling_rate == pytest.approx((adv_pred != clean_pred).mean())
    expected_asr = (adv_pred[correct] != y[correct]).mean() if correct.any() else None
    assert m.asr == pytest.approx(expected_asr)
    diff = (adv.astype(np.float64) - x).reshape(N_IMAGES, -1)
    assert p.norms.linf_max == pytest.approx(np.abs(diff).max(axis=1).max(), rel=1e-6)
    assert p.norms.l2_median == pytest.approx(np.median(np.sqrt((diff**2).sum(axis=1))), rel=1e-6)
    assert p.artifact_sha256 and p.artifact_path == str(path)
    assert (p.kind, p.method, p.norm, p.crafted_on) == ("universal", "random", "linf", "digits:train")
    assert p.replay_latency is not None and p.replay_latency.batch_size == BATCH
    assert result.latency is None


def test_per_image_replay_on_the_images_it_covers(engine, onnx_path, dataset):
    rng = np.random.default_rng(1)
    covered = dataset.indices[::2]  # half of the images, by dataset index
    deltas = rng.uniform(-0.2, 0.2, (len(covered), 3, 32, 32)).astype(np.float32)
    artifact = make_artifact("per_image", deltas, indices=covered[::-1].copy())  # order must not matter
    deltas_by_index = dict(zip(covered[::-1].tolist(), deltas, strict=True))
    result = evaluate(engine, dataset, [artifact], quantize_inputs=True, **FAST)

    positions = np.arange(0, N_IMAGES, 2)
    x, y = dataset.images[positions], dataset.labels[positions]
    delta = np.stack([deltas_by_index[int(i)] for i in dataset.indices[positions]])
    adv = quantize_to_grid(np.clip(x + delta, 0.0, 1.0))
    clean_pred = reference_predictions(onnx_path, dataset.images)[positions]
    adv_pred = reference_predictions(onnx_path, adv)

    (p,) = result.perturbations
    assert p.images_evaluated == len(positions) and p.images_skipped == N_IMAGES - len(positions)
    assert p.artifact_path is None and p.artifact_sha256 is None
    assert p.metrics.n_images == len(positions)
    assert p.metrics.adv_acc == pytest.approx((adv_pred == y).mean())
    assert p.metrics.fooling_rate == pytest.approx((adv_pred != clean_pred).mean())
    assert p.metrics.n_clean_correct == int((clean_pred == y).sum())
    assert result.settings["quantize_inputs"] is True


def test_class_universal_and_targeted(engine, onnx_path, dataset):
    deltas = np.random.default_rng(2).uniform(-0.2, 0.2, (10, 3, 32, 32)).astype(np.float32)
    artifact = make_artifact("class_universal", deltas, params={"target": 3})
    result = evaluate(engine, dataset, [artifact], **FAST)
    adv = np.clip(dataset.images + deltas[dataset.labels], 0.0, 1.0).astype(np.float32)
    adv_pred = reference_predictions(onnx_path, adv)
    eligible = dataset.labels != 3
    (p,) = result.perturbations
    assert p.metrics.target == 3
    assert p.metrics.targeted_success == pytest.approx((adv_pred[eligible] == 3).mean())
    assert p.metrics.adv_acc == pytest.approx((adv_pred == dataset.labels).mean())


def test_engine_opened_from_a_path_with_latency_and_memory(onnx_path, dataset):
    steps: list[tuple[int, int]] = []
    small = dataset.subset(np.arange(20))
    artifact = make_artifact("universal", universal_delta())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableLatencyWarning)  # a shared 2-core box is noisy
        result = evaluate(
            onnx_path,
            small,
            [artifact],
            batch_size=8,
            latency_runs=3,
            latency_seconds=0.05,
            progress=lambda total, advance: steps.append((total, advance)),
        )
    total = steps[0][0]
    assert total == 3 + 3 + 1 and sum(a for _, a in steps) == total and steps[0][1] == 0
    lat = result.latency
    assert lat is not None and lat.batch_size == 8 and lat.runs >= 3 and lat.warmup_runs >= 10
    assert lat.throughput_ips > 0 and lat.device_compute_ms is None
    assert result.memory is not None and result.memory.baseline_rss_mib is not None
    assert result.model_size.file_size_bytes == onnx_path.stat().st_size
    assert result.model_size.file_size_mb == pytest.approx(onnx_path.stat().st_size / 1e6)  # MB = 10**6 B
    assert result.engine["providers"] == ["CPUExecutionProvider"]
    assert result.engine["backend"] == "onnxruntime"


# errors -------------------------------------------------------------------------------------


def test_per_image_artifact_from_another_split_is_an_error(engine, dataset):
    val = load_dataset("digits", split="val", limit=8)
    artifact = make_artifact("per_image", np.zeros((8, 3, 32, 32)), indices=val.indices, split="val")
    with pytest.raises(ArtifactError, match=r"crafted on digits:val.*replays only on the split it was crafted on"):
        evaluate(engine, dataset, [artifact], **FAST)


def test_engine_and_dataset_sizes_must_agree(engine):
    small = ImageDataset(images=np.zeros((2, 3, 16, 16)), labels=np.zeros(2), name="digits", split="test")
    with pytest.raises(EngineError, match=r"\(3, 32, 32\).*\(3, 16, 16\)"):
        evaluate(engine, small, **FAST)


def test_artifact_input_size_and_dataset_must_agree(engine, dataset):
    wrong_size = make_artifact("universal", np.zeros((1, 3, 16, 16)))
    with pytest.raises(ArtifactError, match=r"\(3, 16, 16\).*\(3, 32, 32\)"):
        evaluate(engine, dataset, [wrong_size], **FAST)
    other_data = make_artifact("universal", np.zeros((1, 3, 32, 32)), dataset="imagenet", split="val")
    with pytest.raises(ArtifactError, match="imagenet"):
        evaluate(engine, dataset, [other_data], **FAST)


def test_missing_artifact_file_is_an_artifact_error(engine, dataset, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        evaluate(engine, dataset, [tmp_path / "nope.npz"], **FAST)


class NanEngine(Engine):
    """An engine whose logits are NaN."""

    backend = "test"

    def __init__(self) -> None:
        super().__init__(
            "nan-engine",
            EngineMetadata(
                input_name="images",
                input_shape=("batch", 3, 32, 32),
                output_names=("logits",),
                bounds=(0.0, 1.0),
                mean=(),
                std=(),
                labels=(),
                precision="fp32",
                source_model="none",
                source_sha256="",
            ),
        )

    @property
    def providers(self) -> list[str]:
        return ["test"]

    def _activate_impl(self) -> None:
        return None

    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        logits = np.zeros((len(images), 10), dtype=np.float32)
        logits[-1, 0] = np.nan
        return {"logits": logits}


def test_nan_logits_are_an_engine_error(dataset):
    with pytest.raises(EngineError, match="NaN"):
        evaluate(NanEngine(), dataset, **FAST)


# the result document ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result(engine, dataset):
    artifact = make_artifact("universal", universal_delta())
    return evaluate(engine, dataset.subset(np.arange(16)), [artifact], **FAST)


def test_result_json_round_trip(result, tmp_path):
    path = result.save(tmp_path / "result.json")
    assert path == tmp_path / "result.json"
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == results.SCHEMA_VERSION and doc["kind"] == "evaluation"
    for name in ("clean_acc", "adv_acc", "asr", "fooling_rate", "latency", "peak_rss_delta_mib"):
        assert name in doc["definitions"]
    loaded = results.load(path)
    assert loaded.to_dict() == result.to_dict()
    assert loaded == result
    assert results.load(path).rows()[0]["asr"] == result.perturbations[0].metrics.asr


def test_result_is_never_overwritten_and_written_atomically(result, tmp_path):
    target = tmp_path / "result.json"
    target.write_text("precious")
    first = result.save(target)
    second = result.save(target)
    assert target.read_text() == "precious"
    assert first == tmp_path / "result-1.json" and second == tmp_path / "result-2.json"
    assert results.load(second).to_dict() == result.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-1.json", "result-2.json", "result.json"]
    in_dir = result.save(tmp_path)  # a directory gets a named file inside
    assert in_dir.parent == tmp_path and in_dir.suffix == ".json"


def test_a_crash_while_writing_leaves_no_file(result, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []


def test_newer_or_foreign_documents_are_refused(result, tmp_path):
    doc = result.to_dict()
    doc["schema_version"] = results.SCHEMA_VERSION + 1
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    with pytest.raises(results.ResultError, match="newer"):
        results.load(newer)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(results.ResultError, match="not an evaluation"):
        results.load(foreign)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(results.ResultError):
        results.load(broken)
