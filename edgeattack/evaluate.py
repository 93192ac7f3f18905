"""Replay perturbation artifacts on one deployed engine and measure it: one `EvaluationResult`.

`evaluate(engine, dataset, perturbations)` runs the clean images once, then each artifact's
adversarial images (universal and class-universal ones on every image, per-image ones on the
images they cover, matched by dataset index), computes the DESIGN.md metrics per artifact, times a
representative batch with trtexec's conventions, and records the peak resident memory of each pass.
It needs no torch when the engine is an ONNX file, and it never prints: pass `progress` to follow it.
Every pass goes batch by batch (`ImageDataset.batches`), so an image folder is decoded a batch at a
time and memory does not grow with the number of images (black-box attacks excepted: they decode
their set at once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeattack._io import sha256_file
from edgeattack.artifacts import PerturbationArtifact, check_replay
from edgeattack.attacks.blackbox.registry import BlackBoxSpec, parse_spec
from edgeattack.attacks.blackbox.result import BlackBoxResult, WorstCase, worst_case
from edgeattack.attacks.blackbox.runner import DEFAULT_BUDGET, BlackBoxRun, run_blackbox
from edgeattack.data.base import ImageDataset
from edgeattack.engines import Engine, open_engine
from edgeattack.errors import ConfigError, DataError, EngineError
from edgeattack.metrics.accuracy import PerturbationNorms, accuracy_metrics, perturbation_norms
from edgeattack.metrics.latency import (
    DEFAULT_MIN_RUNS,
    DEFAULT_MIN_SECONDS,
    LatencyRecorder,
)
from edgeattack.metrics.latency import measure_latency as _measure_latency
from edgeattack.metrics.memory import MemoryStats, PeakMemory, current_rss_mib
from edgeattack.replay_breakdown import artifact_replay_breakdown
from edgeattack.results import CleanResult, DatasetInfo, EvaluationResult, ModelSize, PerturbationResult

__all__ = ["ProgressCallback", "evaluate"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(total_steps, advance)`: once with advance 0 at the start, then 1 per batch of
every pass and 1 when the latency measurement is done; the advances sum to `total_steps`."""

PerturbationSource = str | Path | PerturbationArtifact


@dataclass(frozen=True)
class _Replay:
    """An artifact checked against the engine and dataset, with the dataset positions it covers."""

    artifact: PerturbationArtifact
    path: str | None
    sha256: str | None
    positions: np.ndarray
    skipped: int
    max_norm: float | None

    @property
    def label(self) -> str:
        return self.path or f"in-memory {self.artifact.meta.method} artifact"


def _prepare(
    source: PerturbationSource, engine: Engine, dataset: ImageDataset, allow_over_budget: bool = False
) -> _Replay:
    if isinstance(source, PerturbationArtifact):
        artifact, path, sha = source, None, None
    else:
        path = str(source)
        artifact = PerturbationArtifact.load(path)
        sha = sha256_file(path)
    label = path or f"in-memory {artifact.meta.method} artifact"
    coverage = check_replay(
        artifact, dataset, label=label, input_size=engine.input_size, engine=engine.name,
        allow_over_budget=allow_over_budget,
    )
    return _Replay(artifact, path, sha, coverage.positions, coverage.skipped, coverage.max_norm)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _infer_checked(engine: Engine, batch: np.ndarray, recorder: LatencyRecorder, what: str) -> np.ndarray:
    """Top-1 predictions for `batch`, timed; EngineError when the logits are not finite."""
    with recorder.time(len(batch)):
        logits = engine.infer(batch)
    finite = np.isfinite(logits).all(axis=tuple(range(1, logits.ndim)))
    if not finite.all():
        raise EngineError(
            f"engine {engine.name} returned NaN or infinite logits for {int((~finite).sum())} of "
            f"{len(batch)} {what} images"
        )
    return logits.argmax(axis=1).astype(np.int64)


