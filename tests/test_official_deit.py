"""DeiT and distilled DeiT from checkpoints saved the way facebookresearch/deit saves them.

The fixtures (tests/fixtures/official/deit*, recorded by scripts/official_fixtures/record_deit.py
with deit's own code) hold deit's training checkpoint (its `argparse.Namespace` under "args",
optimizer, scheduler, a different `model_ema`) and the released `{"model": ...}` layout of the
distilled model, with the official logits on the shared inputs.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.errors import EdgeAttackError
from edgeattack.zoo.checkpoint import read_checkpoint
from edgeattack.zoo.factory import create_model

CASES = {
    "deit": ("deit_small_patch16_224", "checkpoint.pth"),
    "deit_distilled": ("deit_small_distilled_patch16_224", "deit_distilled.pth"),
}


def _model(family: str):
    name, file = CASES[family]
    return create_model(name, checkpoint=fixture(family, file), **SMALL_WIDTH)


def test_the_training_checkpoint_loads_through_the_allow_list():
    checkpoint = read_checkpoint(fixture("deit", "checkpoint.pth"))
    assert checkpoint.layout == "model"  # the weights deit evaluates, not its model_ema
    assert checkpoint.args["model"] == "deit_small_patch16_224" and checkpoint.args["epochs"] == 300
    assert checkpoint.meta == {"epoch": 299}
    assert "pos_embed" in checkpoint.state and not any(key.startswith("module.") for key in checkpoint.state)


@pytest.mark.parametrize("family", sorted(CASES))
def test_logits_equal_the_official_code(family):
    model = _model(family)
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs01()))
    assert_logits_close(logits, expected(family)["logits"], f"{family} (PyTorch)")
    assert model.weights_source.startswith("checkpoint:")


@pytest.mark.parametrize("family", sorted(CASES))
def test_onnx_export_keeps_the_official_logits(family, tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = onnx_outputs(_model(family), tmp_path, inputs01())
    assert_logits_close(outputs["logits"], expected(family)["logits"], f"{family} (ONNX Runtime)")


class NotAllowed:
    """A class outside the allow-list, as a malicious checkpoint would hold."""


def test_other_pickled_objects_stay_refused(tmp_path):
    path = tmp_path / "bad.pth"
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(a=1), "extra": NotAllowed()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(EdgeAttackError, match="weights_only=True"):
        read_checkpoint(path)


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, "deit_small_patch16_224", fixture("deit", "checkpoint.pth"))
    assert_logits_close(outputs["logits"], expected("deit")["logits"], "edgeattack export (ONNX)")



def test_model_arg_values_are_typed():
    from edgeattack.cli.options import parse_model_args
    from edgeattack.errors import ConfigError

    parsed = parse_model_args(["embed_dim=48", "gate_center=75.5", "distill=true", "mode=keep-class", "x=none"])
    assert parsed == {"embed_dim": 48, "gate_center": 75.5, "distill": True, "mode": "keep-class", "x": None}
    for bad in (["novalue"], ["2x=1"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_model_args(bad)
    assert np.isfinite(expected("deit")["logits"]).all()
