"""Sharded deltas (artifact schema 2): how rows are stored in shards, and the lazy reader (no torch).

A schema-2 artifact is a zip (`.npz`) whose deltas are the members `delta_00000.npy`,
`delta_00001.npy`, ... of `shard_size` rows each (the last may hold fewer), each deflate-compressed,
beside `indices.npy`, `meta.npy` and, for patch attacks, `mask.npy`/`patch.npy`. The meta's
`storage` describes them::

    {"format": "shards", "dtype": "int8", "scale": 1/255, "shard_size": 256,
     "shards": [{"member": "delta_00000.npy", "rows": 256, "dtype": "int8"}, ...]}

Encoding. A row whose every value lies within `GRID_ATOL` of a level k/255 with |k| <= 255 is a
*grid row* (a quantized attack on uint8-decoded images: adversarial and clean images on the grid,
their float32 difference a rounding error away from k/255); it is stored as that level, exactly
k/255 in float32 (`decode_levels`): only the subtraction's float32 noise is dropped. A shard of grid
rows only is stored as the integers k, int8 when every |k| <= 127 (any L-inf eps up to 127/255, the
usual case), int16 otherwise; a shard with any other row is float32, its grid rows holding their
levels. A row therefore decodes to the same float32 values whichever shard it lands in, which makes
a merge of shard files equal to the artifact written in one go. `storage["dtype"]` is the widest
dtype of the shards ("float32" if any shard is).

`ShardedDeltas` is what `PerturbationArtifact.load` puts in `delta` for a schema-2 per-image
artifact: `.shape`, `len`, `[int]`, `[slice]`, `[int array]`, `[bool array]` give float32 arrays,
reading only the shards they touch (the last two decoded shards are kept); `stats()` streams every
shard once for the finite check and the per-delta norms, and caches them.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack.errors import ArtifactError

__all__ = ["GRID_ATOL", "GRID_LEVELS", "DeltaStats", "ShardLayout", "ShardedDeltas", "decode_levels", "encode_rows"]

logger = logging.getLogger(__name__)

GRID_LEVELS = 255
GRID_ATOL = 2.5e-7
"""How far a float32 value may be from k/255 and still count as that level: two float32 ulps at 1.0
(the difference of two float32 grid values is at most 6e-8 away from k/255); four times smaller than
the budget check's absolute slack."""

INT_DTYPES = {"int8": np.int8, "int16": np.int16}
DTYPES = ("int8", "int16", "float32")
_LARGE_BYTES = 2 * 1024**3


def member_name(shard: int) -> str:
    return f"delta_{shard:05d}.npy"


def decode_levels(levels: np.ndarray, scale: float) -> np.ndarray:
    """float32 values of stored levels: k / 255 (for scale 1/255), correctly rounded."""
    return levels.astype(np.float32) / np.float32(round(1.0 / scale))


def encode_rows(rows: np.ndarray) -> np.ndarray:
    """The array one shard stores for float32 `rows` [n, ...]: int8/int16 levels or float32 (module docstring)."""
    levels = np.empty(rows.shape, dtype=np.int16)
    on_grid = np.zeros(len(rows), dtype=bool)
    scale = np.float32(GRID_LEVELS)
    for i, row in enumerate(rows):
        k = np.rint(row * scale)
        if row.size and not (np.abs(k).max() <= GRID_LEVELS and np.abs(k / scale - row).max() <= GRID_ATOL):
            continue
        levels[i] = k
        on_grid[i] = True
    if len(rows) and on_grid.all():
        top = int(np.abs(levels).max(initial=0))
        return levels.astype(np.int8) if top <= np.iinfo(np.int8).max else levels
    out = np.array(rows, dtype=np.float32, copy=True)
    for i in np.flatnonzero(on_grid):
        out[i] = decode_levels(levels[i], 1.0 / GRID_LEVELS)
    return out


def storage_dtype(dtypes: list[str]) -> str:
    """The widest of the shards' dtypes ("int8" when there are none)."""
    return max(dtypes, key=DTYPES.index, default="int8")


@dataclass(frozen=True)
class ShardInfo:
    member: str
    rows: int
    dtype: str


