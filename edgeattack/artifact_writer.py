"""`ArtifactWriter`: write a schema-2 artifact row block by row block, holding at most one shard.

    with ArtifactWriter("pgd.npz", meta) as writer:
        for delta, indices in batches:
            writer.add(delta, indices)            # per-image rows [n,C,H,W], dataset indices [n]
        path = writer.close(params={"success_rate": 0.93})

A worst-case run (AutoAttack) also passes `broken_by=` (one int per row, `artifact_breakdown`) to
every `add`: it is kept beside the shards as the int16 member `broken_by.npy`, in row order. Either
every `add` carries it or none does.

Rows are buffered until `shard_size` of them are there, then encoded (`artifact_shards.encode_rows`)
and written as one deflate-compressed member of a temporary zip next to the final file; `close`
writes the rest, `indices`, `meta` (with `storage`, schema 2, and `params` merged into
`meta.params`) and moves the file into place with `os.replace`. An exception inside the `with`
block, or `abort()`, removes the temporary file: an interrupted run never leaves a partial artifact
under the final name.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeattack._io import _umask
from edgeattack.artifact_shards import GRID_LEVELS, encode_rows, member_name, storage_dtype
from edgeattack.errors import ArtifactError

if TYPE_CHECKING:
    from edgeattack.artifacts import ArtifactMeta

__all__ = ["ArtifactWriter", "artifact_path"]

DEFAULT_SHARD_SIZE = 256


def artifact_path(path: str | Path) -> Path:
    """`path` with `.npz` appended when it has another suffix (or none)."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


