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
- energy: measured where a meter exists (none here: the field says why), and a clearly labelled
  model-based estimate from the counted multiply-adds;
- ratios adversarial/clean, and for TUR and GFLOPs the share of the gap to the dense maximum
  closed, (adv − clean)/(max − clean), as DeSparsify reports.

An engine without `token_counts` still gets accuracy, latency and memory; TUR and GFLOPs are null
with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack._io import sha256_file
from edgeattack.artifacts import PerturbationArtifact
from edgeattack.data.base import ImageDataset
from edgeattack.engines import Engine, open_engine
from edgeattack.errors import ArtifactError, ConfigError, EngineError, ResultError
from edgeattack.metrics.latency import LatencyStats, stats_from_durations
from edgeattack.metrics.memory import MemoryStats, PeakMemory
from edgeattack.metrics.tokens import TOKEN_METRIC_DEFINITIONS, gap_closed, gflops_from_metadata, tur

__all__ = ["AVAILABILITY_KIND", "AvailabilityPass", "AvailabilityResult", "evaluate_availability", "load_availability"]

logger = logging.getLogger(__name__)

AVAILABILITY_KIND = "availability"
SCHEMA_VERSION = 1
TOKEN_COUNTS = "token_counts"
PJ_PER_MAC = 4.6
ENERGY_ESTIMATE_METHOD = (
    "estimate, not a measurement: counted multiply-adds x 4.6 pJ (fp32 multiply 3.7 pJ + add 0.9 pJ at 45 nm, "
    "Horowitz, ISSCC 2014); compute only, no memory traffic or idle power"
)
NO_METER_REASON = "no energy meter on this machine (no readable RAPL energy_uj, no NVML)"

DEFINITIONS: dict[str, str] = {
    **TOKEN_METRIC_DEFINITIONS,
    "accuracy": "top-1 accuracy of the pass",
    "prediction_kept": "among images the engine classifies correctly when clean, the share whose prediction is unchanged",
    "latency": (
        "per-image host latency at `latency_batch`: median of `latency_rounds` timed runs per image, passes "
        "interleaved image by image; statistics over the timed images"
    ),
    "ratio": "adversarial / clean of the same images (latency: mean and median per-image latency)",
    "energy_estimate_mj": ENERGY_ESTIMATE_METHOD,
    "peak_rss_delta_mb": "peak RSS during the counting pass minus the RSS before the clean pass (MB = 2**20 bytes)",
}


@dataclass(frozen=True)
class AvailabilityPass:
    """Clean images or one perturbation's adversarial images on the engine."""

    label: str
    method: str
    params: dict[str, Any]
    images: int
    accuracy: float | None
    prediction_kept: float | None
    tur: float | None
    tur_per_block: list[float] | None
    gflops: float | None
    latency: LatencyStats | None
    memory: MemoryStats | None
    energy: dict[str, Any]
    ratios: dict[str, float | None] = field(default_factory=dict)
    gap_closed: dict[str, float | None] = field(default_factory=dict)
    artifact_path: str | None = None
    latency_samples_ms: list[float] | None = None
    """Per timed group of images: the median of the rounds (ms), the distribution `latency` summarises."""

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["latency"] = None if self.latency is None else self.latency.to_dict()
        doc["memory"] = None if self.memory is None else self.memory.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AvailabilityPass:
        values = {k: doc.get(k) for k in cls.__dataclass_fields__}
        values["latency"] = None if doc.get("latency") is None else LatencyStats.from_dict(doc["latency"])
        values["memory"] = None if doc.get("memory") is None else MemoryStats.from_dict(doc["memory"])
        values["ratios"] = dict(doc.get("ratios") or {})
        values["gap_closed"] = dict(doc.get("gap_closed") or {})
        return cls(**values)


@dataclass(frozen=True)
class AvailabilityResult:
    """One engine's availability under clean and perturbed inputs."""

    engine: dict[str, Any]
    dataset: dict[str, Any]
    token_sparsity: dict[str, Any] | None
    tur_reason: str | None
    passes: tuple[AvailabilityPass, ...]
    settings: dict[str, Any]
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgeattack_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    kind: str = AVAILABILITY_KIND

    @property
    def clean(self) -> AvailabilityPass:
        return self.passes[0]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["passes"] = [p.to_dict() for p in self.passes]
        return doc

    def save(self, path: str | Path) -> Path:
        import json

        from edgeattack.results import write_new_file

        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return write_new_file(path, text.encode("utf-8"))


