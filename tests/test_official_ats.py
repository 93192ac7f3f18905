"""ATS from a checkpoint saved the way adaptivetokensampling/ATS saves one, against its own outputs.

The fixture (tests/fixtures/official/ats, recorded by scripts/official_fixtures/record_ats.py with
the official `ViT` of configs/ImageNet/DeiT_S.yaml at the fixture width) holds the official
`save_checkpoint` file ({'epoch', 'model_state', 'optimizer_state', 'cfg'}, with the
`out_zero_mask` parameters) and, for each image run alone, the logits, the tokens each block
processes and which original tokens those are.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.errors import ConfigError
from edgeattack.zoo.checkpoint import read_checkpoint
from edgeattack.zoo.factory import create_model

NAME = "ats_deit_small_patch16_224"
CHECKPOINT = fixture("ats", "checkpoint_epoch_00001.pyth")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, checkpoint=CHECKPOINT, **SMALL_WIDTH)


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(inputs01())


@pytest.mark.parametrize("drop_mode", ["physical", "masked"])
def test_logits_counts_and_kept_tokens_equal_the_official_code(images, drop_mode):
    model = create_model(NAME, checkpoint=CHECKPOINT, drop_mode=drop_mode, **SMALL_WIDTH)
    want = expected("ats")
    with torch.no_grad():
        logits, counts = model.forward_counts(images)
        _, keep = model.net.keep_masks((images - model.mean) / model.std)
        alone = [model.forward_counts(images[i : i + 1]) for i in range(len(images))]
    assert_logits_close(logits, want["logits"], f"ATS {drop_mode} (PyTorch)")
    np.testing.assert_array_equal(counts.numpy(), want["counts"])
    np.testing.assert_array_equal(keep.numpy(), want["keep"])
    assert_logits_close(torch.cat([a[0] for a in alone]), want["logits"], f"ATS {drop_mode}, one image at a time")
    np.testing.assert_array_equal(torch.cat([a[1] for a in alone]).numpy(), want["counts"])
    assert (want["counts"][:, 3:] < 197).all() and len(set(want["counts"][:, -1])) == 4  # the fixture drops tokens


def test_the_official_batch_dependence_is_not_reproduced(model, images):
    """The official code pads shorter images to the batch's longest, which changes their samples; ATS does not."""
    want = expected("ats")
    assert not np.array_equal(want["counts_batch4"], want["counts"])
    with torch.no_grad():
        _, counts = model.forward_counts(images)
    np.testing.assert_array_equal(counts.numpy(), want["counts"])


def test_onnx_export_keeps_the_official_logits_and_counts(model, tmp_path):
    pytest.importorskip("onnxruntime")
    want = expected("ats")
    outputs = onnx_outputs(model, tmp_path, inputs01())
    assert_logits_close(outputs["logits"], want["logits"], "ATS (ONNX Runtime)")
    np.testing.assert_array_equal(outputs["token_counts"], want["counts"])


def test_the_official_checkpoint_layout(model):
    checkpoint = read_checkpoint(CHECKPOINT)
    assert checkpoint.layout == "model_state" and "cfg" in checkpoint.meta
    zero_masks = [key for key in checkpoint.state if key.endswith("attn.out_zero_mask")]
    assert len(zero_masks) == 9 and not any(key in model.net.state_dict() for key in zero_masks)
    assert model.net.stages == tuple(range(3, 12)) and model.net.sampler == "official"
    assert model.weights_source == "checkpoint:checkpoint_epoch_00001.pyth"


def _resaved(tmp_path, *, ats_blocks=None, zero_mask=0.0):
    """The fixture checkpoint saved again with other VIT.ATS_BLOCKS in its cfg, or a non-zero out_zero_mask."""
    import yaml

    saved = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    if ats_blocks is not None:
        cfg = yaml.safe_load(saved["cfg"])
        cfg["VIT"]["ATS_BLOCKS"] = list(ats_blocks)
        saved["cfg"] = yaml.safe_dump(cfg)
    saved["model_state"]["blocks.5.attn.out_zero_mask"] += zero_mask
    path = tmp_path / "checkpoint_epoch_00001.pyth"
    torch.save(saved, path)
    return path


def test_the_saved_ats_blocks_become_the_stages(tmp_path, caplog):
    path = _resaved(tmp_path, ats_blocks=(7, 8, 9, 10, 11))
    assert create_model(NAME, checkpoint=path, **SMALL_WIDTH).net.stages == (7, 8, 9, 10, 11)
    with caplog.at_level(logging.WARNING, logger="edgeattack.sparsity.ats_checkpoint"):
        given = create_model(NAME, checkpoint=path, stages=(3, 6, 9), **SMALL_WIDTH)
    assert given.net.stages == (3, 6, 9) and "ATS_BLOCKS [7, 8, 9, 10, 11]" in caplog.text


def test_a_non_zero_out_zero_mask_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="out_zero_mask"):
        create_model(NAME, checkpoint=_resaved(tmp_path, zero_mask=1.0), **SMALL_WIDTH)


def test_the_earlier_sampler_remains_an_option(images):
    quantile = create_model(NAME, checkpoint=CHECKPOINT, sampler="quantile", **SMALL_WIDTH)
    with torch.no_grad():
        _, counts = quantile.forward_counts(images)
    assert quantile.net.sampler == "quantile" and not np.array_equal(counts.numpy(), expected("ats")["counts"])
    with pytest.raises(ConfigError, match="sampler"):
        create_model(NAME, checkpoint=CHECKPOINT, sampler="nearest", **SMALL_WIDTH)


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, NAME, CHECKPOINT)
    assert_logits_close(outputs["logits"], expected("ats")["logits"], "edgeattack export (ONNX)")
    np.testing.assert_array_equal(outputs["token_counts"], expected("ats")["counts"])
