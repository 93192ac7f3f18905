"""CUDA paths of the PyTorch side: crafting on the GPU in fp32 and bf16, the int8 twin, device records.

Marked `gpu` and skipped without a CUDA device (this development machine has none: these run in
`benchmarks/gpu_suite.sh` on a GPU box).
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeattack.artifacts import PerturbationArtifact
from edgeattack.cli.app import app

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_pgd_records_device_and_stays_in_budget(cuda, tmp_path, precision):
    out = tmp_path / f"pgd-{precision}.npz"
    result = CliRunner().invoke(
        app,
        ["attack", "-m", "pgd", "--model", "vit_tiny_digits", "--device", "cuda", "--precision", precision,
         "--eps", "8/255", "--steps", "10", "--limit", "64", "--batch-size", "32", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    artifact = PerturbationArtifact.load(out)
    params = artifact.meta.params
    assert params["device"] == "cuda:0" and params["precision"] == precision
    assert artifact.max_norm() <= 8 / 255 + 1e-6
    assert params["success_rate"] > 0.5


def test_cuda_and_cpu_craft_agree(cuda, tmp_path):
    """fp32 PGD without random start on CUDA lands on the same 1/255 grid points as on the CPU for most pixels."""
    paths = {}
    for device in ("cpu", "cuda"):
        paths[device] = tmp_path / f"{device}.npz"
        result = CliRunner().invoke(
            app,
            ["attack", "-m", "fgsm", "--model", "vit_tiny_digits", "--device", device, "--eps", "8/255",
             "--limit", "32", "--quantize-inputs", "-o", str(paths[device])],
        )
        assert result.exit_code == 0, result.output
    cpu, gpu = (np.asarray(PerturbationArtifact.load(p).delta[np.arange(32)]) for p in paths.values())
    assert np.mean(np.isclose(cpu, gpu, atol=1e-6)) > 0.99


def test_cuda_twin_crafts_on_the_gpu(cuda, tmp_path, onnx_engines):
    out = tmp_path / "twin.npz"
    result = CliRunner().invoke(
        app,
        ["attack", "-m", "pgd", "--model", str(onnx_engines["int8"]), "--device", "cuda", "--eps", "8/255",
         "--steps", "5", "--limit", "32", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert PerturbationArtifact.load(out).meta.params["device"] == "cuda:0"
