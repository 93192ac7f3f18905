"""Minimal-norm attacks: DeepFool (L2, L-inf), Carlini-Wagner L2, FAB (and FAB-T) and FAB's projections.

Linear models check the geometry exactly; on the shipped vit_tiny_digits (8 images) the results must
be adversarial, report their norm, and with an eps count only perturbations within it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeattack.attacks.whitebox import FAB, FABT, CarliniWagnerL2, DeepFool, make_attack
from edgeattack.attacks.whitebox.fab_projections import project_onto_hyperplane
from edgeattack.errors import ConfigError


@pytest.fixture(scope="module")
def images(test_set):
    return test_set.take(8)


@pytest.fixture(scope="module")
def deepfool_l2(model, images):
    return DeepFool(num_candidates=4)(model, images)


@pytest.fixture(scope="module")
def deepfool_linf(model, images):
    return DeepFool(norm="linf", num_candidates=4)(model, images)


# --------------------------------------------------------------------------------------------------
# geometry on linear models
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_fab_projection_onto_a_hyperplane_inside_the_box(bounds) -> None:
    low, high = bounds
    generator = torch.Generator().manual_seed(0)
    t = low + (high - low) * (0.3 + 0.4 * torch.rand(6, 48, generator=generator, dtype=torch.float64))
    w = torch.randn(6, 48, generator=generator, dtype=torch.float64)
    c = 0.02 * torch.randn(6, generator=generator, dtype=torch.float64)  # the hyperplane is near: the box is slack
    b = (w * t).sum(1) - c
    l2 = project_onto_hyperplane(t, w, b, "l2", bounds)
    torch.testing.assert_close(l2, -c[:, None] * w / (w**2).sum(1, keepdim=True))
    linf = project_onto_hyperplane(t, w, b, "linf", bounds)
    torch.testing.assert_close(linf, -c[:, None] / w.abs().sum(1, keepdim=True) * w.sign())
    far = project_onto_hyperplane(t, w, b + 1e3, "linf", bounds)  # out of reach: the box holds
    assert float((t + far).min()) >= low - 1e-9 and float((t + far).max()) <= high + 1e-9


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_finds_the_nearest_boundary_of_a_linear_model(norm: str) -> None:
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(12, 4)
    x = torch.rand(16, 3, 2, 2, generator=generator) * 2 - 1
    with torch.no_grad():
        logits = linear(x.flatten(1))
    y = logits.argmax(1)
    w = linear.weight.detach()
    diff_w = w[None, :, :] - w[y][:, None, :]
    diff_f = logits - logits.gather(1, y[:, None])
    dual = diff_w.norm(dim=2) if norm == "l2" else diff_w.abs().sum(2)
    distance = diff_f.abs() / dual
    distance[torch.arange(16), y] = float("inf")
    attack = DeepFool(norm=norm, num_candidates=4, overshoot=0.02)
    out = attack(lambda z: linear(z.flatten(1)), x, y, bounds=(-100, 100))
    assert out.success.all()
    measured = out.l2() if norm == "l2" else out.linf()
    np.testing.assert_allclose(measured, 1.02 * (distance.min(1).values.numpy() + 1e-4), rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# on the digits ViT
# --------------------------------------------------------------------------------------------------
def test_deepfool_results_are_adversarial_and_report_their_norm(model, images, deepfool_l2, deepfool_linf) -> None:
    for out, norms in ((deepfool_l2, deepfool_l2.l2()), (deepfool_linf, deepfool_linf.linf())):
        assert out.eps is None and out.success.all() and np.all(out.adv_pred != out.labels)
        assert np.all(norms > 0) and out.summary()["l2_median"] > 0
    eps = float(np.median(deepfool_l2.l2()))
    bounded = DeepFool(eps=eps, num_candidates=4)(model, images)
    within = deepfool_l2.l2() <= eps
    np.testing.assert_array_equal(bounded.success, within)  # success = the minimal norm is within eps
    assert np.all(bounded.l2()[~within] == 0)  # beyond eps: the clean image, so the artifact keeps its budget
    assert bounded.to_artifact().max_norm() <= eps + 1e-6


def test_fab_minimal_norm_beats_deepfool(model, images, deepfool_l2, deepfool_linf) -> None:
    for norm, reference in (("linf", deepfool_linf.linf()), ("l2", deepfool_l2.l2())):
        out = FAB(norm=norm, steps=6)(model, images)
        assert out.eps is None and out.success.all()
        norms = out.linf() if norm == "linf" else out.l2()
        assert np.median(norms) <= np.median(reference)


def test_fab_t_counts_only_results_within_eps(model, images) -> None:
    eps = 2 / 255
    out = FABT(eps=eps, steps=10, n_target_classes=3)(model, images)
    assert out.method == "fab-t" and out.linf().max() <= eps + 1e-6
    minimal = make_attack("fab-t", steps=10, n_target_classes=3)(model, images)
    # the same deterministic runs: an image succeeds within eps exactly when its minimal norm is within eps
    np.testing.assert_array_equal(out.success, minimal.linf() <= eps)
    assert 0 < out.success.sum() < len(images)
    assert np.all(out.linf()[~out.success] == 0)


def test_carlini_wagner_l2(model, images, deepfool_l2) -> None:
    out = CarliniWagnerL2(binary_search_steps=3, steps=25, learning_rate=0.05, initial_const=1.0)(model, images)
    assert out.norm == "l2" and out.eps is None
    assert out.success.all() and np.all(out.adv_pred != out.labels)
    assert np.median(out.l2()) <= 1.25 * np.median(deepfool_l2.l2())
    target = (images.labels + 1) % 10
    targeted = CarliniWagnerL2(binary_search_steps=2, steps=25, learning_rate=0.05, initial_const=1.0)(
        model, images.take(4), target=target[:4]
    )
    hit = targeted.success
    assert hit.any() and np.all(targeted.adv_pred[hit] == target[:4][hit])


def test_clear_errors(model, images) -> None:
    with pytest.raises(ConfigError, match="linf or l2, not 'l1'"):
        DeepFool(norm="l1")
    with pytest.raises(ConfigError, match="linf or l2"):
        FAB(norm="l0")
    with pytest.raises(ConfigError, match="no targeted mode"):
        DeepFool()(model, images, target=0)
    with pytest.raises(ConfigError, match="n_target_classes=12 needs a model with more than 12 classes"):
        FABT(n_target_classes=12, steps=1)(model, images)
    with pytest.raises(ConfigError, match="num_candidates"):
        DeepFool(num_candidates=1)

    def detached(x):
        with torch.no_grad():
            return model(x)

    detached.config = model.config
    for attack in (CarliniWagnerL2(steps=1), DeepFool(steps=1), FAB(steps=1)):
        with pytest.raises(ConfigError, match="no gradient"):
            attack(detached, images)
