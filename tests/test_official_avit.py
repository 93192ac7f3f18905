"""A-ViT from a checkpoint saved the way NVlabs/A-ViT saves one, against its own outputs.

The fixture (tests/fixtures/official/avit, recorded by scripts/official_fixtures/record_avit.py with
the official `act_vision_transformer.VisionTransformer`) is A-ViT-S at the fixture width under the
README's gate (10/75), with weights perturbed so that tokens, the class token included, halt at
different blocks for different images; main_act.py's checkpoint.pth layout (its args under "args",
a different `model_ema`), the official eval logits, the tokens each block processes from the
official forward's own masks, and the official rho_token, halting scores and loss terms.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.errors import ConfigError
from edgeattack.sparsity.avit_train import avit_loss, distribution_target
from edgeattack.zoo.checkpoint import read_checkpoint
from edgeattack.zoo.factory import create_model

NAME = "avit_deit_small_patch16_224"
CHECKPOINT = fixture("avit", "checkpoint.pth")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, checkpoint=CHECKPOINT, **SMALL_WIDTH)


def test_the_checkpoint_is_main_act_s_layout():
    checkpoint = read_checkpoint(CHECKPOINT)
    assert checkpoint.layout == "model" and checkpoint.meta == {"epoch": 99}
    assert checkpoint.args["model"] == "avit_small_patch16_224" and checkpoint.args["act_mode"] == 4
    assert (checkpoint.args["gate_scale"], checkpoint.args["gate_center"]) == (10.0, 75.0)
    ema = read_checkpoint(CHECKPOINT, layouts=("model_ema",)).state
    assert not torch.equal(ema["head.weight"], checkpoint.state["head.weight"])


@pytest.mark.parametrize("drop_mode", ["physical", "masked"])
def test_logits_and_token_counts_equal_the_official_code(drop_mode):
    model = create_model(NAME, checkpoint=CHECKPOINT, drop_mode=drop_mode, **SMALL_WIDTH)
    want = expected("avit")
    images = torch.from_numpy(inputs01())
    with torch.no_grad():
        logits, counts = model.forward_counts(images)
        _, keep = model.net.keep_masks((images - model.mean) / model.std)
        one_by_one = [model.forward_counts(images[i : i + 1]) for i in range(len(images))]
    assert_logits_close(logits, want["logits"], f"A-ViT {drop_mode} (PyTorch)")
    np.testing.assert_array_equal(counts.numpy(), want["counts"])
    np.testing.assert_array_equal(keep.numpy(), want["keep"])
    np.testing.assert_array_equal(keep.sum(1).numpy(), want["depth"])
    assert_logits_close(torch.cat([o[0] for o in one_by_one]), want["logits"], f"A-ViT {drop_mode}, batch 1")
    np.testing.assert_array_equal(torch.cat([o[1] for o in one_by_one]).numpy(), want["counts"])


def test_the_fixture_exercises_class_token_halting(model):
    want = expected("avit")
    class_depth = want["depth"][:, 0]
    assert len(set(class_depth.tolist())) >= 3 and (class_depth < 12).any()
    assert (want["counts"][:, -1] < 197).all() and len({tuple(row) for row in want["counts"].tolist()}) == 4
    kept = create_model(NAME, checkpoint=CHECKPOINT, halting="keep-class", **SMALL_WIDTH)
    with torch.no_grad():
        logits, _ = kept.forward_counts(torch.from_numpy(inputs01()))
        _, keep = kept.net.keep_masks((torch.from_numpy(inputs01()) - kept.mean) / kept.std)
    assert keep[:, :, 0].all()  # the old variant: the class token runs every block
    assert float((logits - torch.from_numpy(want["logits"])).abs().max()) > 1e-3


def test_the_loss_terms_equal_the_official_ones(model):
    want = expected("avit")
    args = read_checkpoint(CHECKPOINT).args
    images = torch.from_numpy(inputs01())
    with torch.no_grad():
        out = model.net.forward_halting((images - model.mean) / model.std)
    np.testing.assert_allclose(out.ponder.numpy(), want["rho"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.halting[1:].mean(0).numpy(), want["halting_layer"], atol=1e-6, rtol=1e-4)
    np.testing.assert_array_equal(out.counts.numpy(), want["counts"])
    target = distribution_target(12, 8)
    np.testing.assert_allclose(target.numpy(), want["distr_target"], rtol=1e-6)
    terms = avit_loss(
        out,
        torch.zeros(4, dtype=torch.int64),
        None,
        target,
        ponder_weight=args["ponder_token_scale"],
        prior_weight=args["distr_prior_alpha"],
    )
    assert float(terms["ponder"]) * args["ponder_token_scale"] == pytest.approx(float(want["ponder_loss"]), rel=1e-5)
    assert float(terms["prior"]) * args["distr_prior_alpha"] == pytest.approx(float(want["prior_loss"]), rel=1e-4)
    extra = float(terms["loss"] - terms["ce"])
    assert extra == pytest.approx(float(want["ponder_loss"] + want["prior_loss"]), rel=1e-4)


def test_the_gate_comes_from_the_args_unless_given():
    tiny = create_model("avit_deit_tiny_patch16_224", checkpoint=CHECKPOINT, **SMALL_WIDTH)  # registered 10/30
    assert (tiny.net.gate_scale, tiny.net.gate_center) == (10.0, 75.0)
    with torch.no_grad():
        assert_logits_close(tiny(torch.from_numpy(inputs01())), expected("avit")["logits"], "gate from the args")
    given = create_model(NAME, checkpoint=CHECKPOINT, gate_center=60.0, **SMALL_WIDTH)
    assert (given.net.gate_scale, given.net.gate_center) == (10.0, 60.0)
    with torch.no_grad():
        _, counts = given.forward_counts(torch.from_numpy(inputs01()))
    assert (counts.sum(1).numpy() < expected("avit")["counts"].sum(1)).all()  # a lower centre halts sooner


def test_checkpoint_args_are_checked(model, tmp_path):
    checkpoint = read_checkpoint(CHECKPOINT)
    net = create_model(NAME, random_weights=True, **SMALL_WIDTH).net
    with pytest.raises(ConfigError, match="act_mode"):
        net.adapt_checkpoint(dataclasses.replace(checkpoint, args={**checkpoint.args, "act_mode": 1}))
    with pytest.raises(ConfigError, match="gate_center"):
        net.adapt_checkpoint(dataclasses.replace(checkpoint, args={**checkpoint.args, "gate_center": "75"}))
    plain = dataclasses.replace(checkpoint, args={})
    assert net.adapt_checkpoint(plain).keys() == checkpoint.state.keys() and net.gate_center == 75.0


def test_onnx_export_keeps_the_official_logits_and_counts(model, tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = onnx_outputs(model, tmp_path, inputs01())
    want = expected("avit")
    assert_logits_close(outputs["logits"], want["logits"], "A-ViT (ONNX Runtime)")
    np.testing.assert_array_equal(outputs["token_counts"], want["counts"])


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, NAME, CHECKPOINT)
    assert_logits_close(outputs["logits"], expected("avit")["logits"], "edgeattack export (ONNX)")
    np.testing.assert_array_equal(outputs["token_counts"], expected("avit")["counts"])
