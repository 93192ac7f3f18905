"""AdaViT from a checkpoint saved the way MengLcool/AdaViT saves one, against its own outputs.

The fixture (tests/fixtures/official/adavit, recorded by scripts/official_fixtures/record_adavit.py
with the official `AdaStepT2T_ViT`) is Ada-DeiT-S (--ada-head --ada-layer --ada-token-with-mlp) at
the fixture width, with decision weights that drop tokens, heads, attention and MLP layers
differently per image, saved by the repository's `MyCheckpointSaver` (epoch, arch, state_dict,
optimizer, version, args, state_dict_ema, metric; the EMA differs from the live weights), with the
eval logits of the EMA weights and, from the official forward's own masks, the tokens each block
processes, the heads and the layers used.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.sparsity.adavit import AdaViT
from edgeattack.sparsity.adavit_checkpoint import check_official_args
from edgeattack.zoo.checkpoint import CheckpointFile, read_checkpoint
from edgeattack.zoo.factory import create_model

NAME = "adavit_deit_small_patch16_224"
CHECKPOINT = fixture("adavit", "model_best.pth.tar")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, checkpoint=CHECKPOINT, **SMALL_WIDTH)


def test_the_ema_weights_are_the_ones_read():
    checkpoint = read_checkpoint(CHECKPOINT, layouts=AdaViT.checkpoint_layouts)
    live = read_checkpoint(CHECKPOINT, layouts=("state_dict",))
    assert checkpoint.layout == "state_dict_ema" and live.layout == "state_dict"
    assert not torch.equal(checkpoint.state["head.weight"], live.state["head.weight"])
    assert checkpoint.meta["arch"] == "ada_step_deit_small_patch16_224" and checkpoint.meta["version"] == 2
    assert checkpoint.args["ada_token_with_mlp"] and checkpoint.args["keep_layers"] == 1
    assert checkpoint.state["blocks.1.layer_select.mlp_head.weight"].shape == (2, 48)
    assert "blocks.0.attn.query.weight" in checkpoint.state


@pytest.mark.parametrize("drop_mode", ["physical", "masked"])
def test_logits_and_token_counts_equal_the_official_code(drop_mode):
    model = create_model(NAME, checkpoint=CHECKPOINT, drop_mode=drop_mode, **SMALL_WIDTH)
    want = expected("adavit")
    images = torch.from_numpy(inputs01())
    with torch.no_grad():
        logits, counts = model.forward_counts(images)
        _, keep = model.net.keep_masks((images - model.mean) / model.std)
        one_by_one = [model.forward_counts(images[i : i + 1]) for i in range(len(images))]
    assert_logits_close(logits, want["logits"], f"AdaViT {drop_mode} (PyTorch)")
    np.testing.assert_array_equal(counts.numpy(), want["counts"])
    np.testing.assert_array_equal(keep.numpy(), want["keep"])
    assert_logits_close(torch.cat([o[0] for o in one_by_one]), want["logits"], f"AdaViT {drop_mode}, batch 1")
    np.testing.assert_array_equal(torch.cat([o[1] for o in one_by_one]).numpy(), want["counts"])


def test_head_and_layer_decisions_equal_the_official_code(model):
    seen: list[tuple] = []
    hooks = [decide.register_forward_hook(lambda m, a, out: seen.append(out)) for decide in model.net.decisions]
    try:
        with torch.no_grad():
            model(torch.from_numpy(inputs01()))
    finally:
        for hook in hooks:
            hook.remove()
    heads = torch.stack([torch.sigmoid(head) > 0.5 for _, head, _ in seen[1:]], dim=1)
    layers = torch.stack([torch.sigmoid(layer) > 0.5 for _, _, layer in seen[1:]], dim=1)
    assert seen[0][1] is None and seen[0][2] is None  # keep_layers 1: no head or layer gate in block 0
    np.testing.assert_array_equal(heads.numpy(), expected("adavit")["heads"])
    np.testing.assert_array_equal(layers.numpy(), expected("adavit")["layers"])


def test_onnx_export_keeps_the_official_logits_and_counts(model, tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = onnx_outputs(model, tmp_path, inputs01())
    want = expected("adavit")
    assert_logits_close(outputs["logits"], want["logits"], "AdaViT (ONNX Runtime)")
    np.testing.assert_array_equal(outputs["token_counts"], want["counts"])


def test_checkpoints_of_other_official_options_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="norm-policy"):
        check_official_args({"model": "ada_step_deit_small_patch16_224", "norm_policy": True})
    with pytest.raises(ConfigError, match="ada_step_deit"):
        check_official_args({"model": "ada_step_t2t_vit_19_lnorm", "ada_token": True, "ada_token_with_mlp": True})
    with pytest.raises(ConfigError, match="ada-token-with-mlp"):
        check_official_args({"model": "ada_step_deit_small_patch16_224", "ada_token": True})
    with pytest.raises((ConfigError, EdgeAttackError), match="keep_layers=1"):
        create_model(NAME, checkpoint=CHECKPOINT, keep_layers=2, **SMALL_WIDTH)
    old = create_model(NAME, random_weights=True, variant="edgeattack-v1", **SMALL_WIDTH).net
    official = create_model(NAME, random_weights=True, **SMALL_WIDTH).net
    saved = CheckpointFile(path=tmp_path / "old.safetensors", state=old.state_dict())
    assert set(old.adapt_checkpoint(saved)) == set(old.state_dict())  # edgeattack's own names pass through
    with pytest.raises(ConfigError, match="variant='edgeattack-v1'"):
        official.adapt_checkpoint(saved)


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, NAME, CHECKPOINT)
    assert_logits_close(outputs["logits"], expected("adavit")["logits"], "edgeattack export (ONNX)")
    np.testing.assert_array_equal(outputs["token_counts"], expected("adavit")["counts"])