def load_availability(path: str | Path) -> AvailabilityResult:
    """Read a saved AvailabilityResult (ResultError for other kinds or newer schemas)."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResultError(f"cannot read availability result {path}: {exc}") from exc
    if doc.get("kind") != AVAILABILITY_KIND:
        raise ResultError(f"{path} is not an availability result (kind {doc.get('kind')!r})")
    if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ResultError(f"{path} was written by a newer edgeattack (schema {doc['schema_version']})")
    values = {k: doc.get(k) for k in AvailabilityResult.__dataclass_fields__}
    values["passes"] = tuple(AvailabilityPass.from_dict(p) for p in doc["passes"])
    return AvailabilityResult(**values)


def _energy(gflops: float | None) -> dict[str, Any]:
    estimate = None if gflops is None else gflops * 1e9 * PJ_PER_MAC * 1e-12 * 1e3
    return {
        "measured_mj": None,
        "meter": None,
        "reason": NO_METER_REASON,
        "estimate_mj": estimate,
        "estimate_method": ENERGY_ESTIMATE_METHOD if estimate is not None else None,
    }


def _pass_energy(engine: Engine, images: np.ndarray, meter: Any, window_s: float, gflops: float | None) -> dict[str, Any]:
    """The labelled estimate, plus a measurement when `meter` measures (None: no meter asked for)."""
    if meter is None or getattr(meter, "kind", "none") != "measured":
        reason = NO_METER_REASON if meter is None else str(getattr(meter, "reason", NO_METER_REASON))
        return {**_energy(gflops), "reason": reason}
    from edgeattack.metrics.energy import energy_summary, measure_energy

    batch = np.ascontiguousarray(images)
    reading = measure_energy(lambda: engine.run(batch), meter, min_window_s=window_s, inferences_per_call=len(batch))
    return energy_summary(reading, gflops_per_inference=gflops)


def _ratio(adv: float | None, clean: float | None) -> float | None:
    return None if adv is None or not clean else adv / clean


@dataclass
class _Pass:
    label: str
    method: str
    params: dict[str, Any]
    images: np.ndarray
    path: str | None = None


def _passes(dataset: ImageDataset, perturbations: Sequence[str | Path | PerturbationArtifact], engine: Engine) -> list[_Pass]:
    passes = [_Pass("clean", "clean", {}, dataset.images)]
    for source in perturbations:
        artifact = source if isinstance(source, PerturbationArtifact) else PerturbationArtifact.load(source)
        path = None if isinstance(source, PerturbationArtifact) else str(source)
        meta = artifact.meta
        if tuple(meta.input_size) != tuple(engine.input_size):
            raise ArtifactError(
                f"perturbation {path or meta.method} is for inputs of size {tuple(meta.input_size)}, "
                f"engine {engine.name} takes {tuple(engine.input_size)}"
            )
        if meta.kind == "per_image" and not artifact.covers(dataset.indices).all():
            raise ArtifactError(
                f"per-image perturbation {path or meta.method} does not cover every image of {dataset.spec}: "
                f"crafted on {meta.dataset}:{meta.split}; evaluate availability on that split"
            )
        adversarial = artifact.apply(
            dataset.images, labels=dataset.labels, indices=dataset.indices, bounds=engine.bounds
        )
        label = Path(path).name if path else f"{meta.method} ({meta.kind})"
        passes.append(_Pass(label, meta.method, dict(meta.params), adversarial, path))
    return passes


def _count_pass(engine: Engine, images: np.ndarray, batch_size: int, has_counts: bool) -> tuple[np.ndarray, np.ndarray | None]:
    preds, counts = [], []
    for start in range(0, len(images), batch_size):
        outputs = engine.run(images[start : start + batch_size])
        logits = outputs["logits"]
        if not np.isfinite(logits).all():
            raise EngineError(f"engine {engine.name} returned NaN or infinite logits")
        preds.append(logits.argmax(axis=1))
        if has_counts:
            counts.append(np.asarray(outputs[TOKEN_COUNTS]))
    return np.concatenate(preds), (np.concatenate(counts) if has_counts else None)


def _interleaved_latency(
    engine: Engine, passes: list[_Pass], positions: np.ndarray, batch: int, rounds: int, warmup: int
) -> list[np.ndarray]:
    """Per pass, per timed group of `batch` images: the median of `rounds` timings (ms)."""
    groups = [positions[i : i + batch] for i in range(0, len(positions) - batch + 1, batch)]
    for p in passes:
        for g in groups[:warmup]:
            engine.run(p.images[g])
    timings = np.zeros((len(passes), len(groups), rounds))
    for r in range(rounds):
        for k, g in enumerate(groups):
            order = range(len(passes)) if (r + k) % 2 == 0 else reversed(range(len(passes)))
            for i in order:
                batch_images = np.ascontiguousarray(passes[i].images[g])
                t0 = time.perf_counter_ns()
                engine.run(batch_images)
                timings[i, k, r] = (time.perf_counter_ns() - t0) / 1e6
    return [np.median(timings[i], axis=1) for i in range(len(passes))]


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
    meter: str | None = None,
    device: str = "cpu",
    energy_images: int = 16,
    energy_window_s: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> AvailabilityResult:
    """Clean vs each perturbation on `engine`: accuracy, TUR, GFLOPs, latency, memory, energy, ratios.

    `meter` ("auto", "nvml", "jetson", "rapl", or None for no measurement) measures the energy of
    each pass on its first `energy_images` images, repeated for at least `energy_window_s` seconds,
    idle power subtracted (`edgeattack.metrics.energy`); the labelled estimate is always reported.
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
        passes = _passes(dataset, perturbations, eng)
        energy_meter = None
        if meter is not None:
            from edgeattack.metrics.energy import select_meter

            energy_meter = select_meter(meter, device=device)
            if energy_meter.kind == "measured":
                energy_meter.measure_idle(1.0)
        return _evaluate(eng, dataset, passes, batch_size, latency_images, latency_batch, latency_rounds,
                         measure_memory, progress, energy_meter, energy_images, energy_window_s)
    finally:
        if owned:
            eng.deactivate()


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
    if progress is not None:
        progress(total, 0)
    counted = []
    baseline = None
    for p in passes:
        with PeakMemory(baseline_rss_mb=baseline) as peak:
            preds, counts = _count_pass(engine, p.images, batch_size, has_counts)
        baseline = baseline if baseline is not None else (peak.result.baseline_rss_mb if peak.result else None)
        counted.append((preds, counts, peak.result if measure_memory else None))
        if progress is not None:
            progress(total, 1)
    n_timed = min(latency_images, len(dataset)) // latency_batch * latency_batch
    latencies = (
        _interleaved_latency(engine, passes, np.arange(n_timed), latency_batch, latency_rounds, warmup=2)
        if n_timed
        else [np.zeros(0) for _ in passes]
    )
    if progress is not None:
        progress(total, 1)
    num_tokens = int(info.get("num_tokens", 0)) if has_counts else 0
    clean_pred = counted[0][0]
    correct = clean_pred == dataset.labels
    results: list[AvailabilityPass] = []
    for index, (p, (preds, counts, memory), lat) in enumerate(zip(passes, counted, latencies, strict=True)):
        t = tur(counts, num_tokens) if counts is not None else None
        g = gflops_from_metadata(counts, info) if counts is not None else None
        stats = stats_from_durations(lat, batch_size=latency_batch, warn=False) if lat.size else None
        results.append(
            AvailabilityPass(
                label=p.label,
                method=p.method,
                params=p.params,
                images=len(p.images),
                accuracy=float((preds == dataset.labels).mean()),
                prediction_kept=None if index == 0 or not correct.any() else float((preds[correct] == clean_pred[correct]).mean()),
                tur=None if t is None else t.mean,
                tur_per_block=None if counts is None else (counts.mean(axis=0) / num_tokens).round(4).tolist(),
                gflops=None if g is None else g.mean,
                latency=stats,
                memory=memory,
                energy=_pass_energy(engine, p.images[:energy_images], energy_meter, energy_window_s,
                                    None if g is None else g.mean),
                artifact_path=p.path,
                latency_samples_ms=[round(float(v), 4) for v in lat] if lat.size else None,
            )
        )
    results = [_with_ratios(r, results[0], info if has_counts else None) for r in results]
    return AvailabilityResult(
        engine={**engine.describe(), "sha256": sha256_file(engine.source) if Path(engine.source).is_file() else None},
        dataset={"spec": dataset.spec, "name": dataset.name, "split": dataset.split, "seed": dataset.seed,
                 "n_images": len(dataset)},
        token_sparsity=info or None,
        tur_reason=reason,
        passes=tuple(results),
        settings={"meter": None if energy_meter is None else getattr(energy_meter, "name", None),
                  "batch_size": batch_size, "latency_images": n_timed, "latency_batch": latency_batch,
                  "latency_rounds": latency_rounds, "measure_memory": measure_memory},
    )


