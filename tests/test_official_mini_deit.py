"""Mini-DeiT from a checkpoint saved the way microsoft/Cream's MiniViT saves one, against its own outputs.

The fixture (tests/fixtures/official/mini_deit, recorded by
scripts/official_fixtures/record_mini_deit.py with Cream's `mini_vision_transformer.VisionTransformer`
built as `mini_deit_small_patch16_224` builds it, at the fixture width) is Mini-DeiT-S's architecture:
pairs of layers sharing qkv/proj/MLP, per-layer LayerNorms, iRPE on keys and head-mixing 1x1 convs,
no class token, a mean-pooled head. It is saved in main.py's checkpoint layout (model, optimizer,
lr_scheduler, epoch, a different model_ema, scaler, args), with the eval logits.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from _official import SMALL_WIDTH, assert_logits_close, expected, export_with_cli, fixture, inputs01, onnx_outputs

from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.zoo.checkpoint import read_checkpoint
from edgeattack.zoo.factory import create_model

NAME = "mini_deit_small_patch16_224"
CHECKPOINT = fixture("mini_deit", "checkpoint.pth")


@pytest.fixture(scope="module")
def model():
    return create_model(NAME, checkpoint=CHECKPOINT, **SMALL_WIDTH)


def test_the_official_checkpoint_layout_loads_as_it_is(model):
    checkpoint = read_checkpoint(CHECKPOINT)
    assert checkpoint.layout == "model" and checkpoint.args["model"] == NAME
    state = checkpoint.state
    assert state["pos_embed"].shape == (1, 196, 48) and "cls_token" not in state  # no class token
    assert state["blocks.0.block.attn.rpe_k.instances.1.lookup_table_weight"].shape == (1, 16, 49)  # shared, product
    assert state["blocks.5.block.attn.conv_w.instances.0.weight"].shape == (3, 3, 1, 1)
    # per group: 2 x norm1, 2 x norm2 (weight, bias), qkv, proj, fc1, fc2 (weight, bias), 2 x rpe_k, conv_l, conv_w
    assert len([key for key in state if key.startswith("blocks.")]) == 6 * (4 + 4 + 8 + 2 + 2 + 2)
    ours = model.net.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[key], state[key]) for key in state)  # 'model', not the halved 'model_ema'


def test_logits_equal_the_official_code(model):
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs01()))
    assert_logits_close(logits, expected("mini_deit")["logits"], "Mini-DeiT (PyTorch)")
    assert model.weights_source == "checkpoint:checkpoint.pth"


def test_onnx_export_keeps_the_official_logits(model, tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = onnx_outputs(model, tmp_path, inputs01())
    assert_logits_close(outputs["logits"], expected("mini_deit")["logits"], "Mini-DeiT (ONNX Runtime)")


def test_cli_export_of_the_official_checkpoint(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs = export_with_cli(tmp_path, NAME, CHECKPOINT)
    assert_logits_close(outputs["logits"], expected("mini_deit")["logits"], "edgeattack export (ONNX)")



def test_irpe_buckets_follow_the_piecewise_index_function():
    from edgeattack.compress.irpe import RPEConfig, bucket_ids, piecewise_index

    # Eq. 18 at ratio 1.9 (alpha 1.9, beta 3.8, gamma 15.2): |x| <= 1 kept, 2-3 -> 2, farther -> 3
    got = piecewise_index(torch.arange(0, 14), 1.9, 3.8, 15.2).tolist()
    assert got == [0, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    assert piecewise_index(-torch.arange(0, 14), 1.9, 3.8, 15.2).tolist() == [-v for v in got]
    config = RPEConfig()
    ids = bucket_ids(config, 14, 14)
    assert config.num_buckets == 49 and ids.shape == (196, 196) and int(ids.min()) == 0 and int(ids.max()) == 48
    assert (ids.diagonal() == 24).all()  # offset (0, 0) is the centre of the 7 x 7 product grid
    assert int(ids[0, 1]) == 3 * 7 + 2 and int(ids[1, 0]) == 3 * 7 + 4  # (query - key) column offsets -1, +1
    assert int(ids[14, 0]) == 4 * 7 + 3 and int(ids[195, 0]) == 6 * 7 + 6  # one row down; the far corner
    skipped = bucket_ids(RPEConfig(skip=1), 14, 14)
    assert skipped.shape == (197, 197) and (skipped[0] == 49).all() and (skipped[:, 0] == 49).all()
    with pytest.raises(ConfigError, match="cross is not implemented"):
        RPEConfig(method="cross")


def test_flops_count_the_head_mixing_and_irpe(model):
    net = model.net
    arch = net.vit_arch()
    assert (arch.num_prefix_tokens, arch.num_tokens, arch.depth, arch.num_heads) == (0, 196, 12, 3)
    per_layer = 2 * 3**2 * 196**2 + 196 * 16 * 49 * 3  # conv_l + conv_w over the heads; q @ lookup table per head
    assert net.transform_flops() == 12 * per_layer
    assert net.analytic_flops().transforms == 12 * per_layer
    from edgeattack.zoo.arch import arch_of, flops_of

    assert arch_of(model) == arch and flops_of(model) == net.analytic_flops()  # what profile and the study read
    full = create_model("mini_deit_small_patch16_224", random_weights=True)
    assert round(flops_of(full).total / 1e9, 2) == 4.65  # the paper's 4.7 GFLOPs for Mini-DeiT-S


def test_the_class_token_variant_stays_a_named_option(tmp_path):
    from safetensors.torch import save_file

    legacy = create_model("mini_deit_tiny_patch16_224", random_weights=True, variant="class-token", **SMALL_WIDTH)
    assert legacy.net.has_class_token and hasattr(legacy.net.blocks[0], "layers")
    path = tmp_path / "legacy.safetensors"
    save_file({key: value.contiguous() for key, value in legacy.net.state_dict().items()}, str(path))
    again = create_model("mini_deit_tiny_patch16_224", checkpoint=path, variant="class-token", **SMALL_WIDTH)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(again(x), legacy(x))
    with pytest.raises(EdgeAttackError, match="variant=class-token"):
        create_model("mini_deit_tiny_patch16_224", checkpoint=path, **SMALL_WIDTH)
    with pytest.raises(ConfigError, match="variant must be one of"):
        create_model("mini_deit_tiny_patch16_224", random_weights=True, variant="cls")
    with pytest.raises(ConfigError, match="unknown Mini-DeiT argument"):
        create_model("mini_deit_tiny_patch16_224", random_weights=True, mlp_transform=True)
    assert np.isfinite(expected("mini_deit")["logits"]).all()
