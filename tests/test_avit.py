"""A-ViT adaptive token halting: the token-sparse contract, ONNX parity, training, errors.

Behaviour tests use the shipped avit_tiny_digits (6 blocks, 65 tokens); the mechanism and training
tests use a tiny random ViT (16x16 images, 16 patch tokens, width 32, depth 3) to stay within the
budget. tests/test_official_avit.py checks the mechanism against NVlabs/A-ViT's own outputs.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm.models.vision_transformer import VisionTransformer

from edgeattack.compress.methods import METHODS, compress
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, TrainingDivergedError
from edgeattack.sparsity.avit import AViT, AViTOutput, build_avit
from edgeattack.sparsity.avit_train import AViTTrainConfig, avit_loss, distribution_target, train_avit
from edgeattack.sparsity.base import is_token_sparse
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.factory import ZooModel, create_model
from edgeattack.zoo.registry import get_entry

TINY_CONFIG = dataclasses.replace(DIGITS_CONFIG, input_size=(3, 16, 16))


@pytest.fixture(scope="module")
def avit():
    return create_model("avit_tiny_digits")


@pytest.fixture(scope="module")
def images(test_set, avit):
    """64 normalised test images and their labels."""
    x = torch.from_numpy(test_set.images[:64])
    return (x - avit.mean) / avit.std, torch.from_numpy(test_set.labels[:64])


def tiny_teacher(seed: int = 0) -> ZooModel:
    torch.manual_seed(seed)
    net = VisionTransformer(
        img_size=16, patch_size=4, num_classes=10, embed_dim=32, depth=3, num_heads=2, global_pool="token"
    )
    return ZooModel(net, TINY_CONFIG, "vit_tiny_test").eval()


def tiny_data(n: int = 48, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(rng.random((n, 3, 16, 16), dtype=np.float32), rng.integers(0, 10, n), "tiny", "train")


def test_registered_and_contract(avit):
    assert get_entry("avit_tiny_digits").shipped and get_entry("avit_tiny_digits").config.family == "avit"
    assert get_entry("avit_deit_small_patch16_224").config.input_size == (3, 224, 224)
    net = avit.net
    assert isinstance(net, AViT) and is_token_sparse(net)
    assert (net.mechanism, net.depth, net.num_tokens, net.token_cap, net.drop_mode) == ("avit", 6, 65, None, "physical")
    assert (net.halting, net.gate_scale, net.gate_center, net.eps) == ("official", 10.0, 10.0, 0.01)
    assert "avit" in METHODS


def test_counts_vary_class_token_halts_non_increasing(avit, images):
    x, labels = images
    with torch.no_grad():
        logits, counts = avit.net.forward_counts(x)
        _, keep = avit.net.keep_masks(x)
    assert counts.dtype == torch.int64 and counts.shape == (64, 6)
    assert (logits.argmax(1) == labels).float().mean() >= 0.9
    assert (counts[:, 0] == 65).all() and (counts[:, 1:] <= counts[:, :-1]).all()
    assert torch.equal(keep.sum(-1), counts)
    class_depth = keep[:, :, 0].sum(1)
    assert len(set(class_depth.tolist())) > 1 and (class_depth < 6).any()
    tur = counts.sum(1).double() / (6 * 65)
    assert len(set(tur.tolist())) > 10 and float(tur.max() - tur.min()) > 0.1
    assert 0.2 < float(tur.mean()) < 0.8


def test_batch_independent_and_physical_matches_masked(avit, images):
    x = images[0][:12]
    net = avit.net
    with torch.no_grad():
        logits, counts = net.forward_counts(x)
        for i in range(0, 12, 3):
            single_logits, single_counts = net.forward_counts(x[i : i + 1])
            torch.testing.assert_close(single_logits, logits[i : i + 1], atol=1e-4, rtol=0)
            assert torch.equal(single_counts, counts[i : i + 1])
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
        shuffled_logits, shuffled_counts = net.forward_counts(x[perm])
        torch.testing.assert_close(shuffled_logits, logits[perm], atol=1e-4, rtol=0)
        assert torch.equal(shuffled_counts, counts[perm])
        masked = copy.deepcopy(net)
        masked.drop_mode = "masked"
        masked_logits, masked_counts = masked.forward_counts(x)
    torch.testing.assert_close(masked_logits, logits, atol=1e-4, rtol=0)
    assert torch.equal(masked_counts, counts)


def test_physical_dropping_shrinks_the_blocks(avit, images):
    x = images[0][:1]
    lengths: list[int] = []
    hooks = [b.norm1.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1])) for b in avit.net.blocks]
    try:
        with torch.no_grad():
            _, counts = avit.net.forward_counts(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert lengths == counts[0].clamp_min(1).tolist() and lengths[-1] < 65  # a block with none running keeps a slot


def test_token_cap_bites_and_keeps_lowest_halting(avit, images):
    x = images[0][:16]
    net = copy.deepcopy(avit.net)
    cap = (65, 40, 30, 20, 20, 8)
    net.set_token_cap(cap)
    with torch.no_grad():
        logits, counts = net.forward_counts(x)
        net.drop_mode = "masked"
        masked_logits, masked_counts = net.forward_counts(x)
        net.set_token_cap(None)
        _, free = net.forward_counts(x)
    assert (counts <= torch.tensor(cap)).all() and (counts == torch.minimum(free, torch.tensor(cap))).any()
    assert torch.equal(counts, masked_counts)
    torch.testing.assert_close(logits, masked_logits, atol=1e-4, rtol=0)
    assert (counts[:, -1] <= 8).all() and (counts[:, 0] == 65).all()
    net.set_token_cap(10)
    assert net.token_cap == (10,) * 6
    with pytest.raises(ConfigError):
        net.set_token_cap((0, 5, 5, 5, 5, 5))
    with pytest.raises(ConfigError):
        net.set_token_cap((5, 5))


def test_usage_is_differentiable_surrogate(avit, images):
    x = images[0][:4].clone().requires_grad_(True)
    _, usage = avit.net.usage(x)
    assert usage.shape == (4, 6) and float(usage.min()) >= 0.0 and float(usage.max()) <= 1.0
    assert torch.allclose(usage[:, 0], torch.ones(4))
    with torch.no_grad():
        _, counts = avit.net.forward_counts(x)
    assert (usage <= counts / 65 + 0.01).all()  # a running token counts at most 1, a halted one at most eps
    usage.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("cap", [None, (65, 40, 30, 20, 20, 8)], ids=["free", "capped"])
def test_onnx_counts_and_logits_match_torch(avit, test_set, tmp_path, cap):
    ort = pytest.importorskip("onnxruntime")
    avit = copy.deepcopy(avit)
    avit.net.set_token_cap(cap)

    class Counted(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.net.forward_counts((images - self.model.mean) / self.model.std)

    wrapper = Counted(avit).eval()
    path = tmp_path / "avit.onnx"
    images = torch.from_numpy(test_set.images[:16])
    torch.onnx.export(
        wrapper,
        (images[:2],),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["logits", "token_counts"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}, "token_counts": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        logits, counts = wrapper(images)
    got_logits, got_counts = session.run(None, {"images": images.numpy()})
    np.testing.assert_array_equal(got_counts, counts.numpy())
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-3)
    for i in (0, 7):
        one_logits, one_counts = session.run(None, {"images": images[i : i + 1].numpy()})
        np.testing.assert_array_equal(one_counts, counts[i : i + 1].numpy())
        np.testing.assert_allclose(one_logits, logits[i : i + 1].numpy(), atol=1e-3)


@pytest.mark.parametrize("drop_mode", ["physical", "masked"])
def test_halting_weights_on_a_tiny_vit(drop_mode):
    teacher = tiny_teacher()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    never = AViT.from_vit(teacher.net, gate_center=1e4, drop_mode=drop_mode).eval()
    at_once = AViT.from_vit(teacher.net, gate_scale=1e-3, gate_center=-20.0, drop_mode=drop_mode).eval()
    kept = AViT.from_vit(teacher.net, gate_scale=1e-3, gate_center=-20.0, halting="keep-class").eval()
    with torch.no_grad():
        never_logits, never_counts = never.forward_counts(x)
        logits, counts = at_once.forward_counts(x)
        one_logits, one_counts = at_once.forward_counts(x[:1])
        _, kept_counts = kept.forward_counts(x)
        first = teacher.net.blocks[0](never.embed(x))[:, :1]
    # nothing halts: the class token halts in the last block with R = 1, i.e. the plain ViT
    torch.testing.assert_close(never_logits, teacher.net(x), atol=1e-5, rtol=0)
    assert (never_counts == 17).all()
    # everything halts in block 0 (h = 1 > 0.99): the head reads the class token's block-0 output
    torch.testing.assert_close(logits, never.classify(first), atol=1e-5, rtol=0)
    assert counts.tolist() == [[17, 0, 0]] * 3 and one_counts.tolist() == [[17, 0, 0]]
    torch.testing.assert_close(one_logits, logits[:1], atol=1e-5, rtol=0)
    assert kept_counts.tolist() == [[17, 1, 1]] * 3  # keep-class: the class token never halts


def test_onnx_with_blocks_where_nothing_runs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = AViT.from_vit(tiny_teacher().net, gate_scale=1e-3, gate_center=-20.0).eval()
    path = tmp_path / "halted.onnx"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.onnx.export(
        net.eval(),
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = net(x)
    for batch in (x, x[:1]):
        (got,) = session.run(None, {"x": batch.numpy()})
        np.testing.assert_allclose(got, want[: len(batch)].numpy(), atol=1e-4)


def test_training_forward_and_a_short_training_run():
    teacher = tiny_teacher()
    net = AViT.from_vit(teacher.net, gate_center=2.0).train()
    out = net(torch.randn(4, 3, 16, 16))
    assert isinstance(out, AViTOutput) and out.ponder.shape == (4, 17) and out.halting.shape == (4, 3)
    assert (out.ponder > 1).all() and (out.ponder <= 4).all()  # blocks run + the remainder at halting
    assert (out.halting >= 0).all() and (out.halting <= 1).all()
    target = distribution_target(3, 1.0)
    terms = avit_loss(out, torch.zeros(4, dtype=torch.int64), None, target, ponder_weight=0.1, prior_weight=0.1)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and all(torch.isfinite(v) for v in terms.values())
    other_first = out._replace(halting=torch.cat([torch.rand(1, 3), out.halting[1:].detach()]))
    again = avit_loss(other_first, torch.zeros(4, dtype=torch.int64), None, target, ponder_weight=0.1, prior_weight=0.1)
    torch.testing.assert_close(again["prior"], terms["prior"])  # as the reference, image 0 is left out of the prior
    config = AViTTrainConfig(epochs=1, batch_size=16, seed=0)
    model, report = train_avit(teacher, tiny_data(), tiny_data(16, seed=1), config=config, gate_center=2.0)
    assert not model.training and model.model_name == "avit_tiny_test" and model.config.family == "avit"
    assert report.steps == 3 and all(np.isfinite(v) for v in report.losses[0].values())
    assert len(report.epoch_val_acc) == 1 and 0 < report.epoch_val_tur[0] <= 1 and report.halting == "official"
    with torch.no_grad():  # the teacher was copied, not trained
        assert not torch.equal(model.net.head.weight, teacher.net.head.weight)


def test_diverged_training_raises_with_the_model():
    teacher = tiny_teacher()
    with torch.no_grad():
        teacher.net.head.bias[0] = float("nan")
    with pytest.raises(TrainingDivergedError) as info:
        train_avit(teacher, tiny_data(), config=AViTTrainConfig(epochs=1, batch_size=16))
    assert info.value.model is not None and "loss is nan" in str(info.value)


def test_bad_params_and_options_raise_config_error():
    teacher, data = tiny_teacher(), tiny_data(8)
    with pytest.raises(ConfigError, match=r"valid:.*ponder_weight"):
        compress("avit", teacher, data, ponder_wieght=0.1)
    with pytest.raises(ConfigError):
        compress("avit", teacher, data, ponder_weight=-1.0)
    with pytest.raises(ConfigError):
        compress("avit", teacher, data, epochs=1.5)
    with pytest.raises(ConfigError):
        AViT.from_vit(teacher.net, drop_mode="sparse")
    with pytest.raises(ConfigError):
        AViT.from_vit(teacher.net, eps=1.5)
    with pytest.raises(ConfigError, match="keep-class"):
        AViT.from_vit(teacher.net, halting="never")
    with pytest.raises(ConfigError, match="halting"):
        compress("avit", teacher, data, halting="class")
    with pytest.raises(ConfigError, match="target_depth"):
        AViTTrainConfig(target_depth=0)
    with pytest.raises(ConfigError, match="pretrained"):
        build_avit("avit_tiny_digits", DIGITS_CONFIG, pretrained=True)
    with pytest.raises(ConfigError):
        AViT(VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, global_pool="avg"))
