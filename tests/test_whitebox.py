"""White-box attacks: FGSM, PGD (L-inf/L2), MI-FGSM, universal perturbations, their outputs and artifacts.

Most tests attack a small MLP trained in a few seconds here (a ViT cannot be trained within the
test budget on two cores); its assertions are relative (adversarial accuracy below clean, PGD at
least as strong as FGSM, targeted success above chance) so they hold for any trained classifier.
The zoo ViT is used where any weights do (ensembles, bookkeeping), and the shipped trained ViT,
when the package has one, in its own test.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.whitebox import (
    FGSM,
    L2PGD,
    MIFGSM,
    PGD,
    UAPSGD,
    WHITEBOX_ATTACKS,
    LinfPGD,
    UAPDeepFool,
    WhiteBoxAttack,
    make_attack,
)
from edgeattack.attacks.whitebox.model import AttackModel
from edgeattack.attacks.whitebox.uap import deepfool
from edgeattack.data import load_digits_dataset
from edgeattack.errors import ArtifactError, ConfigError, DataError
from edgeattack.zoo.catalog import DIGITS_CONFIG
from edgeattack.zoo.factory import ZooModel, create_model, state_dict_sha256
from edgeattack.zoo.manifest import read_manifest

STRONG = 32 / 255  # an eps at which the small MLP is clearly breakable


pytestmark = pytest.mark.usefixtures("module_one_thread")


def _mlp(seed: int, name: str) -> ZooModel:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    return ZooModel(net, DIGITS_CONFIG, name)


def _train(model: ZooModel, epochs: int = 15, seed: int = 0) -> ZooModel:
    train = load_digits_dataset("train")
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    model.weights_sha256 = state_dict_sha256(model)
    return model


@pytest.fixture(scope="module")
def mlp() -> ZooModel:
    return _train(_mlp(0, "mlp_digits_a"))


@pytest.fixture(scope="module")
def mlp_b() -> ZooModel:
    return _train(_mlp(1, "mlp_digits_b"), seed=1)


@pytest.fixture(scope="module")
def test_set(mlp: ZooModel):
    """48 test images the MLP classifies correctly (so accuracy drops are the attack's doing)."""
    test = load_digits_dataset("test")
    with torch.no_grad():
        pred = mlp(torch.from_numpy(test.images)).argmax(1).numpy()
    return test.subset(np.flatnonzero(pred == test.labels)[:48])


def _accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean())


# --------------------------------------------------------------------------------------------------
# registry and parameters
# --------------------------------------------------------------------------------------------------
def test_registry_and_make_attack() -> None:
    assert set(WHITEBOX_ATTACKS) == {
        "fgsm", "pgd", "pgd-l2", "mifgsm", "uap", "uap-sgd", "desparsify",
        "apgd", "apgd-t", "fab", "fab-t", "square", "autoattack", "cw-l2", "deepfool",
    }
    assert PGD is LinfPGD
    attack = make_attack("pgd", eps=4 / 255, steps=3)
    assert isinstance(attack, LinfPGD) and attack.steps == 3 and attack.step_size == pytest.approx(2.5 * 4 / 255 / 3)
    for name, cls in WHITEBOX_ATTACKS.items():
        assert cls.name == name
    with pytest.raises(ConfigError, match="did you mean: pgd"):
        make_attack("pgdd")
    with pytest.raises(ConfigError, match="fgsm, pgd, pgd-l2, mifgsm, uap, uap-sgd"):
        make_attack("deepfool-xyz")


