"""The availability result documents (DeSparsify's tables as JSON): one pass per clean or perturbed run,
their definitions, and loading a saved result. No torch; `edgeattack.availability` measures them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeattack import __version__
from edgeattack.errors import ResultError
from edgeattack.metrics.latency import LatencyStats
from edgeattack.metrics.memory import MemoryStats
from edgeattack.metrics.tokens import TOKEN_METRIC_DEFINITIONS

__all__ = [
    "AVAILABILITY_KIND",
    "DEFINITIONS",
    "ENERGY_ESTIMATE_METHOD",
    "NO_METER_REASON",
    "PJ_PER_MAC",
    "SCHEMA_VERSION",
    "TOKEN_COUNTS",
    "AvailabilityPass",
    "AvailabilityResult",
    "load_availability",
]

AVAILABILITY_KIND = "availability"
SCHEMA_VERSION = 2
TOKEN_COUNTS = "token_counts"
PJ_PER_MAC = 4.6
ENERGY_ESTIMATE_METHOD = (
    "estimate, not a measurement: counted multiply-adds x 4.6 pJ (fp32 multiply 3.7 pJ + add 0.9 pJ at 45 nm, "
    "Horowitz, ISSCC 2014); compute only, no memory traffic or idle power"
)
NO_METER_REASON = "no energy measurement was asked for (meter=None)"

DEFINITIONS: dict[str, str] = {
    **TOKEN_METRIC_DEFINITIONS,
    "accuracy": "top-1 accuracy of the pass",
    "prediction_kept": "among images the engine classifies correctly when clean, the share whose prediction is unchanged",
    "latency": (
        "per-image host latency at `latency_batch`: median of `latency_rounds` timed runs per image, passes "
        "interleaved image by image; statistics over the timed images"
    ),
    "ratio": (
        "adversarial / clean of the same images (latency: mean and median per-image latency); for an artifact "
        "covering part of the split, the clean numbers are those of the covered images (`clean_reference`)"
    ),
    "energy_measured_mj": (
        "energy per image measured by `energy.meter` over a window of at least `energy_window_s`, idle power "
        "subtracted (`energy.measured_basis`); null with `energy.reason` where nothing measured"
    ),
    "energy_estimate_mj": ENERGY_ESTIMATE_METHOD,
    "skipped": "images of the split the artifact holds no perturbation for (not in this pass)",
    "peak_rss_delta_mib": "peak RSS during the counting pass minus the RSS before the clean pass (MiB = 2**20 bytes)",
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
    skipped: int = 0
    clean_reference: dict[str, Any] | None = None
    """The clean pass over this pass's images when they are not the whole split (the ratios' denominators)."""
    eps: float | None = None
    norm: str | None = None
    delta_max_norm: float | None = None
    """The artifact's largest delta in its own norm, measured (`eps` is what it declares)."""
    over_budget: bool = False
    """Some delta exceeds the declared eps (replayed only with allow_over_budget)."""

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
        values["skipped"] = int(doc.get("skipped") or 0)
        values["over_budget"] = bool(doc.get("over_budget") or False)
        values["energy"] = _energy_from_doc(dict(doc.get("energy") or {}))
        return cls(**values)


def _energy_from_doc(energy: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 energy block named a meter even when it measured nothing: keep the name only with a value."""
    if energy.get("measured_mj") is None:
        energy["meter"] = None
        energy.setdefault("measured_method", None)
    return energy


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
