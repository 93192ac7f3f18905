"""Black-box attacks on the deployed ONNX engines: query accounting, budgets, the paper's three
attacks, failures mid-attack, results, artifacts and transfer both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeattack.attacks.blackbox import (
    EngineOracle,
    QueryBudgetExceeded,
    attack_class,
    parse_spec,
    summarise,
    worst_case,
)
from edgeattack.attacks.blackbox.spatial import affine_warp, spatial_candidates
from edgeattack.engines import open_engine
from edgeattack.engines.base import Engine
from edgeattack.errors import ConfigError, EngineError

pytest.importorskip("onnxruntime")


class FailingEngine(Engine):
    """Wraps an engine; raises EngineError from call `fail_at` on, or returns NaN logits with `nan`."""

    backend = "test"

    def __init__(self, inner: Engine, *, fail_at: int = 10**9, nan: bool = False) -> None:
        super().__init__(inner.source, inner.metadata)
        self.inner, self.fail_at, self.nan = inner, fail_at, nan

    @property
    def providers(self) -> list[str]:
        return self.inner.providers

    def _activate_impl(self) -> None:
        self.inner.activate()

    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.calls >= self.fail_at:
            raise EngineError("device lost (simulated)")
        out = dict(self.inner._infer_impl(images))
        if self.nan:
            out["logits"] = np.full_like(out["logits"], np.nan)
        return out


@pytest.fixture(scope="module")
def int8(onnx_engines):
    with open_engine(onnx_engines["int8"], intra_op_threads=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def few(test_set):
    return test_set.subset(np.arange(12))


def _attack(engine, images, labels, name, budget=200, target=None, quantize=False, **params):
    engine.reset_counter()
    oracle = EngineOracle(engine, len(images), budget=budget, quantize=quantize)
    outcome = attack_class(name)(**params)(oracle, images, labels, target=target)
    return oracle, outcome


# oracle ------------------------------------------------------------------------------------------
def test_oracle_counts_every_image_and_refuses_past_budget(fp32, few):
    fp32.reset_counter()
    oracle = EngineOracle(fp32, 3, budget=2, batch_size=2)
    oracle.logits(few.images[:5], np.array([0, 0, 1, 2, 2]))
    assert oracle.queries.tolist() == [2, 1, 2]
    assert fp32.queries == oracle.total_queries == 5
    assert oracle.remaining().tolist() == [0, 1, 0]
    with pytest.raises(QueryBudgetExceeded, match="budget of 2"):
        oracle.logits(few.images[:1], np.array([0]))
    assert fp32.queries == 5, "a refused query never reaches the engine"
    oracle.verify(few.images[:3])
    assert fp32.queries == oracle.total_queries == 8 and oracle.queries.sum() == 5
    stats = oracle.stats()
    assert stats.engine_calls == 5 and stats.per_query_ms > 0


def test_zero_budget_and_bad_specs_are_clear_errors():
    with pytest.raises(ConfigError, match="at least 1"):
        EngineOracle(object(), 1, budget=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="choose one of spatial, salt_and_pepper"):
        parse_spec("squre")
    with pytest.raises(ConfigError, match="did you mean"):
        parse_spec("squre")
    with pytest.raises(ConfigError, match=r"no parameter 'stepz'.*valid: .*steps=1000"):
        parse_spec("salt_and_pepper:stepz=3")
    with pytest.raises(ConfigError, match="cannot read steps"):
        parse_spec("salt_and_pepper:steps=many")
    with pytest.raises(ConfigError, match="budget must be at least 1"):
        parse_spec("spatial:budget=0")
    with pytest.raises(ConfigError, match="bounded attack: give eps"):
        parse_spec("square")
    spec = parse_spec("square:eps=8/255,target=3,budget=50")
    assert spec.params["eps"] == pytest.approx(8 / 255) and spec.target == 3 and spec.budget == 50


def test_quantized_queries_are_on_the_grid(fp32, few):
    seen = []

    class Recording(FailingEngine):
        def _infer_impl(self, images):
            seen.append(images.copy())
            return super()._infer_impl(images)

    with Recording(fp32) as engine:
        oracle = EngineOracle(engine, 2, budget=5, quantize=True)
        oracle.logits(few.images[:2] + 0.0013, np.array([0, 1]))
    assert np.allclose(seen[0] * 255, np.round(seen[0] * 255), atol=1e-4)


# the paper's three attacks --------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("spatial", {}),
        ("spatial", {"grid_search": False, "random_steps": 40}),
        ("salt_and_pepper", {"steps": 60}),
        ("blended_noise", {"directions": 20, "steps": 50, "binary_search_steps": 6, "candidates_per_query": 5}),
    ],
)
def test_attacks_find_adversarials_within_budget(request, precision, name, params, few):
    engine = request.getfixturevalue(precision)
    budget = 120
    oracle, outcome = _attack(engine, few.images, few.labels, name, budget=budget, **params)
    result = summarise(outcome)
    assert outcome.success.sum() >= 3, f"{name} fooled only {outcome.success.sum()} images"
    assert oracle.queries.max() <= budget
    assert engine.queries == oracle.total_queries, "the counter equals the images passed to the engine"
    assert outcome.adversarial.min() >= 0 and outcome.adversarial.max() <= 1
    assert (outcome.adv_pred[outcome.success] != few.labels[outcome.success]).all()
    assert result.queries.max <= budget and result.success_within_budget == pytest.approx(
        outcome.success.sum() / (outcome.clean_pred == few.labels).sum()
    )
    assert result.success_curve[-1] == [float(budget), result.success_within_budget]
    again = _attack(engine, few.images, few.labels, name, budget=budget, **params)[1]
    assert np.array_equal(again.adversarial, outcome.adversarial), "same seed, same result"


def test_minimal_attack_improves_with_budget(fp32, few):
    small = _attack(fp32, few.images, few.labels, "salt_and_pepper", budget=20, steps=300)[1]
    large = _attack(fp32, few.images, few.labels, "salt_and_pepper", budget=300, steps=300)[1]
    both = small.success & large.success
    assert both.any()
    assert np.median(large.l2[both]) < np.median(small.l2[both])


def test_bounded_mode_respects_eps_and_stops_early(fp32, few):
    eps = 6.0
    oracle, outcome = _attack(fp32, few.images, few.labels, "salt_and_pepper", budget=300, steps=300, eps=eps)
    assert outcome.success.any()
    assert (outcome.l2[outcome.success] <= eps + 1e-4).all()
    done = outcome.success
    assert (outcome.queries_to_success[done] == oracle.queries[done]).all(), "success ends the image's queries"


def test_targeted_attack_reaches_the_target(fp32, few):
    target = np.full(len(few), 3)
    _, outcome = _attack(fp32, few.images, few.labels, "salt_and_pepper", budget=300, steps=300, target=target)
    result = summarise(outcome)
    assert outcome.success.any() and (outcome.adv_pred[outcome.success] == 3).all()
    assert result.targeted and result.metrics.target == 3 and result.metrics.targeted_success > 0


def test_spatial_warp_is_a_rotation_and_stays_in_bounds(few):
    image = few.images[:1]
    same = affine_warp(image, np.zeros(1), np.zeros(1), np.zeros(1))
    assert np.allclose(same, image, atol=1e-6)
    shifted = affine_warp(image, np.zeros(1), np.ones(1) * 2, np.zeros(1))
    assert np.allclose(shifted[..., 2:], image[..., :-2], atol=1e-6) and (shifted[..., :2] == 0).all()
    quarter = affine_warp(image, np.array([90.0]), np.zeros(1), np.zeros(1))
    assert np.allclose(quarter[0], np.rot90(image[0], k=1, axes=(1, 2)), atol=1e-5)
    warped = affine_warp(np.repeat(image, 5, 0), np.linspace(-30, 30, 5), np.linspace(-3, 3, 5), np.zeros(5))
    assert warped.min() >= 0 and warped.max() <= 1
    grid = spatial_candidates(30, 3, 5, 5)
    assert len(grid) == 124 and not (grid == 0).all(axis=1).any()


# failures --------------------------------------------------------------------------------------
def test_engine_failing_mid_attack_keeps_finished_images(fp32, few):
    calls_after = {}
    with FailingEngine(fp32) as engine:
        oracle = EngineOracle(engine, len(few), budget=100)
        attack_class("spatial")(chunk_size=4)(
            oracle, few.images, few.labels, progress=lambda done, _: calls_after.setdefault(done, engine.calls)
        )
    with FailingEngine(fp32, fail_at=calls_after[4] + 1) as engine:  # dies during the second chunk
        oracle = EngineOracle(engine, len(few), budget=100)
        outcome = attack_class("spatial")(chunk_size=4)(oracle, few.images, few.labels)
    assert outcome.error and "device lost" in outcome.error
    assert outcome.completed.tolist() == [True] * 4 + [False] * 8
    result = summarise(outcome, indices=few.indices)
    assert result.failed_indices == few.indices[~outcome.completed].tolist()
    assert result.images_completed == outcome.completed.sum() and result.error


def test_engine_returning_nan_is_reported(fp32, few):
    with FailingEngine(fp32, nan=True) as engine:
        oracle = EngineOracle(engine, 4, budget=10)
        outcome = attack_class("spatial")()(oracle, few.images[:4], few.labels[:4])
    assert "NaN" in outcome.error and not outcome.completed.any()


# results, artifacts, replay -------------------------------------------------------------------
def test_evaluate_runs_blackbox_saves_artifacts_and_replays(fp32, few, tmp_path):
    from edgeattack.evaluate import evaluate
    from edgeattack.results import load

    runs = []
    result = evaluate(
        fp32,
        few,
        blackbox=["spatial", "salt_and_pepper:steps=50"],
        budget=60,
        blackbox_dir=tmp_path,
        measure_latency=False,
        runs=runs,
    )
    assert [b.attack for b in result.blackbox] == ["spatial", "salt_and_pepper"]
    assert result.blackbox_worst_case is not None
    worst = result.blackbox_worst_case.metrics.asr
    assert worst >= max(b.metrics.asr for b in result.blackbox)
    assert load(result.save(tmp_path / "r.json")).to_dict() == result.to_dict()
    rows = result.rows()
    assert rows[0]["kind"] == "blackbox" and rows[0]["queries_max"] <= 60
    artifact_path = result.blackbox[0].artifact_path
    assert artifact_path and artifact_path.endswith(".npz")
    replay = evaluate(fp32, few, [artifact_path], measure_latency=False)
    assert replay.perturbations[0].metrics.asr == pytest.approx(result.blackbox[0].metrics.asr)
    assert runs[0].artifact.meta.method == "blackbox-spatial"
    assert worst_case([r.outcome for r in runs]).metrics.asr == pytest.approx(worst)


def test_cli_transfer_both_ways_and_bad_input(onnx_engines, tmp_path):
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    runner = CliRunner()
    args = ["evaluate", "-e", str(onnx_engines["int8"]), "-e", str(onnx_engines["fp32"]), "--limit", "10"]
    done = runner.invoke(app, [*args, "-B", "spatial", "--budget", "50", "-o", str(tmp_path)])
    assert done.exit_code == 0, done.output
    doc = json.loads(next(tmp_path.glob("transfer-blackbox-*.json")).read_text())
    matrix = doc["matrices"][0]
    assert matrix["engines"] == ["vit_int8.onnx", "vit_fp32.onnx"]
    assert all(v is not None for row in matrix["asr"] for v in row)
    assert "transfer of spatial" in done.output
    bad = runner.invoke(app, [*args, "-B", "spatial:angle=3"])
    assert bad.exit_code == 2 and "no parameter 'angle'" in bad.output
    zero = runner.invoke(app, [*args, "-B", "spatial", "--budget", "0"])
    assert zero.exit_code == 2 and "at least 1" in zero.output
    listing = runner.invoke(app, ["evaluate", "-e", "x", "--list-blackbox"])
    assert listing.exit_code == 0 and "hopskipjump" in listing.output and "max_rotation" in listing.output
