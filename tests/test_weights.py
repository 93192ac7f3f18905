"""Which weights a model runs on: asked for explicitly, recorded in `weights_source`, never guessed.

A timm name without --pretrained / --checkpoint / --random-weights is an error; --pretrained goes
through `timm.create_model(pretrained=True)`, exercised here on a Hugging Face cache written into
tmp_path (offline, as every test runs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.zoo.factory import WeightsRequiredError, create_model
from edgeattack.zoo.manifest import read_manifest

DEIT = "deit_tiny_patch16_224"
HUB_REPO = "models--timm--deit_tiny_patch16_224.fb_in1k"  # timm's hf_hub_id for deit_tiny_patch16_224


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty offline Hugging Face hub cache in tmp_path, as HF_HOME would give it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read when huggingface_hub was imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def deit_state() -> dict[str, torch.Tensor]:
    """The state dict of a random deit_tiny (timm's key layout), as a cache or checkpoint would hold it."""
    import timm

    torch.manual_seed(7)
    return {key: value.contiguous() for key, value in timm.create_model(DEIT).state_dict().items()}


def fill_cache(cache: Path, state: dict[str, torch.Tensor]) -> None:
    """Write `state` where hf_hub_download looks offline: refs/main -> snapshots/<commit>/model.safetensors."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / HUB_REPO / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (cache / HUB_REPO / "refs").mkdir()
    (cache / HUB_REPO / "refs" / "main").write_text(commit)


def assert_same_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    ours = module.state_dict()
    assert set(ours) == set(state)
    for key, value in state.items():
        assert torch.equal(ours[key], value), key


def test_a_timm_name_without_weights_is_refused_with_what_to_pass():
    with pytest.raises(WeightsRequiredError) as caught:
        create_model(DEIT)
    message = str(caught.value)
    for fragment in ("--pretrained", "--checkpoint", "--random-weights", "HF_HOME"):
        assert fragment in message
    assert isinstance(caught.value, ConfigError)
    with pytest.raises(WeightsRequiredError):
        create_model("avit_deit_tiny_patch16_224")  # a zoo family without shipped weights, not only timm names


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"pretrained": True, "checkpoint": "w.safetensors"}, "--pretrained and --checkpoint"),
        ({"random_weights": True, "checkpoint": "w.safetensors"}, "--random-weights and --checkpoint"),
        ({"random_weights": True, "pretrained": True}, "--random-weights and --pretrained"),
    ],
)
def test_contradicting_weight_options_are_refused(options: dict, fragment: str):
    with pytest.raises(ConfigError, match=fragment):
        create_model(DEIT, **options)
    with pytest.raises(ConfigError, match=fragment):
        create_model("vit_tiny_digits", **options)


def test_random_weights_on_purpose_are_recorded():
    model = create_model(DEIT, random_weights=True)
    assert model.weights_source == "random"
    assert model.extra_repr() == "name=deit_tiny_patch16_224, weights=random"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_shipped_models_load_their_weights_by_default_and_random_only_when_asked():
    entry = read_manifest()["vit_tiny_digits"]
    shipped = create_model("vit_tiny_digits")
    assert shipped.weights_source == "shipped" and shipped.weights_sha256 == entry.sha256
    assert create_model("vit_tiny_digits", pretrained=True).weights_sha256 == entry.sha256
    random = create_model("vit_tiny_digits", random_weights=True)
    assert random.weights_source == "random" and random.weights_sha256 != entry.sha256
    borrowed = create_model("ats_tiny_digits")
    assert borrowed.weights_source == "shipped:vit_tiny_digits"
    with pytest.raises(ConfigError, match="vit_tiny_digits's shipped weights"):
        create_model("ats_tiny_digits", random_weights=True)


def test_a_checkpoint_is_recorded_by_file_name(tmp_path: Path, deit_state: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    save_file(deit_state, str(tmp_path / "mine.safetensors"))
    model = create_model(DEIT, checkpoint=tmp_path / "mine.safetensors")
    assert model.weights_source == "checkpoint:mine.safetensors"
    assert_same_weights(model.net, deit_state)


def test_pretrained_offline_without_a_cache_fails_clearly(hub_cache: Path):
    with pytest.raises(EdgeAttackError) as caught:
        create_model(DEIT, pretrained=True)
    message = str(caught.value)
    assert "cannot get timm's pretrained weights for deit_tiny_patch16_224" in message
    assert "offline" in message and str(hub_cache) in message
    assert "--checkpoint" in message and "--random-weights" in message
    assert "\n" not in message


def test_pretrained_reads_timms_weights_from_a_local_hugging_face_cache(
    hub_cache: Path, deit_state: dict[str, torch.Tensor]
):
    fill_cache(hub_cache, deit_state)
    model = create_model(DEIT, pretrained=True)
    assert model.weights_source == "pretrained:timm"
    assert_same_weights(model.net, deit_state)
    ats = create_model("ats_deit_tiny_patch16_224", pretrained=True)  # ATS asks timm for the DeiT it runs on
    assert ats.weights_source == "pretrained:timm"
    assert torch.equal(ats.net.patch_embed.proj.weight, deit_state["patch_embed.proj.weight"])


def test_pretrained_goes_through_timm_with_its_overlay(tmp_path: Path, deit_state: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    path = tmp_path / "local.safetensors"
    save_file(deit_state, str(path))
    model = create_model(DEIT, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert model.weights_source == "pretrained:timm"
    assert_same_weights(model.net, deit_state)


def test_families_without_downloadable_weights_keep_their_own_error():
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("avit_deit_tiny_patch16_224", pretrained=True)


def test_source_models_pass_the_weight_options_through():
    from edgeattack.attacks.whitebox.sources import load_source_model, load_source_models

    with pytest.raises(WeightsRequiredError):
        load_source_models([DEIT])
    with pytest.raises(WeightsRequiredError):
        load_source_models([DEIT], pretrained=False, random_weights=False)  # unset CLI flags say nothing
    (model,) = load_source_models([DEIT], random_weights=True)
    assert model.weights_source == "random"
    with pytest.raises(ConfigError, match="--pretrained and --checkpoint"):
        load_source_model(DEIT, pretrained=True, checkpoint="w.safetensors")
    assert load_source_model("vit_tiny_digits").weights_source == "shipped"


def test_int8_twin_rebuilds_its_source_with_the_weight_options(tmp_path: Path):
    from edgeattack.attacks.whitebox.sources import int8_twin
    from edgeattack.data import load_digits_dataset
    from edgeattack.errors import EngineError
    from edgeattack.export.pipeline import export_engine

    engine = tmp_path / "int8.onnx"
    export_engine(
        create_model("vit_tiny_digits"), engine, precision="int8", calibration=load_digits_dataset("train"),
        calibration_images=16, parity_images=0,
    )
    assert int8_twin(engine).weights_sha256 == read_manifest()["vit_tiny_digits"].sha256
    with pytest.raises(EngineError, match="here random"):
        int8_twin(engine, random_weights=True)


def test_export_without_weights_exits_2_and_writes_nothing(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "x.onnx"
    result = runner.invoke(app, ["export", DEIT, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "no shipped weights" in result.output and "--random-weights" in result.output
    both = runner.invoke(app, ["export", DEIT, "--pretrained", "--random-weights", "-o", str(out)])
    assert both.exit_code == 2 and "contradict" in both.output
    assert list(tmp_path.iterdir()) == []


def test_evaluate_a_torch_engine_by_name_takes_the_weight_options():
    runner = CliRunner()
    refused = runner.invoke(app, ["evaluate", "--engine", "deit_tiny_patch16_224", "-n", "2", "--no-latency"])
    assert refused.exit_code == 2 and "--random-weights" in refused.output
    from edgeattack.engines import open_engine

    engine = open_engine("vit_tiny_digits", random_weights=True)
    assert engine.model.weights_source == "random"
