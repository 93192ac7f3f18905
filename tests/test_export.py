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
