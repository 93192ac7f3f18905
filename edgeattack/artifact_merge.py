"""Merge per-image artifacts crafted in shards (`--shard I/N`, torchrun ranks) into one, a shard at a time.

`merge_artifacts([a.npz, b.npz], out)` checks that the files are per-image artifacts of the same
attack (method, norm, eps, input size, dataset, split, seed, sources and hyper-parameters) over
disjoint dataset indices, and writes one artifact whose rows are sorted by dataset index: for shards
of one run it equals, array for array, the artifact a single process would have written (rows
decode the same whichever shard file they sit in, see `artifact_shards`).

Parameters. What a file's rows measured (success rates, accuracies, TUR summaries, timings, the
device a rank ran on: the keys in `SUMMARY_PARAMS` and those ending in `SUMMARY_SUFFIXES`) cannot
be combined in general: each file's summary is kept under `params["shards"]` (with its file name, row count and
`shard`), and at the top only when all files agree. A per-image list (`target`, one entry per row)
is merged in row order. `params["images"]` is the merged row count; the `shard` key is dropped.
Every other key (the hyper-parameters, precision...) must be equal in all files.

A worst-case run's per-image breakdown (`broken_by`, `artifact_breakdown`) is concatenated in
dataset-index order like the deltas, and its counts (`params["broken_count"]`) recomputed for the
merged rows; files with and without it do not merge.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack.artifact_breakdown import breakdown_counts
from edgeattack.artifacts import ArtifactMeta, ArtifactWriter, PerturbationArtifact
from edgeattack.distributed import Shard
from edgeattack.errors import ArtifactError, ConfigError

__all__ = ["MATCHED_FIELDS", "PER_IMAGE_PARAMS", "SUMMARY_PARAMS", "SUMMARY_SUFFIXES", "is_summary", "merge_artifacts"]

logger = logging.getLogger(__name__)

MATCHED_FIELDS = ("kind", "method", "norm", "eps", "input_size", "dataset", "split", "seed", "sources")
PER_IMAGE_PARAMS = ("target",)
SUMMARY_PARAMS = frozenset(
    {
        "success_rate", "clean_acc", "adv_acc", "fooling_rate", "targeted_success", "fit_targeted_success",
        "token_utilisation", "tur_images", "clean_tur", "adv_tur", "tur_gap_closed", "prediction_kept",
        "prediction_unchanged", "per_model", "tur_history", "history", "wall_s", "device", "device_name",
        "images", "shards", "queries", "mean_queries", "median_queries", "success", "successes",
        "attacked", "eligible", "target",
    }
)
SUMMARY_SUFFIXES = ("_rate", "_acc", "_s", "_ms", "_count")


def is_summary(key: str) -> bool:
    """Whether params[`key`] measures a file's rows (kept per file) rather than configures the attack."""
    return key in SUMMARY_PARAMS or key.endswith(SUMMARY_SUFFIXES)