def _with_ratios(item: AvailabilityPass, clean: AvailabilityPass, info: dict[str, Any] | None) -> AvailabilityPass:
    if item is clean:
        return item
    lat, lat0 = item.latency, clean.latency
    mem = None if item.memory is None else item.memory.peak_rss_delta_mb
    mem0 = None if clean.memory is None else clean.memory.peak_rss_delta_mb
    ratios = {
        "latency_mean": None if lat is None or lat0 is None else _ratio(lat.mean_ms, lat0.mean_ms),
        "latency_median": None if lat is None or lat0 is None else _ratio(lat.median_ms, lat0.median_ms),
        "memory": _ratio(mem, mem0),
        "energy_estimate": _ratio(item.energy["estimate_mj"], clean.energy["estimate_mj"]),
        "energy_measured": _ratio(item.energy.get("measured_mj"), clean.energy.get("measured_mj")),
        "tur": _ratio(item.tur, clean.tur),
        "gflops": _ratio(item.gflops, clean.gflops),
    }
    gaps: dict[str, float | None] = {"tur": None, "gflops": None}
    if info and item.tur is not None and clean.tur is not None:
        gaps["tur"] = gap_closed(clean.tur, item.tur, 1.0)
        dense = np.full((1, int(info["depth"])), int(info["num_tokens"]))
        gaps["gflops"] = gap_closed(clean.gflops, item.gflops, gflops_from_metadata(dense, info).mean)
    return AvailabilityPass(**{**item.__dict__, "ratios": ratios, "gap_closed": gaps})
