"""Token metrics without torch: TUR, GFLOPs from per-block counts (== the dense ViT count), gap closed,
and the token-sparsity engine metadata they read."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeattack.export.metadata import EngineMetadata
from edgeattack.metrics.flops import DEIT_SMALL, DEIT_TINY, VitArch, vit_flops
from edgeattack.metrics.tokens import (
    TokenArch,
    arch_from_metadata,
    gap_closed,
    gflops_from_counts,
    gflops_from_metadata,
    tur,
)

DIGITS = VitArch(32, 4, 3, 96, 6, 3, num_classes=10)


def test_tur_per_image_and_mean():
    counts = np.array([[65, 65, 65], [65, 33, 1]])
    result = tur(counts, 65)
    assert result.per_image.tolist() == pytest.approx([1.0, 99 / 195])
    assert result.mean == pytest.approx((1.0 + 99 / 195) / 2)
    per_image, mean = tur(np.zeros((0, 3), dtype=np.int64), 65)
    assert per_image.shape == (0,) and mean is None
    for bad in (np.array([[66, 1, 1]]), np.array([[-1, 1, 1]]), np.array([[1.5, 1, 1]]), np.array([1, 2, 3])):
        with pytest.raises(ValueError):
            tur(bad, 65)


@pytest.mark.parametrize("arch", [DEIT_SMALL, DEIT_TINY, DIGITS])
def test_full_counts_give_the_dense_flops(arch):
    tokens = TokenArch.from_vit_arch(arch)
    full = np.full((2, arch.depth), arch.num_tokens)
    for sampled in (False, True):
        result = gflops_from_counts(full, tokens, sampled_in_attention=sampled)
        assert result.per_image == pytest.approx([vit_flops(arch).gflops] * 2, rel=1e-12)


def test_deit_small_is_4_6_gflops_and_partial_counts_match_vit_flops():
    tokens = TokenArch.from_vit_arch(DEIT_SMALL)
    assert round(gflops_from_counts(np.full((1, 12), 197), tokens).mean, 1) == 4.6
    schedule = (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3
    assert gflops_from_counts(np.array([schedule]), tokens).mean == pytest.approx(
        vit_flops(DEIT_SMALL, schedule).gflops, rel=1e-12
    )


def test_sampled_in_attention_counts_qkv_on_the_entering_tokens():
    arch = TokenArch(embed_dim=4, mlp_ratio=2.0, num_heads=1, depth=2, num_tokens=5, num_classes=3, patch_flops=7.0)
    counts = np.array([[5, 2]])
    c, h = 4, 8
    block0 = 4 * 5 * c * c + 2 * 25 * c + 2 * 5 * c * h
    plain = 7 + block0 + (4 * 2 * c * c + 2 * 4 * c + 2 * 2 * c * h) + c * 3
    sampled = 7 + block0 + (3 * 5 * c * c + 2 * 2 * 5 * c + 2 * c * c + 2 * 2 * c * h) + c * 3
    assert gflops_from_counts(counts, arch).mean * 1e9 == pytest.approx(plain)
    assert gflops_from_counts(counts, arch, sampled_in_attention=True).mean * 1e9 == pytest.approx(sampled)
    with pytest.raises(ValueError, match="blocks"):
        gflops_from_counts(np.array([[5, 2, 2]]), arch)


def test_gap_closed():
    assert gap_closed(0.5, 0.75, 1.0) == pytest.approx(0.5)
    assert gap_closed(0.5, 1.0, 1.0) == pytest.approx(1.0)
    assert gap_closed(0.5, 0.4, 1.0) == pytest.approx(-0.2)
    assert gap_closed(1.0, 1.0, 1.0) is None
    with pytest.raises(ValueError):
        gap_closed(float("nan"), 1.0, 2.0)


def _metadata(**extra):
    return EngineMetadata(
        input_name="images",
        input_shape=("batch", 3, 32, 32),
        output_names=("logits", "token_counts"),
        bounds=(0.0, 1.0),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        labels=tuple("0123456789"),
        precision="fp32",
        source_model="ats_tiny_digits",
        source_sha256="",
        **extra,
    )


def test_metadata_records_the_architecture_and_round_trips():
    arch = TokenArch.from_vit_arch(DIGITS)
    info = {"mechanism": "ats", "depth": 6, "num_tokens": 65, "sampled_in_attention": True, "arch": arch.to_dict()}
    metadata = _metadata(extra_outputs=("token_counts",), token_sparsity=info)
    again = EngineMetadata.from_json(metadata.to_json())
    assert again == metadata and arch_from_metadata(again) == arch == arch_from_metadata(info)
    counts = np.array([[65, 65, 40, 30, 20, 10]])
    assert gflops_from_metadata(counts, again).mean == pytest.approx(
        gflops_from_counts(counts, arch, sampled_in_attention=True).mean
    )
    old = metadata.to_dict()
    del old["token_sparsity"]  # written before token sparsity existed
    assert EngineMetadata.from_dict(old).token_sparsity == {}
    with pytest.raises(ValueError, match="no token-sparse"):
        arch_from_metadata(EngineMetadata.from_dict(old))


def test_module_needs_no_torch():
    code = "import sys; sys.modules['torch'] = None; import edgeattack.metrics.tokens; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
