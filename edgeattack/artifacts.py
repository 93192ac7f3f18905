"""The perturbation artifact (DESIGN.md): one `.npz` that any engine can replay, no pickle inside.

Arrays: the deltas, float32 [K,C,H,W] once read (K=1 universal, K=#classes class-universal, K=N
per-image), `indices` int64 (dataset indices, per-image only), optional `mask`/`patch` for patch
attacks, and `meta`, a JSON string. Schema 2 (written now) stores the deltas in compressed shards
(`delta_00000.npy`, ...; 1/255-grid rows as int8/int16 levels, see `artifact_shards`) described by
`meta["storage"]`; loading a per-image one reads no delta until `apply` needs it (`delta` is then a
lazy `ShardedDeltas`). Schema 1 (one `delta` float32 array) still loads. `ArtifactWriter` streams
an artifact to disk a shard at a time. Loading uses `np.load(allow_pickle=False)` and `zipfile`, so
an object array is refused instead of executed.
"""

from __future__ import annotations

import json
import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack.artifact_breakdown import check_broken_by
from edgeattack.artifact_shards import ShardedDeltas, ShardLayout
from edgeattack.artifact_writer import ArtifactWriter
from edgeattack.budget import format_eps, measured_norms, within_budget
from edgeattack.errors import ArtifactError

