"""Versioned evaluation results: frozen dataclasses that serialise to one JSON document. No torch.

One document per engine evaluation (clean pass + every replayed perturbation). `save` writes it
atomically and never replaces an existing file: a taken name gets `-1`, `-2`, ... appended.
`load` refuses documents written by a newer schema. `rows` flattens a result into one dict per
perturbation for experiment stores.

Memory is in MiB (2**20 bytes, fields `*_mib`), file sizes in MB (10**6 bytes, fields `*_mb`); times in ms unless a field says `_s`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack._io import dataset_file_label, no_overwrite_path
from edgeattack.attacks.blackbox.result import BLACKBOX_DEFINITIONS, BlackBoxResult, WorstCase
from edgeattack.errors import ResultError
from edgeattack.metrics.accuracy import METRIC_DEFINITIONS, AccuracyMetrics, NormSummary
from edgeattack.metrics.latency import LatencyStats
from edgeattack.metrics.memory import MemoryStats
from edgeattack.replay_breakdown import ReplayBreakdown

__all__ = [
    "DEFINITIONS",
    "RESULT_KIND",
    "SCHEMA_VERSION",
    "CleanResult",
    "DatasetInfo",
    "EvaluationResult",
    "ModelSize",
    "PerturbationResult",
    "ResultError",
    "load",
]

SCHEMA_VERSION = 1
RESULT_KIND = "evaluation"
BYTES_PER_MB = 1e6

DEFINITIONS: dict[str, str] = {
    **METRIC_DEFINITIONS,
    "norms": "summary (median, mean, max) of the per-image l2 and linf norms of the replayed perturbation",
    "images_skipped": "dataset images a per-image artifact holds no perturbation for (not evaluated)",
    "latency": (
        "trtexec conventions on one clean batch of `batch_size` images: warm-up >= 200 ms and >= 10 runs, "
        "then >= N runs and >= T seconds; host end-to-end time per call (time.perf_counter_ns) including "
        "device synchronisation; percentiles by linear interpolation"
    ),
    "cv": "coefficient of variation of the per-call latency (population std / mean); unstable above 2.5 %",
    "throughput_ips": "images per second = images processed / wall time of the timed calls",
    "device_compute_ms": "mean device compute time per call where the back-end exposes it, else null",
    "replay_latency": (
        "the same statistics over the actual inference calls of a pass (full-size batches only; no warm-up)"
    ),
    "latency_ratio": "adversarial / clean host time per image over the replay calls (same engine, batch size)",
    "peak_rss_delta_mib": (
        "peak resident memory of the process during a pass minus the RSS before the clean pass "
        "(VmHWM reset via /proc/self/clear_refs); MiB = 2**20 bytes; null with a reason where not measurable"
    ),
    "model_size_mb": "size of the engine file in MB (10**6 bytes)",
    "breakdown": (
        "worst-case artifacts (AutoAttack) only: per name (clean, each sub-attack, robust) `source` = images "
        "it broke on the source model (whose delta it produced), `engine_broken` = of those, misclassified by "
        "this engine; robust_source_broken_engine / broken_source_robust_engine: transfer counts"
    ),
    **BLACKBOX_DEFINITIONS,
}


def _jsonable(value: Any) -> Any:
    """Plain JSON types for engine descriptions and free-form dicts (tuples, numpy, paths)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _from(cls: Any, doc: Any) -> Any:
    return None if doc is None else cls.from_dict(doc)


def _to(obj: Any) -> Any:
    return None if obj is None else obj.to_dict()


