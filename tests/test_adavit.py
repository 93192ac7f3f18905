"""AdaViT: per-image token counts, physical == masked, batch independence, caps, usage, ONNX, training, errors.

Most tests use a tiny ViT (16x16 images, patch 4 -> 17 tokens, width 32, depth 4) with decision
networks scaled up so that the random policies keep and drop a good share of tokens. The official
mechanism itself is checked against the official code in test_official_adavit.py.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm.models.vision_transformer import VisionTransformer

from edgeattack.compress.methods import compress
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, TrainingDivergedError
from edgeattack.sparsity.adavit import AdaViT, AdaViTOutput, build_adavit
from edgeattack.sparsity.adavit_train import AdaViTTrainConfig, train_adavit
from edgeattack.sparsity.base import is_token_sparse, token_sparsity_info
from edgeattack.sparsity.defence import with_token_cap
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.factory import ZooModel, create_model
from edgeattack.zoo.registry import list_models

TINY_CONFIG = dataclasses.replace(DIGITS_CONFIG, input_size=(3, 16, 16))


def tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=4, num_heads=2, global_pool="token"
    ).eval()


def tiny_adavit(seed: int = 0, **kwargs) -> AdaViT:
    net = AdaViT.from_vit(tiny_vit(seed), **kwargs).eval()
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for decide in net.decisions:
            decide.token.weight.normal_(0.0, 1.0)
            decide.token.bias.zero_()
            if decide.gates is not None:
                decide.gates.weight.normal_(0.0, 0.3)
                decide.gates.bias.fill_(1.0)
            if decide.head is not None:
                decide.head.weight.normal_(0.0, 1.0)
    return net


def tiny_dataset(n: int = 32, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 3, 16, 16), dtype=np.float32)
    return ImageDataset(images=images, labels=rng.integers(0, 10, n), name="random", split="train", seed=seed)


@pytest.fixture(scope="module")
def net() -> AdaViT:
    return tiny_adavit()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(8, 3, 16, 16)


# -- the contract --------------------------------------------------------------------------------
def test_counts_vary_with_the_input_and_keep_the_class_token(net, inputs):
    assert net.mechanism == "adavit" and net.depth == 4 and net.num_tokens == 17 and is_token_sparse(net)
    with torch.no_grad():
        logits, counts = net.forward_counts(inputs)
    assert logits.shape == (8, 10) and counts.dtype == torch.int64 and counts.shape == (8, 4)
    assert counts.max() <= 17 and len({tuple(row) for row in counts.tolist()}) > 1
    assert counts[:, 0].min() >= 1  # block 0 has no layer policy: the class token is always there
    never = tiny_adavit(init_bias=0.0)
    with torch.no_grad():
        for decide in never.decisions:
            decide.token.bias.fill_(-1e4)
            if decide.gates is not None:
                decide.gates.bias.fill_(1e4)
        assert never.forward_counts(inputs)[1].eq(1).all()  # every patch dropped, the class token kept


def test_physical_equals_masked_and_batch_independence(net, inputs):
    with torch.no_grad():
        net.drop_mode = "masked"
        masked, masked_counts = net.forward_counts(inputs)
        net.drop_mode = "physical"
        batched, counts = net.forward_counts(inputs)
        single = [net.forward_counts(inputs[i : i + 1]) for i in range(len(inputs))]
    assert torch.equal(counts, masked_counts)
    torch.testing.assert_close(batched, masked, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([s[0] for s in single]), batched, atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.cat([s[1] for s in single]), counts)
    assert torch.equal(net(inputs), batched)


def test_physical_mode_shrinks_the_blocks_at_batch_one(net, inputs):
    seen: list[int] = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1])) for b in net.blocks]
    try:
        with torch.no_grad():
            _, counts = net.forward_counts(inputs[:1])
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == counts[0].tolist() and min(seen) < 17


def test_skipped_block_processes_no_tokens_and_leaves_tokens_unchanged(inputs):
    net = tiny_adavit()
    with torch.no_grad():
        net.decisions[2].gates.bias.fill_(-1e4)
        logits, counts = net.forward_counts(inputs)
        assert counts[:, 2].eq(0).all()
        net.drop_mode = "masked"
        torch.testing.assert_close(net.forward_counts(inputs)[0], logits, atol=1e-4, rtol=1e-4)


def test_patches_are_used_above_sigmoid_0_6_and_above_logit_0_in_v1(inputs):
    for variant, kept in (("official", 1), ("edgeattack-v1", 17)):
        net = tiny_adavit(variant=variant)
        with torch.no_grad():
            for decide in net.decisions:
                decide.token.weight.zero_()
                decide.token.bias.fill_(0.3)  # sigmoid 0.574
                if decide.gates is not None:
                    decide.gates.bias.fill_(1e4)
            assert net.forward_counts(inputs)[1].eq(kept).all(), variant


@pytest.mark.parametrize("off", [0, 1], ids=["attention-off", "mlp-off"])
def test_attention_and_mlp_are_skipped_separately(off, inputs):
    net = tiny_adavit()
    with torch.no_grad():
        for decide in net.decisions[1:]:
            decide.gates.weight.zero_()
            decide.gates.bias.copy_(torch.tensor([-1e4, 1e4]) if off == 0 else torch.tensor([1e4, -1e4]))
        logits, counts = net.forward_counts(inputs)
        assert counts[:, 1:].min() >= 1  # one of its layers runs: the block processes its tokens
        skipped = [b.attn.qkv for b in net.blocks[1:]] if off == 0 else [b.mlp.fc2 for b in net.blocks[1:]]
        used = [b.mlp.fc2 for b in net.blocks[1:]] if off == 0 else [b.attn.qkv for b in net.blocks[1:]]
        for layer in skipped:
            layer.weight.normal_()
        torch.testing.assert_close(net.forward_counts(inputs)[0], logits)
        for layer in used:
            layer.weight.normal_()
        assert not torch.allclose(net.forward_counts(inputs)[0], logits)


def test_unused_heads_also_mask_the_mlp_input(inputs):
    for variant in ("official", "edgeattack-v1"):
        net = tiny_adavit(variant=variant)
        seen: list[torch.Tensor] = []
        with torch.no_grad():
            for decide in net.decisions[1:]:
                decide.head.weight.zero_()
                decide.head.bias.copy_(torch.tensor([5.0, -5.0]))  # head 0 used, head 1 not
            hooks = [b.mlp.fc1.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0])) for b in net.blocks]
            net.forward_counts(inputs)
        for hook in hooks:
            hook.remove()
        assert seen[0][..., 16:].ne(0).any()  # block 0 has no head policy
        for z in seen[1:]:
            assert z[..., :16].ne(0).any() and bool(z[..., 16:].eq(0).all()) == (variant == "official")


def test_official_names_convert_to_the_nets_own(inputs):
    from edgeattack.sparsity.adavit_checkpoint import from_official, is_official_state

    net = tiny_adavit()
    own = net.state_dict()
    official = {}
    for key, value in own.items():
        if key.endswith((".attn.qkv.weight", ".attn.qkv.bias")):
            for name, part in zip(("query", "key", "value"), value.chunk(3), strict=True):
                official[key.replace(".qkv.", f".{name}.")] = part
        elif key.startswith("decisions."):
            _, block, kind, what = key.split(".")
            where = {"token": "attn.token_select", "head": "head_select", "layer": "layer_select"}[kind]
            official[f"blocks.{block}.{where}.mlp_head.{what}"] = value
        else:
            official[key] = value
    assert is_official_state(official) and not is_official_state(own)
    converted = from_official(official)
    assert set(converted) == set(own) and all(torch.equal(converted[k], own[k]) for k in own)
    del official["blocks.1.head_select.mlp_head.bias"]  # trained with --no-head-select-bias
    assert from_official(official)["decisions.1.head.bias"].eq(0).all()


def test_token_cap_keeps_the_most_likely_tokens(inputs):
    net = tiny_adavit()
    with torch.no_grad():
        _, free = net.forward_counts(inputs)
        net.set_token_cap(5)
        assert net.token_cap == (5, 5, 5, 5)
        _, capped = net.forward_counts(inputs)
        capped_model = with_token_cap(ZooModel(tiny_adavit(), TINY_CONFIG, "adavit_tiny_test"), (17, 3, 17, 17))
        _, counts = capped_model.forward_counts(inputs * 0.5 + 0.5)
    assert capped.max() <= 5 and torch.equal(capped[:, 0], free[:, 0].clamp(max=5))  # later blocks see new states
    assert counts[:, 1].max() <= 3 and torch.equal(counts[:, 0], free[:, 0])
    info = token_sparsity_info(capped_model)
    assert info["mechanism"] == "adavit" and info["token_cap"] == [17, 3, 17, 17] and info["num_tokens"] == 17
    with pytest.raises(ConfigError, match="token_cap"):
        net.set_token_cap((5, 5))
    net.drop_mode = "lazy"
    with pytest.raises(ConfigError, match="drop_mode"):
        net(inputs)


def test_usage_is_a_differentiable_surrogate(net, inputs):
    x = inputs[:4].clone().requires_grad_(True)
    logits, usage = net.usage(x)
    assert usage.shape == (4, 4) and bool(((usage >= 0) & (usage <= 1)).all())
    usage.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    torch.testing.assert_close(logits.detach(), net(inputs[:4]), atol=1e-5, rtol=1e-5)


def test_training_mode_returns_straight_through_decisions(inputs):
    net = tiny_adavit().train()
    out = net(inputs)
    assert isinstance(out, AdaViTOutput)
    assert out.token_keep.shape == (8, 4, 16) and out.head_keep.shape == (8, 3, 2) and out.layer_keep.shape == (8, 3, 2)
    (out.logits.sum() + out.token_keep.mean() + out.head_keep.mean() + out.layer_keep.mean()).backward()
    for decide in net.decisions[1:]:
        assert all(float(layer.weight.grad.abs().sum()) > 0 for layer in (decide.token, decide.head, decide.gates))
    old = tiny_adavit(variant="edgeattack-v1").train()
    assert old(inputs).layer_keep.shape == (8, 3, 1)


# -- ONNX ----------------------------------------------------------------------------------------
class _Counts(torch.nn.Module):
    def __init__(self, net: AdaViT) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_counts(x)


def _ort(net: AdaViT, example: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Counts(net).eval(), (example,), buffer, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits", "counts"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}, "counts": {0: "batch"}},
        )  # fmt: skip
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])


def test_onnx_export_of_the_shipped_model_matches_torch(test_set):
    pytest.importorskip("onnx")
    model = create_model("adavit_tiny_digits")
    net = model.net
    x = (torch.from_numpy(test_set.images[:16]) - model.mean) / model.std
    session = _ort(net, x[:2])
    with torch.no_grad():
        logits, counts = net.forward_counts(x)
    for batch in (x, x[:1]):
        ort_logits, ort_counts = session.run(None, {"x": batch.numpy()})
        assert np.array_equal(ort_counts, counts[: len(batch)].numpy())
        np.testing.assert_allclose(ort_logits, logits[: len(batch)].numpy(), atol=1e-3)


def test_onnx_handles_a_block_every_image_skips(inputs):
    net = tiny_adavit()
    with torch.no_grad():
        net.decisions[1].gates.bias.fill_(-1e4)
        logits, counts = net.forward_counts(inputs)
    ort_logits, ort_counts = _ort(net, inputs[:2]).run(None, {"x": inputs.numpy()})
    assert np.array_equal(ort_counts, counts.numpy()) and counts[:, 1].eq(0).all()
    np.testing.assert_allclose(ort_logits, logits.numpy(), atol=1e-3)


# -- zoo -----------------------------------------------------------------------------------------
def test_zoo_names_and_the_shipped_model(test_set):
    assert {e.name for e in list_models("adavit_*")} == {"adavit_tiny_digits", "adavit_deit_small_patch16_224"}
    model = create_model("adavit_tiny_digits")
    assert isinstance(model.net, AdaViT) and model.config.family == "adavit"
    images = torch.from_numpy(test_set.images)
    with torch.no_grad():
        accuracy = float((model(images).argmax(1).numpy() == test_set.labels).mean())
        _, counts = model.net.forward_counts((images - model.mean) / model.std)
    tur = counts.sum(1).double() / (model.net.depth * model.net.num_tokens)
    assert accuracy >= 0.95
    assert 0.3 < float(tur.mean()) < 0.8 and float(tur.max() - tur.min()) > 0.1
    with pytest.raises(ConfigError, match="pretrained"):
        build_adavit("adavit_deit_small_patch16_224", list_models("adavit_deit*")[0].config, pretrained=True)


# -- training and errors -------------------------------------------------------------------------
def _teacher() -> ZooModel:
    return ZooModel(tiny_vit(), TINY_CONFIG, "vit_tiny_test").eval()


def test_a_short_training_run_has_finite_losses():
    model, report = train_adavit(
        _teacher(), tiny_dataset(), tiny_dataset(16, seed=1), config=AdaViTTrainConfig(epochs=1, batch_size=16)
    )
    assert model.model_name == "adavit_tiny_test" and not model.training and report.steps == 2
    assert all(np.isfinite(v) for v in report.losses[0].values()) and 0 <= report.val_tur[0] <= 1
    assert set(report.train_usage[0]) == {"token", "head", "layer"}


def test_non_finite_loss_raises_training_diverged():
    net = AdaViT.from_vit(tiny_vit())
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    student = ZooModel(net, TINY_CONFIG, "adavit_nan")
    with pytest.raises(TrainingDivergedError, match="loss is nan") as caught:
        train_adavit(_teacher(), tiny_dataset(), student=student, config=AdaViTTrainConfig(epochs=1, batch_size=16))
    assert caught.value.model is student


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown adavit parameter.*valid: .*token_target"):
        compress("adavit", _teacher(), tiny_dataset(), bogus=1)
    with pytest.raises(ConfigError, match="token_target"):
        compress("adavit", _teacher(), tiny_dataset(), token_target=1.5)
    with pytest.raises(ConfigError, match="keep_layers"):
        AdaViT.from_vit(tiny_vit(), keep_layers=9)
    with pytest.raises(ConfigError, match="VisionTransformer"):
        AdaViT(torch.nn.Linear(2, 2))
