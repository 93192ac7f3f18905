"""AutoAttack: the per-attack breakdown, the budget, the artifact, the versions, errors, and a cross-check
against torchattacks.AutoAttack.

One AutoAttack run (standard, L-inf 2/255, the budget of `torchattacks.AutoAttack(version="standard")`
with 10 iterations, but 3 target classes and 100 Square queries on both sides to stay fast) on 24
images of the shipped vit_tiny_digits is shared by most tests. The cross-check asserts the robust
accuracies differ by at most one image of the 24 (4.2 points): 0.5 points cannot be resolved on a
few dozen images. The 0.5-point comparison on the whole test split is `benchmarks/bench_autoattack.py`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeattack.artifact_breakdown import NOT_BROKEN, breakdown_counts, robust_after
from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.whitebox import PGD, AutoAttack, Square, make_attack
from edgeattack.attacks.whitebox.autoattack import VERSION_ATTACKS
from edgeattack.errors import ArtifactError, ConfigError

EPS = 2 / 255
BUDGET = {"steps": 10, "n_target_classes": 3, "n_queries": 100}


@pytest.fixture(scope="module")
def images(test_set):
    return test_set.take(24)


@pytest.fixture(scope="module")
def standard(model, images):
    return AutoAttack(eps=EPS, version="standard", **BUDGET)(model, images)


def test_breakdown_is_consistent(standard, images) -> None:
    out = standard
    assert out.breakers == ("clean", "apgd-ce", "apgd-t", "fab-t", "square")
    assert out.broken_by.shape == (len(images),)
    wrong_clean = out.clean_pred != out.labels
    broken = out.adv_pred != out.labels
    assert np.array_equal(out.broken_by == 0, wrong_clean)
    assert np.all(out.broken_by[broken] >= 0)  # every broken image names its breaker
    assert np.all(out.broken_by[~broken] == NOT_BROKEN)  # robust ones none
    assert out.adv_acc == pytest.approx(np.mean(out.broken_by == NOT_BROKEN))
    assert 0 < out.adv_acc < out.clean_acc  # the budget leaves something to compare
    stages = robust_after(out.broken_by, out.breakers)
    assert stages["clean"] == pytest.approx(out.clean_acc) and stages["square"] == pytest.approx(out.adv_acc)
    assert list(stages.values()) == sorted(stages.values(), reverse=True)
    counts = out.summary()["broken_count"]
    assert sum(counts.values()) == len(images) and counts["robust"] == round(out.adv_acc * len(images))


def test_perturbations_keep_to_the_budget(standard) -> None:
    assert standard.linf().max() <= EPS + 1e-6
    assert standard.adversarial.min() >= 0 and standard.adversarial.max() <= 1
    # robust images carry the closest call of the attacks, not the clean image
    robust = standard.broken_by == NOT_BROKEN
    assert np.all(standard.linf()[robust] > 0)


def test_breakdown_survives_the_artifact(model, standard, images, tmp_path) -> None:
    artifact = standard.to_artifact()
    assert artifact.meta.params["breakers"] == list(standard.breakers)
    assert artifact.meta.params["broken_count"] == breakdown_counts(standard.broken_by, standard.breakers)
    loaded = PerturbationArtifact.load(artifact.save(tmp_path / "aa.npz", shard_size=10))
    np.testing.assert_array_equal(loaded.broken_by, standard.broken_by)
    np.testing.assert_allclose(loaded.apply(images.images, indices=images.indices), standard.adversarial, atol=1e-6)
    # an artifact without a breakdown (every older one) loads as before
    plain_out = PGD(eps=EPS, steps=1)(model, images.take(4))
    plain = PerturbationArtifact.load(plain_out.to_artifact().save(tmp_path / "p.npz"))
    assert plain.broken_by is None and "breakers" not in plain.meta.params
    with pytest.raises(ArtifactError, match="broken_by"):
        PerturbationArtifact(artifact.delta, artifact.meta, artifact.indices, broken_by=np.zeros(3, dtype=np.int64))
    with pytest.raises(ArtifactError, match="names 5 attacks"):
        PerturbationArtifact(artifact.delta, artifact.meta, artifact.indices, broken_by=np.full(len(images), 7))


def test_cross_check_against_torchattacks(model, images, standard) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    x, y = torch.from_numpy(images.images), torch.from_numpy(images.labels)
    reference = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="standard", n_classes=4, seed=0)
    square = reference._autoattack.attacks[3]
    assert type(square).__name__ == "Square" and reference._autoattack.attacks[0].steps == BUDGET["steps"]
    square.n_queries = BUDGET["n_queries"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = reference(x, y)
    with torch.no_grad():
        theirs = float((model(adv).argmax(1) == y).float().mean())
    assert abs(standard.adv_acc - theirs) <= 1 / len(images) + 1e-9


def test_versions_and_parameters() -> None:
    plus = AutoAttack(version="plus", steps=5)
    assert plus.breakers == ("clean", *VERSION_ATTACKS["plus"])
    restarts = {label: getattr(a, "n_restarts", None) for label, a in plus.components}
    assert restarts == {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 1, "apgd-t": 1, "fab-t": 1}
    rand = make_attack("autoattack", version="rand")
    assert rand.breakers == ("clean", "apgd-ce", "apgd-dlr") and rand.eot_iter == 20
    assert all(a.eot_iter == 20 and a.steps == 100 for _, a in rand.components)
    standard = AutoAttack()
    assert standard.eps == pytest.approx(8 / 255) and standard.params["n_queries"] == 5000
    assert [a.n_target_classes for label, a in standard.components if label in ("apgd-t", "fab-t")] == [9, 9]


def test_rand_version_on_a_randomised_model(model, images) -> None:
    def noisy(x):
        return model(x + 0.005 * torch.randn_like(x))

    noisy.config = model.config
    out = AutoAttack(eps=8 / 255, version="rand", steps=3, eot_iter=2)(noisy, images.take(6))
    assert out.breakers == ("clean", "apgd-ce", "apgd-dlr")
    assert out.linf().max() <= 8 / 255 + 1e-6 and out.broken_by.shape == (6,)


def test_square_on_the_torch_model(model, images) -> None:
    out = Square(eps=4 / 255, n_queries=30)(model, images.take(8))
    assert out.linf().max() <= 4 / 255 + 1e-6
    again = Square(eps=4 / 255, n_queries=30, batch_size=3)(model, images.take(8))
    np.testing.assert_allclose(again.adversarial, out.adversarial, atol=1e-6)  # per-image random streams
    l2 = Square(eps=0.5, norm="l2", n_queries=30)(model, images.take(8))
    assert l2.l2().max() <= 0.5 + 1e-4


def test_clear_errors(model, images) -> None:
    with pytest.raises(ConfigError, match="linf or l2, not 'l1'"):
        AutoAttack(norm="l1")
    with pytest.raises(ConfigError, match="version"):
        AutoAttack(version="fast")
    with pytest.raises(ConfigError, match="no targeted mode"):
        AutoAttack(steps=1)(model, images, target=0)
    with pytest.raises(ConfigError, match=r"n_target_classes=10 .*=9 or fewer"):
        AutoAttack(steps=1, n_target_classes=10)(model, images)

    def detached(x):
        with torch.no_grad():
            return model(x)

    detached.config = model.config
    with pytest.raises(ConfigError, match="no gradient"):
        AutoAttack(steps=1)(detached, images)
