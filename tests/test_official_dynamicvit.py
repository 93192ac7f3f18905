"""DynamicViT from a checkpoint saved the way raoyongming/DynamicViT saves one, against its own outputs.

The fixture (tests/fixtures/official/dynamicvit, recorded by
scripts/official_fixtures/record_dynamicvit.py with the official `VisionTransformerDiffPruning`)
is DynamicViT-DeiT-S at ρ 0.7 at the fixture width, saved by its `utils.save_model` layout (model,
optimizer, epoch, scaler, args, best, best_ema), with the eval logits and per-block token counts.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.sparsity.dynamicvit import kept_token_counts
from edgeattack.zoo.factory import create_model

NAME = "dynamicvit_deit_small_patch16_224_r07"
CHECKPOINT = fixture("dynamicvit", "checkpoint-29.pth")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, checkpoint=CHECKPOINT, **SMALL_WIDTH)


def test_logits_and_token_counts_equal_the_official_code(model):
    want = expected("dynamicvit")
    images = torch.from_numpy(inputs01())
    with torch.no_grad():
        logits = model(images)
        counts = kept_token_counts(model, images)
    assert_logits_close(logits, want["logits"], "DynamicViT (PyTorch)")
    np.testing.assert_array_equal(np.asarray(counts), want["counts"])
    assert list(model.net.token_schedule) == want["counts"][0].tolist()


def test_onnx_export_keeps_the_official_logits(model, tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = onnx_outputs(model, tmp_path, inputs01())
    assert_logits_close(outputs["logits"], expected("dynamicvit")["logits"], "DynamicViT (ONNX Runtime)")


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, NAME, CHECKPOINT)
    assert_logits_close(outputs["logits"], expected("dynamicvit")["logits"], "edgeattack export (ONNX)")
