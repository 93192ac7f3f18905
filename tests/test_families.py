"""Compressed families: distill, minivit, sparse24 (trained) and int8-dynamic (post-training).

Each trained family is built from the shipped teacher, trains a step with finite losses, exports to
ONNX with parity and runs PGD; the specific properties (2:4 weights, fewer parameters, int8 size and
accuracy) and the errors are checked too. One training step only, so this stays fast on one thread.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeattack.attacks.whitebox import PGD
from edgeattack.compress.distill import TrainingError, compress_distill
from edgeattack.compress.int8_torch import compress_int8_dynamic, load_int8_dynamic, save_int8_dynamic
from edgeattack.compress.minivit import build_minivit, compress_minivit, init_from_teacher
from edgeattack.compress.sparse24 import compress_sparse24, is_2to4_sparse, mask_2to4, mask_2to4_numpy
from edgeattack.data import load_digits_dataset
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.export.onnx_export import export_onnx
from edgeattack.export.parity import check_parity
from edgeattack.zoo import create_model, list_models
from edgeattack.zoo.factory import ZooModel, count_parameters
from edgeattack.zoo.train import evaluate_accuracy, save_weights

torch.set_num_threads(1)

ONE_STEP = {"epochs": 1, "max_steps": 1, "batch_size": 32}


@pytest.fixture(scope="module")
def teacher() -> ZooModel:
    return create_model("vit_tiny_digits")


@pytest.fixture(scope="module")
def data():
    return {
        "train": load_digits_dataset("train").take(64),
        "val": load_digits_dataset("val").take(32),
        "test": load_digits_dataset("test").take(64),
    }


def _finite_losses(report: dict) -> None:
    assert report["steps"] == 1
    values = report["train_loss"] + [v for parts in report["loss_parts"].values() for v in parts]
    assert values and all(math.isfinite(v) for v in values)


def _deployable(model: ZooModel, tmp_path: Path, test) -> None:
    """Eval mode exports to ONNX with top-1 parity 1.0, and PGD runs on the torch model."""
    path = tmp_path / f"{model.model_name}.onnx"
    export_onnx(model, path)
    parity = check_parity(model, path, test, num_images=32)
    assert parity.top1_agreement == 1.0, parity.summary()
    assert parity.max_abs_logit_diff < 1e-3
    out = PGD(eps=8 / 255, steps=2)(model, test.take(4))
    assert out.adversarial.shape == (4, 3, 32, 32)
    assert np.abs(out.delta).max() <= 8 / 255 + 1e-6


def _reloads(model: ZooModel, tmp_path: Path) -> None:
    """The result loads into its registered zoo name from a checkpoint written by save_weights."""
    save_weights(model, tmp_path / "weights")
    again = create_model(model.model_name, checkpoint=tmp_path / "weights" / f"{model.model_name}.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)


def test_families_are_registered_without_torch_names():
    families = {entry.name: entry.family for entry in list_models()}
    assert families["deit_tiny_digits_distilled"] == "distill"
    assert families["minivit_tiny_digits"] == "minivit"
    assert families["vit_tiny_digits_sparse24"] == "sparse24"
    assert families["mini_deit_tiny_patch16_224"] == "minivit"


def test_distill_born_again(teacher, data, tmp_path):
    student, report = compress_distill(teacher, data["train"], data["val"], **ONE_STEP)
    assert student.model_name == "deit_tiny_digits_distilled" and student.config.family == "distill"
    assert report["born_again"] and report["hyperparams"]["distill_type"] == "hard"
    assert set(report["loss_parts"]) == {"ce", "kd"}
    _finite_losses(report)
    assert not student.training and type(student.net).__name__ == "VisionTransformerDistilled"
    with torch.no_grad():  # eval: one tensor, the mean of the two heads
        x = torch.rand(2, 3, 32, 32)
        logits = student(x)
        feats = student.net.forward_features((x - 0.5) / 0.5)
        heads = (student.net.head(feats[:, 0]) + student.net.head_dist(feats[:, 1])) / 2
    assert torch.allclose(logits, heads, atol=1e-5)
    _deployable(student, tmp_path, data["test"])
    _reloads(student, tmp_path)


def test_distill_soft_from_teacher_init_keeps_accuracy(teacher, data):
    student, report = compress_distill(
        teacher,
        data["train"],
        data["val"],
        distill_type="soft",
        alpha=0.7,
        tau=2.0,
        init="teacher",
        **{**ONE_STEP, "lr": 1e-4},
    )
    _finite_losses(report)
    assert report["val_acc_final"] >= report["teacher_val_acc"] - 0.1
    assert student.config.family == "distill" and report["hyperparams"]["init"] == "teacher"


def test_minivit_shares_weights_and_distils(teacher, data, tmp_path):
    student, report = compress_minivit(teacher, data["train"], data["val"], **ONE_STEP)
    assert student.model_name == "minivit_tiny_digits" and student.config.family == "minivit"
    assert set(report["loss_parts"]) == {"ce", "kd", "attn", "hidden"}
    _finite_losses(report)
    assert count_parameters(student) < 0.6 * count_parameters(teacher)
    assert 0.5 <= report["block_params_ratio"] < 0.53  # 1/share of the blocks, plus the per-layer parts
    assert len(student.net.blocks) == 3 and all(len(b.layers) == 2 for b in student.net.blocks)
    _deployable(student, tmp_path, data["test"])
    _reloads(student, tmp_path)


def test_minivit_without_sharing_reproduces_the_teacher(teacher):
    net = build_minivit(teacher.config, {"patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3}, share=1)
    init_from_teacher(net, teacher.net)  # identity head mixers, zero depth-wise conv: the same function
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ZooModel(net, teacher.config, "m").eval()(x), teacher(x), atol=1e-4)


def test_sparse24_keeps_2to4_through_finetuning(teacher, data, tmp_path):
    student, report = compress_sparse24(
        teacher, data["train"], data["val"], **{**ONE_STEP, "max_steps": 3, "batch_size": 16, "lr": 1e-2}
    )
    assert student.model_name == "vit_tiny_digits_sparse24" and report["steps"] == 3
    assert all(math.isfinite(v) for v in report["train_loss"])
    linears = {n: m for n, m in student.net.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(report["pruned_layers"]) == 24 and "head" in report["dense_layers"]
    for name in report["pruned_layers"]:
        assert is_2to4_sparse(linears[name].weight), name
    assert not is_2to4_sparse(linears["head"].weight)
    assert not is_2to4_sparse(teacher.net.blocks[0].attn.qkv.weight)  # the teacher is untouched
    assert report["linear_zero_fraction"] == pytest.approx(0.5, abs=0.01)
    _deployable(student, tmp_path, data["test"])
    _reloads(student, tmp_path)


def test_2to4_masks_and_checker():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 0.9, -1.5, 0.0]])
    mask = mask_2to4(w)
    assert mask.tolist() == [[False, True, True, False, True, False, True, False]]
    assert (mask_2to4_numpy(w.numpy()) == mask.numpy()).all()
    assert is_2to4_sparse(w * mask) and not is_2to4_sparse(w)
    assert is_2to4_sparse((w * mask).numpy().T, axis=0)  # an ONNX MatMul initializer [in, out]
    assert not is_2to4_sparse(np.zeros((2, 6)))  # the reduction dimension is not a multiple of 4


def test_int8_dynamic_accuracy_and_size(teacher, data, tmp_path):
    quantized, report = compress_int8_dynamic(teacher, None, data["test"], backend="torch.ao")
    assert report["backend"] == "torch.ao" and report["quantized_layers"] == 25
    assert report["size_ratio"] < 0.40
    assert abs(report["val_acc_final"] - evaluate_accuracy(teacher, data["test"])) <= 0.02
    assert quantized.config.family == "int8-dynamic" and quantized.differentiable is False
    path = save_int8_dynamic(quantized, tmp_path / "q.pt")
    assert path.stat().st_size < 0.40 * sum(p.numel() * 4 for p in teacher.parameters())
    again = load_int8_dynamic(path)
    assert again.model_name == "vit_tiny_digits_int8_dynamic" and again.source_model_name == "vit_tiny_digits"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), quantized(x))


@pytest.mark.parametrize("method", [compress_distill, compress_minivit, compress_sparse24, compress_int8_dynamic])
def test_teacher_that_does_not_fit_the_data_is_refused(method, data):
    other = create_model("vit_tiny_digits", pretrained=False)
    other.config = dataclasses.replace(other.config, num_classes=7)
    with pytest.raises(ConfigError, match="7 classes"):
        method(other, data["train"], data["val"], **({} if method is compress_int8_dynamic else ONE_STEP))
    big = load_digits_dataset("val", size=48).take(8)
    with pytest.raises(ConfigError, match="3x32x32 images"):
        method(create_model("vit_tiny_digits"), big, big, **({} if method is compress_int8_dynamic else ONE_STEP))


def test_unknown_hyperparameter_is_refused(teacher, data):
    with pytest.raises(ConfigError, match="unknown minivit hyper-parameter"):
        compress_minivit(teacher, data["train"], None, sharing=3)
    with pytest.raises(ConfigError, match="share must divide depth"):
        compress_minivit(teacher, data["train"], None, share=4, **ONE_STEP)


def test_nan_loss_stops_with_the_last_good_state(teacher, data):
    calls = {"n": 0}

    def poison(module, _inputs, output):
        if module is not teacher.net.head:  # the student is a deep copy of the teacher, hook included
            return output
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 2 else output

    handle = teacher.net.head.register_forward_hook(poison)
    try:
        with pytest.raises(TrainingError, match="epoch 1 step 2: the loss is nan") as caught:
            compress_sparse24(teacher, data["train"], None, epochs=1, batch_size=16, lr=1e-3)
    finally:
        handle.remove()
    error = caught.value
    assert isinstance(error, EdgeAttackError) and error.report["steps"] == 1
    assert not error.model.training
    one_step, _ = compress_sparse24(teacher, data["train"], None, epochs=1, batch_size=16, lr=1e-3, max_steps=1)
    for kept, expected in zip(error.model.parameters(), one_step.parameters(), strict=True):
        assert torch.isfinite(kept).all() and torch.equal(kept, expected)  # the weights after the good step


def test_mini_deit_imagenet_names_build_at_half_the_parameters():
    mini = create_model("mini_deit_tiny_patch16_224", random_weights=True)
    dense = create_model("deit_tiny_patch16_224", random_weights=True)
    assert 0.5 < count_parameters(mini) / count_parameters(dense) < 0.56  # Mini-DeiT-Ti: 3.1M for DeiT-Ti's 5.7M
    with torch.no_grad():
        assert mini(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    with pytest.raises(ConfigError, match="no downloadable weights"):
        create_model("mini_deit_tiny_patch16_224", pretrained=True)
