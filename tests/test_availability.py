"""Availability on deployed token-sparse engines (TUR, GFLOPs, latency, energy, ratios) and the
token-cap defence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.availability import evaluate_availability, load_availability
from edgeattack.availability_result import ENERGY_ESTIMATE_METHOD
from edgeattack.errors import ArtifactError, ConfigError
from edgeattack.metrics.energy import Meter, MeterError, WindowData

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


class FakeMeter(Meter):
    """A measuring meter without hardware: `idle_w` watts plus `mj_per_inference` per counted inference.

    After `measure_idle` the idle-subtracted energy per inference is exactly `mj_per_inference`.
    `fail` makes every window after the idle one fail, as a GPU lost mid-run does.
    """

    name = "fake"

    def __init__(self, *, idle_w: float = 5.0, mj_per_inference: float = 2.0, fail: str | None = None) -> None:
        super().__init__(min_window_s=0.0)
        self.idle_w, self.mj_per_inference, self.fail = idle_w, mj_per_inference, fail
        self.windows = 0

    def _start_impl(self) -> None:
        self.windows += 1

    def _stop_impl(self, window_s: float) -> WindowData:
        if self.fail and self.idle_power_w is not None:
            raise MeterError(self.fail)
        inferences = self._window_inferences or 0
        energy = self.idle_w * window_s + inferences * self.mj_per_inference / 1e3
        return WindowData(energy, "fake: idle watts + mJ per inference", energy_domains=("fake",))


@pytest.fixture
def no_hardware_meters(monkeypatch):
    """Every hardware meter unavailable, whatever this machine has (RAPL, NVML, Jetson rails)."""
    from edgeattack.metrics.energy import select

    monkeypatch.setattr(select, "_probe", lambda name, root, gpu: (name not in select._HARDWARE, f"fake: no {name}"))


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


def test_availability_measures_tokens_from_the_engine(ats_engine, ats_model, small, tmp_path, no_hardware_meters):
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
    assert clean.energy["measured_mj"] is None and clean.energy["meter"] is None
    assert "no energy meter works for device 'cpu'" in clean.energy["reason"] and "fake: no rapl" in clean.energy["reason"]
    assert clean.energy["estimate_method"] == ENERGY_ESTIMATE_METHOD and "estimate" in ENERGY_ESTIMATE_METHOD
    assert result.settings["energy_device"]["device"] == "cpu"  # a CPU session: the CPU's meters were tried
    saved = result.save(tmp_path / "a.json")
    assert load_availability(saved).to_dict() == json.loads(saved.read_text())


def test_engine_without_token_counts_gives_null_tur_with_reason(onnx_engines, small):
    result = evaluate_availability(onnx_engines["fp32"], small, latency_images=2, latency_rounds=1)
    assert result.clean.tur is None and result.clean.gflops is None
    assert "no token_counts output" in result.tur_reason
    assert result.clean.accuracy > 0.9


def test_per_image_artifact_covering_none_of_the_split_is_refused(ats_engine, small, test_set):
    elsewhere = test_set.indices[100:102]  # images that are not in `small`
    partial = _artifact(np.zeros((2, 3, 32, 32)), kind="per_image", indices=elsewhere)
    with pytest.raises(ArtifactError, match="covers none of the 24 images"):
        evaluate_availability(ats_engine, small, [partial], latency_images=0)


def test_partial_artifacts_replay_on_their_images_against_the_same_clean_images(ats_engine, ats_model, small, caplog):
    rng = np.random.default_rng(3)
    first = _artifact(rng.uniform(-0.1, 0.1, (8, 3, 32, 32)), kind="per_image", indices=small.indices[:8])
    middle = _artifact(rng.uniform(-0.1, 0.1, (12, 3, 32, 32)), kind="per_image", indices=small.indices[8:20])
    universal = _artifact(rng.uniform(-0.1, 0.1, (1, 3, 32, 32)))
    with caplog.at_level("WARNING"):
        result = evaluate_availability(ats_engine, small, [first, middle, universal], latency_images=6,
                                       latency_rounds=2, meter=FakeMeter(), energy_images=4,
                                       energy_window_s=0.0, energy_idle_s=0.01)
    assert "holds perturbations for 8 of the 24 images" in caplog.text and "16 are skipped" in caplog.text
    clean, a, b, u = result.passes
    assert (clean.images, a.images, b.images, u.images) == (24, 8, 12, 24)
    assert (a.skipped, b.skipped, u.skipped) == (16, 12, 0)
    assert u.clean_reference is None and clean.clean_reference is None  # the whole split: the clean pass itself
    with torch.no_grad():
        counts = ats_model.forward_counts(torch.from_numpy(small.images))[1].numpy()
    for item, rows in ((a, slice(0, 8)), (b, slice(8, 20))):
        ref = item.clean_reference
        assert ref["images"] == item.images
        assert ref["tur"] == pytest.approx(counts[rows].sum(1).mean() / (6 * 65))  # the clean TUR of *its* images
        assert item.ratios["tur"] == pytest.approx(item.tur / ref["tur"])
        assert item.ratios["gflops"] == pytest.approx(item.gflops / ref["gflops"])
        assert item.gap_closed["tur"] == pytest.approx((item.tur - ref["tur"]) / (1 - ref["tur"]))
        assert ref["latency"]["runs"] == item.latency.runs == 6  # timed on the same 6 images, interleaved
        assert item.ratios["latency_median"] == pytest.approx(item.latency.median_ms / ref["latency"]["median_ms"])
        assert item.ratios["memory"] is None or ref["memory"] is not None
        assert item.ratios["energy_estimate"] == pytest.approx(item.energy["estimate_mj"] / ref["energy"]["estimate_mj"])
        assert ref["energy"]["measured_mj"] == pytest.approx(2.0) and item.ratios["energy_measured"] == pytest.approx(1.0)
    assert a.ratios["tur"] != pytest.approx(a.tur / clean.tur)  # the whole split's clean TUR would not compare like with like
    assert u.ratios["tur"] == pytest.approx(u.tur / clean.tur)
    assert a.prediction_kept is not None and a.accuracy is not None
    doc = json.loads(json.dumps(result.to_dict()))
    assert load_availability_from(doc).passes[1].clean_reference == a.clean_reference


def load_availability_from(doc):
    from edgeattack.availability import AvailabilityPass, AvailabilityResult

    values = {k: doc.get(k) for k in AvailabilityResult.__dataclass_fields__}
    values["passes"] = tuple(AvailabilityPass.from_dict(p) for p in doc["passes"])
    return AvailabilityResult(**values)


def test_measured_energy_is_kept_apart_from_the_estimate(ats_engine, small, tmp_path):
    noise = _artifact(np.random.default_rng(0).uniform(-0.1, 0.1, (1, 3, 32, 32)))
    meter = FakeMeter(mj_per_inference=2.0)
    result = evaluate_availability(ats_engine, small, [noise], latency_images=0, meter=meter, energy_images=4,
                                   energy_window_s=0.02, energy_idle_s=0.02)
    clean, noisy = result.passes
    for item in (clean, noisy):
        energy = item.energy
        assert energy["measured_mj"] == pytest.approx(2.0, rel=1e-6) and energy["meter"] == "fake"
        assert energy["measured_basis"] == "idle-subtracted" and energy["reason"] is None
        assert energy["estimate_mj"] == pytest.approx(item.gflops * 1e9 * 4.6e-12 * 1e3)
        assert energy["estimate_mj"] != pytest.approx(energy["measured_mj"])
        assert energy["estimate_method"] == ENERGY_ESTIMATE_METHOD
    assert noisy.ratios["energy_measured"] == pytest.approx(1.0)
    assert noisy.ratios["energy_estimate"] == pytest.approx(noisy.gflops / clean.gflops)
    assert result.settings["meter"] == "fake" and meter.idle_power_w == pytest.approx(5.0)
    saved = load_availability(result.save(tmp_path / "m.json"))
    assert saved.passes[1].energy["measured_mj"] == pytest.approx(2.0, rel=1e-6)


def test_a_failed_measurement_is_null_with_its_reason_never_the_estimate(ats_engine, small):
    from edgeattack.experiments.report_data import _energy_columns
    from edgeattack.report import ReportData
    from edgeattack.report.tables import table_note, table_rows

    good = evaluate_availability(ats_engine, small, latency_images=0, meter=FakeMeter(), energy_images=4,
                                 energy_window_s=0.0, energy_idle_s=0.01).clean.energy
    lost = evaluate_availability(ats_engine, small, latency_images=0, meter=FakeMeter(fail="GPU is lost"),
                                 energy_images=4, energy_window_s=0.0, energy_idle_s=0.01).clean.energy
    assert lost["measured_mj"] is None and lost["meter"] is None and lost["measured_method"] is None
    assert "fake meter failed during the window: GPU is lost" in lost["reason"]
    assert lost["estimate_mj"] is not None and lost["measurement"]["meter"] == "fake"  # the raw reading says who failed
    rows = [dict(_energy_columns(good), engine="e", **{"pass": "clean"}), dict(_energy_columns(lost), engine="e", **{"pass": "x"})]
    assert rows[0]["energy_measured_j_per_image"] == pytest.approx(2e-3) and rows[0]["energy_meter"] == "fake"
    assert rows[1]["energy_measured_j_per_image"] is None and rows[1]["energy_meter"] is None
    assert rows[1]["energy_estimate_j_per_image"] == pytest.approx(lost["estimate_mj"] / 1e3)
    assert "GPU is lost" in rows[1]["energy_not_measured_reason"]
    data = ReportData(title="t", availability=rows)
    headers, cells = table_rows(data, "availability")
    measured, meter, estimate = (headers.index(h) for h in (
        "Energy measured (mJ/image)", "Energy meter", "Energy estimate (mJ/image, model, not measured)"))
    assert (cells[0][measured], cells[0][meter]) == ("2", "fake")
    assert (cells[1][measured], cells[1][meter]) == ("–", "none")  # not the estimate under the meter's name
    assert cells[1][estimate] == f"{lost['estimate_mj']:.3g}"
    assert "GPU is lost" in table_note(data, "availability") and "not a measurement" in table_note(data, "availability")


def test_schema_1_results_do_not_lend_a_failed_meter_its_name(tmp_path, ats_engine, small):
    result = evaluate_availability(ats_engine, small, latency_images=0)
    doc = result.to_dict()
    doc["schema_version"] = 1
    doc["passes"][0]["energy"].update(meter="nvml", measured_mj=None, reason="nvml meter failed during the window")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(doc))
    assert load_availability(path).clean.energy["meter"] is None


def test_meter_follows_the_providers_really_used(ats_engine, small, monkeypatch):
    import edgeattack.metrics.energy as energy
    from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine

    asked = []

    def fake_select(name, *, device, pci_bus_id=None, **kw):
        asked.append((name, device))
        return FakeMeter()

    monkeypatch.setattr(energy, "select_meter", fake_select)

    class OnCuda(OnnxRuntimeEngine):  # a session that really runs on the CUDA provider (device_id 0)
        providers = property(lambda self: ["CUDAExecutionProvider", "CPUExecutionProvider"])

    kw = {"latency_images": 0, "energy_images": 2, "energy_window_s": 0.0, "energy_idle_s": 0.0}
    result = evaluate_availability(OnCuda(ats_engine), small, meter="auto", **kw)
    assert asked[-1] == ("auto", "cuda:0") and result.settings["energy_device"]["device"] == "cuda:0"
    evaluate_availability(OnnxRuntimeEngine(ats_engine), small, meter="auto", **kw)
    assert asked[-1] == ("auto", "cpu")  # a CPU session (or a CUDA request that fell back): the CPU's meters
    with pytest.warns(RuntimeWarning, match="contradicts the engine, which runs on cuda:0"):
        result = evaluate_availability(OnCuda(ats_engine), small, meter="auto", device="cpu", **kw)
    assert asked[-1] == ("auto", "cpu") and result.settings["energy_device"]["source"] == "--device cpu"


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


def test_availability_cli(ats_engine, tmp_path, no_hardware_meters):
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    done = CliRunner().invoke(
        app, ["availability", "-e", str(ats_engine), "--limit", "8", "--latency-images", "2", "-o", str(tmp_path)]
    )
    assert done.exit_code == 0, done.output
    assert "tur" in done.output and "estimate, not a measurement" in done.output
    assert "measured energy: null (no energy meter works for device 'cpu'" in done.output
    assert next(tmp_path.glob("availability-*.json")).exists()


def _cli(args):
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    return CliRunner().invoke(app, ["availability", *args])


def test_availability_cli_prints_the_measurement_or_why_not(ats_engine, tmp_path, monkeypatch):
    import edgeattack.metrics.energy as energy

    monkeypatch.setattr(energy, "select_meter", lambda name, **kw: FakeMeter(mj_per_inference=3.0))
    base = ["-e", str(ats_engine), "--limit", "8", "--latency-images", "0"]
    done = _cli([*base, "-o", str(tmp_path / "m.json")])
    assert done.exit_code == 0, done.output
    assert "measured energy (clean): 3 mJ/image by the fake meter on cpu (idle-subtracted)" in done.output
    assert "null (None)" not in done.output and "estimate_mJ: estimate, not a measurement" in done.output
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["passes"][0]["energy"]["measured_mj"] == pytest.approx(3.0, rel=1e-3)
    none = _cli([*base, "--meter", "none", "-o", str(tmp_path / "n.json")])
    assert none.exit_code == 0, none.output
    assert "measured energy: null (no energy measurement was asked for" in none.output


def test_availability_cli_replays_a_partial_artifact(ats_engine, tmp_path):
    from edgeattack.data import load_dataset

    dataset = load_dataset("digits", split="test", limit=24)
    artifact = _artifact(np.random.default_rng(0).uniform(-0.1, 0.1, (8, 3, 32, 32)), kind="per_image",
                         indices=dataset.indices[4:12])
    path = artifact.save(tmp_path / "ds.npz")
    done = _cli(["-e", str(ats_engine), "--limit", "24", "-p", str(path), "--latency-images", "4",
                 "--latency-rounds", "1", "--meter", "none", "-o", str(tmp_path / "r.json")])
    assert done.exit_code == 0, done.output
    assert "8 (-16)" in done.output and "clean pass over its own images" in done.output
    doc = json.loads((tmp_path / "r.json").read_text())
    adv = doc["passes"][1]
    assert adv["images"] == 8 and adv["skipped"] == 16 and adv["clean_reference"]["images"] == 8
    assert adv["ratios"]["tur"] == pytest.approx(adv["tur"] / adv["clean_reference"]["tur"])
    other = load_dataset("digits", split="val", limit=2)
    _artifact(np.zeros((2, 3, 32, 32)), kind="per_image", indices=other.indices + 10_000).save(tmp_path / "none.npz")
    refused = _cli(["-e", str(ats_engine), "--limit", "24", "-p", str(tmp_path / "none.npz"), "-o", str(tmp_path)])
    assert refused.exit_code != 0 and "covers none of the 24 images" in refused.output
