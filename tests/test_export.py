"""ONNX export (fp32, fp16): parity with torch, metadata round trip, dynamic batch, corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgeattack.engines import open_engine
from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import METADATA_KEY, read_onnx_metadata
from edgeattack.export.onnx_export import export_onnx, write_onnx_metadata
from edgeattack.export.parity import check_parity, record_parity

N_PARITY = 128




@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    paths = {"fp32": root / "vit_fp32.onnx", "fp16": root / "vit_fp16.onnx"}
    metadata = {precision: export_onnx(model, path, precision=precision) for precision, path in paths.items()}
    return paths, metadata


def test_fp32_parity(model, exported, test_set):
    paths, _ = exported
    report = check_parity(model, paths["fp32"], test_set, num_images=N_PARITY, batch_size=64)
    assert report.n_images == N_PARITY
    assert report.top1_agreement == 1.0
    assert report.max_abs_logit_diff < 1e-3
    assert report.torch_acc == report.engine_acc
    assert report.dataset == "digits:test"


def test_fp16_parity(model, exported, test_set):
    paths, _ = exported
    report = check_parity(model, paths["fp16"], test_set, num_images=N_PARITY)
    assert report.top1_agreement >= 0.98
    assert report.max_abs_logit_diff < 0.1
    assert abs(report.torch_acc - report.engine_acc) <= 0.02


def test_metadata_round_trip_through_engine(model, exported):
    paths, metadata = exported
    for precision in ("fp32", "fp16"):
        with OnnxRuntimeEngine(paths[precision]) as engine:
            assert engine.metadata == metadata[precision]
        assert read_onnx_metadata(paths[precision]) == metadata[precision]
    meta = metadata["fp32"]
    assert meta.precision == "fp32" and metadata["fp16"].precision == "fp16"
    assert meta.input_name == "images" and meta.output_names == ("logits",)
    assert meta.input_shape == ("batch", *model.config.input_size)
    assert meta.source_model == "vit_tiny_digits"
    assert meta.source_sha256 == model.weights_sha256
    assert meta.mean == tuple(model.config.mean) and meta.std == tuple(model.config.std)
    assert meta.labels == tuple(model.config.label_names)
    assert meta.bounds == (0.0, 1.0)
    assert meta.opset == 17 and "torch" in meta.exporter
    assert not meta.batch_dependent


def test_fp16_engine_keeps_float32_interface(exported):
    import onnx

    paths, _ = exported
    graph = onnx.load(str(paths["fp16"])).graph
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == float32
    assert graph.output[0].type.tensor_type.elem_type == float32
    assert any(init.data_type == float16 for init in graph.initializer)
    assert not any(init.data_type == float32 and len(init.dims) == 2 for init in graph.initializer)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dynamic_batch_axis(exported, test_set, precision):
    paths, _ = exported
    with open_engine(paths[precision]) as engine:
        one = engine.infer(test_set.images[:1])
        seven = engine.infer(test_set.images[:7])
    assert one.shape == (1, 10) and seven.shape == (7, 10)
    assert one.dtype == np.float32 and seven.dtype == np.float32
    np.testing.assert_allclose(one[0], seven[0], atol=1e-2 if precision == "fp16" else 1e-5)


def test_record_parity_stores_report(model, exported, test_set, tmp_path):
    paths, metadata = exported
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(paths["fp32"].read_bytes())
    report = check_parity(model, copy, test_set, num_images=32, batch_size=16)
    updated = record_parity(copy, report)
    assert updated.parity == report.to_dict()
    with OnnxRuntimeEngine(copy) as engine:
        assert engine.metadata.parity == report.to_dict()
        assert engine.metadata.replace(parity={}) == metadata["fp32"]
        np.testing.assert_array_equal(
            engine.infer(test_set.images[:4]), _infer(paths["fp32"], test_set.images[:4])
        )


def test_write_onnx_metadata_replaces_the_entry(exported, tmp_path):
    import onnx

    paths, metadata = exported
    copy = tmp_path / "meta.onnx"
    copy.write_bytes(paths["fp32"].read_bytes())
    write_onnx_metadata(copy, metadata["fp32"].replace(precision="int8"))
    write_onnx_metadata(copy, metadata["fp32"].replace(precision="fp16"))
    keys = [p.key for p in onnx.load(str(copy)).metadata_props]
    assert keys.count(METADATA_KEY) == 1
    assert read_onnx_metadata(copy).precision == "fp16"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_corrupt_onnx_gives_engine_error(exported, tmp_path):
    paths, _ = exported
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(paths["fp32"].read_bytes()[:5000])
    for path in (garbage, truncated):
        with pytest.raises(EngineError):
            open_engine(path)
    with pytest.raises(EngineError):
        open_engine(tmp_path / "missing.onnx")


def test_export_rejects_bad_options(model, tmp_path):
    with pytest.raises(ConfigError):
        export_onnx(model, tmp_path / "x.onnx", precision="int4")
    with pytest.raises(ConfigError):
        export_onnx(model, tmp_path / "x.onnx", opset=9)
    assert not (tmp_path / "x.onnx").exists()


def _infer(path: Path, images: np.ndarray) -> np.ndarray:
    with open_engine(path) as engine:
        return engine.infer(images)


def test_export_leaves_the_model_mode_alone(model, tmp_path):
    assert not model.training
    export_onnx(model, tmp_path / "eval.onnx")
    assert not model.training, "export must not leave an eval model in training mode"


# -- `edgeattack export` of a 224 model: parity on images of its own size, nothing left on failure ----------
DEIT = "deit_tiny_patch16_224"


def _export_cli(*args: object) -> object:
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    return CliRunner().invoke(app, ["export", *[str(arg) for arg in args]])


def _synset_folder(root: Path) -> Path:
    """An ImageFolder of two ImageNet classes with 40x30 PNGs (resized to 224 by the model's preprocessing)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for synset in ("n01440764", "n01443537"):
        (root / synset).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / synset / f"{index}.png")
    return root


