"""DynamicViT token pruning: schedule, gathering == masking, losses, training, ONNX export, attacks, errors.

Most tests use a tiny ViT (16x16 images, patch 4 -> 16 patch tokens, width 32, depth 4, so the
predictors sit before blocks 1/2/3) to stay within the test budget on two busy cores.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm.models.vision_transformer import VisionTransformer

from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, DataError, EdgeAttackError, TrainingDivergedError
from edgeattack.sparsity import schedule
from edgeattack.sparsity.dynamicvit import (
    DynamicViT,
    DynamicViTOutput,
    _masked_attention,
    build_dynamicvit,
    kept_token_counts,
)
from edgeattack.sparsity.dynamicvit_train import (
    DynamicViTTrainConfig,
    dynamicvit_loss,
    teacher_outputs,
    train_dynamicvit,
)
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.factory import ZooModel, create_model
from edgeattack.zoo.registry import list_models

TINY_CONFIG = dataclasses.replace(DIGITS_CONFIG, input_size=(3, 16, 16))


def tiny_vit(num_classes: int = 10, img_size: int = 16, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=img_size,
        patch_size=4,
        num_classes=num_classes,
        embed_dim=32,
        depth=4,
        num_heads=2,
        global_pool="token",
    ).eval()


def tiny_teacher(num_classes: int = 10, img_size: int = 16) -> ZooModel:
    config = dataclasses.replace(TINY_CONFIG, input_size=(3, img_size, img_size), num_classes=num_classes)
    return ZooModel(tiny_vit(num_classes, img_size), config, "vit_tiny_test").eval()


def tiny_dataset(n: int = 32, size: int = 16, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 3, size, size), dtype=np.float32)
    return ImageDataset(images=images, labels=rng.integers(0, 10, n), name="random", split="test", seed=seed)


@pytest.fixture(scope="module")
def tiny_zoo() -> ZooModel:
    net = DynamicViT.from_vit(tiny_vit(), rho=0.5)
    return ZooModel(net, dataclasses.replace(TINY_CONFIG, family="dynamicvit"), "dynamicvit_tiny_test_r05").eval()


# -- schedule ------------------------------------------------------------------------------------
def test_schedule_matches_the_reference_and_scales_to_depth():
    assert schedule.prune_locations_for(12) == (3, 6, 9)
    assert schedule.prune_locations_for(6) == (2, 3, 4)  # round half to even: symmetric, 2 full blocks first
    assert schedule.prune_locations_for(4) == (1, 2, 3)
    assert schedule.token_schedule(196, 12, 0.7) == (197,) * 3 + (138,) * 3 + (97,) * 3 + (68,) * 3
    assert schedule.token_schedule(64, 6, 0.7) == (65, 65, 45, 32, 22, 22)
    assert schedule.token_schedule(64, 6, 0.5) == (65, 65, 33, 17, 9, 9)
    assert schedule.rate_from_name("dynamicvit_tiny_digits_r06") == 0.6
    assert schedule.dynamicvit_name("vit_tiny_digits", 0.7) == "dynamicvit_tiny_digits_r07"
    with pytest.raises(ConfigError, match="prune locations"):
        schedule.prune_locations_for(2)


def test_zoo_names_and_builder():
    names = {e.name for e in list_models("dynamicvit_*")}
    assert names == {
        f"dynamicvit_{base}_r0{r}" for base in ("tiny_digits", "deit_small_patch16_224") for r in (5, 6, 7)
    }
    assert all(e.family == "dynamicvit" for e in list_models("dynamicvit_*"))
    model = create_model("dynamicvit_tiny_digits_r07")
    assert isinstance(model.net, DynamicViT) and model.net.prune_locations == (2, 3, 4)
    assert model.net.keep_counts == (44, 31, 21)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("dynamicvit_deit_small_patch16_224_r05", pretrained=True)


def test_unknown_keep_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown DynamicViT keep rate"):
        build_dynamicvit("dynamicvit_tiny_digits_r08", DIGITS_CONFIG)
    with pytest.raises(ConfigError, match="unknown DynamicViT keep rate"):
        train_dynamicvit(tiny_teacher(), tiny_dataset(), rho=0.8, epochs=1)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        DynamicViT.from_vit(tiny_vit(), rho=1.5)
    with pytest.raises(ConfigError, match="prune locations"):
        DynamicViT.from_vit(tiny_vit(), rho=0.7, prune_locations=(2, 1, 3))


# -- inference: static top-k, gathering == masking -------------------------------------------------
def test_eval_keeps_the_scheduled_token_counts(tiny_zoo):
    net = tiny_zoo.net
    assert net.prune_locations == (1, 2, 3) and net.keep_counts == (8, 4, 2)
    assert net.token_schedule == (17, 9, 5, 3)
    images = torch.rand(3, 3, 16, 16)
    counts = kept_token_counts(tiny_zoo, images)
    assert counts.shape == (3, 4) and counts.tolist() == [[17, 9, 5, 3]] * 3
    with torch.no_grad():
        logits, per_block, kept = net.forward_pruned((images - 0.5) / 0.5)
    assert per_block == [17, 9, 5, 3] and [k.shape for k in kept] == [(3, 8), (3, 4), (3, 2)]
    for earlier, later in itertools.pairwise(kept):  # later stages choose among the survivors
        for row in range(3):
            assert set(later[row].tolist()) <= set(earlier[row].tolist())
    assert logits.shape == (3, 10)


def test_gathering_equals_masking_for_the_same_decisions(tiny_zoo):
    net = tiny_zoo.net
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        gathered, _, kept = net.forward_pruned(x)
        masked = net.forward_masked(x, sample=False)
    torch.testing.assert_close(masked.logits, gathered, atol=1e-5, rtol=1e-5)
    for stage, positions in enumerate(kept):
        expected = torch.zeros(4, net.num_patches).scatter(1, positions, 1.0)
        assert torch.equal(masked.decisions[stage], expected)
    assert torch.equal(masked.keep_mask, masked.decisions[-1])


def test_masked_attention_ignores_dropped_tokens_and_passes_gradients_to_the_mask():
    block = tiny_vit().blocks[0]
    x = torch.randn(2, 7, 32)
    keep = torch.tensor([[1, 1, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 1]], dtype=torch.float32)
    policy = keep.unsqueeze(-1).requires_grad_(True)
    out = _masked_attention(block.attn, x, policy)
    for row in range(2):
        idx = keep[row].nonzero().squeeze(1)
        alone = block.attn(x[row : row + 1, idx])  # attention over the kept tokens only
        torch.testing.assert_close(out[row : row + 1, idx], alone, atol=1e-5, rtol=1e-5)
    changed = x.clone()
    changed[:, 2] += 10.0  # token 2 is dropped in both images: the kept tokens do not see it
    again = _masked_attention(block.attn, changed, policy.detach())
    kept_rows = keep.bool()
    torch.testing.assert_close(again[kept_rows], out.detach()[kept_rows], atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0


# -- training ------------------------------------------------------------------------------------
def test_training_forward_and_all_loss_terms_are_finite():
    teacher = tiny_teacher()
    student = DynamicViT.from_vit(teacher.net, rho=0.7).train()
    images, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    out = student((images - 0.5) / 0.5)
    assert isinstance(out, DynamicViTOutput)
    assert out.tokens.shape == (8, 16, 32) and out.keep_mask.shape == (8, 16) and len(out.decisions) == 3
    assert set(torch.unique(out.decisions[0]).tolist()) <= {0.0, 1.0}
    assert bool((out.decisions[2] <= out.decisions[1]).all()) and bool((out.decisions[1] <= out.decisions[0]).all())
    t_logits, t_tokens = teacher_outputs(teacher, images)
    terms = dynamicvit_loss(out, labels, t_logits, t_tokens, student.keep_ratios)
    assert set(terms) == {"loss", "ce", "ratio", "distill", "token"}
    assert all(bool(torch.isfinite(v)) for v in terms.values())
    terms["loss"].backward()
    grads = [p.grad for p in student.score_predictor.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    teacher_weights = teacher.net.blocks[0].attn.qkv.weight
    assert teacher_weights.grad is None  # the student trains a copy
    counts = student.kept_token_counts((images - 0.5) / 0.5)  # training mode: the sampled masks
    assert counts.shape == (8, 4) and bool((counts[:, 0] == 17).all())
    assert bool((counts[:, 1:] <= counts[:, :-1]).all()) and bool((counts >= 1).all())


def test_ratio_loss_drives_the_keep_ratio_to_its_target():
    torch.manual_seed(0)
    student = DynamicViT.from_vit(tiny_vit(), rho=0.7).train()
    optimizer = torch.optim.Adam(student.score_predictor.parameters(), lr=1e-2)
    x = torch.randn(32, 3, 16, 16)

    def gap() -> float:
        with torch.no_grad():
            out = student(x)
        return sum(abs(float(d.mean()) - r) for d, r in zip(out.decisions, student.keep_ratios, strict=True))

    before = gap()
    for _ in range(40):
        out = student(x)
        ratio = sum(((d.mean(1) - r) ** 2).mean() for d, r in zip(out.decisions, student.keep_ratios, strict=True))
        optimizer.zero_grad()
        ratio.backward()
        optimizer.step()
    after = min(gap() for _ in range(3))
    assert after < 0.5 * before, (before, after)


def test_train_dynamicvit_returns_an_eval_model_and_a_report():
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model, report = train_dynamicvit(
        teacher,
        tiny_dataset(48),
        tiny_dataset(16, seed=1),
        rho=0.6,
        epochs=2,
        lr=1e-3,
        config=DynamicViTTrainConfig(batch_size=16, max_shift=1),
    )
    assert not model.training and isinstance(model.net, DynamicViT) and model.net.rho == 0.6
    assert model.config.family == "dynamicvit" and model.model_name == "dynamicvit_tiny_test_r06"
    assert report.steps == 6 and len(report.losses) == 2 and len(report.val_acc) == 2
    assert report.prune_locations == (1, 2, 3) and len(report.train_keep_ratios[0]) == 3
    assert all(np.isfinite(v) for v in report.losses[-1].values())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_weights(monkeypatch):
    from edgeattack.sparsity import dynamicvit_train

    teacher = tiny_teacher()
    student = ZooModel(DynamicViT.from_vit(teacher.net, rho=0.7), teacher.config, "dynamicvit_tiny_test_r07")
    real, calls, snapshot = dynamicvit_train.dynamicvit_loss, [], {}

    def nan_on_third_step(out, *args, **kwargs):
        calls.append(1)
        terms = real(out, *args, **kwargs)
        if len(calls) == 3:
            snapshot.update({k: v.detach().clone() for k, v in student.state_dict().items()})
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(dynamicvit_train, "dynamicvit_loss", nan_on_third_step)
    with pytest.raises(TrainingDivergedError, match="loss is nan at epoch 1/1, step 3/4") as info:
        train_dynamicvit(
            teacher, tiny_dataset(64), rho=0.7, student=student, config=DynamicViTTrainConfig(epochs=1, batch_size=16)
        )
    assert isinstance(info.value, EdgeAttackError) and info.value.report.steps == 2
    assert info.value.model is student and not student.training
    state = student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in snapshot.items())
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_teacher_that_does_not_fit_is_a_clear_error():
    student = create_model("dynamicvit_tiny_digits_r07")
    with pytest.raises(ConfigError, match=r"5 vs 10 classes"):
        train_dynamicvit(
            tiny_teacher(num_classes=5, img_size=32), tiny_dataset(8, size=32), rho=0.7, epochs=1, student=student
        )
    with pytest.raises(ConfigError, match="input size"):
        train_dynamicvit(tiny_teacher(), tiny_dataset(8), rho=0.7, epochs=1, student=student)
    with pytest.raises(DataError, match="takes"):
        train_dynamicvit(tiny_teacher(), tiny_dataset(8, size=32), rho=0.7, epochs=1)
    with pytest.raises(ConfigError, match=r"keep rate 0\.7, asked for 0\.5"):
        train_dynamicvit(tiny_teacher(img_size=32), tiny_dataset(8, size=32), rho=0.5, epochs=1, student=student)
    distilled = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, reg_tokens=1)
    with pytest.raises(ConfigError, match="class token"):
        DynamicViT.from_vit(distilled, rho=0.7)
    with pytest.raises(ConfigError, match="timm VisionTransformer"):
        DynamicViT.from_vit(torch.nn.Linear(2, 2), rho=0.7)


# -- deployment: ONNX and attacks --------------------------------------------------------------
def test_onnx_export_has_static_topk_dynamic_batch_and_parity(tiny_zoo, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.export.parity import check_parity

    path = tmp_path / "dynamicvit.onnx"
    export_onnx(tiny_zoo, path)
    tiny_zoo.eval()  # export_onnx leaves the model in training mode (its wrapper is built in train mode)
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("TopK") == 3 and "GatherElements" in ops
    report = check_parity(tiny_zoo, path, tiny_dataset(40), batch_size=16)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = tiny_dataset(5, seed=3).images
    with torch.no_grad():
        expected = tiny_zoo(torch.from_numpy(images)).numpy()
    for batch in (1, 5):
        got = session.run(None, {"images": images[:batch]})[0]
        np.testing.assert_allclose(got, expected[:batch], atol=1e-4)


def test_pgd_attacks_the_pruned_model(tiny_zoo):
    from edgeattack.attacks.whitebox import PGD

    data = tiny_dataset(8, seed=2)
    out = PGD(eps=16 / 255, steps=3)(tiny_zoo, data)
    assert out.adversarial.shape == data.images.shape
    assert np.abs(out.delta).max() <= 16 / 255 + 1e-6 and np.abs(out.delta).max() > 0
    assert not tiny_zoo.training