def test_unknown_and_invalid_parameters() -> None:
    with pytest.raises(ConfigError, match=r"epss.*did you mean: eps.*valid parameters: eps, steps"):
        PGD(epss=0.1)
    with pytest.raises(ConfigError, match="decay"):
        make_attack("mifgsm", decai=0.5)
    with pytest.raises(ConfigError, match="eps"):
        FGSM(eps=-1)
    with pytest.raises(ConfigError, match="steps"):
        PGD(steps=0)
    with pytest.raises(ConfigError, match="loss"):
        PGD(loss="hinge")
    with pytest.raises(ConfigError, match="norm"):
        UAPSGD(norm="l3")
    with pytest.raises(ConfigError, match="l2"):
        UAPDeepFool(norm="l2")  # the L2 radius has no sensible default
    with pytest.raises(TypeError):
        PGD(0.1)  # hyper-parameters are keyword-only


def test_call_is_final() -> None:
    with pytest.raises(TypeError, match="final"):

        class Bad(WhiteBoxAttack):
            def __call__(self, *args, **kwargs):
                return None

            def run(self, model, x, y, *, target):
                return x


# --------------------------------------------------------------------------------------------------
# threat model: bounds and eps
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("cls", [FGSM, LinfPGD, MIFGSM])
def test_linf_attacks_respect_bounds_and_eps(mlp, test_set, cls, quantize: bool) -> None:
    eps = 8 / 255
    out = cls(eps=eps, quantize=quantize)(mlp, test_set)
    assert out.adversarial.dtype == np.float32 and out.adversarial.shape == test_set.images.shape
    assert out.adversarial.min() >= 0.0 and out.adversarial.max() <= 1.0
    assert out.linf().max() <= eps + 1e-6
    np.testing.assert_allclose(out.adversarial - out.delta, test_set.images, atol=1e-6)
    if quantize:
        scaled = out.adversarial * 255
        np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)


def test_l2_pgd_respects_bounds_and_eps(mlp, test_set) -> None:
    out = L2PGD(eps=1.0, steps=5)(mlp, test_set)
    assert out.norm == "l2" and out.method == "pgd-l2"
    assert out.l2().max() <= 1.0 + 1e-5
    assert out.adversarial.min() >= 0.0 and out.adversarial.max() <= 1.0
    assert out.linf().max() > 8 / 255  # an L2 attack is not an L-inf one in disguise


def test_bounds_come_from_the_model(mlp, test_set) -> None:
    plain = torch.nn.Sequential(*mlp.net)  # no config: bounds unknown
    with pytest.raises(ConfigError, match="bounds"):
        FGSM()(plain, test_set.images, test_set.labels)
    out = FGSM(eps=0.1)(plain, test_set.images * 0.5, test_set.labels, bounds=(0.0, 0.5))
    assert out.adversarial.max() <= 0.5 and out.bounds == (0.0, 0.5)
    with pytest.raises(ConfigError, match="disagree"):
        FGSM()(mlp, test_set, bounds=(0.0, 255.0))


# --------------------------------------------------------------------------------------------------
# effectiveness
# --------------------------------------------------------------------------------------------------
def test_attacks_reduce_accuracy_of_a_trained_model(mlp, test_set) -> None:
    outputs = {cls.name: cls(eps=STRONG)(mlp, test_set) for cls in (FGSM, LinfPGD, MIFGSM)}
    for name, out in outputs.items():
        assert out.clean_acc == 1.0
        assert out.adv_acc < 0.5, name
        assert out.asr == pytest.approx(1.0 - out.adv_acc)
        np.testing.assert_array_equal(out.success, (out.clean_pred == out.labels) & (out.adv_pred != out.labels))
        assert out.success_rate == out.asr
        assert _accuracy(mlp, out.adversarial, out.labels) == pytest.approx(out.adv_acc)
    assert outputs["pgd"].adv_acc <= outputs["fgsm"].adv_acc


def test_pgd_reaches_a_higher_loss_than_fgsm(mlp, test_set) -> None:
    eps = 8 / 255

    def loss(images: np.ndarray) -> float:
        with torch.no_grad():
            logits = mlp(torch.from_numpy(images))
            return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(test_set.labels)))

    fgsm = FGSM(eps=eps)(mlp, test_set)
    pgd = PGD(eps=eps, steps=10, random_start=False, early_stop=False)(mlp, test_set)
    assert loss(test_set.images) < loss(fgsm.adversarial) <= loss(pgd.adversarial)


