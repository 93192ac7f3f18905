"""The CLI through typer's CliRunner: every command on the embedded default, and bad inputs.

Bad inputs must give one line on stderr (no traceback unless --debug) and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_torch_line import make_blocker_dir, run_without_torch
from test_zoo import BAD_CHECKPOINTS, _write_bad_checkpoint
from typer.testing import CliRunner

from edgeattack.cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def fp32_engine(work: Path) -> Path:
    out = work / "fp32.onnx"
    result = invoke("export", "vit_tiny_digits", "-o", out, "--parity-images", "64")
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output
    return out


@pytest.fixture(scope="module")
def qdq_engine(work: Path) -> Path:
    out = work / "int8.onnx"
    result = invoke(
        "export", "vit_tiny_digits", "-o", out, "--precision", "int8", "--calib-images", "32", "--parity-images", "64"
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def pgd_artifact(work: Path) -> Path:
    out = work / "pgd.npz"
    result = invoke(
        "attack", "--method", "pgd", "--eps", "8/255", "--steps", "3", "--step-size", "3/255", "--limit", "32", "-o", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("models", "train", "export", "attack", "evaluate", "demo"):
        assert command in result.output


def test_models_lists_the_shipped_model():
    result = invoke("models")
    assert result.exit_code == 0
    assert "vit_tiny_digits" in result.output and "deit_small_patch16_224" in result.output


def test_evaluate_replays_an_artifact_and_writes_json(fp32_engine: Path, pgd_artifact: Path, work: Path):
    out = work / "results"
    result = invoke(
        "evaluate", "--engine", fp32_engine, "-p", pgd_artifact, "--limit", "32", "--no-latency", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "asr" in result.output and "fooling_rate" in result.output
    written = sorted(out.glob("*.json"))
    assert len(written) == 1
    doc = json.loads(written[0].read_text())
    assert doc["schema_version"] == 1 and doc["dataset"]["n_images"] == 32
    assert doc["perturbations"][0]["method"] == "pgd"
    again = invoke("evaluate", "--engine", fp32_engine, "--limit", "8", "--no-latency", "-o", out)
    assert again.exit_code == 0
    assert len(list(out.glob("*.json"))) == 2, "a second result must not overwrite the first"


def test_attack_on_the_int8_side_through_its_twin(qdq_engine: Path, work: Path):
    out = work / "fgsm-int8.npz"
    result = invoke("attack", "--model", qdq_engine, "--method", "fgsm", "--eps", "8/255", "--limit", "16", "-o", out)
    assert result.exit_code == 0, result.output
    meta = json.loads(str(np.load(out, allow_pickle=False)["meta"][()]))
    assert meta["sources"][0]["model"].endswith("+fakequant")


def test_uap_fitted_on_val_replays_on_test(fp32_engine: Path, work: Path):
    out = work / "uap.npz"
    fit = invoke(
        "attack", "--method", "uap-sgd", "--split", "val", "--eps", "16/255", "--param", "epochs=2", "-o", out
    )
    assert fit.exit_code == 0, fit.output
    result = invoke("evaluate", "--engine", fp32_engine, "-p", out, "--split", "test", "--no-latency", "-o", work / "r2")
    assert result.exit_code == 0, result.output


def test_missing_engine_file(work: Path):
    assert_one_line_error(invoke("evaluate", "--engine", work / "nope.onnx"), "does not exist")


def test_corrupt_engine_file(work: Path):
    bad = work / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf" * 10)
    assert_one_line_error(invoke("evaluate", "--engine", bad, "--no-latency"), "cannot load ONNX engine")


def test_engine_input_size_differs_from_data(monkeypatch: pytest.MonkeyPatch):
    from edgeattack.engines.torch_engine import TorchEngine
    from edgeattack.zoo.factory import create_model

    def random_deit(cls, name, **_):
        return cls(create_model(name, random_weights=True), source=name)

    monkeypatch.setattr(TorchEngine, "from_name", classmethod(random_deit))
    result = invoke("evaluate", "--engine", "deit_tiny_patch16_224", "--limit", "4", "--no-latency")
    assert_one_line_error(result, "(3, 224, 224)", "(3, 32, 32)")


def test_timm_engine_name_without_weights_is_refused():
    result = invoke("evaluate", "--engine", "deit_tiny_patch16_224", "--limit", "4", "--no-latency")
    assert_one_line_error(result, "no shipped weights", "--pretrained", "--random-weights")


def test_artifact_for_another_input_size(fp32_engine: Path, work: Path):
    from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact

    meta = ArtifactMeta(kind="universal", method="x", norm="linf", eps=0.1, input_size=(3, 16, 16),
                        dataset="digits", split="val", seed=0)
    path = PerturbationArtifact(np.zeros((1, 3, 16, 16), np.float32), meta).save(work / "small.npz")
    assert_one_line_error(invoke("evaluate", "--engine", fp32_engine, "-p", path, "--no-latency"), "(3, 16, 16)")


def test_pickle_bearing_npz_is_refused(fp32_engine: Path, work: Path):
    path = work / "pickle.npz"
    np.savez(path, delta=np.zeros((1, 3, 32, 32), np.float32), meta=np.array([{"evil": 1}], dtype=object))
    assert_one_line_error(invoke("evaluate", "--engine", fp32_engine, "-p", path, "--no-latency"), "pickle")


def test_nan_artifact_is_refused(fp32_engine: Path, work: Path, pgd_artifact: Path):
    """A schema-1 file (one float32 `delta` array) with a NaN: schema 2's writer refuses NaNs itself."""
    import json

    from edgeattack.artifacts import PerturbationArtifact

    artifact = PerturbationArtifact.load(pgd_artifact)
    delta = np.array(artifact.delta, dtype=np.float32)
    delta[0, 0, 0, 0] = np.nan
    meta = json.loads(artifact.meta.to_json())
    meta.update(schema_version=1)
    meta.pop("storage", None)
    path = work / "nan.npz"
    np.savez(path, delta=delta, indices=artifact.indices, meta=np.asarray(json.dumps(meta)))
    assert_one_line_error(invoke("evaluate", "--engine", fp32_engine, "-p", path, "--no-latency"), "NaN")


