"""What a black-box attack on one engine measured (DESIGN.md's black-box metrics), as JSON. No torch.

`summarise(outcome, ...)` turns a `BlackBoxOutcome` into a `BlackBoxResult`: the integrity metrics
over the images the attack completed (clean_acc, adv_acc, asr with this engine's denominator,
fooling_rate, targeted_success), the queries per image (median, mean, max) and the budget, success
within the budget and at smaller budgets (the query-success curve), the L2/L∞ of the successful
perturbations, the wall time and the oracle's engine-call statistics. `worst_case(outcomes)` is the
per-image worst case over several attacks on the same images. `to_artifact` keeps the adversarial
examples as a per-image perturbation artifact, so they replay on other engines (transfer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.attacks.blackbox.base import BlackBoxOutcome
from edgeattack.metrics.accuracy import AccuracyMetrics, NormSummary, accuracy_metrics, perturbation_norms

__all__ = ["BLACKBOX_DEFINITIONS", "BlackBoxResult", "QueryStats", "WorstCase", "summarise", "to_artifact", "worst_case"]

CURVE_BUDGETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)

BLACKBOX_DEFINITIONS: dict[str, str] = {
    "queries": (
        "images passed to the engine per attacked image, the clean query included (median, mean, max over "
        "the images the attack ran on); verification of the final images is counted separately"
    ),
    "budget": "the per-image query budget; the oracle refuses any query past it",
    "success_within_budget": (
        "attacked images the attack made adversarial (verified on the engine; within eps in the bounded "
        "mode) / images attacked (clean-correct, or not already of the target class)"
    ),
    "queries_to_success": "queries an image had used when its first (within-eps) adversarial was found",
    "success_curve": "success rate had the budget been b, for b up to the budget (from queries_to_success)",
    "blackbox_norms": "L2 / L-inf of the successful adversarial perturbations, in [0,1] pixel units",
    "worst_case": "per image: adversarial if any of the attacks made it adversarial",
}


@dataclass(frozen=True)
class QueryStats:
    """Median, mean and max of a per-image query count (None over no images)."""

    n_images: int
    median: float | None
    mean: float | None
    max: int | None

    @classmethod
    def of(cls, values: np.ndarray) -> QueryStats:
        if values.size == 0:
            return cls(0, None, None, None)
        return cls(int(values.size), float(np.median(values)), float(values.mean()), int(values.max()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> QueryStats:
        return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BlackBoxResult:
    """One black-box attack on one engine."""

    attack: str
    label: str
    params: dict[str, Any]
    norm: str
    eps: float | None
    budget: int | None
    quantize_inputs: bool
    targeted: bool
    images: int
    images_attacked: int
    images_completed: int
    metrics: AccuracyMetrics
    success_within_budget: float | None
    queries: QueryStats
    queries_to_success: QueryStats
    success_curve: list[list[float]]
    norms: NormSummary
    wall_s: float
    oracle: dict[str, Any]
    artifact_path: str | None = None
    error: str | None = None
    failed_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["metrics"] = self.metrics.to_dict()
        doc["queries"] = self.queries.to_dict()
        doc["queries_to_success"] = self.queries_to_success.to_dict()
        doc["norms"] = self.norms.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BlackBoxResult:
        values = {k: doc.get(k) for k in cls.__dataclass_fields__}
        values["metrics"] = AccuracyMetrics.from_dict(doc["metrics"])
        values["queries"] = QueryStats.from_dict(doc["queries"])
        values["queries_to_success"] = QueryStats.from_dict(doc["queries_to_success"])
        values["norms"] = NormSummary.from_dict(doc["norms"])
        values["failed_indices"] = list(doc.get("failed_indices") or [])
        return cls(**values)


@dataclass(frozen=True)
class WorstCase:
    """The per-image worst case over several attacks on the same images of one engine."""

    attacks: list[str]
    images: int
    images_completed: int
    metrics: AccuracyMetrics
    only_by: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": self.metrics.to_dict()}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> WorstCase:
        return cls(
            attacks=list(doc["attacks"]),
            images=int(doc["images"]),
            images_completed=int(doc["images_completed"]),
            metrics=AccuracyMetrics.from_dict(doc["metrics"]),
            only_by={str(k): int(v) for k, v in doc["only_by"].items()},
        )


def _attacked(outcome: BlackBoxOutcome) -> np.ndarray:
    if outcome.target is None:
        return outcome.completed & (outcome.clean_pred == outcome.labels)
    return outcome.completed & (outcome.clean_pred != outcome.target)


def summarise(
    outcome: BlackBoxOutcome,
    *,
    label: str | None = None,
    quantize_inputs: bool = False,
    indices: np.ndarray | None = None,
    artifact_path: str | None = None,
) -> BlackBoxResult:
    """The DESIGN.md black-box metrics of `outcome`; `indices` are the images' dataset indices."""
    done = outcome.completed
    attacked = _attacked(outcome)
    target = None
    if outcome.target is not None:
        unique = np.unique(outcome.target[done])
        target = int(unique[0]) if unique.size == 1 else outcome.target[done]
    metrics = accuracy_metrics(outcome.labels[done], outcome.clean_pred[done], outcome.adv_pred[done], target=target)
    n_attacked = int(attacked.sum())
    success = outcome.success & attacked
    to_success = outcome.queries_to_success[success]
    curve = []
    if n_attacked:
        limit = outcome.budget or (int(to_success.max()) if to_success.size else 1)
        budgets = [b for b in CURVE_BUDGETS if b < limit] + [limit]
        curve = [[float(b), float((to_success <= b).sum() / n_attacked)] for b in budgets]
    norms = perturbation_norms(outcome.clean[success], outcome.adversarial[success]).summary
    ids = np.arange(len(done)) if indices is None else np.asarray(indices)
    return BlackBoxResult(
        attack=outcome.attack,
        label=label or outcome.attack,
        params=dict(outcome.params),
        norm=outcome.norm,
        eps=outcome.eps,
        budget=outcome.budget,
        quantize_inputs=quantize_inputs,
        targeted=outcome.targeted,
        images=len(done),
        images_attacked=n_attacked,
        images_completed=int(done.sum()),
        metrics=metrics,
        success_within_budget=float(success.sum() / n_attacked) if n_attacked else None,
        queries=QueryStats.of(outcome.queries[attacked]),
        queries_to_success=QueryStats.of(to_success),
        success_curve=curve,
        norms=norms,
        wall_s=float(outcome.wall_s),
        oracle=outcome.oracle.to_dict(),
        artifact_path=artifact_path,
        error=outcome.error,
        failed_indices=[int(i) for i in ids[~done]],
    )