def test_early_stop_never_weakens_pgd(mlp, test_set) -> None:
    full = PGD(eps=12 / 255, early_stop=False)(mlp, test_set)
    early = PGD(eps=12 / 255, early_stop=True)(mlp, test_set)
    assert early.adv_acc <= full.adv_acc
    assert early.linf().max() <= 12 / 255 + 1e-6


@pytest.mark.parametrize("cls", [LinfPGD, MIFGSM])
def test_targeted_attack_reaches_the_target_above_chance(mlp, test_set, cls) -> None:
    target = (test_set.labels + 1) % 10
    out = cls(eps=STRONG)(mlp, test_set, target=target)
    assert out.targeted
    np.testing.assert_array_equal(out.success, (test_set.labels != target) & (out.adv_pred == target))
    assert out.targeted_success > 0.3  # chance is 0.1
    single = PGD(eps=STRONG)(mlp, test_set, target=3)
    assert single.target.tolist() == [3] * len(test_set)
    with pytest.raises(ConfigError, match="target class 12"):
        PGD()(mlp, test_set, target=12)


def test_ensemble_attacks_the_mean_logits(mlp, mlp_b, test_set) -> None:
    out = PGD(eps=STRONG)([mlp, mlp_b], test_set)
    assert [s["model"] for s in out.sources] == ["mlp_digits_a", "mlp_digits_b"]
    assert all(len(s["sha256"]) == 64 for s in out.sources)
    assert out.sources[0]["sha256"] != out.sources[1]["sha256"]
    with torch.no_grad():
        x = torch.from_numpy(out.adversarial)
        mean_logits = (mlp(x) + mlp_b(x)) / 2
    np.testing.assert_array_equal(out.adv_pred, mean_logits.argmax(1).numpy())
    assert out.adv_acc < 0.5
    for model in (mlp, mlp_b):  # the ensemble's perturbation also hurts each member
        assert _accuracy(model, out.adversarial, out.labels) < 0.8


def test_ensemble_with_the_zoo_vit_and_tuple_outputs(mlp, test_set) -> None:
    vit = create_model("vit_tiny_digits")  # shipped or random weights: both fine here

    class TwoHeads(torch.nn.Module):
        """A distilled model in training mode: returns (class head, distillation head)."""

        def __init__(self, inner: ZooModel) -> None:
            super().__init__()
            self.inner, self.config, self.model_name = inner, inner.config, "two_heads"

        def forward(self, x):
            logits = self.inner(x)
            return logits, logits + 1.0

    few = test_set.take(8)
    out = FGSM(eps=4 / 255)([vit, TwoHeads(mlp)], few)
    with torch.no_grad():
        x = torch.from_numpy(out.adversarial)
        expected = (vit(x) + mlp(x) + 0.5) / 2
    np.testing.assert_array_equal(out.adv_pred, expected.argmax(1).numpy())
    assert [s["model"] for s in out.sources] == ["vit_tiny_digits", "two_heads"]


def test_models_are_restored_and_get_no_parameter_gradients(mlp, test_set) -> None:
    mlp.train()
    mlp.net[1].eval()  # a mixed-mode model stays mixed
    try:
        PGD(eps=4 / 255, steps=2)(mlp, test_set.take(8))
        assert mlp.training and mlp.net[0].training and not mlp.net[1].training
        assert all(p.requires_grad for p in mlp.parameters())
        assert all(p.grad is None for p in mlp.parameters())
    finally:
        mlp.eval()


