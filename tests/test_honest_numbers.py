"""Printed numbers mean what they say: bounded black-box success within eps only, artifacts that keep to
their declared budget, success rates over the images an attack can succeed on, attacked/total counts,
labels in the user's spelling, named units, result file names without absolute paths."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.attacks.blackbox import EngineOracle, attack_class, parse_spec, summarise, worst_case
from edgeattack.attacks.blackbox.problem import distances, project_to_ball
from edgeattack.attacks.blackbox.registry import BlackBoxSpec
from edgeattack.attacks.blackbox.result import to_artifact
from edgeattack.budget import format_eps, within_budget
from edgeattack.cli.app import app
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ArtifactError
from edgeattack.evaluate import evaluate
from edgeattack.metrics.memory import MemoryStats
from edgeattack.results import ModelSize

pytest.importorskip("onnxruntime")

runner = CliRunner()


@pytest.fixture(scope="module")
def few(test_set):
    return test_set.subset(np.arange(10))


def _artifact(delta: np.ndarray, eps: float, *, norm: str = "linf", split: str = "test") -> PerturbationArtifact:
    meta = ArtifactMeta(
        kind="universal", method="random", norm=norm, eps=eps, input_size=tuple(delta.shape[1:]),
        dataset="digits", split=split, seed=0,
    )
    return PerturbationArtifact(delta=delta.astype(np.float32), meta=meta)


# bounded black-box attacks: success only within eps ------------------------------------------------
BOUNDED = [
    ("salt_and_pepper", {"steps": 80}, "l2", 1.0),
    ("blended_noise", {"directions": 10, "steps": 20, "binary_search_steps": 4}, "linf", 4 / 255),
    ("hopskipjump", {"steps": 4, "initial_gradient_eval_steps": 20}, "l2", 0.8),
]


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize(("name", "params", "norm", "eps"), BOUNDED)
def test_minimal_attacks_in_bounded_mode_count_only_adversarials_within_eps(fp32, few, name, params, norm, eps, quantize):
    fp32.reset_counter()
    oracle = EngineOracle(fp32, len(few), budget=150, quantize=quantize)
    spec = {"norm": norm} if name == "hopskipjump" else {}
    outcome = attack_class(name)(eps=eps, **spec, **params)(oracle, few.images, few.labels)
    attacked = outcome.clean_pred == few.labels
    # every saved adversarial keeps to the budget, successful or not
    assert within_budget(distances(outcome.adversarial - outcome.clean, outcome.norm), eps).all()
    # an image counts as fooled exactly when the attack succeeded within eps (was: any adversarial found)
    fooled = outcome.adv_pred != few.labels
    np.testing.assert_array_equal(fooled[attacked], outcome.success[attacked])
    result = summarise(outcome)
    assert result.metrics.asr == pytest.approx(result.success_within_budget)
    artifact = to_artifact(outcome, indices=few.indices, dataset=few.name, split=few.split, seed=0)
    assert not artifact.over_budget()
    # the saved artifact replays to the same verdicts on the engine that found them
    replay = evaluate(fp32, few, [artifact], measure_latency=False, measure_memory=False, quantize_inputs=quantize)
    assert replay.perturbations[0].metrics.asr == pytest.approx(result.metrics.asr)


def test_hopskipjump_l2_on_the_grid_reports_the_within_eps_rate(fp32, few):
    """The reported case (L2 eps 2.0 on quantized inputs gave asr 1.00 with adversarials beyond eps), at a smaller eps."""
    fp32.reset_counter()
    oracle = EngineOracle(fp32, len(few), budget=120, quantize=True)
    outcome = attack_class("hopskipjump")(eps=0.5, norm="l2", steps=3)(oracle, few.images, few.labels)
    result = summarise(outcome)
    assert result.success_within_budget is not None and result.success_within_budget < 1.0
    assert result.metrics.asr == pytest.approx(result.success_within_budget)


def test_per_image_worst_case_honours_eps(fp32, few):
    outcomes = []
    for name, params, _norm, eps in BOUNDED[:2]:
        fp32.reset_counter()
        oracle = EngineOracle(fp32, len(few), budget=100)
        outcomes.append(attack_class(name)(eps=eps, **params)(oracle, few.images, few.labels))
    worst = worst_case(outcomes)
    attacked = outcomes[0].clean_pred == few.labels
    any_success = np.logical_or.reduce([o.success for o in outcomes])
    assert worst.metrics.asr == pytest.approx(any_success[attacked].mean())


def test_projection_to_the_ball():
    x0 = np.zeros((2, 1, 2, 2), np.float32)
    x = np.array([[[[3.0, 4.0], [0.0, 0.0]]], [[[0.1, -0.2], [0.0, 0.0]]]], np.float32)
    l2 = project_to_ball(x0, x, 1.0, "l2")
    np.testing.assert_allclose(distances(l2, "l2"), [1.0, np.sqrt(0.05)], rtol=1e-6)
    linf = project_to_ball(x0, x, 0.15, "linf")
    np.testing.assert_allclose(linf.reshape(2, -1)[:, :2], [[0.15, 0.15], [0.1, -0.15]], rtol=1e-6)
    assert project_to_ball(x0, x, None, "l2") is x


# artifacts that exceed their own budget -------------------------------------------------------------
def test_over_budget_artifact_is_refused_unless_allowed(fp32, few, onnx_engines, tmp_path):
    over = _artifact(np.full((1, 3, 32, 32), 0.5), eps=2 / 255)
    assert over.over_budget() and over.max_norm() == pytest.approx(0.5)
    path = over.save(tmp_path / "over.npz")
    with pytest.raises(ArtifactError, match=r"declares linf eps 2/255 .* deltas reach linf 0\.5"):
        evaluate(fp32, few, [path], measure_latency=False)
    allowed = evaluate(fp32, few, [path], measure_latency=False, allow_over_budget=True)
    item = allowed.perturbations[0]
    assert item.over_budget and item.delta_max_norm == pytest.approx(0.5) and item.eps == pytest.approx(2 / 255)

    args = ["evaluate", "-e", str(onnx_engines["fp32"]), "-p", str(path), "--limit", "10", "--no-latency"]
    refused = runner.invoke(app, [*args, "-o", str(tmp_path / "r1")])
    assert refused.exit_code == 2
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "2/255" in lines[0] and "0.5" in lines[0] and "--allow-over-budget" in lines[0]
    assert not (tmp_path / "r1").exists(), "nothing is written for a refused artifact"
    done = runner.invoke(app, [*args, "--allow-over-budget", "-o", str(tmp_path / "r2")])
    assert done.exit_code == 0, done.output
    assert "OVER BUDGET" in done.output
    doc = json.loads(next((tmp_path / "r2").glob("*.json")).read_text())
    assert doc["perturbations"][0]["delta_max_norm"] == pytest.approx(0.5)
    assert doc["perturbations"][0]["over_budget"] is True


def test_within_budget_artifacts_record_their_measured_norm(fp32, few):
    l2 = _artifact(np.full((1, 3, 32, 32), 0.01), eps=0.6, norm="l2")
    result = evaluate(fp32, few, [l2], measure_latency=False, measure_memory=False)
    item = result.perturbations[0]
    assert not item.over_budget and item.delta_max_norm == pytest.approx(0.01 * np.sqrt(3 * 32 * 32), rel=1e-5)
    # a float32 delta clipped at a float64 eps is within budget, not over by an ulp
    eps = 8 / 255
    exact = _artifact(np.full((1, 3, 32, 32), np.float32(eps)), eps=eps)
    assert not exact.over_budget()


def test_bundle_refuses_an_over_budget_artifact(onnx_engines, tmp_path):
    path = _artifact(np.full((1, 3, 32, 32), 0.3), eps=8 / 255).save(tmp_path / "over.npz")
    done = runner.invoke(
        app, ["bundle", "-e", str(onnx_engines["fp32"]), "-p", str(path), "--limit", "8", "-o", str(tmp_path / "b.tar")]
    )
    assert done.exit_code == 2 and "deltas reach" in done.output
    assert not (tmp_path / "b.tar").exists()


# success rates over the images an attack can succeed on -------------------------------------------
def test_white_box_success_excludes_images_wrong_before_the_attack(model, few):
    from edgeattack.attacks.whitebox import PGD

    wrong = (few.labels + 1) % 10  # every image is misclassified before the attack
    out = PGD(eps=2 / 255, steps=2)(model, few.images, wrong)
    assert out.clean_acc == 0.0
    assert not out.success.any() and out.success_rate is None and out.asr is None
    assert "undefined" in out.success_text()
    from edgeattack.cli.attack import summary_text

    text = summary_text(out.summary(), targeted=False)
    assert "success_rate=1" not in text
    assert "asr undefined: no image is classified correctly when clean" in text
    assert "success_rate undefined" in text


def test_blackbox_table_shows_attacked_over_total_and_why_asr_is_undefined(fp32, few, capsys):
    from edgeattack.cli.evaluate import print_result

    wrong = ImageDataset(
        images=few.images[:8], labels=(few.labels[:8] + 1) % 10, name=few.name, split=few.split, seed=few.seed,
        indices=few.indices[:8],
    )
    result = evaluate(fp32, wrong, blackbox=["spatial"], budget=20, measure_latency=False)
    b = result.blackbox[0]
    assert b.images_attacked == 0 and b.metrics.asr is None
    print_result(result)
    shown = capsys.readouterr().out
    assert re.search(r"spatial\s*│\s*0/8", shown), shown
    assert "undefined: 0 clean-correct" in shown
    assert "8/8" not in shown


# labels in the user's spelling ----------------------------------------------------------------------
def test_blackbox_labels_keep_the_users_spelling(fp32, few, tmp_path):
    spec = parse_spec("square:eps=8/255,target=random")
    assert spec.display == "square:eps=8/255,target=random"
    assert BlackBoxSpec("square", {"eps": 8 / 255}, target="random").display == "square:eps=8/255,target=random"
    result = evaluate(
        fp32, few.subset(np.arange(4)), blackbox=["square:eps=8/255,target=random"], budget=10,
        measure_latency=False, blackbox_dir=tmp_path,
    )
    assert result.blackbox[0].label == "square:eps=8/255,target=random"
    assert "0.0313" not in json.dumps(result.blackbox[0].label)
    assert [p.name for p in tmp_path.glob("*.npz")] == ["bb-square_eps_8_255_target_random-vit_fp32-digits-test.npz"]


def test_eps_is_shown_as_k_over_255_where_it_is_one():
    assert format_eps(8 / 255) == "8/255"
    assert format_eps(np.float32(4 / 255)) == "4/255"
    assert format_eps(0.5, "l2") == "0.5"
    assert format_eps(0.03) == "0.03"
    assert format_eps(None) == "-"


# units --------------------------------------------------------------------------------------------
def test_mb_is_ten_to_the_six_and_memory_is_in_mib(fp32, few, onnx_engines, tmp_path):
    assert ModelSize.of_bytes(2_500_000).file_size_mb == pytest.approx(2.5)
    # a result written when file_size_mb held 2**20-byte units reads back in MB
    assert ModelSize.from_dict({"file_size_bytes": 2**20, "file_size_mb": 1.0}).file_size_mb == pytest.approx(1.048576)
    old = MemoryStats.from_dict({"peak_rss_delta_mb": 3.0, "peak_rss_mb": 10.0, "baseline_rss_mb": 7.0, "method": "vmhwm"})
    assert (old.peak_rss_delta_mib, old.peak_rss_mib, old.baseline_rss_mib) == (3.0, 10.0, 7.0)
    done = runner.invoke(
        app, ["evaluate", "-e", str(onnx_engines["fp32"]), "--limit", "8", "--no-latency", "-o", str(tmp_path)]
    )
    assert done.exit_code == 0, done.output
    assert re.search(r"peak RSS delta: [-\d.]+ MiB", done.output), done.output
    size = onnx_engines["fp32"].stat().st_size / 1e6
    assert f"model file size: {size:.2f} MB (10^6 B)" in done.output
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "peak_rss_delta_mib" in doc["memory"] and "peak_rss_delta_mb" not in doc["memory"]


# result file names ----------------------------------------------------------------------------------
def test_result_file_names_never_embed_a_dataset_path(onnx_engines, tmp_path):
    from PIL import Image

    root = tmp_path / "imagenet-test"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i + 20, np.uint8)).save(root / cls / f"{i}.png")
    out = tmp_path / "results"
    done = runner.invoke(
        app,
        ["evaluate", "-e", str(onnx_engines["fp32"]), "--data", str(root), "--split", "all", "--no-latency", "-o", str(out)],
    )
    assert done.exit_code == 0, done.output
    (written,) = out.iterdir()
    assert written.name == "eval-vit_fp32-imagenet-test-all.json"
    assert str(tmp_path) not in written.name
    # --limit on a folder says, in the table and the result, which images it took
    limited = runner.invoke(
        app,
        ["evaluate", "-e", str(onnx_engines["fp32"]), "--data", str(root), "--split", "all", "--limit", "2",
         "--no-latency", "-o", str(tmp_path / "limited")],
    )
    assert limited.exit_code == 0, limited.output
    assert "2 images; a seeded class-stratified subset" in " ".join(limited.output.split())
    doc = json.loads(next((tmp_path / "limited").glob("*.json")).read_text())
    assert doc["dataset"]["selection"] == "stratified" and doc["dataset"]["n_images"] == 2


def test_availability_refuses_an_over_budget_artifact_unless_allowed(fp32, few, onnx_engines, tmp_path):
    from edgeattack.availability import evaluate_availability

    path = _artifact(np.full((1, 3, 32, 32), 0.5), eps=2 / 255).save(tmp_path / "over.npz")
    settings = {"latency_images": 2, "latency_rounds": 1, "measure_memory": False, "meter": None}
    with pytest.raises(ArtifactError, match=r"deltas reach linf 0\.5"):
        evaluate_availability(fp32, few, [path], **settings)
    result = evaluate_availability(fp32, few, [path], allow_over_budget=True, **settings)
    adversarial = result.passes[1]
    assert adversarial.over_budget and adversarial.delta_max_norm == pytest.approx(0.5)
    assert adversarial.eps == pytest.approx(2 / 255) and adversarial.norm == "linf"
    args = ["availability", "-e", str(onnx_engines["fp32"]), "-p", str(path), "--limit", "6", "--latency-images", "2",
            "--meter", "none", "-o", str(tmp_path / "r")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--allow-over-budget" in refused.output
    done = runner.invoke(app, [*args, "--allow-over-budget"])
    assert done.exit_code == 0, done.output
    assert "OVER BUDGET" in done.output
    (written,) = (tmp_path / "r").iterdir()
    assert written.name == "availability-vit_fp32-digits-test.json"


# no noise: one summary line, the rest in the log -----------------------------------------------------
def test_repeated_warnings_print_once_and_are_counted_in_one_line(tmp_path, capsys):
    import logging
    import warnings

    from edgeattack.logs import CommandLog, captured_records, replay_records

    log_path = tmp_path / "logs" / "x.log"
    with CommandLog(log_path, command="test") as log:
        for cv in (3.1, 9.7, 35.9):
            warnings.warn_explicit(f"latency is unstable: cv {cv}%", RuntimeWarning, "edgeattack/metrics/latency.py", 1)
        named = logging.getLogger("edgeattack.evaluate")
        for n in (8, 9):
            named.warning("%s holds perturbations for %d of the %d images", "a.npz", n, 24)
        with captured_records() as records:
            named.warning("quantization pre-processing failed (%s); quantizing %s as it is", "x", "m.onnx")
            logging.getLogger("onnxruntime").warning("Axis 1 is out-of-range for weight 'w' with rank 1")
        replay_records(records, "export/m/int8")
        summary = log.summary()
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 + 1, err  # the first of each direct kind only; a cell's are not printed
    assert "latency is unstable ×" not in err
    assert summary.startswith("6 warnings (")
    assert "holds perturbations for … of the … images ×2" in summary
    assert "and 1 from other libraries" in summary and summary.endswith(f"full log: {log_path}")
    text = log_path.read_text()
    assert "Axis 1 is out-of-range" in text and "[export/m/int8]" in text and "=== edgeattack test" in text


def test_without_a_terminal_long_commands_print_progress_lines(capsys):
    from edgeattack.cli.options import progress_bar

    with progress_bar("crafting", total=20) as advance:
        for _ in range(20):
            advance(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"crafting: {k}/20" for k in range(2, 21, 2)]
    with progress_bar("study", total=3, every_step=True) as advance:
        advance(1, description="study: cached a", quiet=True)
        advance(1, description="study: done b")
        advance(1, description="study: failed c")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["study: done b: 2/3", "study: failed c: 3/3"]


def test_a_qdq_export_prints_no_third_party_noise(tmp_path):
    log = tmp_path / "export.log"
    done = runner.invoke(
        app,
        ["--log-file", str(log), "export", "vit_tiny_digits", "-o", str(tmp_path / "int8.onnx"), "--precision", "int8",
         "--quantization", "static", "--preset", "full", "--calib-images", "16", "--parity-images", "16"],
    )
    assert done.exit_code == 0, done.output
    assert "WARNING:root" not in done.output and "out-of-range" not in done.output
    notes = [line for line in done.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "from other libraries" in notes[0] and str(log) in notes[0]
    assert "Axis 1 is out-of-range" in log.read_text()


def test_report_tables_say_why_an_asr_is_undefined_and_show_attacked_over_total():
    from edgeattack.report.tables import COLUMNS

    transfer = {c.key: c for c in COLUMNS["transfer"]}
    assert transfer["asr"].cell({"asr": None, "n_clean_correct": 0}) == "undefined: no clean-correct image"
    assert transfer["asr"].cell({"asr": 0.5, "n_clean_correct": 8}) == "50.0"
    blackbox = {c.key: c for c in COLUMNS["blackbox"]}
    assert blackbox["attacked"].cell({"images_attacked": 0, "images": 8}) == "0/8"
    assert blackbox["eps"].cell({"eps": 8 / 255, "norm": "linf"}) == "8/255"
    assert blackbox["attack"].cell({"attack": "square:eps=0.03137254901960784,target=random"}) == (
        "square:eps=8/255,target=random"
    )
