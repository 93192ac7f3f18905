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

    reference = create_model("deit_tiny_patch16_224", random_weights=True)
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


# bad checkpoint files: one clear error naming the file, never an IndexError (issue 12) ------------


def _digits_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in create_model("vit_tiny_digits").net.state_dict().items()}


def _write_bad_checkpoint(kind: str, folder: Path) -> Path:
    """A checkpoint file that cannot be used, of the given kind."""
    from safetensors.torch import save_file

    if kind == "empty.pth":
        path = folder / "empty.pth"
        path.write_bytes(b"")
    elif kind == "empty.safetensors":
        path = folder / "empty.safetensors"
        path.write_bytes(b"")
    elif kind in ("truncated-zip.pth", "truncated-tiny.pth"):
        whole = folder / "whole.pth"
        torch.save(_digits_state(), whole)
        data = whole.read_bytes()
        path = folder / kind
        path.write_bytes(data[: len(data) // 2] if kind == "truncated-zip.pth" else data[:100])
    elif kind == "truncated-pickle.pth":
        whole = folder / "legacy.pth"
        torch.save(_digits_state(), whole, _use_new_zipfile_serialization=False)
        data = whole.read_bytes()
        path = folder / kind
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text.pth":
        path = folder / "text.pth"
        path.write_text("this is a README, not a checkpoint\n")
    elif kind == "truncated.safetensors":
        whole = folder / "whole.safetensors"
        save_file(_digits_state(), str(whole))
        data = whole.read_bytes()
        path = folder / kind
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no-tensors.pth":
        path = folder / kind
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "empty-dict.pth":
        path = folder / kind
        torch.save({"model": {}}, path)
    elif kind == "empty-dict.safetensors":
        path = folder / kind
        save_file({}, str(path))
    else:
        raise AssertionError(kind)
    return path


BAD_CHECKPOINTS = {
    "empty.pth": "is empty (0 bytes)",
    "empty.safetensors": "is empty (0 bytes)",
    "truncated-zip.pth": "is truncated or corrupt",
    "truncated-tiny.pth": "is truncated or corrupt",
    "truncated-pickle.pth": "is truncated or corrupt",
    "text.pth": "is not a checkpoint",
    "truncated.safetensors": "is truncated or corrupt",
    "no-tensors.pth": "holds no tensors",
    "empty-dict.pth": "holds no tensors",
    "empty-dict.safetensors": "holds no tensors",
}


@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_file_is_one_clear_error(kind: str, tmp_path: Path):
    """Before issue 12 an empty .pth raised IndexError and a dict without tensors 'did not fit'."""
    path = _write_bad_checkpoint(kind, tmp_path)
    with pytest.raises(EdgeAttackError) as caught:
        create_model("vit_tiny_digits", checkpoint=path)
    message = str(caught.value)
    assert str(path) in message and BAD_CHECKPOINTS[kind] in message
    assert "\n" not in message


def test_checkpoint_of_another_width_is_refused_not_a_runtime_error(tmp_path: Path):
    state = _digits_state()
    state["head.weight"] = torch.zeros(7, state["head.weight"].shape[1])
    torch.save(state, tmp_path / "other-head.pth")
    with pytest.raises(EdgeAttackError, match=r"does not fit vit_tiny_digits: size mismatch for head.weight"):
        create_model("vit_tiny_digits", checkpoint=tmp_path / "other-head.pth")


def test_renamed_safetensors_and_wrapped_pth_still_load(tmp_path: Path):
    from safetensors.torch import save_file

    state = _digits_state()
    save_file(state, str(tmp_path / "weights.bin"))  # safetensors under another suffix: sniffed
    torch.save({"model": state, "epoch": 300}, tmp_path / "deit-style.pth")
    x = torch.rand(2, 3, 32, 32)
    reference = create_model("vit_tiny_digits")
    with torch.no_grad():
        for name in ("weights.bin", "deit-style.pth"):
            assert torch.equal(create_model("vit_tiny_digits", checkpoint=tmp_path / name)(x), reference(x)), name


@pytest.mark.parametrize("kind", ["empty.pth", "truncated-zip.pth", "text.pth"])
def test_bad_int8_model_file_is_one_clear_error(kind: str, tmp_path: Path):
    from edgeattack.compress.int8_torch import load_int8_dynamic

    path = _write_bad_checkpoint(kind, tmp_path)
    with pytest.raises(EdgeAttackError, match="int8 model") as caught:
        load_int8_dynamic(path)
    assert str(path) in str(caught.value) and BAD_CHECKPOINTS[kind] in str(caught.value)