# --------------------------------------------------------------------------------------------------
# inputs, determinism, progress
# --------------------------------------------------------------------------------------------------
def test_input_checks(mlp, test_set) -> None:
    images, labels = test_set.images.copy(), test_set.labels
    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        FGSM()(mlp, bad, labels)
    with pytest.raises(DataError, match="outside the bounds"):
        FGSM()(mlp, images * 2.0 + 0.1, labels)
    with pytest.raises(DataError, match="labels"):
        FGSM()(mlp, images, labels[:-1])
    with pytest.raises(DataError, match="NCHW"):
        FGSM()(mlp, images[0], labels[:1])
    with pytest.raises(DataError, match="input"):
        FGSM()(mlp, images[:, :, :16, :16], labels)
    with pytest.raises(DataError, match="classes"):
        FGSM()(mlp, images, labels + 10)
    with pytest.raises(ConfigError, match="labels are required"):
        FGSM()(mlp, images)
    with pytest.raises(ConfigError, match="empty ensemble"):
        FGSM()([], images, labels)


def test_torch_and_numpy_inputs_agree(mlp, test_set) -> None:
    a = PGD(eps=8 / 255, steps=3)(mlp, test_set.images, test_set.labels)
    b = PGD(eps=8 / 255, steps=3)(mlp, torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels))
    np.testing.assert_array_equal(a.adversarial, b.adversarial)


def test_determinism_with_a_seed(mlp, test_set) -> None:
    first = PGD(eps=8 / 255, steps=3, seed=7)(mlp, test_set)
    again = PGD(eps=8 / 255, steps=3, seed=7)(mlp, test_set)
    other = PGD(eps=8 / 255, steps=3, seed=8)(mlp, test_set)
    np.testing.assert_array_equal(first.adversarial, again.adversarial)
    assert not np.array_equal(first.adversarial, other.adversarial)
    uap1 = UAPSGD(eps=STRONG, epochs=1, seed=3)(mlp, test_set)
    uap2 = UAPSGD(eps=STRONG, epochs=1, seed=3)(mlp, test_set)
    np.testing.assert_array_equal(uap1.delta, uap2.delta)


