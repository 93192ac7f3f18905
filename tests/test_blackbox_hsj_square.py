"""HopSkipJump and Square Attack against the shipped digits ViT's ONNX Runtime engines.

Small images counts and budgets: these check the attacks' contracts (budget, query accounting,
bounds, eps, targets, determinism), not their strength.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeattack.attacks.blackbox.hopskipjump import HopSkipJump
from edgeattack.attacks.blackbox.oracle import EngineOracle
from edgeattack.attacks.blackbox.square import SquareAttack, meta_pseudo_gaussian, p_selection
from edgeattack.engines import open_engine
from edgeattack.errors import ConfigError

NOISE_CLASS = 8
"""What this ViT calls uniform noise: the class a noise-started targeted HopSkipJump can reach."""


def attack_engine(path, attack, images, labels, budget, target=None):
    """Run `attack` through a fresh oracle; check the accounting every attack must honour."""
    with open_engine(path, intra_op_threads=1) as engine:
        before = engine.queries
        oracle = EngineOracle(engine, len(images), budget=budget)
        outcome = attack(oracle, images, labels, target=target)
        assert engine.queries - before == oracle.total_queries
    assert oracle.queries.max() <= budget
    assert outcome.completed.all() and outcome.error is None
    assert outcome.adversarial.min() >= 0.0 and outcome.adversarial.max() <= 1.0
    return outcome


def pick(test_set, n, start=0, exclude=None):
    images, labels = test_set.images, test_set.labels
    keep = np.flatnonzero(labels != exclude) if exclude is not None else np.arange(len(labels))
    keep = keep[start : start + n]
    return images[keep], labels[keep]


# HopSkipJump ----------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_hsj_l2_finds_adversarials(onnx_engines, test_set, precision):
    x, y = pick(test_set, 8)
    outcome = attack_engine(onnx_engines[precision], HopSkipJump(seed=0), x, y, budget=100)
    assert outcome.success.sum() >= 4
    hit = outcome.success
    assert np.all(outcome.adv_pred[hit] != y[hit])
    assert np.all(outcome.l2[hit] > 0)
    assert np.all(outcome.queries_to_success[hit] >= 2)


def test_hsj_more_budget_shrinks_l2(onnx_engines, test_set):
    x, y = pick(test_set, 5, start=8)
    short = attack_engine(onnx_engines["fp32"], HopSkipJump(seed=1), x, y, budget=20)
    long = attack_engine(onnx_engines["fp32"], HopSkipJump(seed=1), x, y, budget=150)
    both = short.success & long.success
    assert both.sum() >= 3
    # the same seed gives the same start; the longer run only improves on it
    assert np.all(long.l2[both] <= short.l2[both] + 1e-6)
    assert np.median(long.l2[both]) < 0.7 * np.median(short.l2[both])


def test_hsj_linf(onnx_engines, test_set):
    x, y = pick(test_set, 4, start=16)
    outcome = attack_engine(onnx_engines["int8"], HopSkipJump(norm="linf", seed=0), x, y, budget=80)
    assert outcome.success.sum() >= 2
    assert np.all(outcome.linf[outcome.success] < 1.0)


def test_hsj_bounded_stops_at_eps(onnx_engines, test_set):
    x, y = pick(test_set, 4, start=20)
    eps = 6.0
    outcome = attack_engine(onnx_engines["fp32"], HopSkipJump(eps=eps, seed=0), x, y, budget=120)
    hit = outcome.success
    assert hit.any()
    assert np.all(outcome.l2[hit] <= eps * (1 + 1e-6))
    # a successful image stops querying at once: its queries are those it needed
    assert np.all(outcome.queries[hit] == outcome.queries_to_success[hit])


def test_hsj_targeted(onnx_engines, test_set):
    x, y = pick(test_set, 4, exclude=NOISE_CLASS)
    outcome = attack_engine(onnx_engines["fp32"], HopSkipJump(seed=0), x, y, budget=40, target=NOISE_CLASS)
    assert outcome.targeted and outcome.success.sum() >= 2
    assert np.all(outcome.adv_pred[outcome.success] == NOISE_CLASS)


def test_hsj_reproducible(onnx_engines, test_set):
    x, y = pick(test_set, 3, start=24)
    runs = [attack_engine(onnx_engines["fp32"], HopSkipJump(seed=5), x, y, budget=40) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].adversarial, runs[1].adversarial)
    np.testing.assert_array_equal(runs[0].queries, runs[1].queries)


# Square Attack --------------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "eps", "precision"), [("linf", 0.1, "fp32"), ("l2", 2.0, "int8")])
def test_square_succeeds_within_eps(onnx_engines, test_set, norm, eps, precision):
    x, y = pick(test_set, 8, start=30)
    budget = 150
    outcome = attack_engine(onnx_engines[precision], SquareAttack(norm=norm, eps=eps, seed=0), x, y, budget=budget)
    hit = outcome.success
    assert hit.any()
    assert np.all(outcome.adv_pred[hit] != y[hit])
    norms = outcome.linf if norm == "linf" else outcome.l2
    assert np.all(norms[hit] <= eps * (1 + 1e-6) + 1e-6)
    # an image that succeeded stops; one that did not spent its whole budget
    assert np.all(outcome.queries[hit] == outcome.queries_to_success[hit])
    attacked = outcome.clean_pred == y
    assert np.all(outcome.queries[attacked & ~hit] == budget)


def test_square_targeted(onnx_engines, test_set):
    x, y = pick(test_set, 6, exclude=3)
    attack = SquareAttack(eps=0.15, seed=0)
    outcome = attack_engine(onnx_engines["fp32"], attack, x, y, budget=100, target=3)
    assert outcome.success.any()
    assert np.all(outcome.adv_pred[outcome.success] == 3)
    assert np.all(outcome.linf <= 0.15 + 1e-6)


def test_square_reproducible_and_restarts(onnx_engines, test_set):
    x, y = pick(test_set, 3, start=40)
    runs = [
        attack_engine(onnx_engines["fp32"], SquareAttack(norm="l2", eps=0.5, n_restarts=2, seed=3), x, y, budget=30)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].adversarial, runs[1].adversarial)
    np.testing.assert_array_equal(runs[0].queries, runs[1].queries)
    assert runs[0].params["n_restarts"] == 2 and runs[0].params["p_init"] is None


# pieces without an engine ---------------------------------------------------------------------
def test_configuration_errors():
    with pytest.raises(ConfigError):
        SquareAttack()  # bounded: needs eps
    with pytest.raises(ConfigError):
        SquareAttack(eps=0.1, norm="l1")
    with pytest.raises(ConfigError):
        SquareAttack(eps=0.1, p_init=0.0)
    with pytest.raises(ConfigError):
        HopSkipJump(max_gradient_eval_steps=10, initial_gradient_eval_steps=100)
    params = HopSkipJump.parameters()
    assert params["steps"] == 64 and params["gamma"] == 1.0 and params["init_attempts"] == 100
    assert HopSkipJump(eps=None).params()["eps"] is None


def test_square_schedule_and_bumps():
    p = p_selection(0.05, np.array([0, 10, 11, 50, 51, 9000, 10001]), np.full(7, 10000))
    np.testing.assert_allclose(p, 0.05 / np.array([1, 1, 2, 2, 4, 512, 1]))
    # the schedule is rescaled to the budget: 1% of 1000 iterations is 1% of 10000
    assert (
        p_selection(0.05, np.array([100]), np.array([1000]))[0]
        == p_selection(0.05, np.array([1000]), np.array([10000]))[0]
    )
    bump = meta_pseudo_gaussian(7)
    assert np.isclose(np.sqrt((bump**2).sum()), 1.0)
    assert bump[:3].sum() > 0 > bump[3:].sum()
