"""The zoo: registry, shipped weights, checkpoints (safetensors and weights_only .pth), timm names."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeattack.data import load_digits_dataset
from edgeattack.errors import EdgeAttackError, ModelNotFoundError
from edgeattack.zoo import create_model, list_models, read_manifest
from edgeattack.zoo.factory import load_checkpoint
from edgeattack.zoo.train import TrainConfig, evaluate_accuracy, save_weights, train_model


def test_registry_lists_and_suggests():
    names = [entry.name for entry in list_models()]
    assert "vit_tiny_digits" in names and "deit_small_distilled_patch16_224" in names
    with pytest.raises(ModelNotFoundError, match="did you mean: vit_tiny_digits"):
        create_model("vit_tiny_digit")


def test_shipped_model_is_accurate_and_matches_its_manifest():
    entry = read_manifest()["vit_tiny_digits"]
    model = create_model("vit_tiny_digits")
    assert model.weights_sha256 == entry.sha256
    accuracy = evaluate_accuracy(model, load_digits_dataset("test"))
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(entry.metrics["test_acc"], abs=1e-6)
    assert entry.command.startswith("edgeattack train vit_tiny_digits")


def test_normalisation_is_inside_the_model():
    model = create_model("vit_tiny_digits")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.5))


def test_timm_pretrained_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgeAttackError, match="--checkpoint"):
        create_model("deit_tiny_patch16_224", pretrained=True)


def test_timm_checkpoint_safetensors_and_pth(tmp_path: Path):
    from safetensors.torch import save_file

    reference = create_model("deit_tiny_patch16_224")
    state = {k: v.clone() for k, v in reference.net.state_dict().items()}
    save_file(state, str(tmp_path / "deit.safetensors"))
    torch.save({"model": state}, tmp_path / "deit.pth")  # the layout of DeiT's released checkpoints
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        for name in ("deit.safetensors", "deit.pth"):
            loaded = create_model("deit_tiny_patch16_224", checkpoint=tmp_path / name)
            assert torch.allclose(loaded(x), expected, atol=1e-5), name


def test_pickled_code_in_a_pth_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": Evil()}, handle)
    with pytest.raises(EdgeAttackError, match="weights_only=True"):
        create_model("vit_tiny_digits", checkpoint=path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EdgeAttackError, match="does not fit"):
        load_checkpoint(create_model("vit_tiny_digits", pretrained=False), tmp_path / "other.safetensors")
    with pytest.raises(EdgeAttackError, match="does not exist"):
        create_model("vit_tiny_digits", checkpoint=tmp_path / "missing.safetensors")


def test_train_and_save_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("vit_tiny_digits", pretrained=False)
    train = load_digits_dataset("train").take(64)
    report = train_model(model, train, None, TrainConfig(epochs=1, batch_size=32))
    assert len(report.train_loss) == 1 and np.isfinite(report.train_loss[0])
    entry = save_weights(model, tmp_path, metrics={"test_acc": 0.5}, command="edgeattack train ...")
    assert read_manifest(tmp_path)["vit_tiny_digits"].sha256 == entry.sha256
    again = create_model("vit_tiny_digits", checkpoint=tmp_path / entry.file)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("name", sorted(read_manifest()))
def test_every_shipped_model_reproduces_its_manifest_accuracy(name: str):
    entry = read_manifest()[name]
    model = create_model(name)
    assert model.weights_sha256 == entry.sha256
    accuracy = evaluate_accuracy(model, load_digits_dataset("test"))
    assert accuracy == pytest.approx(entry.metrics["test_acc"], abs=1e-6)
    assert accuracy >= 0.9
    assert entry.command.startswith("edgeattack ")
