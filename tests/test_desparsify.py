"""DeSparsify (availability attack on token-sparse ViTs): every variant on the shipped ATS and A-ViT digits models.

Few images and steps, so the whole file runs in well under a minute on two CPU cores; what the
defaults reach on the full test split is in the docstring of `edgeattack.attacks.whitebox.desparsify`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner

from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.whitebox import (
    WHITEBOX_ATTACKS,
    DeSparsify,
    DeSparsifyPatch,
    DeSparsifyUniversal,
    make_attack,
)
from edgeattack.attacks.whitebox.desparsify import token_utilization
from edgeattack.cli.app import app
from edgeattack.data import load_digits_dataset
from edgeattack.errors import ConfigError
from edgeattack.zoo import create_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def ats():
    return create_model("ats_tiny_digits")


@pytest.fixture(scope="module")
def avit():
    return create_model("avit_tiny_digits")


@pytest.fixture(scope="module")
def adavit():
    return create_model("adavit_tiny_digits")


@pytest.fixture(scope="module")
def images():
    return load_digits_dataset("test").take(16)


def measured_tur(model, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean TUR (from forward_counts) and predictions of `x`, measured independently of the attack."""
    with torch.no_grad():
        tur, pred, _ = token_utilization([model.eval()], torch.from_numpy(x))
    return float(tur.mean()), pred[0].numpy()


# --------------------------------------------------------------------------------------------------
# registry, variants, bad input
# --------------------------------------------------------------------------------------------------
def test_registry_and_variant_dispatch() -> None:
    assert WHITEBOX_ATTACKS["desparsify"] is DeSparsify and DeSparsify.name == "desparsify"
    assert type(make_attack("desparsify")) is DeSparsify
    assert make_attack("desparsify", variant="ensemble").variant == "ensemble"
    universal = make_attack("desparsify", variant="universal", epochs=2)
    assert isinstance(universal, DeSparsifyUniversal) and not universal.class_universal
    per_class = DeSparsify(variant="class-universal")
    assert isinstance(per_class, DeSparsifyUniversal) and per_class.class_universal
    assert DeSparsifyUniversal(class_universal=True).variant == "class-universal"
    assert isinstance(make_attack("desparsify", variant="patch"), DeSparsifyPatch)
    with pytest.raises(ConfigError, match="single, ensemble, class-universal, universal, patch"):
        make_attack("desparsify", variant="universl")
    with pytest.raises(ConfigError, match="epochs"):
        make_attack("desparsify", variant="single", epochs=3)  # a universal-only parameter
    with pytest.raises(ConfigError, match="lam"):
        DeSparsify(lam=-1)
    with pytest.raises(ConfigError, match="pred_loss"):
        DeSparsify(pred_loss="hinge")
    with pytest.raises(ConfigError, match="patch_location"):
        DeSparsifyPatch(patch_location="middle")


def test_bad_models_and_inputs(ats, avit, images) -> None:
    vit = create_model("vit_tiny_digits")
    with pytest.raises(ConfigError, match="model vit_tiny_digits is not token-sparse: DeSparsify needs ats/avit/adavit"):
        DeSparsify(steps=1)(vit, images)
    with pytest.raises(ConfigError, match="not token-sparse"):
        DeSparsify(variant="ensemble", steps=1)([ats, vit], images)
    with pytest.raises(ConfigError, match="not token-sparse"):
        DeSparsifyPatch(epochs=1)(vit, images)
    with pytest.raises(ConfigError, match="use variant='single'"):
        DeSparsify(variant="ensemble", steps=1)(ats, images)
    with pytest.raises(ConfigError, match="use variant='ensemble'"):
        DeSparsify(steps=1)([ats, avit], images)
    with pytest.raises(ConfigError, match="larger than the 32x32 images"):
        DeSparsifyPatch(patch_size=40, epochs=1)(ats, images)
    with pytest.raises(ConfigError, match="does not fit"):
        DeSparsifyPatch(patch_size=8, patch_location=(30, 0), epochs=1)(ats, images)
    with pytest.raises(ConfigError, match="no targeted mode"):
        DeSparsify(steps=1)(ats, images, target=3)


# --------------------------------------------------------------------------------------------------
# per image
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ats", "avit", "adavit"])
def test_single_raises_tur_and_keeps_predictions(name, request, images) -> None:
    model = request.getfixturevalue(name)
    out = DeSparsify(steps=12)(model, images)
    artifact = out.to_artifact(images)
    assert artifact.meta.method == "desparsify" and artifact.meta.kind == "per_image"
    params = artifact.meta.params
    assert params["variant"] == "single" and params["mechanisms"] == [model.net.mechanism]
    assert params["lam"] == 1.0 and params["pred_loss"] == "margin"
    adv = artifact.apply(images.images, indices=images.indices)
    assert adv.shape == images.images.shape
    assert np.abs(adv - images.images).max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    clean_tur, clean_pred = measured_tur(model, images.images)
    adv_tur, adv_pred = measured_tur(model, adv)
    assert params["clean_tur"] == pytest.approx(clean_tur, abs=1e-4)
    assert params["adv_tur"] == pytest.approx(adv_tur, abs=1e-4)
    assert adv_tur > clean_tur + 0.1, (clean_tur, adv_tur)
    correct = clean_pred == images.labels
    assert (adv_pred[correct] == images.labels[correct]).mean() >= 0.9
    assert params["prediction_kept"] >= 0.9