def test_export_of_a_224_model_checks_parity_on_synthetic_224_images(tmp_path):
    out = tmp_path / "engines" / "x.onnx"
    result = _export_cli(DEIT, "--random-weights", "-o", out, "--parity-images", "4")
    assert result.exit_code == 0, result.output
    assert "weights random" in result.output
    assert "synthetic 3x224x224 images" in result.output and "no accuracy" in result.output
    parity = read_onnx_metadata(out).parity
    assert parity["dataset"] == "synthetic:224x224-seed0" and parity["n_images"] == 4
    assert parity["top1_agreement"] == 1.0 and parity["torch_acc"] is None
    assert [path.name for path in out.parent.iterdir()] == ["x.onnx"]  # no staging folder left


def test_export_parity_on_an_image_folder_of_the_models_size(tmp_path):
    folder = _synset_folder(tmp_path / "imgs")
    out = tmp_path / "x.onnx"
    result = _export_cli(DEIT, "--random-weights", "-o", out, "--parity-data", folder, "--parity-images", "3")
    assert result.exit_code == 0, result.output
    parity = read_onnx_metadata(out).parity
    assert parity["dataset"] == f"folder:{folder}:all" and parity["n_images"] == 3
    assert parity["torch_acc"] is not None and parity["top1_agreement"] == 1.0
    assert "synthetic" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--precision", "int8"), "--calib-data DIR"),
        (("--parity-data", "digits"), "3x32x32 images but deit_tiny_patch16_224 takes 3x224x224"),
        (("--token-cap", "auto"), "--calib-data DIR"),
    ],
)
def test_export_of_a_224_model_refuses_digits_and_missing_calibration(tmp_path, args, fragment):
    result = _export_cli(DEIT, "--random-weights", "-o", tmp_path / "x.onnx", *args)
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_failed_parity_check_leaves_nothing_behind(tmp_path, monkeypatch):
    import edgeattack.export.pipeline as pipeline

    def failing_parity(*args, **kwargs):
        assert Path(args[1]).is_file()  # the engine was written (staged) before the check failed
        raise EngineError("parity failed on purpose")

    monkeypatch.setattr(pipeline, "check_parity", failing_parity)
    result = _export_cli(DEIT, "--random-weights", "-o", tmp_path / "x.onnx", "--parity-images", "2")
    assert result.exit_code == 2 and "parity failed on purpose" in result.output
    assert list(tmp_path.iterdir()) == []
    previous = tmp_path / "y.onnx"
    previous.write_bytes(b"an engine from an earlier run")
    result = _export_cli("vit_tiny_digits", "-o", previous, "--parity-images", "2")
    assert result.exit_code == 2
    assert previous.read_bytes() == b"an engine from an earlier run"  # replaced only after success
    assert [path.name for path in tmp_path.iterdir()] == ["y.onnx"]


