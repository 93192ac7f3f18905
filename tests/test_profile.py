"""`profile_model` and `edgeattack profile`: sizes and GFLOPs of the timm DeiTs (random weights).

The paper's size table (DeiT-Ti / S / B): fp32 22 / 85 / 331 "M", distilled 23 / 86 / 334, int8
6.4 / 23 / 89. Measured here: fp32 safetensors 21.82 / 84.13 / 330.24 MiB (22.88 / 88.22 / 346.28 MB),
distilled 22.56 / 85.59 / 333.17 MiB, dynamic-int8 torch.save 6.46 / 23.44 / 89.25 MB (6.16 / 22.36 /
85.12 MiB). So the fp32 column is in MiB, rounded up as `ls -h` does (it prints exactly 22M / 85M /
331M and 23M / 86M / 334M), and the int8 column in MB = 10^6 bytes (within 2 %); the other unit
misses by 4-5 % (fp32 in MB, int8 in MiB for tiny and base).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.errors import ConfigError
from edgeattack.metrics.flops import VitArch, dynamicvit_flops, human_size, vit_flops
from edgeattack.zoo import is_registered
from edgeattack.zoo.factory import create_model
from edgeattack.zoo.profile import arch_of, flops_of, profile_model

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("module_one_thread")


PAPER = {  # name: (params, fp32 "M" as printed, int8 MB)
    "deit_tiny_patch16_224": (5_717_416, 22, 6.4),
    "deit_small_patch16_224": (22_050_664, 85, 23),
    "deit_base_patch16_224": (86_567_656, 331, 89),
}
PAPER_DISTILLED = {"tiny": 23, "small": 86, "base": 334}


@pytest.fixture(scope="module")
def tiny_profile():
    return profile_model("deit_tiny_patch16_224", measure_throughput=False)


def test_deit_tiny_profile(tiny_profile) -> None:
    profile = tiny_profile
    assert profile.params == 5_717_416
    assert profile.weights.startswith("random")
    assert profile.family == "original" and profile.input_size == (3, 224, 224)
    assert profile.size_fp32_mib == pytest.approx(22, rel=0.02)  # 21.82 MiB
    assert profile.size_fp32_mb == pytest.approx(profile.size_fp32_bytes / 1e6)
    assert profile.size_fp32_bytes >= profile.params * 4
    assert human_size(profile.size_fp32_bytes) == "22M"
    assert profile.size_int8_mb == pytest.approx(6.4, rel=0.03)  # 6.46 MB
    assert profile.size_int8_mib == pytest.approx(profile.size_int8_bytes / 2**20)
    assert round(profile.gflops, 1) == 1.3
    assert profile.gflops == pytest.approx(1.2536832, abs=1e-9)
    assert profile.arch["embed_dim"] == 192 and profile.arch["depth"] == 12
    assert profile.throughput_torch_ips is None and profile.throughput_ort_ips is None
    assert "throughput not measured" in profile.notes
    json.dumps(profile.to_dict(), allow_nan=False)


@pytest.mark.parametrize("name", ["deit_small_patch16_224", "deit_base_patch16_224"])
def test_deit_small_base_sizes_match_the_paper(name: str) -> None:
    params, fp32_m, int8_mb = PAPER[name]
    profile = profile_model(name, measure_throughput=False)
    assert profile.params == params
    assert profile.size_fp32_mib == pytest.approx(fp32_m, rel=0.02)
    assert human_size(profile.size_fp32_bytes) == f"{fp32_m}M"
    assert profile.size_int8_mb == pytest.approx(int8_mb, rel=0.03)
    assert profile.gflops == pytest.approx(
        {"deit_small_patch16_224": 4.6, "deit_base_patch16_224": 17.6}[name], rel=0.01
    )


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_distilled_sizes_and_arch(size: str) -> None:
    profile = profile_model(f"deit_{size}_distilled_patch16_224", measure_throughput=False, int8=False)
    assert human_size(profile.size_fp32_bytes) == f"{PAPER_DISTILLED[size]}M"
    assert profile.arch["num_prefix_tokens"] == 2 and profile.arch["num_heads_out"] == 2
    assert profile.size_int8_bytes is None and profile.family == "distill"


def test_arch_of_digits_vit(model) -> None:
    arch = arch_of(model)
    assert arch == VitArch(
        img_size=32, patch_size=4, in_chans=3, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10
    )
    assert arch_of(model.net) == arch
    assert flops_of(model).total == vit_flops(arch).total


def test_arch_of_rejects_non_vits() -> None:
    with pytest.raises(ConfigError, match="cannot read a ViT architecture"):
        arch_of(torch.nn.Linear(3, 4))


def test_profile_rejects_bad_options(model) -> None:
    with pytest.raises(ConfigError):
        profile_model("vit_tiny_digits", batch_size=0)
    with pytest.raises(ConfigError, match="checkpoint"):
        profile_model(model, checkpoint="x.safetensors")
    with pytest.raises(ConfigError, match="zoo model"):
        profile_model(torch.nn.Linear(3, 4))


@pytest.mark.skipif(
    not is_registered("dynamicvit_deit_small_patch16_224_r07"), reason="DynamicViT family not registered"
)
def test_token_pruned_model_uses_its_schedule_and_predictors() -> None:
    from edgeattack.metrics.flops import DEIT_SMALL

    model = create_model("dynamicvit_deit_small_patch16_224_r07", random_weights=True)
    flops = flops_of(model)
    assert flops.total == pytest.approx(dynamicvit_flops(DEIT_SMALL, 0.7).total, rel=1e-12)
    assert flops.tokens_per_block == (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3


def test_profile_throughput_on_digits(model) -> None:
    profile = profile_model(model, batch_size=4, warmup_runs=1, min_runs=2, min_seconds=0.0, warn=False)
    assert profile.weights == "in-memory" and profile.batch_size == 4 and profile.threads == 1
    assert profile.throughput_torch_ips > 0 and profile.throughput_ort_ips > 0
    assert profile.latency_torch["batch_size"] == 4 and profile.latency_ort["runs"] >= 2
    assert profile.gflops == pytest.approx(vit_flops(arch_of(model)).gflops)
    assert torch.get_num_threads() == 1


def test_cli_profile_json(tmp_path) -> None:
    out = tmp_path / "profile.json"
    result = runner.invoke(
        app,
        [
            "profile",
            "vit_tiny_digits",
            "--batch-size",
            "8",
            "--runs",
            "1",
            "--seconds",
            "0",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for text in ("GFLOPs", "size fp32", "size int8", "MiB", "throughput onnxruntime", "batch 8"):
        assert text in result.output
    doc = json.loads(out.read_text())
    assert doc["name"] == "vit_tiny_digits" and doc["batch_size"] == 8 and doc["threads"] == 1
    assert doc["throughput_torch_ips"] > 0 and doc["throughput_ort_ips"] > 0
    assert doc["units"]["mb"] == "10^6 bytes"


def test_cli_profile_no_throughput_and_errors() -> None:
    result = runner.invoke(app, ["profile", "vit_tiny_digits", "--no-throughput"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "n/a" in result.output and "throughput not measured" in result.output
    bad = runner.invoke(app, ["profile", "deit_tiny_patch16"], catch_exceptions=False)
    assert bad.exit_code == 2 and "unknown model" in bad.output and "Traceback" not in bad.output


def test_minivit_flops_are_the_teachers_plus_its_transforms():
    from edgeattack.zoo import create_model
    from edgeattack.zoo.profile import flops_of

    teacher = flops_of(create_model("vit_tiny_digits"))
    mini = flops_of(create_model("minivit_tiny_digits"))
    # 6 layers x (2 head mixings of 3x3 over 65x65 maps + a 3x3 depth-wise conv over 64 patches of width 96)
    assert mini.transforms == 6 * (2 * 9 * 65 * 65 + 9 * 96 * 64)
    assert mini.total == pytest.approx(teacher.total + mini.transforms)