def merge_artifacts(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Merge the per-image artifacts `paths` into `out` (module docstring); the path written."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ArtifactError(f"merging needs at least two artifacts, got {len(paths)}")
    for path in paths:
        if not path.is_file():
            raise ArtifactError(f"artifact to merge {path} does not exist")
    artifacts = [PerturbationArtifact.load(p) for p in paths]
    for path, artifact in zip(paths, artifacts, strict=True):
        if artifact.meta.kind != "per_image":
            raise ArtifactError(f"{path} is a {artifact.meta.kind} artifact; only per-image artifacts merge")
    summaries = {k for a in artifacts for k in a.meta.params if is_summary(k)}
    _check_same(paths, [a.meta for a in artifacts], summaries)
    _check_shards(paths, artifacts)
    indices = np.concatenate([a.indices for a in artifacts])
    _check_disjoint(paths, artifacts, indices)
    broken_by = _merged_broken_by(paths, artifacts)
    order = np.argsort(indices, kind="stable")
    file_of = np.repeat(np.arange(len(artifacts)), [len(a.indices) for a in artifacts])[order]
    row_of = np.concatenate([np.arange(len(a.indices)) for a in artifacts])[order]
    params = _merged_params(paths, artifacts, summaries, order)
    if broken_by is not None:
        broken_by = broken_by[order]
        params["broken_count"] = breakdown_counts(broken_by, params["breakers"])
    meta = dataclasses.replace(artifacts[0].meta, params=params, created="", storage={})
    shard_size = int(artifacts[0].meta.storage.get("shard_size", 256))
    with ArtifactWriter(out, meta, shard_size=shard_size) as writer:
        for begin in range(0, len(order), shard_size):
            block = slice(begin, begin + shard_size)
            rows = np.empty((len(order[block]), *meta.input_size), dtype=np.float32)
            for f in np.unique(file_of[block]):
                where = np.flatnonzero(file_of[block] == f)
                rows[where] = artifacts[f].delta[row_of[block][where]]
            writer.add(rows, indices[order[block]], broken_by=None if broken_by is None else broken_by[block])
        written = writer.close()
    logger.info("merged %d artifacts (%d images) into %s", len(paths), len(order), written)
    return written


def _merged_broken_by(paths: list[Path], artifacts: list[PerturbationArtifact]) -> np.ndarray | None:
    """The files' breakdowns concatenated in file order, or None; ArtifactError if only some have one."""
    having = [a.broken_by is not None for a in artifacts]
    if not any(having):
        return None
    if not all(having):
        with_it = [p.name for p, h in zip(paths, having, strict=True) if h]
        without = [p.name for p, h in zip(paths, having, strict=True) if not h]
        raise ArtifactError(
            f"{', '.join(with_it)} carry a per-attack breakdown (broken_by) but {', '.join(without)} do not; "
            "not shards of one run"
        )
    return np.concatenate([a.broken_by for a in artifacts if a.broken_by is not None])


def _check_same(paths: list[Path], metas: list[ArtifactMeta], summaries: set[str]) -> None:
    first = metas[0]
    for path, meta in zip(paths[1:], metas[1:], strict=True):
        for name in MATCHED_FIELDS:
            a, b = getattr(first, name), getattr(meta, name)
            if a != b:
                raise ArtifactError(f"{paths[0].name} and {path.name} differ in {name}: {a!r} vs {b!r}; not shards of one run")
        for key in sorted(set(first.params) | set(meta.params)):
            if key in summaries or key == "shard":
                continue
            a, b = first.params.get(key, "<missing>"), meta.params.get(key, "<missing>")
            if a != b:
                raise ArtifactError(f"{paths[0].name} and {path.name} differ in params.{key}: {a!r} vs {b!r}; not shards of one run")


def _check_shards(paths: list[Path], artifacts: list[PerturbationArtifact]) -> None:
    """`shard` params, where recorded: the same count, no shard twice; a warning when some are missing."""
    shards: dict[int, Path] = {}
    counts = set()
    for path, artifact in zip(paths, artifacts, strict=True):
        text = artifact.meta.params.get("shard")
        if text is None:
            continue
        try:
            shard = Shard.parse(str(text))
        except ConfigError as exc:
            raise ArtifactError(f"{path}: params.shard {text!r} is not I/N") from exc
        if shard.index in shards:
            raise ArtifactError(f"{shards[shard.index].name} and {path.name} are both shard {shard.text}")
        shards[shard.index] = path
        counts.add(shard.count)
    if len(counts) > 1:
        raise ArtifactError(f"the artifacts are shards of different splits (of {sorted(counts)}); not shards of one run")
    if counts and len(shards) != next(iter(counts)):
        logger.warning("merging %d of %d shards: the merged artifact covers only part of the run", len(shards), next(iter(counts)))


def _check_disjoint(paths: list[Path], artifacts: list[PerturbationArtifact], indices: np.ndarray) -> None:
    values, counts = np.unique(indices, return_counts=True)
    repeated = values[counts > 1]
    if repeated.size:
        first = int(repeated[0])
        holders = [p.name for p, a in zip(paths, artifacts, strict=True) if first in a.indices]
        raise ArtifactError(
            f"{' and '.join(holders)} overlap: both hold dataset index {first} ({repeated.size} indices are in "
            f"more than one file, first: {repeated[:5].tolist()})"
        )


def _merged_params(
    paths: list[Path], artifacts: list[PerturbationArtifact], summaries: set[str], order: np.ndarray
) -> dict[str, Any]:
    metas = [a.meta for a in artifacts]
    params = {k: v for k, v in metas[0].params.items() if k not in summaries and k != "shard"}
    for key in sorted(set().union(*(m.params for m in metas)) & summaries):
        values = [m.params.get(key) for m in metas]
        if key in PER_IMAGE_PARAMS and _per_row_lists(values, artifacts):
            params[key] = [item for v in values for item in v]  # type: ignore[union-attr]
            params[key] = [params[key][i] for i in order]
        elif all(key in m.params for m in metas) and all(v == values[0] for v in values[1:]):
            params[key] = values[0]
    params["images"] = len(order)
    params["shards"] = [
        {
            "file": path.name,
            "shard": a.meta.params.get("shard"),
            "images": len(a.indices),
            "params": {k: v for k, v in a.meta.params.items() if k in summaries and k not in ("shards", "images")},
        }
        for path, a in zip(paths, artifacts, strict=True)
    ]
    return params


def _per_row_lists(values: list[Any], artifacts: list[PerturbationArtifact]) -> bool:
    return all(isinstance(v, list) and len(v) == len(a.indices) for v, a in zip(values, artifacts, strict=True))
