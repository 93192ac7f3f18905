"""APGD (Croce & Hein 2020): the step-size schedule, the DLR loss, strength, targets, EOT and clear errors.

Attacks run on the shipped vit_tiny_digits at 32x32 on 24 test images with 10 steps, so the whole
module takes a few seconds.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeattack.attacks.whitebox import APGD, APGDT, PGD, make_attack
from edgeattack.attacks.whitebox.apgd_core import (
    Objective,
    apgd_checkpoint_fractions,
    apgd_checkpoints,
    apgd_run,
    dlr_loss,
    step_size_halvings,
    targeted_dlr_loss,
)
from edgeattack.attacks.whitebox.model import AttackModel
from edgeattack.errors import ConfigError

EPS = 2 / 255  # the shipped digits ViT keeps about 40 % robust accuracy here: attacks can differ


@pytest.fixture(scope="module")
def images(test_set):
    return test_set.take(24)


# --------------------------------------------------------------------------------------------------
# the schedule
# --------------------------------------------------------------------------------------------------
def _paper_fractions() -> list[Fraction]:
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), while p_j <= 1 (exact)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)) <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return p


def _reference_checkpoints(n_iter: int) -> list[int]:
    """The reference code's checkpoints (fra31/auto-attack): a window of int(0.22 N) iterations that
    shrinks by int(0.03 N) down to int(0.06 N)."""
    k, decrease, smallest = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    points, at = [0], 0
    while at + k <= n_iter:
        at += k
        points.append(at)
        k = max(k - decrease, smallest)
    return points


def test_checkpoints_follow_the_paper_formula() -> None:
    fractions = _paper_fractions()
    assert apgd_checkpoint_fractions() == pytest.approx([float(p) for p in fractions])
    assert apgd_checkpoint_fractions() == pytest.approx((0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99))
    for n in (1, 7, 10, 25, 100, 137, 1000):
        expected = sorted({math.ceil(p * n) for p in fractions})
        assert list(apgd_checkpoints(n)) == expected, n
    assert apgd_checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    for n in (100, 200, 1000):  # at multiples of 100 the reference code has the same checkpoints
        assert list(apgd_checkpoints(n)) == _reference_checkpoints(n)


def test_the_two_halving_conditions() -> None:
    f_max_last = torch.tensor([1.0, 1.0, 1.0, 1.0])
    f_max = torch.tensor([2.0, 2.0, 1.0, 1.0])
    increases = torch.tensor([15.0, 17.0, 17.0, 17.0])
    reduced_last = torch.tensor([False, False, False, True])
    halve = step_size_halvings(increases, 22, 0.75, reduced_last, f_max, f_max_last)
    # 15 < 0.75 * 22 (condition 1); 17 increases and an improvement: keep; no improvement and not
    # halved last time (condition 2); no improvement but halved last time: keep
    assert halve.tolist() == [True, False, True, False]


def test_a_flat_loss_halves_the_step_at_every_checkpoint() -> None:
    flat = torch.nn.Linear(12, 10)
    torch.nn.init.zeros_(flat.weight)
    torch.nn.init.zeros_(flat.bias)
    flat.bias.data[0] = 1.0  # class 0 wins whatever the input: the loss never moves
    model = AttackModel([lambda x: flat(x.flatten(1))], bounds=(0.0, 1.0), device=torch.device("cpu"))
    x = torch.full((3, 3, 2, 2), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    for steps in (10, 100):
        run = apgd_run(model, x, x.clone(), Objective("ce", y), torch.arange(3), eps=0.1, norm="linf", steps=steps)
        assert run.halvings.tolist() == [len(apgd_checkpoints(steps)) - 1] * 3
        assert not bool(run.found.any())


# --------------------------------------------------------------------------------------------------
# the DLR loss
# --------------------------------------------------------------------------------------------------
def test_dlr_is_invariant_to_shifting_and_scaling_the_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=generator)
    t = (y + 1) % 10
    for scale, shift in ((3.0, 0.0), (0.25, -7.0), (11.0, 42.0)):
        torch.testing.assert_close(dlr_loss(scale * z + shift, y), dlr_loss(z, y))
        torch.testing.assert_close(targeted_dlr_loss(scale * z + shift, y, t), targeted_dlr_loss(z, y, t))
    correct = z.argmax(1) == y
    assert bool((dlr_loss(z, y)[correct] < 0).all()) and bool((dlr_loss(z, y)[~correct] > 0).all())


# --------------------------------------------------------------------------------------------------
# the attack
# --------------------------------------------------------------------------------------------------
def test_apgd_ce_is_at_least_as_strong_as_pgd(model, images) -> None:
    apgd = APGD(eps=EPS, steps=10)(model, images)
    pgd = PGD(eps=EPS, steps=10)(model, images)
    assert apgd.adv_acc <= pgd.adv_acc
    assert apgd.adv_acc < apgd.clean_acc
    assert apgd.linf().max() <= EPS + 1e-6
    assert apgd.adversarial.min() >= 0 and apgd.adversarial.max() <= 1


def test_apgd_l2_and_dlr_keep_the_budget(model, images) -> None:
    out = make_attack("apgd", eps=0.5, norm="l2", loss="dlr", steps=5)(model, images)
    assert out.norm == "l2" and out.l2().max() <= 0.5 + 1e-4
    assert out.adv_acc < out.clean_acc
    assert out.to_artifact().meta.params["loss"] == "dlr"


def test_targeted_apgd_reaches_the_target(model, images) -> None:
    target = (images.labels + 1) % 10
    out = APGD(eps=8 / 255, steps=10)(model, images, target=target)
    assert out.targeted_success is not None and out.targeted_success >= 0.8
    multi = APGDT(eps=EPS, steps=5, n_target_classes=3)(model, images)
    assert multi.method == "apgd-t" and multi.target is None
    assert multi.adv_acc < multi.clean_acc


def test_eot_averages_gradients_over_passes(model, images) -> None:
    passes = [0]

    def noisy(x):
        passes[0] += int(x.requires_grad)
        return model(x + 0.01 * torch.randn_like(x))

    noisy.config = model.config
    APGD(eps=EPS, steps=4, eot_iter=3, early_stop=False)(noisy, images.take(2))
    # the differentiability probe, then 3 forward/backward passes at the start and at each of the 4 steps
    assert passes[0] == 1 + 3 * (1 + 4)


def test_results_do_not_depend_on_the_batching(model, images) -> None:
    whole = APGD(eps=EPS, steps=5, seed=3)(model, images)
    batched = APGD(eps=EPS, steps=5, seed=3, batch_size=7)(model, images)
    np.testing.assert_allclose(batched.adversarial, whole.adversarial, atol=1e-5)
    other = APGD(eps=EPS, steps=5, seed=4)(model, images)
    assert not np.array_equal(other.adversarial, whole.adversarial)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------
def _linear(classes: int):
    layer = torch.nn.Linear(3 * 32 * 32, classes)

    def forward(x):
        return layer(x.flatten(1))

    forward.config = type("Config", (), {"bounds": (0.0, 1.0), "input_size": (3, 32, 32)})()
    return forward


def test_clear_errors(model, images) -> None:
    with pytest.raises(ConfigError, match="linf or l2, not 'l1'"):
        APGD(norm="l1")
    with pytest.raises(ConfigError, match="loss"):
        APGD(loss="hinge")
    with pytest.raises(ConfigError, match=r"n_target_classes=10 needs a model with more than 10 classes.*9 or fewer"):
        APGD(eps=EPS, steps=2, n_target_classes=10)(model, images)
    with pytest.raises(ConfigError, match="1 class"):
        APGD(steps=2)(_linear(1), images.images[:2], np.zeros(2, dtype=np.int64))
    with pytest.raises(ConfigError, match="DLR loss needs at least 3 classes"):
        APGD(steps=2, loss="dlr")(_linear(2), images.images[:2], np.zeros(2, dtype=np.int64))
    with pytest.raises(ConfigError, match=r"either target= .* or n_target_classes"):
        APGDT(steps=2)(model, images, target=0)
    with pytest.raises(ConfigError, match="at least 1"):
        APGDT(n_target_classes=0)

    def detached(x):
        with torch.no_grad():
            return model(x)

    detached.config = model.config
    with pytest.raises(ConfigError, match="no gradient"):
        APGD(steps=2)(detached, images)

    def numpy_model(x):
        return model(x).detach().numpy()

    numpy_model.config = model.config
    with pytest.raises(ConfigError, match="not a torch tensor"):
        APGD(steps=2)(numpy_model, images)

    class Engine:  # an ONNX / TensorRT engine: infer(), not callable
        config = model.config

        def infer(self, x):
            return x

    with pytest.raises(ConfigError, match="callable"):
        APGD(steps=2)(Engine(), images)
