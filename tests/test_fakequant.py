"""The fake-quant twin of a static QDQ engine: mapping, agreement with ONNX Runtime int8, gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgeattack.compress.fakequant import (
    FakeQuantLinear,
    FakeQuantTwin,
    fake_quantize,
    map_linears,
    read_qdq_linears,
    twin_agreement,
)
from edgeattack.data import load_digits_dataset
from edgeattack.errors import EngineError
from edgeattack.export.onnx_export import export_onnx
from edgeattack.export.quantize import quantize_static_qdq

N_IMAGES = 270  # the whole digits test split




def _model(seed: int):
    from edgeattack.zoo.factory import create_model

    torch.manual_seed(seed)
    return create_model("vit_tiny_digits", pretrained=False)


@pytest.fixture(scope="module")
def qdq_path(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fakequant")
    export_onnx(model, root / "fp32.onnx")
    quantize_static_qdq(root / "fp32.onnx", root / "qdq.onnx", load_digits_dataset("train"), num_images=128)
    return root / "qdq.onnx"


@pytest.fixture(scope="module")
def twin(model, qdq_path):
    return FakeQuantTwin(model, qdq_path)


def test_every_linear_is_mapped_to_its_node(model, twin):
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {entry.module_name for entry in twin.mapping} == linears
    assert len(twin.fake_quant_layers()) == len(linears) == 25
    for entry in twin.mapping:
        # the value match agrees with the exporter's scope names ("/net/blocks/blocks.0/attn/qkv/MatMul")
        parts = entry.module_name.split(".")
        assert f"/{parts[-1]}/" in entry.node_name
        if "blocks" in parts:
            assert f"/blocks.{parts[parts.index('blocks') + 1]}/" in entry.node_name
        assert entry.max_step_error <= 0.5 + 1e-3
        assert entry.weight_mismatches == 0  # the twin rounds every weight as ONNX Runtime did
        assert not entry.by_name
    assert twin.unmodelled == ()
    assert twin.config == model.config and twin.weights_sha256 == model.weights_sha256


def test_mapping_does_not_depend_on_names(model, qdq_path, tmp_path):
    import onnx

    proto = onnx.load(str(qdq_path))
    for i, node in enumerate(proto.graph.node):
        node.name = f"node{i}"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(proto, str(renamed))
    nodes, _ = read_qdq_linears(renamed)
    original, _ = read_qdq_linears(qdq_path)
    got = [entry.module_name for entry in map_linears(model, nodes)]
    expected = [entry.module_name for entry in map_linears(model, original)]
    assert got == expected


def test_twin_of_a_fully_quantized_per_tensor_graph(model, qdq_path, test_set):
    full = qdq_path.with_name("full_per_tensor.onnx")
    calibration = load_digits_dataset("train")
    quantize_static_qdq(
        qdq_path.with_name("fp32.onnx"), full, calibration, num_images=32, preset="full", per_channel=False
    )
    twin = FakeQuantTwin(model, full)
    assert len(twin.mapping) == 25 and all(e.weight_mismatches == 0 for e in twin.mapping)
    layer = twin.fake_quant_layers()[0]
    assert layer.w_scale.numel() == 1 and layer.in_zp.item() == 0  # per-tensor, symmetric int8
    assert len(twin.unmodelled) > 0  # attention matmuls, Add, Softmax... are not mirrored
    with torch.no_grad():
        assert torch.isfinite(twin(torch.from_numpy(test_set.images[:4]))).all()


def test_twin_refuses_other_weights(qdq_path):
    with pytest.raises(EngineError, match="fits no module"):
        FakeQuantTwin(_model(seed=1), qdq_path)


def test_twin_agrees_with_the_int8_engine(twin, qdq_path, test_set):
    result = twin_agreement(twin, qdq_path, test_set)
    assert result["n_images"] == N_IMAGES
    assert result["top1_agreement"] >= 0.99
    # the twin is closer to the int8 engine than the float model is
    assert result["mean_abs_logit_diff"] < 0.5 * result["fp32_mean_abs_logit_diff"]
    assert result["max_abs_logit_diff"] < 0.1


def test_gradients_flow_through_the_twin(twin, test_set):
    images = torch.from_numpy(test_set.images[:8].copy()).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(twin(images), torch.from_numpy(test_set.labels[:8]))
    loss.backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0


def test_disabling_quantization_gives_the_float_model(model, twin, test_set):
    images = torch.from_numpy(test_set.images[:16])
    with torch.no_grad():
        with twin.quantization_disabled():
            plain = twin(images)
        quantized = twin(images)
        reference = model(images)
    torch.testing.assert_close(plain, reference, rtol=0, atol=0)
    assert not torch.equal(quantized, reference)
    assert all(layer.quantize for layer in twin.fake_quant_layers())


def test_fake_quantize_rounds_like_quantizelinear_with_identity_gradient():
    x = torch.tensor([-300.0, -1.5, -0.5, 0.5, 1.5, 2.49, 300.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(1.0), torch.tensor(0.0), -128, 127)
    assert y.tolist() == [-128.0, -2.0, -0.0, 0.0, 2.0, 2.0, 127.0]  # half to even, saturating
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 7
    u = fake_quantize(torch.tensor([-1.0, 0.26, 10.0]), torch.tensor(0.5), torch.tensor(10.0), 0, 255)
    assert u.tolist() == [-1.0, 0.5, 10.0]


def test_fake_quant_linear_matches_int8_arithmetic(twin):
    layer = twin.fake_quant_layers()[0]
    assert isinstance(layer, FakeQuantLinear)
    x = torch.randn(4, layer.weight.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q_in = torch.clamp(torch.round(x / layer.in_scale) + layer.in_zp, 0, 255)
        q_w = torch.round(layer.weight / layer.w_scale).clamp(-128, 127)
        integer = (q_in - layer.in_zp).double() @ q_w.double().T  # exact int32 accumulation
        expected = integer * (layer.in_scale.double() * layer.w_scale.double().reshape(1, -1))
        expected = expected + layer.bias.double()
        got = layer(x).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