def _target_of(artifact: PerturbationArtifact, indices: np.ndarray) -> int | np.ndarray | None:
    """The attack's target class(es) for the images with dataset `indices`, from the artifact's params.

    A single class is returned as an int; per-image targets (in the order of the artifact's own
    indices) are aligned to `indices`.
    """
    for key in ("target", "target_class"):
        value = artifact.meta.params.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, (int, np.integer)):
            return int(value)
        targets = np.asarray(value)
        if targets.dtype.kind not in "iu":
            continue
        if targets.ndim == 0 or len(np.unique(targets)) == 1:
            return int(targets.reshape(-1)[0])
        if artifact.meta.kind == "per_image" and targets.shape == artifact.indices.shape:
            return targets[artifact.positions_for(indices)]
    return None


def _time_per_image_s(recorder: LatencyRecorder) -> float | None:
    return recorder.total_s / recorder.images if recorder.images else None


def evaluate(
    engine: Engine | str | Path,
    dataset: ImageDataset,
    perturbations: Sequence[PerturbationSource] = (),
    *,
    batch_size: int = 64,
    quantize_inputs: bool = False,
    latency_runs: int = DEFAULT_MIN_RUNS,
    latency_seconds: float = DEFAULT_MIN_SECONDS,
    measure_latency: bool = True,
    measure_memory: bool = True,
    blackbox: Sequence[BlackBoxSpec | str] = (),
    budget: int | None = DEFAULT_BUDGET,
    blackbox_dir: str | Path | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    runs: list[BlackBoxRun] | None = None,
    allow_over_budget: bool = False,
) -> EvaluationResult:
    """Evaluate `engine` on `dataset`, clean, under each perturbation artifact and each black-box attack.

    `engine` is an Engine (activated here if it is not) or anything `open_engine` accepts (opened
    and closed here). `perturbations` are artifact paths or loaded artifacts; all are checked
    before anything runs: the engine's input size against the dataset's (EngineError), each
    artifact's input size against the engine's and its dataset against this one (ArtifactError),
    and a per-image artifact must cover some of the dataset's images (by dataset index). An artifact
    whose deltas exceed its own declared eps is refused (ArtifactError) unless `allow_over_budget`;
    each result records the measured largest delta (`delta_max_norm`) beside the declared eps.
    Adversarial images are clipped to the engine's bounds, and rounded to the 1/255 grid with
    `quantize_inputs`. Latency is measured on the first `batch_size` clean images (at least
    `latency_runs` calls and `latency_seconds` seconds, after warm-up); every pass's own inference
    calls are timed too (`replay_latency`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if latency_runs < 1 or latency_seconds < 0:
        raise ConfigError(
            f"latency needs >= 1 run and >= 0 seconds, got {latency_runs} and {latency_seconds}"
        )
    if len(dataset) == 0:
        raise DataError(f"dataset {dataset.spec} holds no images")
    if budget is not None and budget < 1:
        raise ConfigError(f"the query budget must be at least 1 query per image, got {budget}")
    specs = [parse_spec(s) if isinstance(s, str) else s for s in blackbox]

    owned = not isinstance(engine, Engine)
    eng: Engine = open_engine(engine) if owned else engine  # type: ignore[arg-type]
    was_active = bool(getattr(eng, "_active", False))
    try:
        if tuple(eng.input_size) != tuple(dataset.input_shape):
            raise EngineError(
                f"engine {eng.name} takes images of size {tuple(eng.input_size)} (C, H, W) but dataset "
                f"{dataset.spec} holds images of size {tuple(dataset.input_shape)}"
            )
        replays = [_prepare(source, eng, dataset, allow_over_budget) for source in perturbations]
        eng.activate()
        return _run(
            eng,
            dataset,
            replays,
            batch_size=batch_size,
            quantize_inputs=quantize_inputs,
            latency_runs=latency_runs,
            latency_seconds=latency_seconds,
            measure_latency=measure_latency,
            measure_memory=measure_memory,
            progress=progress,
            blackbox=_BlackBoxPlan(specs, budget, blackbox_dir, seed, runs),
        )
    finally:
        if owned or not was_active:
            eng.deactivate()


@dataclass(frozen=True)
class _BlackBoxPlan:
    specs: list[BlackBoxSpec]
    budget: int | None
    directory: str | Path | None
    seed: int
    runs: list[BlackBoxRun] | None

    def steps(self, n: int) -> int:
        return sum(_n_batches(n, spec.build().chunk_size) for spec in self.specs)


def _run(
    engine: Engine,
    dataset: ImageDataset,
    replays: list[_Replay],
    *,
    batch_size: int,
    quantize_inputs: bool,
    latency_runs: int,
    latency_seconds: float,
    measure_latency: bool,
    measure_memory: bool,
    progress: ProgressCallback | None,
    blackbox: _BlackBoxPlan,
) -> EvaluationResult:
    n = len(dataset)
    total = _n_batches(n, batch_size) + sum(_n_batches(r.positions.size, batch_size) for r in replays)
    total += blackbox.steps(n)
    total += 1 if measure_latency else 0  # the latency measurement counts as one step

    def advance(steps: int) -> None:
        if progress is not None:
            progress(total, steps)

    advance(0)
    baseline_mib = current_rss_mib() if measure_memory else None

    # Clean pass, batch by batch (a lazy folder is decoded a batch at a time, the next one
    # prefetched): each batch is a new array, as each adversarial batch is, so the memory of the
    # passes compares fairly.
    clean_recorder = LatencyRecorder()
    clean_pred = np.empty(n, dtype=np.int64)
    clean_memory: MemoryStats | None = None
    with PeakMemory(baseline_rss_mib=baseline_mib) as clean_peak:
        for part, (images, _) in zip(_chunks(n, batch_size), dataset.batches(batch_size), strict=True):
            batch = images if dataset.is_lazy else np.array(images)
            clean_pred[part] = _infer_checked(engine, batch, clean_recorder, "clean")
            advance(1)
    if measure_memory:
        clean_memory = clean_peak.result
    clean_stats = clean_recorder.stats(full_batches_only=True)
    clean_per_image_s = _time_per_image_s(clean_recorder)
    n_correct = int((clean_pred == dataset.labels).sum())
    logger.info("%s on %s: clean accuracy %d/%d", engine.name, dataset.spec, n_correct, n)

    results = []
    for replay in replays:
        results.append(
            _replay_one(
                engine,
                dataset,
                replay,
                clean_pred,
                batch_size=batch_size,
                quantize_inputs=quantize_inputs,
                baseline_mib=baseline_mib,
                measure_memory=measure_memory,
                clean_per_image_s=clean_per_image_s,
                advance=advance,
            )
        )

    bb_results, bb_worst = _run_blackbox(engine, dataset, blackbox, quantize_inputs, advance)

    latency = None
    if measure_latency:
        representative = np.array(dataset.images[:batch_size])
        latency = _measure_latency(
            engine.run,
            representative,
            min_runs=latency_runs,
            min_seconds=latency_seconds,
            device_time_fn=lambda: getattr(engine, "last_device_ms", None),
        )
        advance(1)

    return EvaluationResult(
        engine=engine.describe(),
        dataset=DatasetInfo(
            spec=dataset.spec,
            name=dataset.name,
            split=dataset.split,
            seed=dataset.seed,
            n_images=n,
            input_size=tuple(dataset.input_shape),
            selection=dataset.selection,
        ),
        clean=CleanResult(
            n_images=n,
            n_correct=n_correct,
            clean_acc=n_correct / n,
            replay_latency=clean_stats,
        ),
        perturbations=tuple(results),
        blackbox=tuple(bb_results),
        blackbox_worst_case=bb_worst,
        model_size=ModelSize.of_bytes(engine.file_size_bytes),
        latency=latency,
        memory=clean_memory,
        settings={
            "batch_size": batch_size,
            "quantize_inputs": quantize_inputs,
            "bounds": list(engine.bounds),
            "latency_runs": latency_runs if measure_latency else None,
            "latency_seconds": latency_seconds if measure_latency else None,
            "measure_memory": measure_memory,
            "budget": blackbox.budget if blackbox.specs else None,
            "seed": blackbox.seed,
        },
    )


def _run_blackbox(
    engine: Engine,
    dataset: ImageDataset,
    plan: _BlackBoxPlan,
    quantize_inputs: bool,
    advance: Callable[[int], None],
) -> tuple[list[BlackBoxResult], WorstCase | None]:
    results, outcomes = [], []
    for spec in plan.specs:
        chunks_done = 0

        def tick(done: int, total: int, chunk: int = spec.build().chunk_size) -> None:
            nonlocal chunks_done
            now = _n_batches(done, chunk) if done < total else _n_batches(total, chunk)
            advance(now - chunks_done)
            chunks_done = now

        run = run_blackbox(
            engine,
            dataset,
            spec,
            budget=plan.budget,
            quantize_inputs=quantize_inputs,
            seed=plan.seed,
            artifact_dir=plan.directory,
            progress=tick,
        )
        advance(_n_batches(len(dataset), spec.build().chunk_size) - chunks_done)
        results.append(run.result)
        outcomes.append(run.outcome)
        if plan.runs is not None:
            plan.runs.append(run)
    untargeted = [(o, r.label) for o, r in zip(outcomes, results, strict=True) if o.target is None]
    worst = None
    if len(untargeted) > 1:
        worst = worst_case([o for o, _ in untargeted], [label for _, label in untargeted])
    return results, worst


def _replay_one(
    engine: Engine,
    dataset: ImageDataset,
    replay: _Replay,
    clean_pred: np.ndarray,
    *,
    batch_size: int,
    quantize_inputs: bool,
    baseline_mib: float | None,
    measure_memory: bool,
    clean_per_image_s: float | None,
    advance: Callable[[int], None],
) -> PerturbationResult:
    artifact, positions = replay.artifact, replay.positions
    recorder = LatencyRecorder()
    adv_pred = np.empty(positions.size, dtype=np.int64)
    norms: list[PerturbationNorms] = []
    with PeakMemory(baseline_rss_mib=baseline_mib) as peak:
        batches = dataset.batches(batch_size, positions=positions)
        for part, (clean, labels) in zip(_chunks(positions.size, batch_size), batches, strict=True):
            pos = positions[part]
            adversarial = artifact.apply(
                clean,
                labels=labels,
                indices=dataset.indices[pos],
                bounds=engine.bounds,
                quantize=quantize_inputs,
            )
            norms.append(perturbation_norms(clean, adversarial))
            adv_pred[part] = _infer_checked(engine, adversarial, recorder, "adversarial")
            advance(1)
    labels = dataset.labels[positions]
    metrics = accuracy_metrics(labels, clean_pred[positions], adv_pred, target=_target_of(artifact, dataset.indices[positions]))
    stats = recorder.stats(full_batches_only=True)
    adv_per_image_s = _time_per_image_s(recorder)
    ratio = adv_per_image_s / clean_per_image_s if adv_per_image_s is not None and clean_per_image_s else None
    meta = artifact.meta
    logger.info(
        "%s: adv_acc %s, asr %s over %d images", replay.label, metrics.adv_acc, metrics.asr, positions.size
    )
    return PerturbationResult(
        artifact_path=replay.path,
        artifact_sha256=replay.sha256,
        kind=meta.kind,
        method=meta.method,
        norm=meta.norm,
        eps=meta.eps,
        crafted_on=f"{meta.dataset}:{meta.split}",
        params=dict(meta.params),
        sources=tuple(dict(s) for s in meta.sources),
        images_evaluated=int(positions.size),
        images_skipped=replay.skipped,
        metrics=metrics,
        norms=PerturbationNorms.concatenate(norms).summary,
        replay_latency=stats,
        latency_ratio=ratio,
        memory=peak.result if measure_memory else None,
        delta_max_norm=replay.max_norm,
        over_budget=artifact.over_budget(),
        breakdown=artifact_replay_breakdown(artifact, dataset.indices[positions], labels, adv_pred),
    )
