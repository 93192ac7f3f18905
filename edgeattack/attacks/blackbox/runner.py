"""Run one black-box attack spec on one engine over a dataset: result, outcome and artifact. No torch.

`run_blackbox(engine, dataset, spec)` builds the attack, gives it a fresh `EngineOracle` (budget,
1/255 rounding of every query when `quantize_inputs`), resolves the target classes, runs it, and
returns a `BlackBoxRun`: the `BlackBoxResult` (DESIGN.md metrics), the raw `BlackBoxOutcome`, and
the adversarial examples as a per-image `PerturbationArtifact`, saved under `artifact_dir` when
given (never overwriting), so they replay on other engines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeattack._io import dataset_file_label, file_label, no_overwrite_path, sha256_file
from edgeattack.artifacts import PerturbationArtifact
from edgeattack.attacks.blackbox.base import BlackBoxOutcome
from edgeattack.attacks.blackbox.oracle import EngineOracle
from edgeattack.attacks.blackbox.registry import BlackBoxSpec, parse_spec
from edgeattack.attacks.blackbox.result import BlackBoxResult, summarise, to_artifact
from edgeattack.data.base import ImageDataset
from edgeattack.engines.base import Engine
from edgeattack.errors import ConfigError

__all__ = ["DEFAULT_BUDGET", "BlackBoxRun", "engine_source", "run_blackbox"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 1000


@dataclass(frozen=True)
class BlackBoxRun:
    """One attack on one engine: its result, raw outcome and adversarial examples."""

    result: BlackBoxResult
    outcome: BlackBoxOutcome
    artifact: PerturbationArtifact
    artifact_path: Path | None


def engine_source(engine: Engine) -> dict[str, str]:
    """How an artifact records the engine it was found on."""
    path = Path(engine.source)
    return {
        "engine": engine.name,
        "backend": engine.backend,
        "precision": str(engine.metadata.precision),
        "sha256": sha256_file(path) if path.is_file() else "",
        "model": str(engine.metadata.source_model),
    }


def run_blackbox(
    engine: Engine,
    dataset: ImageDataset,
    spec: BlackBoxSpec | str,
    *,
    budget: int | None = DEFAULT_BUDGET,
    quantize_inputs: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    artifact_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BlackBoxRun:
    """Attack every image of `dataset` on the active `engine` with `spec` (a spec or its text)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    budget = spec.budget if spec.budget is not None else budget
    if budget is not None and budget < 1:
        raise ConfigError(f"the query budget must be at least 1 query per image, got {budget}")
    attack = spec.build(seed=seed)
    if attack.kind == "score" and engine.metadata.precision == "labels-only":
        raise ConfigError(f"{attack.name} is score-based: engine {engine.name} returns labels only")
    num_classes = len(engine.metadata.labels) or int(dataset.labels.max()) + 1
    target = spec.targets_for(dataset.labels, num_classes, seed=seed)
    oracle = EngineOracle(engine, len(dataset), budget=budget, quantize=quantize_inputs, batch_size=batch_size)
    logger.info("%s on %s: %d images, budget %s", spec.display, engine.name, len(dataset), budget)
    images = np.asarray(dataset.images)  # black-box attacks take their (--limit) set at once: decode it
    outcome = attack(oracle, images, dataset.labels, target=target, progress=progress)
    artifact = to_artifact(
        outcome,
        indices=dataset.indices,
        dataset=dataset.name,
        split=dataset.split,
        seed=dataset.seed,
        sources=[engine_source(engine)],
        extra_params={"quantize_inputs": quantize_inputs, "attack_spec": spec.display},
    )
    saved = None
    if artifact_dir is not None and outcome.completed.any():
        name = f"bb-{file_label(spec.display)}-{file_label(Path(engine.name).stem)}-{dataset_file_label(dataset.name, dataset.split)}.npz"
        saved = artifact.save(no_overwrite_path(Path(artifact_dir) / name))
    result = summarise(
        outcome,
        label=spec.display,
        quantize_inputs=quantize_inputs,
        indices=dataset.indices,
        artifact_path=None if saved is None else str(saved),
    )
    if outcome.error:
        logger.error(
            "%s on %s stopped after %d of %d images: %s",
            spec.display,
            engine.name,
            int(outcome.completed.sum()),
            len(dataset),
            outcome.error,
        )
    return BlackBoxRun(result=result, outcome=outcome, artifact=artifact, artifact_path=saved)


def targets_summary(target: np.ndarray | None) -> str:
    """'untargeted', 'target 3' or 'per-image targets'."""
    if target is None:
        return "untargeted"
    unique = np.unique(target)
    return f"target {int(unique[0])}" if unique.size == 1 else "per-image targets"