def test_ensemble_raises_tur_on_both_models(ats, avit, images) -> None:
    out = DeSparsify(variant="ensemble", steps=10)([ats, avit], images)
    artifact = out.to_artifact(images)
    params = artifact.meta.params
    assert params["variant"] == "ensemble" and params["mechanisms"] == ["ats", "avit"]
    assert [row["model"] for row in params["per_model"]] == ["ats_tiny_digits", "avit_tiny_digits"]
    adv = artifact.apply(images.images, indices=images.indices)
    for model, row in zip([ats, avit], params["per_model"], strict=True):
        clean_tur, _ = measured_tur(model, images.images)
        adv_tur, _ = measured_tur(model, adv)
        assert adv_tur > clean_tur + 0.03, (model.model_name, clean_tur, adv_tur)
        assert row["adv_tur"] == pytest.approx(adv_tur, abs=1e-4)
        assert row["prediction_kept"] >= 0.9


# --------------------------------------------------------------------------------------------------
# universal, class-universal, patch
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["universal", "class-universal"])
def test_universal_variants_replay(ats, images, variant: str, tmp_path: Path) -> None:
    out = DeSparsify(variant=variant, epochs=3, batch_size=8)(ats, images)
    artifact = PerturbationArtifact.load(out.to_artifact(images).save(tmp_path / "u.npz"))
    kind = variant.replace("-", "_")
    assert artifact.meta.kind == kind and artifact.meta.method == "desparsify"
    assert artifact.delta.shape == ((1 if variant == "universal" else 10), 3, 32, 32)
    assert artifact.linf().max() <= EPS + 1e-6 and artifact.mask is None
    params = artifact.meta.params
    assert params["variant"] == variant and len(params["tur_history"]) == (3 if variant == "universal" else 30)
    adv = artifact.apply(images.images, labels=images.labels)
    assert adv.shape == images.images.shape
    adv_tur, _ = measured_tur(ats, adv)
    assert params["adv_tur"] == pytest.approx(adv_tur, abs=1e-4)
    assert params["adv_tur"] > params["clean_tur"]


def test_patch_replays_inside_the_square_only(avit, images, tmp_path: Path) -> None:
    out = DeSparsify(variant="patch", epochs=3, batch_size=8, patch_size=6, patch_location="bottom-right")(avit, images)
    artifact = PerturbationArtifact.load(out.to_artifact(images).save(tmp_path / "patch.npz"))
    assert artifact.meta.kind == "universal" and artifact.meta.norm == "none" and artifact.meta.eps is None
    assert artifact.mask is not None and artifact.patch is not None
    assert artifact.mask.shape == (1, 1, 32, 32) and artifact.patch.shape == (1, 3, 32, 32)
    assert not artifact.delta.any() and artifact.mask.sum() == 36
    adv = artifact.apply(images.images)
    assert adv.shape == images.images.shape
    np.testing.assert_array_equal(adv[:, :, :26, :], images.images[:, :, :26, :])
    np.testing.assert_array_equal(adv[:, :, :, :26], images.images[:, :, :, :26])
    np.testing.assert_allclose(adv[:, :, 26:, 26:], np.broadcast_to(artifact.patch[:, :, 26:, 26:], (16, 3, 6, 6)))
    np.testing.assert_allclose(out.apply(images.images), adv)
    params = artifact.meta.params
    assert params["variant"] == "patch" and params["patch_size"] == 6 and params["patch_location"] == "bottom-right"
    adv_tur, _ = measured_tur(avit, adv)
    assert params["adv_tur"] == pytest.approx(adv_tur, abs=1e-4)
    assert params["adv_tur"] > params["clean_tur"]


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_writes_an_artifact_and_prints_tur(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "desparsify.npz"
    args = ["attack", "--method", "desparsify", "--model", "ats_tiny_digits", "--eps", "8/255", "--steps", "3",
            "--limit", "8", "-o", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "tur" in result.output and "correct predictions kept" in result.output
    artifact = PerturbationArtifact.load(out)
    assert artifact.meta.method == "desparsify" and artifact.meta.params["variant"] == "single"
    assert artifact.meta.params["adv_tur"] >= artifact.meta.params["clean_tur"]

    patch = tmp_path / "patch.npz"
    args = ["attack", "--method", "desparsify", "--variant", "patch", "--model", "ats_tiny_digits",
            "--patch-size", "4", "--param", "epochs=1", "--limit", "8", "-o", str(patch)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert PerturbationArtifact.load(patch).mask is not None

    bad = runner.invoke(app, ["attack", "--method", "pgd", "--variant", "patch", "-o", str(tmp_path / "x.npz")])
    assert bad.exit_code != 0 and "desparsify only" in bad.output
    bad = runner.invoke(app, ["attack", "--method", "desparsify", "--steps", "1", "-o", str(tmp_path / "y.npz")])
    assert bad.exit_code != 0 and "not token-sparse" in bad.output