__all__ = [
    "KINDS",
    "NORMS",
    "SCHEMA_VERSION",
    "ArtifactMeta",
    "ArtifactWriter",
    "PerturbationArtifact",
    "ReplayCoverage",
    "check_replay",
    "quantize_to_grid",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
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
    storage: dict[str, Any] = field(default_factory=dict)

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
        if self.storage:
            document["storage"] = self.storage
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
                storage=dict(doc.get("storage") or {}),
            )
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact meta is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class PerturbationArtifact:
    """Perturbations plus their meta; `apply` puts them on a dataset's images.

    `delta` is an ndarray, or for a loaded schema-2 per-image artifact a lazy `ShardedDeltas`
    (indexing it reads only the shards needed). Construction checks shapes and kinds, and that an
    in-memory delta is finite; a lazy one is checked shard by shard as it is read (`validate()`
    reads all of it). `broken_by`: the optional per-image breakdown of a worst-case run
    (`artifact_breakdown`; its names are `meta.params["breakers"]`).
    """

    delta: np.ndarray | ShardedDeltas
    meta: ArtifactMeta
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    mask: np.ndarray | None = None
    patch: np.ndarray | None = None
    broken_by: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.delta, ShardedDeltas):
            object.__setattr__(self, "delta", np.ascontiguousarray(self.delta, dtype=np.float32))
        object.__setattr__(self, "indices", np.asarray(self.indices, dtype=np.int64))
        breakers = self.meta.params.get("breakers")
        object.__setattr__(self, "broken_by", check_broken_by(self.broken_by, int(self.delta.shape[0]), breakers))
        self._validate_structure()
        if not self.lazy and not np.isfinite(self.delta).all():
            raise ArtifactError("delta holds NaN or infinite values")

    @property
    def lazy(self) -> bool:
        """Whether `delta` is read from its file on demand."""
        return isinstance(self.delta, ShardedDeltas)

    def validate(self) -> None:
        """Raise ArtifactError unless shapes, kind and values agree (a lazy delta is read shard by shard, once)."""
        self._validate_structure()
        if self.lazy:
            self.delta.stats()  # type: ignore[union-attr]  # raises on a non-finite or corrupt shard
        elif not np.isfinite(self.delta).all():
            raise ArtifactError("delta holds NaN or infinite values")

    def _validate_structure(self) -> None:
        m = self.meta
        shape = tuple(self.delta.shape)
        if m.kind not in KINDS:
            raise ArtifactError(f"unknown artifact kind {m.kind!r}; expected one of {', '.join(KINDS)}")
        if len(shape) != 4:
            raise ArtifactError(f"delta must be [K,C,H,W], got shape {shape}")
        if shape[1:] != tuple(m.input_size):
            raise ArtifactError(f"delta shape {shape[1:]} disagrees with meta input_size {m.input_size}")
        if m.kind == "universal" and shape[0] != 1:
            raise ArtifactError(f"a universal artifact holds one delta, this one {shape[0]}")
        if m.kind == "per_image":
            if self.indices.shape != (shape[0],):
                raise ArtifactError(f"per-image artifact: {shape[0]} deltas but {self.indices.size} indices")
            if len(np.unique(self.indices)) != self.indices.size:
                raise ArtifactError("per-image artifact has repeated dataset indices")
        if self.mask is not None and self.mask.shape[-2:] != shape[-2:]:
            raise ArtifactError(f"mask shape {self.mask.shape} does not fit delta {shape}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.meta.input_size

    def linf(self) -> np.ndarray:
        """Per-delta L-infinity norm."""
        if self.lazy:
            return self.delta.stats().linf  # type: ignore[union-attr]
        return np.abs(self.delta).reshape(self.delta.shape[0], -1).max(axis=1)

    @cached_property
    def _norms(self) -> np.ndarray | None:
        if not self.lazy:
            return measured_norms(self.delta, self.meta.norm)  # type: ignore[arg-type]
        if self.meta.norm not in ("linf", "l2"):
            return None
        stats = self.delta.stats()  # type: ignore[union-attr]
        return stats.linf if self.meta.norm == "linf" else stats.l2

    def max_norm(self) -> float | None:
        """The largest delta's norm in the artifact's own norm (None for norm "none" or no deltas)."""
        norms = self._norms
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

    @cached_property
    def _row_of(self) -> dict[int, int]:
        return {int(i): row for row, i in enumerate(self.indices)}

    def positions_for(self, indices: np.ndarray) -> np.ndarray:
        """Row of `delta` for each dataset index; ArtifactError names indices the artifact lacks."""
        lookup = self._row_of
        missing = [int(i) for i in indices if int(i) not in lookup]
        if missing:
            raise ArtifactError(
                f"per-image artifact has no perturbation for {len(missing)} of the dataset's images "
                f"(first indices: {missing[:5]}); replay it on the split it was crafted on ({self.meta.split})"
            )
        return np.fromiter((lookup[int(i)] for i in indices), dtype=np.int64, count=len(indices))

    def fits_dataset(self, name: str, split: str) -> bool:
        """Whether this artifact replays on split `split` of dataset `name`: a universal or
        class-universal perturbation on any split of the dataset it was fitted on (fit on train,
        replay on val), a per-image one only on its own split (its indices are positions there)."""
        if self.meta.dataset != name:
            return False
        return self.meta.kind != "per_image" or self.meta.split == split

    def covers(self, indices: np.ndarray) -> np.ndarray:
        """Boolean mask: which dataset indices this artifact can be applied to."""
        if self.meta.kind != "per_image":
            return np.ones(len(indices), dtype=bool)
        known = self._row_of
        return np.fromiter((int(i) in known for i in indices), dtype=bool, count=len(indices))

    def save(self, path: str | Path, *, shard_size: int = 256) -> Path:
        """Write the artifact atomically as a schema-2 `.npz` (`ArtifactWriter`); the path written."""
        with ArtifactWriter(path, self.meta, shard_size=shard_size) as writer:
            per_image = self.meta.kind == "per_image"
            for begin in range(0, len(self.delta), shard_size):
                rows = slice(begin, begin + shard_size)
                broken = None if self.broken_by is None else self.broken_by[rows]
                writer._append(self.delta[rows], self.indices[rows] if per_image else None, broken_by=broken)
            for name in ("mask", "patch"):
                extra = getattr(self, name)
                if extra is not None:
                    writer._set_extra(name, extra)
            return writer.close()

    @classmethod
    def load(cls, path: str | Path) -> PerturbationArtifact:
        """Read and check an artifact (a per-image schema-2 one lazily); malformed or pickled files raise ArtifactError."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"perturbation artifact {path} does not exist")
        if not zipfile.is_zipfile(path):
            raise ArtifactError(f"{path} is corrupt or not an .npz file (not a zip archive)")
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = set(archive.files)
                if "meta" not in names:
                    raise ArtifactError(f"{path} is not a perturbation artifact: no 'meta' array")
                meta = ArtifactMeta.from_json(str(archive["meta"][()]))
                arrays = {n: archive[n] for n in ("indices", "mask", "patch", "broken_by") if n in names}
                if meta.schema_version >= 2 and meta.storage:
                    delta: np.ndarray | ShardedDeltas = _open_shards(path, meta)
                    if meta.kind != "per_image":
                        delta = np.asarray(delta)
                elif "delta" in names:
                    delta = archive["delta"]
                else:
                    raise ArtifactError(f"{path} is not a perturbation artifact: no 'delta' array and no shard storage")
            return cls(
                delta=delta,
                meta=meta,
                indices=arrays.get("indices", np.zeros(0, dtype=np.int64)),
                mask=arrays.get("mask"),
                patch=arrays.get("patch"),
                broken_by=arrays.get("broken_by"),
            )
        except ArtifactError as exc:
            raise exc if str(path) in str(exc) else ArtifactError(f"{path}: {exc}") from exc
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ArtifactError(f"{path} holds pickled objects; refusing to load it (allow_pickle=False)") from exc
            raise ArtifactError(f"{path} is not a valid artifact: {exc}") from exc
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ArtifactError(f"{path} is corrupt or not an .npz file: {exc}") from exc


def _open_shards(path: Path, meta: ArtifactMeta) -> ShardedDeltas:
    """The lazy deltas of a schema-2 artifact, after checking its shard members' headers against the meta."""
    layout = ShardLayout.from_storage(meta.storage, path)
    with zipfile.ZipFile(path) as archive:
        layout.check_members(archive, path, meta.input_size)
    return ShardedDeltas(path, layout, meta.input_size)


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
    if not artifact.fits_dataset(dataset.name, dataset.split):
        raise ArtifactError(
            f"perturbation {label} was crafted on {meta.dataset}:{meta.split} but is replayed on {dataset.spec}"
            + ("; a per-image perturbation replays only on the split it was crafted on" if meta.dataset == dataset.name else "")
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