class ArtifactWriter:
    """Streams deltas into a schema-2 artifact (module docstring); memory stays within one shard."""

    def __init__(self, path: str | Path, meta: ArtifactMeta, *, shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        if int(shard_size) < 1:
            raise ArtifactError(f"shard_size must be positive, got {shard_size}")
        self.path = artifact_path(path)
        self.meta = meta
        self.shard_size = int(shard_size)
        self._input_size = tuple(int(d) for d in meta.input_size)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._indices: list[np.ndarray] = []
        self._seen: set[int] = set()
        self._shards: list[dict[str, Any]] = []
        self._extras: dict[str, np.ndarray] = {}
        self._broken_by: list[np.ndarray] | None = None
        self._rows = 0
        self._done = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        self._zip = zipfile.ZipFile(self._handle, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    @property
    def rows(self) -> int:
        """Rows added so far (written or buffered)."""
        return self._rows

    def add(self, delta: np.ndarray, indices: np.ndarray, *, broken_by: np.ndarray | None = None) -> None:
        """Append per-image rows `delta` [n,C,H,W] for the dataset `indices` [n] (any n, even 0).

        `broken_by` [n]: the rows' per-attack breakdown (module docstring), with every call or none.
        """
        if self.meta.kind != "per_image":
            raise ArtifactError(f"add() takes per-image rows; this artifact is {self.meta.kind}")
        self._append(delta, indices, broken_by=broken_by)

    def _append(self, delta: np.ndarray, indices: np.ndarray | None, *, broken_by: np.ndarray | None = None) -> None:
        if self._done:
            raise ArtifactError(f"artifact writer for {self.path} is already closed")
        delta = np.asarray(delta, dtype=np.float32)
        if delta.ndim != 4 or tuple(delta.shape[1:]) != self._input_size:
            raise ArtifactError(f"delta rows must be [n, {', '.join(map(str, self._input_size))}], got {delta.shape}")
        self._take_broken_by(broken_by, len(delta))
        if indices is not None:
            self._take_indices(np.asarray(indices), len(delta))
        if not np.isfinite(delta).all():
            raise ArtifactError(f"delta rows {self._rows}..{self._rows + len(delta) - 1} hold NaN or infinite values")
        self._rows += len(delta)
        pieces, self._pending, self._pending_rows = [*self._pending, delta], [], self._pending_rows + len(delta)
        while self._pending_rows >= self.shard_size:
            shard, taken = [], 0
            while taken < self.shard_size:
                piece = pieces.pop(0)
                need = self.shard_size - taken
                if len(piece) > need:
                    pieces.insert(0, piece[need:])
                    piece = piece[:need]
                shard.append(piece)
                taken += len(piece)
            self._write_shard(np.concatenate(shard))
            self._pending_rows -= self.shard_size
        self._pending = [np.array(p, dtype=np.float32, copy=True) for p in pieces if len(p)]  # never keep the caller's buffer

    def _take_broken_by(self, broken_by: np.ndarray | None, n: int) -> None:
        """Keep the rows' breakdown; refuse a call with it after one without (or the other way round)."""
        with_it = broken_by is not None
        if self._rows and with_it != (self._broken_by is not None):
            raise ArtifactError(
                f"{self.path.name}: rows {self._rows}.. {'carry' if with_it else 'lack'} broken_by but the rows "
                "before them do not; every add() must pass it, or none"
            )
        if broken_by is None:
            return
        values = np.asarray(broken_by)
        if values.shape != (n,) or (values.size and values.dtype.kind not in "iu"):
            raise ArtifactError(f"{n} delta rows but broken_by of {values.dtype} {values.shape}; one integer per row")
        if self._broken_by is None:
            self._broken_by = []
        self._broken_by.append(values.astype(np.int16))

    def _take_indices(self, indices: np.ndarray, n: int) -> None:
        if indices.shape != (n,):
            raise ArtifactError(f"{n} delta rows but indices of shape {indices.shape}")
        if indices.size and indices.dtype.kind not in "iu":
            raise ArtifactError(f"dataset indices must be integers, got {indices.dtype}")
        indices = indices.astype(np.int64)
        fresh = {int(i) for i in indices}
        values, counts = np.unique(indices, return_counts=True)
        repeated = sorted(fresh & self._seen) or values[counts > 1].tolist()
        if repeated:
            raise ArtifactError(f"per-image artifact {self.path.name}: dataset indices added twice (first: {repeated[:5]})")
        self._seen |= fresh
        self._indices.append(indices)

    def _write_shard(self, rows: np.ndarray) -> None:
        stored = encode_rows(rows)
        name = member_name(len(self._shards))
        with self._zip.open(name, "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, stored, allow_pickle=False)
        self._shards.append({"member": name, "rows": len(rows), "dtype": stored.dtype.name})

    def _set_extra(self, name: str, array: np.ndarray) -> None:
        """A `mask` or `patch` array written beside the deltas (patch attacks)."""
        self._extras[name] = np.asarray(array, dtype=np.float32)

    def _write_array(self, name: str, array: np.ndarray) -> None:
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)

    def close(self, *, params: dict[str, Any] | None = None) -> Path:
        """Write the rest, `indices` and `meta` (merging `params` into meta.params), move into place; the path."""
        if self._done:
            raise ArtifactError(f"artifact writer for {self.path} is already closed")
        try:
            if self._pending_rows:
                self._write_shard(np.concatenate(self._pending))
                self._pending, self._pending_rows = [], 0
            from edgeattack.artifacts import SCHEMA_VERSION

            storage = {
                "format": "shards",
                "dtype": storage_dtype([s["dtype"] for s in self._shards]),
                "scale": 1.0 / GRID_LEVELS,
                "shard_size": self.shard_size,
                "shards": self._shards,
            }
            meta = dataclasses.replace(
                self.meta,
                params={**self.meta.params, **(params or {})},
                storage=storage,
                schema_version=SCHEMA_VERSION,
            )
            indices = np.concatenate(self._indices) if self._indices else np.zeros(0, dtype=np.int64)
            self._write_array("indices", indices)
            for name, array in self._extras.items():
                self._write_array(name, array)
            if self._broken_by is not None:
                self._write_array("broken_by", np.concatenate(self._broken_by))
            self._write_array("meta", np.asarray(meta.to_json()))
            self._zip.close()
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.chmod(self._tmp, 0o666 & ~_umask())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far: the temporary file is removed, the final path untouched."""
        self._done = True
        self._pending, self._pending_rows = [], 0
        for closer in (self._zip.close, self._handle.close):
            try:
                closer()
            except (OSError, ValueError):
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