def test_fp32_export_of_a_digits_model_needs_no_calibration_data_and_uses_digits(tmp_path):
    out = tmp_path / "v.onnx"
    result = _export_cli("vit_tiny_digits", "-o", out, "--parity-images", "8")
    assert result.exit_code == 0, result.output
    assert read_onnx_metadata(out).parity["dataset"] == "digits:test"


def test_synthetic_images_are_seeded_noise_and_smooth_patterns():
    from edgeattack.export.parity import synthetic_images

    first = synthetic_images((3, 64, 48), 4, seed=3)
    assert first.images.shape == (4, 3, 64, 48) and first.images.dtype == np.float32
    assert np.array_equal(first.images, synthetic_images((3, 64, 48), 4, seed=3).images)
    assert not np.array_equal(first.images, synthetic_images((3, 64, 48), 4, seed=4).images)
    assert first.images.min() >= 0.0 and first.images.max() <= 1.0 and (first.labels == -1).all()
    roughness = np.abs(np.diff(first.images, axis=-1)).mean(axis=(1, 2, 3))
    assert roughness[0] > 0.2 and roughness[1] < 0.1  # noise, then a smooth pattern
    with pytest.raises(ConfigError):
        synthetic_images((3, 8, 8), 0)


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    """The TensorRT steps of `export --target tensorrt` replaced by fakes that write a plan and its sidecar."""
    import json

    import edgeattack.engines.tensorrt_engine as trt_engine
    import edgeattack.export.tensorrt_build as trt_build
    from edgeattack.export.metadata import sidecar_path

    calls: dict[str, object] = {}
    build = {"version": "0", "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 8}, "plan_bytes": 4}

    def build_plan(onnx_path, plan_path, **_):
        calls["onnx"] = Path(onnx_path)
        assert Path(onnx_path).is_file() and Path(onnx_path).name == "x.onnx"
        Path(plan_path).write_bytes(b"plan")
        sidecar_path(plan_path).write_text(json.dumps({"source_onnx": Path(onnx_path).name}))

    def compare(plan_path, onnx_path, images):
        if calls.get("fail"):
            raise EngineError("plan differs on purpose")
        return {"images": len(images), "top1_agreement": 1.0, "max_abs_logit_diff": 0.0}

    environment = {"version": "0", "device": {"name": "fake", "compute_capability": "0.0"}}
    monkeypatch.setattr(trt_build, "check_build_environment", lambda: environment)
    monkeypatch.setattr(trt_build, "onnx_precision_for", lambda precision, env: precision)
    monkeypatch.setattr(trt_build, "build_tensorrt_engine", build_plan)
    monkeypatch.setattr(trt_build, "compare_plan_with_onnx", compare)
    monkeypatch.setattr(trt_build, "record_plan_parity", lambda plan_path, report: calls.setdefault("parity", report))
    monkeypatch.setattr(trt_engine, "read_sidecar", lambda plan: (None, build))
    return calls


def test_tensorrt_export_publishes_plan_sidecar_and_kept_onnx_only_after_success(tmp_path, fake_tensorrt):
    out = tmp_path / "x.plan"
    result = _export_cli("vit_tiny_digits", "-o", out, "--target", "tensorrt", "--keep-onnx", "--parity-images", "4")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x.onnx", "x.plan", "x.plan.json"]
    assert fake_tensorrt["onnx"].parent != tmp_path  # built from the staged ONNX, under its final name
    assert fake_tensorrt["parity"]["images"] == 4
    fake_tensorrt["fail"] = True
    again = tmp_path / "again"
    result = _export_cli("vit_tiny_digits", "-o", again / "x.plan", "--target", "tensorrt", "--keep-onnx",
                         "--parity-images", "4")
    assert result.exit_code == 2 and "plan differs on purpose" in result.output
    assert list(again.iterdir()) == []