def worst_case(outcomes: Sequence[BlackBoxOutcome], labels: Sequence[str] | None = None) -> WorstCase:
    """Per image, fooled if any attack fooled it (untargeted; images all attacks completed)."""
    if not outcomes:
        raise ValueError("worst_case needs at least one outcome")
    names = list(labels or [o.attack for o in outcomes])
    first = outcomes[0]
    done = np.logical_and.reduce([o.completed for o in outcomes])
    adv_pred = first.labels.copy()
    for o in outcomes:
        adv_pred = np.where((adv_pred == o.labels) & (o.adv_pred != o.labels), o.adv_pred, adv_pred)
    wins = np.array([(o.adv_pred != o.labels) & (first.clean_pred == first.labels) & done for o in outcomes])
    only = {name: int((wins[i] & (wins.sum(axis=0) == 1)).sum()) for i, name in enumerate(names)}
    metrics = accuracy_metrics(first.labels[done], first.clean_pred[done], adv_pred[done])
    return WorstCase(attacks=names, images=len(done), images_completed=int(done.sum()), metrics=metrics, only_by=only)


def to_artifact(
    outcome: BlackBoxOutcome,
    *,
    indices: np.ndarray,
    dataset: str,
    split: str,
    seed: int,
    sources: Sequence[dict[str, str]] = (),
    extra_params: dict[str, Any] | None = None,
) -> PerturbationArtifact:
    """The completed images' adversarial examples as a per-image artifact (delta = adv − clean)."""
    done = outcome.completed
    params: dict[str, Any] = {**outcome.params, "budget": outcome.budget, **(extra_params or {})}
    if outcome.target is not None:
        params["target"] = outcome.target[done].tolist()
    meta = ArtifactMeta(
        kind="per_image",
        method=f"blackbox-{outcome.attack}",
        norm=outcome.norm,
        eps=outcome.eps,
        input_size=tuple(int(d) for d in outcome.clean.shape[1:]),  # type: ignore[arg-type]
        dataset=dataset,
        split=split,
        seed=seed,
        params=params,
        sources=tuple(sources),
    )
    delta = outcome.adversarial[done] - outcome.clean[done]
    return PerturbationArtifact(delta=delta, meta=meta, indices=np.asarray(indices)[done])
