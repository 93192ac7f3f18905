"""ONNX Runtime int8: static QDQ presets, their metadata, and dynamic int8's batch dependence."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edgeattack.data import load_digits_dataset
from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import read_onnx_metadata
from edgeattack.export.onnx_export import export_onnx
from edgeattack.export.parity import check_parity
from edgeattack.export.quantize import (
    calibration_subset,
    quantize_dynamic_int8,
    quantize_static_qdq,
)

N_CALIBRATION = 64




@pytest.fixture(scope="module")
def engines(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    fp32 = root / "fp32.onnx"
    export_onnx(model, fp32)
    calibration = load_digits_dataset("train")
    paths = {
        "fp32": fp32,
        "cpu": root / "qdq_cpu.onnx",
        "full": root / "qdq_full.onnx",
        "dyn": root / "dyn.onnx",
    }
    for preset in ("cpu", "full"):
        quantize_static_qdq(fp32, paths[preset], calibration, num_images=N_CALIBRATION, preset=preset)
    quantize_dynamic_int8(fp32, paths["dyn"])
    return paths


def _graph(path):
    import onnx

    return onnx.load(str(path)).graph


def _consumers(graph):
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def test_cpu_preset_quantizes_only_weight_matmuls(engines):
    graph = _graph(engines["cpu"])
    users = _consumers(graph)
    constants = {init.name for init in graph.initializer}
    ops = Counter(node.op_type for node in graph.node)
    assert ops["QuantizeLinear"] == 25  # 24 block Linear layers + the head
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert {u.op_type for u in users[node.output[0]]} == {"DequantizeLinear"}
        if node.op_type == "DequantizeLinear":
            consumers = {u.op_type for u in users[node.output[0]]}
            assert consumers <= {"MatMul", "Gemm"}, (node.name, consumers)
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        quantized = any(name in dequantized for name in node.input)
        weight = node.input[1]
        has_weight = weight in constants or (
            weight in dequantized
            and any(n.output[0] == weight and n.input[0] in constants for n in graph.node)
        )
        assert quantized == has_weight, node.name  # attention matmuls (activation x activation) stay float
    float_matmuls = [n for n in graph.node if n.op_type == "MatMul" and not set(n.input) & dequantized]
    assert len(float_matmuls) == 12  # q@k and attn@v of six blocks


def test_full_preset_quantizes_more_than_matmuls(engines):
    graph = _graph(engines["full"])
    users = _consumers(graph)
    consumers = {
        u.op_type for n in graph.node if n.op_type == "DequantizeLinear" for u in users.get(n.output[0], [])
    }
    assert {"MatMul", "Gemm"} <= consumers
    assert len(consumers - {"MatMul", "Gemm", "QuantizeLinear"}) >= 3
    producer = {out: node for node in graph.node for out in node.output}
    assert producer["logits"].op_type == "Gemm"  # the logits are not rounded to 256 levels
    meta = read_onnx_metadata(engines["full"])
    assert meta.quantization["preset"] == "full" and meta.quantization["activation_type"] == "int8"
    assert meta.quantization["activation_symmetric"] is True


def test_static_metadata_records_the_recipe(engines):
    source = read_onnx_metadata(engines["fp32"])
    meta = read_onnx_metadata(engines["cpu"])
    recipe = meta.quantization
    assert meta.precision == "int8" and not meta.batch_dependent
    assert meta.source_model == source.source_model and meta.source_sha256 == source.source_sha256
    assert meta.opset == source.opset and meta.mean == source.mean and meta.labels == source.labels
    assert recipe["method"] == "static_qdq" and recipe["format"] == "QDQ" and recipe["preset"] == "cpu"
    assert recipe["op_types"] == ["MatMul", "Gemm"]
    assert set(recipe["quantized_op_types"]) == {"MatMul", "Gemm"}
    assert recipe["per_channel"] is True
    assert recipe["calibration_method"] == "minmax"
    assert recipe["calibration_images"] == N_CALIBRATION
    assert recipe["calibration_dataset"] == "digits:train"
    assert recipe["activation_type"] == "uint8" and recipe["weight_type"] == "int8"
    assert recipe["pre_processed"] is True
    with OnnxRuntimeEngine(engines["cpu"]) as engine:
        assert engine.metadata == meta


def test_static_int8_parity(model, engines, test_set):
    report = check_parity(model, engines["cpu"], test_set, num_images=128)
    assert report.top1_agreement >= 0.95
    assert report.max_abs_logit_diff < 0.5


def test_dynamic_metadata_is_batch_dependent(engines):
    meta = read_onnx_metadata(engines["dyn"])
    assert meta.precision == "int8" and meta.batch_dependent
    assert meta.quantization["method"] == "dynamic_int8"
    assert "MatMulInteger" in meta.quantization["quantized_op_types"]


def _batches(test_set):
    image = test_set.images[:1]
    rng = np.random.default_rng(0)
    noise = rng.random((3, *image.shape[1:]), dtype=np.float32)  # widens every activation range
    return image, np.concatenate([image, test_set.images[1:4]]), np.concatenate([image, noise])


def test_dynamic_int8_depends_on_the_batch_in_raw_onnxruntime(engines, test_set):
    alone, with_digits, with_noise = _batches(test_set)
    session = ort.InferenceSession(str(engines["dyn"]), providers=["CPUExecutionProvider"])
    logits = [session.run(None, {"images": batch})[0][0] for batch in (alone, with_digits, with_noise)]
    assert np.abs(logits[0] - logits[2]).max() > 1e-4  # same image, other batch: other logits
    assert not np.array_equal(logits[1], logits[2])
    fp32 = ort.InferenceSession(str(engines["fp32"]), providers=["CPUExecutionProvider"])
    reference = [fp32.run(None, {"images": batch})[0][0] for batch in (alone, with_noise)]
    assert np.abs(reference[0] - reference[1]).max() < 1e-4  # the float model does not care


def test_engine_runs_dynamic_int8_one_image_at_a_time(engines, test_set):
    alone, with_digits, with_noise = _batches(test_set)
    with OnnxRuntimeEngine(engines["dyn"]) as engine:
        assert engine.batch_dependent
        results = [engine.infer(batch)[0] for batch in (alone, with_digits, with_noise)]
        assert engine.calls == 1 + 4 + 4  # one call per image
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_quantize_refuses_unsuitable_sources(engines, tmp_path):
    import onnx

    calibration = load_digits_dataset("val")
    with pytest.raises(ConfigError):
        quantize_static_qdq(engines["fp32"], tmp_path / "x.onnx", calibration, preset="gpu")
    with pytest.raises(ConfigError):
        quantize_static_qdq(engines["cpu"], tmp_path / "x.onnx", calibration)  # already int8
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(engines["fp32"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(EngineError):
        quantize_dynamic_int8(bare, tmp_path / "y.onnx")
    with pytest.raises(EngineError):
        quantize_dynamic_int8(tmp_path / "missing.onnx", tmp_path / "y.onnx")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_calibration_subset_is_seeded_and_in_order():
    train = load_digits_dataset("train")
    first = calibration_subset(train, 50, seed=3)
    again = calibration_subset(train, 50, seed=3)
    other = calibration_subset(train, 50, seed=4)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert not np.array_equal(first.indices, other.indices)
    assert np.all(np.diff(first.indices) > 0)
    assert len(np.unique(first.labels)) == 10
    assert calibration_subset(train, 10_000, seed=0) is train


def test_quantization_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's shape inference gives up on a token-sparse graph and then writes sym_shape_infer_temp.onnx
    and a .data file into the current directory: quantization must keep them out of the caller's."""
    from edgeattack.zoo.factory import create_model

    fp32 = tmp_path / "ats.onnx"
    export_onnx(create_model("ats_tiny_digits"), fp32)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    quantize_dynamic_int8(fp32, tmp_path / "dyn.onnx")
    assert list(here.iterdir()) == []
    assert (tmp_path / "dyn.onnx").is_file()