def test_batching_and_progress(mlp, test_set) -> None:
    calls: list[tuple[int, int]] = []
    out = FGSM(eps=8 / 255, batch_size=20)(mlp, test_set, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(20, 48), (40, 48), (48, 48)]
    whole = FGSM(eps=8 / 255)(mlp, test_set)
    np.testing.assert_allclose(out.adversarial, whole.adversarial, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# per-image artifacts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantize", [False, True])
def test_per_image_artifact_round_trip(mlp, test_set, tmp_path, quantize: bool) -> None:
    out = PGD(eps=8 / 255, steps=3, quantize=quantize)(mlp, test_set)
    path = out.to_artifact().save(tmp_path / "pgd.npz")
    artifact = PerturbationArtifact.load(path)
    meta = artifact.meta
    assert meta.kind == "per_image" and meta.method == "pgd" and meta.norm == "linf"
    assert meta.eps == pytest.approx(8 / 255) and meta.input_size == (3, 32, 32)
    assert (meta.dataset, meta.split, meta.seed) == ("digits", "test", 0)
    assert meta.sources == ({"model": "mlp_digits_a", "sha256": mlp.weights_sha256},)
    assert meta.params["steps"] == 3 and meta.params["quantize"] is quantize
    assert meta.params["adv_acc"] == pytest.approx(out.adv_acc)
    np.testing.assert_array_equal(artifact.indices, test_set.indices)
    replayed = artifact.apply(test_set.images, indices=test_set.indices, quantize=quantize)
    np.testing.assert_allclose(replayed, out.adversarial, atol=1e-6)
    # another order and a subset: deltas follow the dataset indices
    order = np.arange(len(test_set))[::-3]
    part = test_set.subset(order)
    np.testing.assert_allclose(
        artifact.apply(part.images, indices=part.indices, quantize=quantize), out.adversarial[order], atol=1e-6
    )


def test_per_image_artifact_needs_the_right_dataset(mlp, test_set) -> None:
    out = FGSM()(mlp, test_set.images, test_set.labels)  # arrays: no provenance
    with pytest.raises(ArtifactError, match="dataset"):
        out.to_artifact()
    artifact = out.to_artifact(test_set)
    np.testing.assert_array_equal(artifact.indices, test_set.indices)
    with pytest.raises(ArtifactError, match="not crafted from"):
        out.to_artifact(test_set.subset(np.roll(np.arange(len(test_set)), 1)))
    with pytest.raises(ArtifactError, match="holds"):
        out.to_artifact(test_set.take(10))


# --------------------------------------------------------------------------------------------------
# universal perturbations
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_set():
    return load_digits_dataset("train").take(96)


@pytest.fixture(scope="module")
def held_out():
    return load_digits_dataset("val").take(96)


def _fooling_rate(model, artifact: PerturbationArtifact, dataset) -> float:
    adv = artifact.apply(dataset.images, labels=dataset.labels)
    with torch.no_grad():
        clean = model(torch.from_numpy(dataset.images)).argmax(1)
        pert = model(torch.from_numpy(adv)).argmax(1)
    return float((clean != pert).float().mean())


def _check_universal(model, out, artifact, fit, held, tmp_path, eps: float, norm: str) -> float:
    assert artifact.meta.kind == "universal" and artifact.delta.shape == (1, 3, 32, 32)
    assert artifact.meta.split == fit.split == "train" and artifact.meta.norm == norm
    assert artifact.meta.params["fit_fooling_rate"] == pytest.approx(out.fooling_rate)
    assert artifact.meta.params["fit_images"] == len(fit)
    if norm == "linf":
        assert artifact.linf().max() <= eps + 1e-6
    else:
        assert np.linalg.norm(artifact.delta) <= eps + 1e-4
    loaded = PerturbationArtifact.load(artifact.save(tmp_path / f"{out.method}.npz"))
    np.testing.assert_array_equal(loaded.delta, artifact.delta)
    assert out.fooling_rate == pytest.approx(_fooling_rate(model, loaded, fit))
    return _fooling_rate(model, loaded, held)


def test_deepfool_finds_the_nearest_boundary_of_a_linear_model() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 4)
    model = AttackModel([lambda x: linear(x.flatten(1))], bounds=(-100.0, 100.0), device=torch.device("cpu"))
    x = torch.randn(16, 3, 2, 2)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    # distance to each other class's hyperplane: |f_k| / ||w_k - w_pred||
    w = linear.weight.detach()
    diff_w = w[None, :, :] - w[pred][:, None, :]
    diff_f = logits - logits.gather(1, pred[:, None])
    dist = diff_f.abs() / diff_w.norm(dim=2).clamp_min(1e-12)
    dist[torch.arange(16), pred] = float("inf")
    minimal = dist.min(1).values
    r, converged = deepfool(model, x, num_candidates=4, overshoot=0.02, max_iter=5)
    assert bool(converged.all())
    with torch.no_grad():
        assert bool((model(x + r).argmax(1) != pred).all())
    norms = r.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, 1.02 * (minimal + 1e-4), rtol=1e-3, atol=1e-4)


def test_uap_deepfool(mlp, fit_set, held_out, tmp_path) -> None:
    attack = UAPDeepFool(eps=STRONG, max_passes=3, num_candidates=3, max_iter=10)
    out = attack(mlp, fit_set)
    held = _check_universal(mlp, out, out.to_artifact(), fit_set, held_out, tmp_path, STRONG, "linf")
    assert out.fooling_rate > 0 and held > 0
    assert 1 <= len(out.history) <= 3


def test_uap_deepfool_l2(mlp, fit_set, held_out, tmp_path) -> None:
    out = UAPDeepFool(eps=2.0, norm="l2", max_passes=2, num_candidates=3)(mlp, fit_set)
    held = _check_universal(mlp, out, out.to_artifact(), fit_set, held_out, tmp_path, 2.0, "l2")
    assert held > 0