@dataclass(frozen=True)
class ShardLayout:
    """The shards of a schema-2 artifact, as its meta's `storage` records them."""

    shard_size: int
    scale: float | None
    shards: tuple[ShardInfo, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def offsets(self) -> np.ndarray:
        """First row of each shard, plus the total: [0, r0, r0+r1, ...]."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards], dtype=np.int64)]).astype(np.int64)

    @classmethod
    def from_storage(cls, storage: dict[str, Any], path: Path) -> ShardLayout:
        """Parse `storage`; ArtifactError naming `path` when it is malformed."""
        try:
            if storage.get("format") != "shards":
                raise ValueError(f"unknown storage format {storage.get('format')!r}")
            shard_size = int(storage["shard_size"])
            scale = storage.get("scale")
            shards = tuple(ShardInfo(str(s["member"]), int(s["rows"]), str(s["dtype"])) for s in storage["shards"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{path}: artifact storage meta is malformed: {exc}") from exc
        if shard_size < 1:
            raise ArtifactError(f"{path}: storage shard_size must be positive, got {shard_size}")
        for s in shards:
            if s.dtype not in DTYPES:
                raise ArtifactError(f"{path}: shard {s.member} has storage dtype {s.dtype!r}; expected one of {DTYPES}")
            if s.dtype in INT_DTYPES and scale is None:
                raise ArtifactError(f"{path}: shard {s.member} stores {s.dtype} levels but the storage meta has no scale")
            if not 0 < s.rows <= shard_size:
                raise ArtifactError(f"{path}: shard {s.member} holds {s.rows} rows; shard_size is {shard_size}")
        if scale is not None and not (isinstance(scale, (int, float)) and 0 < float(scale) <= 1):
            raise ArtifactError(f"{path}: storage scale must be a number in (0, 1], got {scale!r}")
        return cls(shard_size, None if scale is None else float(scale), shards)

    def check_members(self, archive: zipfile.ZipFile, path: Path, input_size: tuple[int, ...]) -> None:
        """Every shard member is present with the recorded shape and dtype (headers only, no data read)."""
        present = sorted(n for n in archive.namelist() if n.startswith("delta_"))
        listed = [s.member for s in self.shards]
        if sorted(listed) != present:
            raise ArtifactError(
                f"{path}: meta lists {len(listed)} delta shards but the file holds {len(present)} "
                f"({', '.join(sorted(set(listed) ^ set(present))[:3])} differ)"
            )
        for s in self.shards:
            try:
                with archive.open(s.member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(handle)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise ArtifactError(f"{path}: shard member {s.member} is corrupt: {exc}") from exc
            if tuple(shape) != (s.rows, *input_size) or dtype != np.dtype(s.dtype):
                raise ArtifactError(
                    f"{path}: shard member {s.member} holds {dtype} {tuple(shape)}, meta says {s.dtype} "
                    f"{(s.rows, *input_size)}"
                )


@dataclass(frozen=True)
class DeltaStats:
    """What one pass over every delta gives: all finite, and each delta's L-inf and L2 norm."""

    finite: bool
    linf: np.ndarray
    l2: np.ndarray


class ShardedDeltas:
    """The float32 deltas [N, C, H, W] of a schema-2 artifact, decoded shard by shard on indexing."""

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, path: Path, layout: ShardLayout, input_size: tuple[int, ...], *, cache_shards: int = 2) -> None:
        self.path = Path(path)
        self.layout = layout
        self.input_size = tuple(int(d) for d in input_size)
        self._offsets = layout.offsets
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_shards = max(1, cache_shards)
        self._stats: DeltaStats | None = None
        stat = os.stat(self.path)
        self._stamp = (stat.st_size, stat.st_mtime_ns)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.layout.rows, *self.input_size)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4

    def __len__(self) -> int:
        return self.layout.rows

    def __repr__(self) -> str:
        return f"ShardedDeltas({self.path.name}, shape={self.shape}, shards={len(self.layout.shards)})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self[slice(None)]
            head = self[key[0]]
            rest = key[1:]
            return head[rest] if np.ndim(key[0]) == 0 and not isinstance(key[0], slice) else head[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {int(key)} out of range for {len(self)} deltas")
            return self._rows(np.array([row], dtype=np.int64))[0]
        if isinstance(key, slice):
            return self._rows(np.arange(*key.indices(len(self)), dtype=np.int64))
        positions = np.asarray(key)
        if positions.dtype == bool:
            if positions.shape != (len(self),):
                raise IndexError(f"boolean index of shape {positions.shape} for {len(self)} deltas")
            positions = np.flatnonzero(positions)
        if positions.dtype.kind not in "iu" or positions.ndim != 1:
            raise IndexError(f"index deltas with an int, a slice or a 1-D int/bool array, not {positions.dtype} {positions.shape}")
        positions = positions.astype(np.int64)
        positions = np.where(positions < 0, positions + len(self), positions)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} deltas")
        return self._rows(positions)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.nbytes > _LARGE_BYTES:
            logger.warning("reading all %d deltas of %s into memory (%.1f GB)", len(self), self.path, self.nbytes / 1e9)
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) of every shard in order, each decoded once."""
        for shard in range(len(self.layout.shards)):
            yield int(self._offsets[shard]), self._shard(shard)

    def stats(self) -> DeltaStats:
        """Finite check and per-delta norms, computed in one streaming pass and cached."""
        if self._stats is None:
            linf = np.zeros(len(self))
            l2 = np.zeros(len(self))
            for start, rows in self.iter_shards():
                for j, row in enumerate(rows):
                    flat = row.reshape(-1).astype(np.float64)
                    linf[start + j] = np.abs(flat).max(initial=0.0)
                    l2[start + j] = np.sqrt(np.dot(flat, flat))
            self._stats = DeltaStats(True, linf, l2)  # a non-finite shard raises in _shard
        return self._stats

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((positions.size, *self.input_size), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, positions, side="right") - 1
        for shard in np.unique(shard_of):
            where = np.flatnonzero(shard_of == shard)
            out[where] = self._shard(int(shard))[positions[where] - self._offsets[shard]]
        return out

    def _shard(self, shard: int) -> np.ndarray:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        rows = self._decode(self.layout.shards[shard])
        self._cache[shard] = rows
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return rows

    def _decode(self, info: ShardInfo) -> np.ndarray:
        stat = os.stat(self.path) if self.path.exists() else None
        if stat is None or (stat.st_size, stat.st_mtime_ns) != self._stamp:
            raise ArtifactError(f"{self.path} changed or vanished since it was loaded; load it again")
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(info.member) as handle:
                stored = np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ArtifactError(f"{self.path}: shard member {info.member} is corrupt: {exc}") from exc
        if stored.dtype != np.dtype(info.dtype) or stored.shape != (info.rows, *self.input_size):
            raise ArtifactError(f"{self.path}: shard member {info.member} does not match its meta")
        if info.dtype in INT_DTYPES:
            assert self.layout.scale is not None  # ShardLayout.from_storage refuses levels without a scale
            return decode_levels(stored, self.layout.scale)
        if not np.isfinite(stored).all():
            raise ArtifactError(f"{self.path}: shard member {info.member} holds NaN or infinite values")
        return stored
