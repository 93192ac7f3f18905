"""An engine as a black-box oracle: a numpy function from images to outputs that counts every query.

`EngineOracle` wraps any `edgeattack.engines.Engine` (ONNX Runtime, TensorRT, torch) and is the
only way black-box attacks reach it. It

- counts every image passed to the engine, per attacked image (`queries[i]`) and in total, so the
  count always equals what the engine saw (`engine.queries` grows by exactly `total_queries`);
- enforces a per-image query budget: a query that would take an image past it raises
  `QueryBudgetExceeded` before the engine runs (attacks ask `remaining(rows)` first, so this is a
  guard against attack bugs, never a silent truncation);
- clips every query to the engine's bounds and, with `quantize=True`, rounds it to the 1/255 grid
  as a uint8 camera pipeline would, so the attack only ever sees what a deployed engine sees;
- refuses non-finite outputs (`EngineError` naming the rows) and records per-call latency.

Queries are split into engine calls of at most `batch_size` images (32: on this CPU, ORT's time per
image grows with larger batches, 1.3 ms at 16 vs 1.9 ms at 256); engines whose output depends
on the batch (ORT dynamic int8) are run one image at a time by the engine itself. No torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgeattack.artifacts import quantize_to_grid
from edgeattack.engines.base import Engine
from edgeattack.errors import ConfigError, EdgeAttackError, EngineError
from edgeattack.metrics.latency import LatencyRecorder, LatencyStats

__all__ = ["EngineOracle", "OracleStats", "QueryBudgetExceeded"]


class QueryBudgetExceeded(EdgeAttackError):
    """A query would take an image past its budget (an attack must check `remaining` first)."""


@dataclass(frozen=True)
class OracleStats:
    """What the oracle saw: queries by purpose and the latency of the engine calls."""

    attack_queries: int
    verification_queries: int
    engine_calls: int
    engine_time_s: float
    per_query_ms: float | None
    call_latency: LatencyStats | None

    def to_dict(self) -> dict[str, object]:
        return {
            "attack_queries": self.attack_queries,
            "verification_queries": self.verification_queries,
            "engine_calls": self.engine_calls,
            "engine_time_s": self.engine_time_s,
            "per_query_ms": self.per_query_ms,
            "call_latency": None if self.call_latency is None else self.call_latency.to_dict(),
        }


class EngineOracle:
    """Counted, budgeted, optionally quantized access to an active engine for `n_images` images."""

    def __init__(
        self,
        engine: Engine,
        n_images: int,
        *,
        budget: int | None = 1000,
        quantize: bool = False,
        batch_size: int = 32,
    ) -> None:
        if budget is not None and budget < 1:
            raise ConfigError(f"the query budget must be at least 1 query per image, got {budget}")
        if batch_size < 1:
            raise ConfigError(f"the oracle batch size must be at least 1, got {batch_size}")
        if n_images < 0:
            raise ConfigError(f"n_images must be >= 0, got {n_images}")
        self.engine = engine
        self.budget = budget
        self.quantize = quantize
        self.batch_size = batch_size
        self.low, self.high = (float(b) for b in engine.bounds)
        self.queries = np.zeros(n_images, dtype=np.int64)
        self.verification_queries = 0
        self.recorder = LatencyRecorder()

    # accounting ------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return int(self.queries.size)

    @property
    def total_queries(self) -> int:
        """Every image passed to the engine through this oracle (attack and verification)."""
        return int(self.queries.sum()) + self.verification_queries

    def remaining(self, ids: np.ndarray | int | None = None) -> np.ndarray:
        """Queries each image in `ids` (all images when None) may still make; huge when unbudgeted."""
        used = self.queries if ids is None else self.queries[np.asarray(ids, dtype=np.int64)]
        if self.budget is None:
            return np.full(used.shape, np.iinfo(np.int64).max // 4, dtype=np.int64)
        return self.budget - used

    def stats(self) -> OracleStats:
        calls = len(self.recorder)
        images = self.recorder.images
        return OracleStats(
            attack_queries=int(self.queries.sum()),
            verification_queries=self.verification_queries,
            engine_calls=calls,
            engine_time_s=self.recorder.total_s,
            per_query_ms=1e3 * self.recorder.total_s / images if images else None,
            call_latency=self.recorder.stats() if calls else None,
        )

    # queries ---------------------------------------------------------------------------------
    def clip(self, images: np.ndarray) -> np.ndarray:
        """`images` clipped to the engine's bounds (float32)."""
        return np.clip(np.asarray(images, dtype=np.float32), self.low, self.high)

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """What the engine will really see: clipped to its bounds, rounded to 1/255 if quantizing."""
        images = self.clip(images)
        if self.quantize:
            images = quantize_to_grid((images - self.low) / (self.high - self.low))
            images = (images * (self.high - self.low) + self.low).astype(np.float32)
        return images

    def logits(self, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Logits for `images[k]`, charged to attacked image `ids[k]` (ids may repeat)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if images.ndim != 4 or images.shape[0] != ids.size:
            raise ValueError(f"{ids.size} ids for a batch of shape {images.shape}")
        if ids.size == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if self.budget is not None:
            needed = np.bincount(ids, minlength=self.n_images)
            over = np.flatnonzero(self.queries + needed > self.budget)
            if over.size:
                raise QueryBudgetExceeded(
                    f"{over.size} image(s) would exceed the budget of {self.budget} queries "
                    f"(first: image {int(over[0])} at {int(self.queries[over[0]])})"
                )
        out = self._run(self.prepare(images), what="attack")
        np.add.at(self.queries, ids, 1)
        return out

    def labels(self, images: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Top-1 labels for `images`, charged to `ids`."""
        return self.logits(images, ids).argmax(axis=1)

    def verify(self, images: np.ndarray) -> np.ndarray:
        """Logits for final images, counted as verification queries (outside the per-image budget)."""
        out = self._run(self.prepare(images), what="verification")
        self.verification_queries += int(images.shape[0])
        return out

    def _run(self, images: np.ndarray, *, what: str) -> np.ndarray:
        parts = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size]
            t0 = time.perf_counter_ns()
            logits = self.engine.infer(batch)
            self.recorder.add(time.perf_counter_ns() - t0, len(batch))
            bad = ~np.isfinite(logits).all(axis=1)
            if bad.any():
                rows = (np.flatnonzero(bad) + start).tolist()
                raise EngineError(
                    f"engine {self.engine.name} returned NaN or infinite outputs for {int(bad.sum())} of "
                    f"{len(batch)} {what} queries (rows {rows[:8]}{'...' if len(rows) > 8 else ''})"
                )
            parts.append(np.asarray(logits, dtype=np.float32))
        return np.concatenate(parts)