def test_unknown_model_name_suggests_close_names(work: Path):
    result = invoke("export", "vit_tiny_digit", "-o", work / "x.onnx")
    assert_one_line_error(result, "unknown model", "did you mean", "vit_tiny_digits")


def test_unknown_provider(fp32_engine: Path):
    result = invoke("evaluate", "--engine", fp32_engine, "--provider", "quantum")
    assert_one_line_error(result, "unknown or unavailable ONNX Runtime provider", "CPUExecutionProvider")


def test_unknown_attack_lists_valid_ones(work: Path):
    result = invoke("attack", "--method", "pgdd", "-o", work / "a.npz")
    assert_one_line_error(result, "unknown white-box attack", "pgd")


def test_debug_shows_the_traceback(work: Path):
    with pytest.raises(Exception, match="does not exist"):
        runner.invoke(app, ["--debug", "evaluate", "--engine", str(work / "nope.onnx")], catch_exceptions=False)


def test_cli_evaluates_onnx_without_torch(fp32_engine: Path, pgd_artifact: Path, work: Path):
    blocker = make_blocker_dir(work / "blocked")
    helped = run_without_torch(["-m", "edgeattack", "--help"], blocker)
    assert helped.returncode == 0, helped.stderr
    completed = run_without_torch(
        ["-m", "edgeattack", "evaluate", "--engine", str(fp32_engine), "-p", str(pgd_artifact),
         "--limit", "32", "--latency-seconds", "0.2", "-o", str(work / "torchless")],
        blocker,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    assert list((work / "torchless").glob("*.json"))


def test_targeted_artifact_reports_targeted_success(fp32_engine: Path, work: Path):
    out = work / "targeted.npz"
    crafted = invoke("attack", "--method", "pgd", "--target", "3", "--eps", "8/255", "--limit", "24", "-o", out)
    assert crafted.exit_code == 0, crafted.output
    result = invoke("evaluate", "--engine", fp32_engine, "-p", out, "--limit", "24", "--no-latency", "-o", work / "t")
    assert result.exit_code == 0, result.output
    doc = json.loads(next((work / "t").glob("*.json")).read_text())
    metrics = doc["perturbations"][0]["metrics"]
    assert metrics["target"] == 3 and metrics["targeted_success"] is not None and metrics["targeted_success"] > 0.5


def test_models_details_adds_size_and_gflops():
    result = invoke("models", "vit_tiny_digits*", "--details")
    assert result.exit_code == 0, result.output
    assert "GFLOPs" in result.output and "0.048" in result.output


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("kind", ["empty.pth", "truncated-zip.pth", "text.pth", "truncated.safetensors", "no-tensors.pth"])
def test_export_with_a_bad_checkpoint_exits_2_and_writes_nothing(kind: str, tmp_path: Path):
    """Issue 12: an empty .pth gave `IndexError: list index out of range` (exit 1)."""
    checkpoint = _write_bad_checkpoint(kind, tmp_path)
    out = tmp_path / "x.onnx"
    result = invoke("export", "vit_tiny_digits", "--checkpoint", checkpoint, "-o", out)
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, str(checkpoint), BAD_CHECKPOINTS[kind])
    assert len(error_lines(result)) == 1 and "IndexError" not in result.output
    assert not out.exists() and not list(tmp_path.glob("x.onnx*"))


def _digit_pngs(root: Path, classes: tuple[str, ...], per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_cli_split_typo_on_a_split_root_lists_the_splits(tmp_path: Path):
    _digit_pngs(tmp_path / "data" / "val", ("3", "7"))
    _digit_pngs(tmp_path / "data" / "train", ("3", "7"))
    result = invoke(
        "evaluate", "--engine", "vit_tiny_digits", "--data", tmp_path / "data", "--split", "vall", "--no-latency",
        "-o", tmp_path / "r",
    )
    assert result.exit_code == 2, result.output
    assert_one_line_error(result, "split 'vall'", "train, val", "did you mean: val")


def test_cli_folder_classes_are_mapped_to_the_engine_labels(tmp_path: Path):
    """A folder of digits 3 and 7 keeps labels 3 and 7 (the model's), not 0 and 1; unknown names are refused."""
    root = _digit_pngs(tmp_path / "digits-3-7", ("3", "7"))
    result = invoke("evaluate", "--engine", "vit_tiny_digits", "--data", root, "--no-latency", "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "whole folder" in result.output  # the default split on a plain class folder says what it used
    doc = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert doc["dataset"]["split"] == "all"
    pets = _digit_pngs(tmp_path / "pets", ("cat", "dog"))
    refused = invoke("evaluate", "--engine", "vit_tiny_digits", "--data", pets, "--no-latency", "-o", tmp_path / "r2")
    assert refused.exit_code == 2, refused.output
    assert_one_line_error(refused, "2 class folders", "10 classes without names")
