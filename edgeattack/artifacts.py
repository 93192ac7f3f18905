"""The perturbation artifact (DESIGN.md): one `.npz` that any engine can replay, no pickle inside.

Arrays: `delta` float32 [K,C,H,W] (K=1 universal, K=#classes class-universal, K=N per-image),
`indices` int64 (dataset indices, per-image only), optional `mask`/`patch` for patch attacks,
and `meta`, a JSON string. Loading uses `np.load(allow_pickle=False)`, so an object array is
refused instead of executed.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack._io import atomic_write_bytes
from edgeattack.budget import format_eps, measured_norms, within_budget
from edgeattack.errors import ArtifactError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KINDS = ("universal", "class_universal", "per_image")
NORMS = ("linf", "l2", "none")


@dataclass(frozen=True)
class ArtifactMeta:
    """What an artifact is and where it came from (the `meta` JSON of DESIGN.md)."""

    kind: str
    method: str
    norm: str
    eps: float | None
    input_size: tuple[int, int, int]
    dataset: str
    split: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    sources: tuple[dict[str, str], ...] = ()
    created: str = ""
    version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        document = {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "method": self.method,
            "norm": self.norm,
            "eps": self.eps,
            "params": self.params,
            "sources": list(self.sources),
            "dataset": self.dataset,
            "split": self.split,
            "seed": self.seed,
            "input_size": list(self.input_size),
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": self.version,
        }
        return json.dumps(document, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ArtifactMeta:
        try:
            doc = json.loads(text)
            schema = int(doc["schema_version"])
            if schema > SCHEMA_VERSION:
                raise ArtifactError(
                    f"artifact schema {schema} is newer than this edgeattack understands ({SCHEMA_VERSION}); upgrade"
                )
            return cls(
                kind=str(doc["kind"]),
                method=str(doc["method"]),
                norm=str(doc["norm"]),
                eps=None if doc.get("eps") is None else float(doc["eps"]),
                input_size=tuple(int(v) for v in doc["input_size"]),  # type: ignore[arg-type]
                dataset=str(doc["dataset"]),
                split=str(doc["split"]),
                seed=int(doc["seed"]),
                params=dict(doc.get("params", {})),
                sources=tuple(dict(s) for s in doc.get("sources", [])),
                created=str(doc.get("created", "")),
                version=str(doc.get("version", "")),
                schema_version=schema,
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact meta is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class PerturbationArtifact:
    """Perturbations plus their meta; `apply` puts them on a dataset's images."""

    delta: np.ndarray
    meta: ArtifactMeta
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mask: np.ndarray | None = None
    patch: np.ndarray | None = None

    def __post_init__(self) -> None:
        delta = np.ascontiguousarray(self.delta, dtype=np.float32)
        indices = np.asarray(self.indices, dtype=np.int64)
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "indices", indices)
        self.validate()

    def validate(self) -> None:
        """Raise ArtifactError unless shapes, kind and values agree with each other."""
        m = self.meta
        if m.kind not in KINDS:
            raise ArtifactError(f"unknown artifact kind {m.kind!r}; expected one of {', '.join(KINDS)}")
        if self.delta.ndim != 4:
            raise ArtifactError(f"delta must be [K,C,H,W], got shape {self.delta.shape}")
        if tuple(self.delta.shape[1:]) != tuple(m.input_size):
            raise ArtifactError(f"delta shape {self.delta.shape[1:]} disagrees with meta input_size {m.input_size}")
        if not np.isfinite(self.delta).all():
            raise ArtifactError("delta holds NaN or infinite values")
        if m.kind == "universal" and self.delta.shape[0] != 1:
            raise ArtifactError(f"a universal artifact holds one delta, this one {self.delta.shape[0]}")
        if m.kind == "per_image":
            if self.indices.shape != (self.delta.shape[0],):
                raise ArtifactError(
                    f"per-image artifact: {self.delta.shape[0]} deltas but {self.indices.size} indices"
                )
            if len(np.unique(self.indices)) != self.indices.size:
                raise ArtifactError("per-image artifact has repeated dataset indices")
        for name in ("mask", "patch"):
            extra = getattr(self, name)
            if extra is not None and extra.shape[-2:] != self.delta.shape[-2:] and name == "mask":
                raise ArtifactError(f"{name} shape {extra.shape} does not fit delta {self.delta.shape}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.meta.input_size

    def linf(self) -> np.ndarray:
        """Per-delta L-infinity norm."""
        return np.abs(self.delta).reshape(self.delta.shape[0], -1).max(axis=1)

    def max_norm(self) -> float | None:
        """The largest delta's norm in the artifact's own norm (None for norm "none" or no deltas)."""
        norms = measured_norms(self.delta, self.meta.norm)
        return None if norms is None or norms.size == 0 else float(norms.max())

    def over_budget(self) -> bool:
        """Whether some delta exceeds the artifact's declared eps in its declared norm."""
        measured = self.max_norm()
        return self.meta.eps is not None and measured is not None and not within_budget(measured, self.meta.eps)

    def check_budget(self, *, label: str, allow_over_budget: bool = False) -> float | None:
        """The measured max norm; ArtifactError when it exceeds the declared eps, unless allowed (then a warning).

        A replay reports the declared eps, so an artifact whose deltas are larger than it says would
        make every figure computed from it wrong without a word.
        """
        measured = self.max_norm()
        if not self.over_budget():
            return measured
        m = self.meta
        problem = (
            f"{label} declares {m.norm} eps {format_eps(m.eps, m.norm)} ({m.eps:.6g}) but its deltas reach "
            f"{m.norm} {format_eps(measured, m.norm)} ({measured:.6g})"
        )
        if not allow_over_budget:
            raise ArtifactError(f"{problem}; refusing to replay it (--allow-over-budget replays it anyway)")
        logger.warning("%s; replaying it anyway (--allow-over-budget): results record the measured norm", problem)
        return measured

    def apply(
        self,
        images: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        indices: np.ndarray | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        quantize: bool = False,
    ) -> np.ndarray:
        """`images` + the right delta for each, clipped to `bounds` (optionally to the 1/255 grid).

        Universal: the one delta on every image. Class-universal: the delta of each image's label.
        Per-image: the delta whose dataset index equals the image's (`indices` must be given).
        """
        if tuple(images.shape[1:]) != tuple(self.input_size):
            raise ArtifactError(
                f"perturbation is for inputs of size {self.input_size}, the images are {tuple(images.shape[1:])}"
            )
        kind = self.meta.kind
        if kind == "universal":
            delta = self.delta[0][None]
        elif kind == "class_universal":
            if labels is None:
                raise ArtifactError("a class-universal perturbation needs the images' labels")
            if labels.max(initial=0) >= self.delta.shape[0]:
                raise ArtifactError(f"labels up to {labels.max()} but only {self.delta.shape[0]} class deltas")
            delta = self.delta[labels]
        else:
            if indices is None:
                raise ArtifactError("a per-image perturbation needs the images' dataset indices")
            delta = self.delta[self.positions_for(indices)]
        if self.mask is not None and self.patch is not None:
            adversarial = images * (1.0 - self.mask) + self.patch * self.mask
        else:
            adversarial = images + delta
        adversarial = np.clip(adversarial, bounds[0], bounds[1]).astype(np.float32)
        if quantize:
            adversarial = quantize_to_grid(adversarial)
        return adversarial

    def positions_for(self, indices: np.ndarray) -> np.ndarray:
        """Row of `delta` for each dataset index; ArtifactError names indices the artifact lacks."""
        lookup = {int(i): row for row, i in enumerate(self.indices)}
        missing = [int(i) for i in indices if int(i) not in lookup]
        if missing:
            raise ArtifactError(
                f"per-image artifact has no perturbation for {len(missing)} of the dataset's images "
                f"(first indices: {missing[:5]}); replay it on the split it was crafted on ({self.meta.split})"
            )
        return np.fromiter((lookup[int(i)] for i in indices), dtype=np.int64, count=len(indices))

    def covers(self, indices: np.ndarray) -> np.ndarray:
        """Boolean mask: which dataset indices this artifact can be applied to."""
        if self.meta.kind != "per_image":
            return np.ones(len(indices), dtype=bool)
        known = {int(i) for i in self.indices}
        return np.fromiter((int(i) in known for i in indices), dtype=bool, count=len(indices))

    def save(self, path: str | Path) -> Path:
        """Write the artifact atomically as an uncompressed-pickle-free `.npz`."""
        arrays: dict[str, np.ndarray] = {
            "delta": self.delta,
            "indices": self.indices,
            "meta": np.asarray(self.meta.to_json()),
        }
        if self.mask is not None:
            arrays["mask"] = np.asarray(self.mask, dtype=np.float32)
        if self.patch is not None:
            arrays["patch"] = np.asarray(self.patch, dtype=np.float32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> PerturbationArtifact:
        """Read and validate an artifact; pickled content and malformed files raise ArtifactError."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"perturbation artifact {path} does not exist")
        if not zipfile.is_zipfile(path):
            raise ArtifactError(f"{path} is corrupt or not an .npz file (not a zip archive)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = set(archive.files)
                for required in ("delta", "meta"):
                    if required not in names:
                        raise ArtifactError(f"{path} is not a perturbation artifact: no {required!r} array")
                meta = ArtifactMeta.from_json(str(archive["meta"][()]))
                return cls(
                    delta=archive["delta"],
                    meta=meta,
                    indices=archive["indices"] if "indices" in names else np.zeros(0, dtype=np.int64),
                    mask=archive["mask"] if "mask" in names else None,
                    patch=archive["patch"] if "patch" in names else None,
                )
        except ArtifactError:
            raise
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ArtifactError(f"{path} holds pickled objects; refusing to load it (allow_pickle=False)") from exc
            raise ArtifactError(f"{path} is not a valid artifact: {exc}") from exc
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ArtifactError(f"{path} is corrupt or not an .npz file: {exc}") from exc


@dataclass(frozen=True)
class ReplayCoverage:
    """Which images of a dataset an artifact replays on (`positions` in the dataset), and its measured budget."""

    positions: np.ndarray
    skipped: int
    max_norm: float | None


def check_replay(
    artifact: PerturbationArtifact,
    dataset: Any,
    *,
    label: str,
    input_size: tuple[int, ...],
    engine: str,
    allow_over_budget: bool = False,
) -> ReplayCoverage:
    """The checks every replay makes before running anything, and the images the artifact covers.

    ArtifactError when the artifact is for another input size than the engine's, another dataset
    than `dataset` (an `ImageDataset`), exceeds its own declared eps (unless `allow_over_budget`),
    or is a per-image artifact covering none of the dataset's images; a partial one is replayed on
    the images it covers, with a warning naming how many are skipped.
    """
    meta = artifact.meta
    if tuple(meta.input_size) != tuple(input_size):
        raise ArtifactError(
            f"perturbation {label} is for inputs of size {tuple(meta.input_size)} but engine {engine} "
            f"takes {tuple(input_size)}"
        )
    if meta.dataset != dataset.name:
        raise ArtifactError(
            f"perturbation {label} was crafted on dataset {meta.dataset!r} ({meta.dataset}:{meta.split}) "
            f"but is replayed on {dataset.spec}"
        )
    max_norm = artifact.check_budget(label=f"perturbation {label}", allow_over_budget=allow_over_budget)
    positions = np.flatnonzero(artifact.covers(dataset.indices))
    if positions.size == 0:
        raise ArtifactError(
            f"per-image perturbation {label} covers none of the {len(dataset)} images of {dataset.spec}: "
            f"it was crafted on {meta.dataset}:{meta.split}; replay it on that split"
        )
    skipped = len(dataset) - int(positions.size)
    if skipped:
        logger.warning(
            "%s holds perturbations for %d of the %d images of %s; %d are skipped",
            label, positions.size, len(dataset), dataset.spec, skipped,
        )
    return ReplayCoverage(positions, skipped, max_norm)


def quantize_to_grid(images: np.ndarray, levels: int = 255) -> np.ndarray:
    """Round to the 1/levels grid, as a uint8 camera pipeline would."""
    return (np.round(images * levels) / levels).astype(np.float32)
