"""Devices and precision of white-box crafting: bf16 autocast on the CPU, records, the int8 twin, profile."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner

from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.whitebox import FGSM, PGD, make_attack
from edgeattack.attacks.whitebox.model import AttackModel
from edgeattack.cli.app import app
from edgeattack.data import load_digits_dataset
from edgeattack.devices import Precision
from edgeattack.errors import ConfigError
from edgeattack.zoo.factory import create_model

runner = CliRunner()
EPS = 4 / 255


@pytest.fixture(scope="module")
def vit():
    return create_model("vit_tiny_digits")


@pytest.fixture(scope="module")
def images():
    return load_digits_dataset("test").take(48)


def test_bf16_pgd_on_the_cpu_matches_fp32(vit, images) -> None:
    fp32 = PGD(eps=EPS, steps=5, step_size=1 / 255, random_start=False, early_stop=False)(vit, images)
    bf16 = PGD(eps=EPS, steps=5, step_size=1 / 255, random_start=False, early_stop=False, precision="bf16")(
        vit, images
    )
    assert bf16.params["precision"] == "bf16" and fp32.params["precision"] == "fp32"
    assert bf16.delta.dtype == np.float32
    assert np.abs(bf16.delta).max() <= EPS + 1e-6
    assert bf16.adversarial.min() >= 0 and bf16.adversarial.max() <= 1
    assert fp32.success_rate is not None and bf16.success_rate is not None
    assert fp32.success_rate > 0.2  # the attack does something at this eps
    assert abs(bf16.success_rate - fp32.success_rate) <= 0.15
    assert abs(bf16.clean_acc - fp32.clean_acc) <= 0.05
    assert not np.array_equal(bf16.delta, fp32.delta)  # autocast was on


def test_autocast_logits_and_gradients_are_float32(vit, images) -> None:
    model = AttackModel([vit], (0.0, 1.0), torch.device("cpu"), Precision("bf16"))
    x = torch.from_numpy(images.images[:4]).requires_grad_(True)
    logits = model(x)
    assert logits.dtype == torch.float32
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long)), x)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_fp16_and_unknown_precisions_are_refused_on_the_cpu(vit, images) -> None:
    with pytest.raises(ConfigError, match="precision"):
        make_attack("pgd", precision="int4")
    with pytest.raises(ConfigError, match="CUDA"):
        FGSM(precision="fp16")(vit, images.take(2))


def test_cli_records_device_and_precision(tmp_path) -> None:
    out = tmp_path / "bf16.npz"
    result = runner.invoke(
        app,
        ["attack", "--method", "fgsm", "--limit", "8", "--device", "cpu", "--precision", "bf16", "-o", str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "cpu, bf16" in result.output
    params = PerturbationArtifact.load(out).meta.params
    assert params["device"] == "cpu" and params["precision"] == "bf16"
    assert params["batch_size"] == 256  # the automatic CPU default at 32x32
    fp16 = runner.invoke(app, ["attack", "--method", "fgsm", "--precision", "fp16", "--device", "cpu", "-o", str(out)])
    assert fp16.exit_code != 0 and "fp16" in fp16.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path) -> None:
    result = runner.invoke(app, ["attack", "--method", "fgsm", "--device", "cuda", "-o", str(tmp_path / "a.npz")])
    assert result.exit_code != 0 and "no CUDA device" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pgd_matches_the_cpu(vit, images) -> None:
    cpu = PGD(eps=EPS, steps=3, random_start=True)(vit, images)
    gpu_model = create_model("vit_tiny_digits").to("cuda")
    gpu = PGD(eps=EPS, steps=3, random_start=True)(gpu_model, images)
    assert np.abs(gpu.delta).max() <= EPS + 1e-6
    assert abs(gpu.success_rate - cpu.success_rate) <= 0.1
    bf16 = PGD(eps=EPS, steps=3, precision="bf16")(gpu_model, images)
    fp16 = PGD(eps=EPS, steps=3, precision="fp16")(gpu_model, images)
    assert bf16.params["precision"] == "bf16" and fp16.params["precision"] == "fp16"


def test_fake_quant_grids_are_buffers_that_move() -> None:
    from edgeattack.compress.fakequant import FakeQuantLinear, QLinearNode, QuantParams

    linear = torch.nn.Linear(4, 3)
    grid = QuantParams(np.float32(0.05), np.float32(0), -128, 127)
    weight_grid = QuantParams(np.full((3, 1), 0.01, np.float32), np.zeros((3, 1), np.float32), -127, 127)
    spec = QLinearNode("n", "MatMul", linear.weight.detach().numpy(), weight_grid, grid, None, None, False)
    layer = FakeQuantLinear(linear, spec)
    names = {name for name, _ in layer.named_buffers()}
    assert {"w_scale", "w_zp", "in_scale", "in_zp"} <= names  # moved by .to(device) with the weights
    moved = layer.to(torch.float64)
    assert moved.in_scale.dtype == torch.float64
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    moved(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_profile_records_its_device() -> None:
    from edgeattack.zoo.profile import profile_model

    profile = profile_model("vit_tiny_digits", batch_size=2, onnx=False, int8=False, min_runs=1, min_seconds=0,
                            device="cpu", warn=False)
    assert profile.device == "cpu" and profile.to_dict()["device"] == "cpu"
    assert profile.throughput_torch_ips is not None
    with pytest.raises(ConfigError):
        profile_model("vit_tiny_digits", device="tpu", measure_throughput=False, onnx=False, int8=False)