@dataclass(frozen=True)
class DatasetInfo:
    """Which images were evaluated."""

    spec: str
    name: str
    split: str
    seed: int
    n_images: int
    input_size: tuple[int, int, int]
    selection: str = ""
    """How the images were chosen from the split when not all were ("stratified", "random", "first")."""

    @property
    def file_label(self) -> str:
        """`<dataset>-<split>` as a piece of a file name (a folder's own name, never its absolute path)."""
        return dataset_file_label(self.name, self.split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "name": self.name,
            "split": self.split,
            "seed": self.seed,
            "n_images": self.n_images,
            "input_size": list(self.input_size),
            "selection": self.selection,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DatasetInfo:
        return cls(
            spec=str(doc["spec"]),
            name=str(doc["name"]),
            split=str(doc["split"]),
            seed=int(doc["seed"]),
            n_images=int(doc["n_images"]),
            input_size=tuple(int(v) for v in doc["input_size"]),  # type: ignore[arg-type]
            selection=str(doc.get("selection") or ""),
        )


@dataclass(frozen=True)
class ModelSize:
    """Size of the engine file (None for engines that are not a file, such as a zoo name)."""

    file_size_bytes: int | None
    file_size_mb: float | None

    @classmethod
    def of_bytes(cls, size: int | None) -> ModelSize:
        return cls(size, None if size is None else size / BYTES_PER_MB)

    def to_dict(self) -> dict[str, Any]:
        return {"file_size_bytes": self.file_size_bytes, "file_size_mb": self.file_size_mb}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ModelSize:
        size = doc.get("file_size_bytes")
        # derived from the bytes, so results written when this field was 2**20-byte units read right
        return cls.of_bytes(None if size is None else int(size))


@dataclass(frozen=True)
class CleanResult:
    """The clean pass: accuracy, and the timing of its inference calls."""

    n_images: int
    n_correct: int
    clean_acc: float | None
    replay_latency: LatencyStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "n_correct": self.n_correct,
            "clean_acc": self.clean_acc,
            "replay_latency": _to(self.replay_latency),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CleanResult:
        return cls(
            n_images=int(doc["n_images"]),
            n_correct=int(doc["n_correct"]),
            clean_acc=doc["clean_acc"],
            replay_latency=_from(LatencyStats, doc.get("replay_latency")),
        )


@dataclass(frozen=True)
class PerturbationResult:
    """One replayed perturbation artifact on the engine."""

    artifact_path: str | None
    artifact_sha256: str | None
    kind: str
    method: str
    norm: str
    eps: float | None
    crafted_on: str
    images_evaluated: int
    images_skipped: int
    metrics: AccuracyMetrics
    norms: NormSummary
    params: dict[str, Any] = field(default_factory=dict)
    sources: tuple[dict[str, Any], ...] = ()
    replay_latency: LatencyStats | None = None
    latency_ratio: float | None = None
    memory: MemoryStats | None = None
    delta_max_norm: float | None = None
    """The artifact's largest delta in its own norm, measured (the declared budget is `eps`)."""
    over_budget: bool = False
    """Some delta exceeds the declared eps (replayed only with --allow-over-budget)."""
    breakdown: ReplayBreakdown | None = None
    """For a worst-case artifact (AutoAttack, `broken_by`): per sub-attack, the images it broke on the
    source and how many of them the engine misclassifies (`replay_breakdown`); absent otherwise."""

    @property
    def label(self) -> str:
        """A short name: the artifact file name, or `method (kind)` for an in-memory artifact."""
        return Path(self.artifact_path).name if self.artifact_path else f"{self.method} ({self.kind})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact_path": self.artifact_path,
            "artifact_sha256": self.artifact_sha256,
            "kind": self.kind,
            "method": self.method,
            "norm": self.norm,
            "eps": self.eps,
            "crafted_on": self.crafted_on,
            "params": _jsonable(self.params),
            "sources": _jsonable(self.sources),
            "images_evaluated": self.images_evaluated,
            "images_skipped": self.images_skipped,
            "metrics": self.metrics.to_dict(),
            "norms": self.norms.to_dict(),
            "replay_latency": _to(self.replay_latency),
            "latency_ratio": self.latency_ratio,
            "memory": _to(self.memory),
            "delta_max_norm": self.delta_max_norm,
            "over_budget": self.over_budget,
            **({"breakdown": self.breakdown.to_dict()} if self.breakdown is not None else {}),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PerturbationResult:
        return cls(
            artifact_path=doc.get("artifact_path"),
            artifact_sha256=doc.get("artifact_sha256"),
            kind=str(doc["kind"]),
            method=str(doc["method"]),
            norm=str(doc["norm"]),
            eps=doc.get("eps"),
            crafted_on=str(doc["crafted_on"]),
            params=dict(doc.get("params", {})),
            sources=tuple(doc.get("sources", ())),
            images_evaluated=int(doc["images_evaluated"]),
            images_skipped=int(doc["images_skipped"]),
            metrics=AccuracyMetrics.from_dict(doc["metrics"]),
            norms=NormSummary.from_dict(doc["norms"]),
            replay_latency=_from(LatencyStats, doc.get("replay_latency")),
            latency_ratio=doc.get("latency_ratio"),
            memory=_from(MemoryStats, doc.get("memory")),
            delta_max_norm=doc.get("delta_max_norm"),
            over_budget=bool(doc.get("over_budget", False)),
            breakdown=_from(ReplayBreakdown, doc.get("breakdown")),
        )


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one evaluation of one engine on one dataset measured."""

    engine: dict[str, Any]
    dataset: DatasetInfo
    clean: CleanResult
    perturbations: tuple[PerturbationResult, ...]
    model_size: ModelSize
    latency: LatencyStats | None = None
    memory: MemoryStats | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    blackbox: tuple[BlackBoxResult, ...] = ()
    blackbox_worst_case: WorstCase | None = None
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgeattack_version: str = __version__
    schema_version: int = SCHEMA_VERSION
    kind: str = RESULT_KIND

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "created": self.created,
            "edgeattack_version": self.edgeattack_version,
            "engine": _jsonable(self.engine),
            "model_size": self.model_size.to_dict(),
            "dataset": self.dataset.to_dict(),
            "settings": _jsonable(self.settings),
            "clean": self.clean.to_dict(),
            "perturbations": [p.to_dict() for p in self.perturbations],
            "blackbox": [_jsonable(b.to_dict()) for b in self.blackbox],
            "blackbox_worst_case": _to(self.blackbox_worst_case),
            "latency": _to(self.latency),
            "memory": _to(self.memory),
            "definitions": dict(self.definitions),
        }

    def to_json(self) -> str:
        """The document as indented JSON (NaN and infinity refused)."""
        try:
            return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        except ValueError as exc:
            raise ResultError(f"result holds a value JSON cannot represent: {exc}") from exc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EvaluationResult:
        """Rebuild a result; ResultError for other kinds, newer schemas and malformed documents."""
        if not isinstance(doc, Mapping):
            raise ResultError(f"a result document is a JSON object, got {type(doc).__name__}")
        kind = doc.get("kind")
        if kind != RESULT_KIND:
            raise ResultError(f"not an evaluation result (kind {kind!r})")
        try:
            schema = int(doc["schema_version"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultError("result document has no valid schema_version") from exc
        if schema > SCHEMA_VERSION:
            raise ResultError(
                f"result schema {schema} is newer than this edgeattack {__version__} understands "
                f"({SCHEMA_VERSION}); upgrade edgeattack to read it"
            )
        try:
            return cls(
                engine=dict(doc["engine"]),
                dataset=DatasetInfo.from_dict(doc["dataset"]),
                clean=CleanResult.from_dict(doc["clean"]),
                perturbations=tuple(PerturbationResult.from_dict(p) for p in doc["perturbations"]),
                model_size=ModelSize.from_dict(doc["model_size"]),
                latency=_from(LatencyStats, doc.get("latency")),
                memory=_from(MemoryStats, doc.get("memory")),
                settings=dict(doc.get("settings", {})),
                blackbox=tuple(BlackBoxResult.from_dict(b) for b in doc.get("blackbox", ())),
                blackbox_worst_case=_from(WorstCase, doc.get("blackbox_worst_case")),
                definitions=dict(doc.get("definitions", {})),
                created=str(doc["created"]),
                edgeattack_version=str(doc.get("edgeattack_version", "")),
                schema_version=schema,
                kind=str(kind),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultError(f"malformed evaluation result: {exc!r}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically to `path`, or to `path` with `-1`, `-2`... if taken; returns the path used.

        A directory `path` gets a file named after the engine and dataset inside it.
        """
        target = Path(path)
        if target.is_dir():
            engine_name = Path(str(self.engine.get("source", "engine"))).stem or "engine"
            target = target / f"{engine_name}__{self.dataset.file_label}.json"
        return write_new_file(target, self.to_json().encode("utf-8"))

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per perturbation (a single clean row when there is none), for tables and stores."""
        base = {
            "engine": self.engine.get("source"),
            "backend": self.engine.get("backend"),
            "precision": self.engine.get("precision"),
            "providers": ",".join(self.engine.get("providers", []) or []),
            "dataset": self.dataset.spec,
            "n_images": self.dataset.n_images,
            "clean_acc": self.clean.clean_acc,
            "latency_mean_ms": None if self.latency is None else self.latency.mean_ms,
            "latency_median_ms": None if self.latency is None else self.latency.median_ms,
            "throughput_ips": None if self.latency is None else self.latency.throughput_ips,
            "batch_size": None if self.latency is None else self.latency.batch_size,
            "peak_rss_delta_mib": None if self.memory is None else self.memory.peak_rss_delta_mib,
            "model_size_mb": self.model_size.file_size_mb,
            "created": self.created,
        }
        if not self.perturbations and not self.blackbox:
            return [dict(base, perturbation=None)]
        rows = []
        for b in self.blackbox:
            rows.append(
                dict(
                    base,
                    perturbation=b.label,
                    kind="blackbox",
                    method=b.attack,
                    norm=b.norm,
                    eps=b.eps,
                    images_evaluated=b.images_completed,
                    images_skipped=b.images - b.images_completed,
                    adv_acc=b.metrics.adv_acc,
                    asr=b.metrics.asr,
                    fooling_rate=b.metrics.fooling_rate,
                    targeted_success=b.metrics.targeted_success,
                    l2_median=b.norms.l2_median,
                    linf_median=b.norms.linf_median,
                    budget=b.budget,
                    queries_median=b.queries.median,
                    queries_mean=b.queries.mean,
                    queries_max=b.queries.max,
                    success_within_budget=b.success_within_budget,
                    attack_wall_s=b.wall_s,
                )
            )
        for p in self.perturbations:
            rows.append(
                dict(
                    base,
                    perturbation=p.label,
                    kind=p.kind,
                    method=p.method,
                    norm=p.norm,
                    eps=p.eps,
                    images_evaluated=p.images_evaluated,
                    images_skipped=p.images_skipped,
                    adv_acc=p.metrics.adv_acc,
                    asr=p.metrics.asr,
                    fooling_rate=p.metrics.fooling_rate,
                    targeted_success=p.metrics.targeted_success,
                    l2_median=p.norms.l2_median,
                    linf_median=p.norms.linf_median,
                    latency_ratio=p.latency_ratio,
                    **(p.breakdown.flat() if p.breakdown is not None else {}),
                )
            )
        return rows


def write_new_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to a new file at `path` (or the next free `-N` name) atomically, never replacing one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and are then
    hard-linked to the free name: linking fails instead of replacing when another writer took the
    name meanwhile, and a reader never sees a partial file. Where the file system has no hard links,
    the free name is taken with `os.replace` (atomic, but racing writers could collide).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        for _ in range(1000):
            candidate = no_overwrite_path(target)
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError:
                os.replace(tmp, candidate)
                return candidate
        raise ResultError(f"could not find a free file name next to {target}")
    finally:
        Path(tmp).unlink(missing_ok=True)


def load(path: str | os.PathLike[str]) -> EvaluationResult:
    """Read an evaluation result written by `EvaluationResult.save`."""
    source = Path(path)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultError(f"result file {source} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"cannot read result {source}: {exc}") from exc
    return EvaluationResult.from_dict(doc)
