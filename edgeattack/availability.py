"""Availability of a token-sparse engine under perturbations (DeSparsify's tables), measured. No torch.

`evaluate_availability(engine, dataset, perturbations)` runs the clean images and every artifact's
adversarial images through a deployed engine that returns `token_counts` (ONNX exports of ATS,
A-ViT, AdaViT), and reports per pass:

- accuracy, and the share of clean-correct images whose prediction the perturbation kept;
- `tur` (mean and per block) and `gflops` from the engine's own per-block token counts;
- latency per image at `latency_batch` (1 by default: a camera frame at a time, where a token-
  sparse engine really does less work): the passes are timed *interleaved*, image by image and
  round by round, so drift on a shared machine hits clean and adversarial alike; each image's
  latency is the median of its rounds;
- peak resident memory of the counting pass;
- energy, two separate fields that never stand in for each other: `measured_mj` from a meter
  (null with the `reason` where none measures or its window failed) and `estimate_mj`, a
  clearly labelled model-based estimate from the counted multiply-adds. The meter follows the
  device the engine really runs on (`engine.providers`: CUDA/TensorRT -> NVML or Jetson rails,
  CPU -> RAPL or Jetson rails) unless `device` overrides it;
- ratios adversarial/clean, and for TUR and GFLOPs the share of the gap to the dense maximum
  closed, (adv − clean)/(max − clean), as DeSparsify reports.

A per-image artifact replays on the images it covers (matched by dataset index, a warning says
how many are skipped; one covering none is an ArtifactError), as in `edgeattack evaluate`. Every
ratio compares like with like: an artifact's pass is set against the clean pass *over the images
it covers* — the same images counted, timed (interleaved) and measured — recorded in its
`clean_reference` when that is not the whole clean pass. Several artifacts covering different
subsets each get their own reference, so their ratios are each apples-to-apples (though not over
the same images as one another).

An engine without `token_counts` still gets accuracy, latency and memory; TUR and GFLOPs are null
with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeattack._io import sha256_file
from edgeattack.artifacts import PerturbationArtifact, check_replay
from edgeattack.availability_result import (
    AVAILABILITY_KIND,
    NO_METER_REASON,
    TOKEN_COUNTS,
    AvailabilityPass,
    AvailabilityResult,
    load_availability,
)
from edgeattack.data.base import ImageDataset
from edgeattack.engines import Engine, open_engine
from edgeattack.errors import ConfigError, EngineError
from edgeattack.metrics.latency import LatencyStats, stats_from_durations
from edgeattack.metrics.memory import MemoryStats, PeakMemory
from edgeattack.metrics.tokens import gap_closed, gflops_from_metadata, tur

if TYPE_CHECKING:
    from edgeattack.metrics.energy import Meter

__all__ = ["AVAILABILITY_KIND", "AvailabilityPass", "AvailabilityResult", "evaluate_availability", "load_availability"]

logger = logging.getLogger(__name__)

def _pass_energy(
    engine: Engine, images_fn: Callable[[], np.ndarray], meter: Any, window_s: float, gflops: float | None
) -> dict[str, Any]:
    """The energy block: a measurement when `meter` measures (else null with the reason), and the estimate.

    `images_fn` gives the images to measure on; it is called only when the meter measures."""
    from edgeattack.metrics.energy import energy_summary, measure_energy

    if meter is None or getattr(meter, "kind", "none") != "measured":
        reason = NO_METER_REASON if meter is None else str(getattr(meter, "reason", None) or NO_METER_REASON)
        return energy_summary(None, gflops_per_inference=gflops, reason=reason)
    images = images_fn()
    if len(images) == 0:
        return energy_summary(None, gflops_per_inference=gflops, reason="no image to measure")
    batch = np.ascontiguousarray(images)
    reading = measure_energy(lambda: engine.run(batch), meter, min_window_s=window_s, inferences_per_call=len(batch))
    return energy_summary(reading, gflops_per_inference=gflops)


def _ratio(adv: float | None, clean: float | None) -> float | None:
    return None if adv is None or not clean else adv / clean


@dataclass
class _Pass:
    """One pass: the clean images, or an artifact applied to the images it covers, made batch by batch."""

    label: str
    method: str
    params: dict[str, Any]
    positions: np.ndarray
    """Positions in the dataset of the pass's images (all of them for the clean pass)."""
    artifact: PerturbationArtifact | None = None
    path: str | None = None
    skipped: int = 0
    budget: dict[str, Any] = field(default_factory=dict)
    """eps, norm, delta_max_norm and over_budget of the artifact (empty for the clean pass)."""

    def images(self, dataset: ImageDataset, positions: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
        """This pass's images at the dataset `positions` (which it covers): clean, or the artifact applied."""
        return _perturb(self.artifact, dataset, positions, dataset.images[positions], bounds)

    def batches(
        self, dataset: ImageDataset, batch_size: int, bounds: tuple[float, float], positions: np.ndarray | None = None
    ) -> Iterator[np.ndarray]:
        """This pass's images over `positions` (default: all it covers), `batch_size` at a time."""
        chosen = self.positions if positions is None else positions
        batches = dataset.batches(batch_size, positions=chosen)
        for start, (clean, _) in zip(range(0, len(chosen), batch_size), batches, strict=True):
            yield _perturb(self.artifact, dataset, chosen[start : start + batch_size], clean, bounds)

    @property
    def full(self) -> bool:
        return self.skipped == 0


def _perturb(
    artifact: PerturbationArtifact | None,
    dataset: ImageDataset,
    positions: np.ndarray,
    clean: np.ndarray,
    bounds: tuple[float, float],
) -> np.ndarray:
    if artifact is None:
        return clean
    return artifact.apply(
        clean, labels=dataset.labels[positions], indices=dataset.indices[positions], bounds=bounds
    )


def _prepare_passes(
    dataset: ImageDataset,
    perturbations: Sequence[str | Path | PerturbationArtifact],
    engine: Engine,
    allow_over_budget: bool = False,
) -> list[_Pass]:
    """Load every artifact and check it as every replay does (`check_replay`); its images are made
    batch by batch when the passes run. A partial artifact's ratios compare it with the clean pass
    over the same images."""
    everything = np.arange(len(dataset))
    passes = [_Pass("clean", "clean", {}, everything)]
    for source in perturbations:
        artifact = source if isinstance(source, PerturbationArtifact) else PerturbationArtifact.load(source)
        path = None if isinstance(source, PerturbationArtifact) else str(source)
        meta = artifact.meta
        coverage = check_replay(
            artifact, dataset, label=path or f"in-memory {meta.method} artifact", input_size=engine.input_size,
            engine=engine.name, allow_over_budget=allow_over_budget,
        )
        positions, skipped = coverage.positions, coverage.skipped
        name = Path(path).name if path else f"{meta.method} ({meta.kind})"
        budget = {
            "eps": meta.eps, "norm": meta.norm, "delta_max_norm": coverage.max_norm,
            "over_budget": artifact.over_budget(),
        }
        passes.append(_Pass(name, meta.method, dict(meta.params), positions, artifact, path, skipped, budget))
    return passes


def _count_pass(engine: Engine, batches: Iterable[np.ndarray], has_counts: bool) -> tuple[np.ndarray, np.ndarray | None]:
    preds, counts = [], []
    for batch in batches:
        outputs = engine.run(batch)
        logits = outputs["logits"]
        if not np.isfinite(logits).all():
            raise EngineError(f"engine {engine.name} returned NaN or infinite logits")
        preds.append(logits.argmax(axis=1))
        if has_counts:
            counts.append(np.asarray(outputs[TOKEN_COUNTS]))
    return np.concatenate(preds), (np.concatenate(counts) if has_counts else None)


Group = tuple[int, ...]


def _timed_groups(p: _Pass, latency_images: int, batch: int) -> list[Group]:
    """The pass's first `latency_images` images (dataset positions), in groups of `batch`."""
    n = min(latency_images, len(p.positions)) // batch * batch
    chosen = p.positions[:n]
    return [tuple(int(i) for i in chosen[k : k + batch]) for k in range(0, n, batch)]


def _interleaved_latency(
    engine: Engine, dataset: ImageDataset, passes: list[_Pass], groups: list[list[Group]], rounds: int, warmup: int
) -> dict[tuple[int, Group], float]:
    """Median of `rounds` timings (ms) per (pass, group): the clean pass is timed on every group any pass
    times (so each pass has its clean reference on the same images), interleaved group by group. The
    timed inputs (a few batches) are made once, before any timing."""
    union: list[Group] = list(dict.fromkeys(g for gs in groups for g in gs))
    timers = {g: [0] + [i for i in range(1, len(passes)) if g in set(groups[i])] for g in union}
    inputs = {
        (i, g): np.ascontiguousarray(passes[i].images(dataset, np.asarray(g), engine.bounds))
        for g in union
        for i in timers[g]
    }
    for i in range(len(passes)):
        for g in (union if i == 0 else groups[i])[:warmup]:
            engine.run(inputs[(i, g)])
    timings: dict[tuple[int, Group], list[float]] = {(i, g): [] for g in union for i in timers[g]}
    for r in range(rounds):
        for k, g in enumerate(union):
            order = timers[g] if (r + k) % 2 == 0 else list(reversed(timers[g]))
            for i in order:
                batch_images = inputs[(i, g)]
                t0 = time.perf_counter_ns()
                engine.run(batch_images)
                timings[(i, g)].append((time.perf_counter_ns() - t0) / 1e6)
    return {key: float(np.median(values)) for key, values in timings.items()}


def evaluate_availability(
    engine: Engine | str | Path,
    dataset: ImageDataset,
    perturbations: Sequence[str | Path | PerturbationArtifact] = (),
    *,
    batch_size: int = 64,
    latency_images: int = 64,
    latency_batch: int = 1,
    latency_rounds: int = 5,
    measure_memory: bool = True,
    meter: str | Meter | None = None,
    device: str | None = None,
    energy_images: int = 16,
    energy_window_s: float = 1.0,
    energy_idle_s: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    allow_over_budget: bool = False,
) -> AvailabilityResult:
    """Clean vs each perturbation on `engine`: accuracy, TUR, GFLOPs, latency, memory, energy, ratios.

    `meter` ("auto", "nvml", "jetson", "rapl", a `Meter`, or None for no measurement) measures the
    energy of each pass on its first `energy_images` images, repeated for at least
    `energy_window_s` seconds, idle power (over `energy_idle_s`) subtracted; the labelled estimate
    is always reported beside it, in its own field. The meter is chosen for the device the engine
    really runs on (`engine.providers`); `device` ("cpu", "cuda", "cuda:N", "jetson") overrides it,
    with a warning where it contradicts the providers. Artifacts are checked as `evaluate` checks
    them (`check_replay`): one whose deltas exceed its declared eps is refused unless `allow_over_budget`.
    """
    if latency_images < 0 or latency_batch < 1 or latency_rounds < 1 or batch_size < 1:
        raise ConfigError("latency_images >= 0, latency_batch >= 1, latency_rounds >= 1 and batch_size >= 1")
    owned = not isinstance(engine, Engine)
    eng: Engine = open_engine(engine) if owned else engine  # type: ignore[arg-type]
    try:
        eng.activate()
        if tuple(eng.input_size) != tuple(dataset.input_shape):
            raise EngineError(
                f"engine {eng.name} takes images of size {tuple(eng.input_size)}, dataset {dataset.spec} "
                f"holds {tuple(dataset.input_shape)}"
            )
        passes = _prepare_passes(dataset, perturbations, eng, allow_over_budget)
        energy_meter, energy_device = _open_meter(eng, meter, device, energy_idle_s)
        result = _evaluate(eng, dataset, passes, batch_size, latency_images, latency_batch, latency_rounds,
                           measure_memory, progress, energy_meter, energy_images, energy_window_s)
        settings = {**result.settings, "energy_device": energy_device, "energy_images": energy_images,
                    "energy_window_s": energy_window_s}
        return AvailabilityResult(**{**result.__dict__, "settings": settings})
    finally:
        if owned:
            eng.deactivate()


def _open_meter(
    engine: Engine, meter: str | Meter | None, device: str | None, idle_s: float
) -> tuple[Meter | None, dict[str, Any] | None]:
    """(the meter, or None; the device it was chosen for), with the idle baseline measured."""
    if meter is None:
        return None, None
    from edgeattack.metrics.energy import Meter, resolve_device, select_meter

    where = resolve_device(engine, device)
    chosen = meter if isinstance(meter, Meter) else select_meter(meter, device=where.spec, pci_bus_id=where.pci_bus_id)
    if chosen.kind == "measured" and chosen.idle_power_w is None:
        chosen.measure_idle(idle_s)
    return chosen, where.to_dict()


def _evaluate(
    engine: Engine,
    dataset: ImageDataset,
    passes: list[_Pass],
    batch_size: int,
    latency_images: int,
    latency_batch: int,
    latency_rounds: int,
    measure_memory: bool,
    progress: Callable[[int, int], None] | None,
    energy_meter: Any = None,
    energy_images: int = 16,
    energy_window_s: float = 1.0,
) -> AvailabilityResult:
    info = dict(engine.metadata.token_sparsity or {}) if hasattr(engine.metadata, "token_sparsity") else {}
    has_counts = TOKEN_COUNTS in engine.extra_outputs and bool(info)
    reason = None if has_counts else (
        f"engine {engine.name} has no {TOKEN_COUNTS} output (not a token-sparse export): TUR and GFLOPs are null"
    )
    total = len(passes) + 1
    bounds = engine.bounds
    if progress is not None:
        progress(total, 0)
    counted: list[tuple[np.ndarray, np.ndarray | None, MemoryStats | None]] = []
    clean_memory: dict[int, MemoryStats | None] = {}
    baseline = None
    for i, p in enumerate(passes):
        if not p.full and measure_memory:  # the clean images this pass covers: its memory reference
            with PeakMemory(baseline_rss_mib=baseline) as peak:
                _count_pass(engine, passes[0].batches(dataset, batch_size, bounds, p.positions), has_counts)
            clean_memory[i] = peak.result
        with PeakMemory(baseline_rss_mib=baseline) as peak:
            preds, counts = _count_pass(engine, p.batches(dataset, batch_size, bounds), has_counts)
        baseline = baseline if baseline is not None else (peak.result.baseline_rss_mib if peak.result else None)
        counted.append((preds, counts, peak.result if measure_memory else None))
        if progress is not None:
            progress(total, 1)
    groups = [_timed_groups(p, latency_images, latency_batch) for p in passes]
    medians = _interleaved_latency(engine, dataset, passes, groups, latency_rounds, warmup=2) if any(groups) else {}
    if progress is not None:
        progress(total, 1)
    num_tokens = int(info.get("num_tokens", 0)) if has_counts else 0
    clean_pred, clean_counts = counted[0][0], counted[0][1]
    labels = dataset.labels

    def summary(counts: np.ndarray | None) -> tuple[float | None, float | None]:
        if counts is None:
            return None, None
        return tur(counts, num_tokens).mean, gflops_from_metadata(counts, info).mean

    def latency(i: int, of: int) -> tuple[LatencyStats | None, np.ndarray]:
        lat = np.asarray([medians[(of, g)] for g in groups[i]])
        return (stats_from_durations(lat, batch_size=latency_batch, warn=False) if lat.size else None), lat

    def energy(p: _Pass, positions: np.ndarray, g: float | None) -> dict[str, Any]:
        chosen = positions[:energy_images]
        return _pass_energy(engine, lambda: p.images(dataset, chosen, bounds), energy_meter, energy_window_s, g)

    results: list[AvailabilityPass] = []
    references: list[dict[str, Any] | None] = []
    for index, (p, (preds, counts, memory)) in enumerate(zip(passes, counted, strict=True)):
        t, g = summary(counts)
        stats, lat = latency(index, index)
        kept_labels = labels[p.positions]
        correct = clean_pred[p.positions] == kept_labels
        results.append(
            AvailabilityPass(
                label=p.label,
                method=p.method,
                params=p.params,
                images=len(p.positions),
                accuracy=float((preds == kept_labels).mean()),
                prediction_kept=None if index == 0 or not correct.any()
                else float((preds[correct] == clean_pred[p.positions][correct]).mean()),
                tur=t,
                tur_per_block=None if counts is None else (counts.mean(axis=0) / num_tokens).round(4).tolist(),
                gflops=g,
                latency=stats,
                memory=memory,
                energy=energy(p, p.positions, g),
                artifact_path=p.path,
                latency_samples_ms=[round(float(v), 4) for v in lat] if lat.size else None,
                skipped=p.skipped,
                **p.budget,
            )
        )
        if p.full:
            references.append(None)
            continue
        t0, g0 = summary(None if clean_counts is None else clean_counts[p.positions])
        references.append({
            "images": int(p.positions.size),
            "accuracy": float(correct.mean()),
            "tur": t0,
            "gflops": g0,
            "latency": None if (lat0 := latency(index, 0)[0]) is None else lat0.to_dict(),
            "memory": None if (mem0 := clean_memory.get(index)) is None else mem0.to_dict(),
            "energy": energy(passes[0], p.positions, g0),
        })
    results = [_with_ratios(r, results[0], ref, info if has_counts else None) for r, ref in zip(results, references, strict=True)]
    return AvailabilityResult(
        engine={**engine.describe(), "sha256": sha256_file(engine.source) if Path(engine.source).is_file() else None},
        dataset={"spec": dataset.spec, "name": dataset.name, "split": dataset.split, "seed": dataset.seed,
                 "n_images": len(dataset), "selection": dataset.selection},
        token_sparsity=info or None,
        tur_reason=reason,
        passes=tuple(results),
        settings={"meter": None if energy_meter is None else getattr(energy_meter, "name", None),
                  "batch_size": batch_size, "latency_images": len(groups[0]) * latency_batch,
                  "latency_batch": latency_batch, "latency_rounds": latency_rounds, "measure_memory": measure_memory},
    )


def _with_ratios(
    item: AvailabilityPass, clean: AvailabilityPass, reference: dict[str, Any] | None, info: dict[str, Any] | None
) -> AvailabilityPass:
    if item is clean:
        return item
    if reference is None:
        lat0, mem0, energy0, tur0, gflops0 = clean.latency, clean.memory, clean.energy, clean.tur, clean.gflops
    else:
        lat0 = None if reference["latency"] is None else LatencyStats.from_dict(reference["latency"])
        mem0 = None if reference["memory"] is None else MemoryStats.from_dict(reference["memory"])
        energy0, tur0, gflops0 = reference["energy"], reference["tur"], reference["gflops"]
    lat = item.latency
    ratios = {
        "latency_mean": None if lat is None or lat0 is None else _ratio(lat.mean_ms, lat0.mean_ms),
        "latency_median": None if lat is None or lat0 is None else _ratio(lat.median_ms, lat0.median_ms),
        "memory": _ratio(None if item.memory is None else item.memory.peak_rss_delta_mib,
                         None if mem0 is None else mem0.peak_rss_delta_mib),
        "energy_estimate": _ratio(item.energy.get("estimate_mj"), energy0.get("estimate_mj")),
        "energy_measured": _ratio(item.energy.get("measured_mj"), energy0.get("measured_mj")),
        "tur": _ratio(item.tur, tur0),
        "gflops": _ratio(item.gflops, gflops0),
    }
    gaps: dict[str, float | None] = {"tur": None, "gflops": None}
    if info and item.tur is not None and tur0 is not None:
        gaps["tur"] = gap_closed(tur0, item.tur, 1.0)
        dense = np.full((1, int(info["depth"])), int(info["num_tokens"]))
        gaps["gflops"] = gap_closed(gflops0, item.gflops, gflops_from_metadata(dense, info).mean)
    return AvailabilityPass(**{**item.__dict__, "ratios": ratios, "gap_closed": gaps, "clean_reference": reference})