@pytest.mark.parametrize("optimizer", ["adam", "sign", "sgd"])
def test_uap_sgd(mlp, fit_set, held_out, tmp_path, optimizer: str) -> None:
    out = UAPSGD(eps=STRONG, epochs=4, optimizer=optimizer)(mlp, fit_set)
    held = _check_universal(mlp, out, out.to_artifact(), fit_set, held_out, tmp_path, STRONG, "linf")
    assert out.fooling_rate > 0.1 and held > 0.1
    assert out.adv_acc < out.clean_acc


def test_uap_sgd_targeted_and_l2(mlp, fit_set, held_out, tmp_path) -> None:
    targeted = UAPSGD(eps=48 / 255, epochs=8)(mlp, fit_set, target=0)
    assert targeted.target == 0 and targeted.targeted_success > 0.2  # chance: ~0.1, clean: ~0
    artifact = targeted.to_artifact()
    assert artifact.meta.params["target"] == 0
    assert artifact.meta.params["fit_targeted_success"] == pytest.approx(targeted.targeted_success)
    l2 = UAPSGD(eps=4.0, norm="l2", epochs=4)(mlp, fit_set)
    held = _check_universal(mlp, l2, l2.to_artifact(), fit_set, held_out, tmp_path, 4.0, "l2")
    assert held > 0
    with pytest.raises(ConfigError, match="one target"):
        UAPSGD()(mlp, fit_set, target=fit_set.labels)
    with pytest.raises(ConfigError, match="targeted"):
        UAPDeepFool()(mlp, fit_set, target=0)


def test_class_universal(mlp, fit_set, held_out, tmp_path) -> None:
    calls: list[tuple[int, int]] = []
    out = UAPSGD(eps=STRONG, epochs=2, class_universal=True)(
        mlp, fit_set, progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (20, 20) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    artifact = out.to_artifact()
    assert artifact.meta.kind == "class_universal" and artifact.delta.shape == (10, 3, 32, 32)
    assert artifact.linf().max() <= STRONG + 1e-6
    with pytest.raises(ArtifactError, match="labels"):
        artifact.apply(held_out.images)
    loaded = PerturbationArtifact.load(artifact.save(tmp_path / "cu.npz"))
    assert out.fooling_rate == pytest.approx(_fooling_rate(mlp, loaded, fit_set))
    np.testing.assert_allclose(out.apply(held_out.images, held_out.labels), loaded.apply(held_out.images,
                                                                                      labels=held_out.labels))
    deepfool = UAPDeepFool(eps=STRONG, max_passes=1, num_candidates=2, class_universal=True)(mlp, fit_set)
    assert deepfool.delta.shape == (10, 3, 32, 32)


def test_universal_artifact_replays_on_another_split_only_with_the_same_size(mlp, fit_set) -> None:
    artifact = UAPSGD(eps=STRONG, epochs=1)(mlp, fit_set).to_artifact()
    other = load_digits_dataset("test", size=16)
    with pytest.raises(ArtifactError, match="size"):
        artifact.apply(other.images)


# --------------------------------------------------------------------------------------------------
# the real zoo model, and the torch line
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif("vit_tiny_digits" not in read_manifest(), reason="no shipped vit_tiny_digits weights yet")
def test_pgd_on_the_shipped_vit() -> None:
    vit = create_model("vit_tiny_digits")
    test = load_digits_dataset("test").take(32)
    out = PGD(eps=8 / 255, steps=10, step_size=2 / 255)(vit, test)
    assert out.clean_acc >= 0.8
    assert out.adv_acc < out.clean_acc
    assert out.sources == ({"model": "vit_tiny_digits", "sha256": vit.weights_sha256},)


def test_attacks_package_imports_without_torch() -> None:
    code = "import sys, edgeattack.attacks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
