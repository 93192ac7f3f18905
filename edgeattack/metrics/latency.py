"""Latency with trtexec's conventions; numpy only.

`measure_latency(fn, batch)` warms up for at least `warmup_min_s` (200 ms) *and* at least
`warmup_min_runs` (10) calls, then times calls until it has at least `min_runs` *and* at least
`min_seconds` of timed calls (trtexec's `--iterations` and `--duration` are both minimums; it stops
when both are met). Each call is timed on the host with `time.perf_counter_ns`, end to end: `fn`
must return only when its work is done (device synchronised), as ONNX Runtime's `run` does.

Statistics: mean, median, p90/p95/p99 (numpy's linear interpolation), min, max, the coefficient
of variation (population std / mean; a warning above 2.5 %), throughput = images / wall time of the
timed phase, and the device compute time where the back-end can report it (`device_time_fn`).

`stats_from_durations` and `LatencyRecorder` build the same statistics from timings taken
elsewhere, such as the calls that replay perturbations during an evaluation.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CV_WARN_THRESHOLD",
    "DEFAULT_MIN_RUNS",
    "DEFAULT_MIN_SECONDS",
    "LatencyRecorder",
    "LatencyStats",
    "UnstableLatencyWarning",
    "measure_latency",
    "stats_from_durations",
]

CV_WARN_THRESHOLD = 0.025
DEFAULT_MIN_RUNS = 10  # trtexec --iterations default
DEFAULT_MIN_SECONDS = 3.0  # trtexec --duration default
_NS_PER_MS = 1e6


class UnstableLatencyWarning(RuntimeWarning):
    """Latencies vary more than the coefficient-of-variation threshold (2.5 %): treat them with care."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics of `runs` timed calls of `batch_size` images each (times in ms)."""

    batch_size: int
    runs: int
    images: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float
    throughput_ips: float
    wall_s: float
    unstable: bool
    device_compute_ms: float | None = None
    warmup_runs: int = 0
    warmup_s: float = 0.0
    cv_threshold: float = CV_WARN_THRESHOLD
    timing: str = "host end-to-end per call (time.perf_counter_ns), device synchronised"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> LatencyStats:
        fields = cls.__dataclass_fields__
        return cls(**{name: doc[name] for name in fields if name in doc})


def stats_from_durations(
    durations_ms: Sequence[float] | np.ndarray,
    *,
    batch_size: int | Sequence[int],
    wall_s: float | None = None,
    device_times_ms: Sequence[float] | None = None,
    warmup_runs: int = 0,
    warmup_s: float = 0.0,
    cv_threshold: float = CV_WARN_THRESHOLD,
    warn: bool = True,
    _stacklevel: int = 2,
) -> LatencyStats:
    """Statistics of per-call durations in milliseconds.

    `batch_size` is one size for every call or one per call (the last batch of a dataset may be
    smaller); the reported `batch_size` is then the largest. `wall_s` is the wall time the calls
    took, loop overhead included; without it the sum of the durations is used for throughput.
    With `warn`, an `UnstableLatencyWarning` is issued when cv > `cv_threshold`.
    """
    times = np.asarray(durations_ms, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("latency statistics need at least one duration")
    if not np.isfinite(times).all() or (times < 0).any():
        raise ValueError("durations must be finite and non-negative")
    if isinstance(batch_size, (int, np.integer)):
        sizes = np.full(times.size, int(batch_size), dtype=np.int64)
    else:
        sizes = np.asarray(batch_size, dtype=np.int64)
        if sizes.shape != times.shape:
            raise ValueError(f"{sizes.size} batch sizes for {times.size} durations")
    if (sizes <= 0).any():
        raise ValueError("batch sizes must be positive")
    images = int(sizes.sum())
    wall = float(wall_s) if wall_s is not None else float(times.sum()) / 1e3
    mean = float(times.mean())
    std = float(times.std())
    cv = std / mean if mean > 0 else 0.0
    unstable = cv > cv_threshold
    if unstable and warn:
        warnings.warn(
            f"latency is unstable: coefficient of variation {cv:.1%} over {times.size} runs exceeds "
            f"{cv_threshold:.1%} (mean {mean:.3f} ms, min {times.min():.3f}, max {times.max():.3f})",
            UnstableLatencyWarning,
            stacklevel=_stacklevel,
        )
    device_ms = None
    if device_times_ms is not None:
        device = np.asarray([t for t in device_times_ms if t is not None], dtype=np.float64)
        device_ms = float(device.mean()) if device.size else None
    p90, p95, p99 = (float(v) for v in np.percentile(times, [90, 95, 99]))
    return LatencyStats(
        batch_size=int(sizes.max()),
        runs=int(times.size),
        images=images,
        mean_ms=mean,
        median_ms=float(np.median(times)),
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        std_ms=std,
        cv=cv,
        throughput_ips=images / wall if wall > 0 else 0.0,
        wall_s=wall,
        unstable=unstable,
        device_compute_ms=device_ms,
        warmup_runs=int(warmup_runs),
        warmup_s=float(warmup_s),
        cv_threshold=float(cv_threshold),
    )


def measure_latency(
    fn: Callable[[Any], Any],
    batch: Any,
    *,
    batch_size: int | None = None,
    warmup_min_s: float = 0.2,
    warmup_min_runs: int = 10,
    min_runs: int = DEFAULT_MIN_RUNS,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    device_time_fn: Callable[[], float | None] | None = None,
    cv_threshold: float = CV_WARN_THRESHOLD,
    warn: bool = True,
) -> LatencyStats:
    """Time `fn(batch)`: warm-up, then at least `min_runs` calls and at least `min_seconds` of them.

    `batch_size` defaults to `len(batch)`. `device_time_fn`, when given, is called after each timed
    call and returns that call's device compute time in ms (or None); its mean is reported as
    `device_compute_ms`. Garbage collection is paused while timing.
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be at least 1, got {min_runs}")
    if min_seconds < 0 or warmup_min_s < 0 or warmup_min_runs < 0:
        raise ValueError("durations and warm-up runs must be non-negative")
    size = int(batch_size if batch_size is not None else len(batch))
    clock = time.perf_counter_ns

    warmup_start = clock()
    warmup_runs = 0
    warmup_limit_ns = int(warmup_min_s * 1e9)
    while warmup_runs < warmup_min_runs or clock() - warmup_start < warmup_limit_ns:
        fn(batch)
        warmup_runs += 1
    warmup_s = (clock() - warmup_start) / 1e9

    durations: list[int] = []
    device: list[float | None] = []
    limit_ns = int(min_seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = clock()
        while len(durations) < min_runs or clock() - start < limit_ns:
            t0 = clock()
            fn(batch)
            durations.append(clock() - t0)
            if device_time_fn is not None:
                device.append(device_time_fn())
        wall_s = (clock() - start) / 1e9
    finally:
        if gc_was_enabled:
            gc.enable()
    return stats_from_durations(
        np.asarray(durations, dtype=np.float64) / _NS_PER_MS,
        batch_size=size,
        wall_s=wall_s,
        device_times_ms=device if device_time_fn is not None else None,
        warmup_runs=warmup_runs,
        warmup_s=warmup_s,
        cv_threshold=cv_threshold,
        warn=warn,
        _stacklevel=3,
    )


class LatencyRecorder:
    """Collects per-call timings taken elsewhere (a stream), then summarises them.

    >>> recorder = LatencyRecorder()
    >>> with recorder.time(len(batch)):
    ...     engine.run(batch)
    >>> stats = recorder.stats()
    """

    def __init__(self) -> None:
        self._durations_ns: list[int] = []
        self._sizes: list[int] = []
        self._device_ms: list[float | None] = []

    def __len__(self) -> int:
        return len(self._durations_ns)

    def add(self, duration_ns: int, batch_size: int, device_ms: float | None = None) -> None:
        """Record one call of `batch_size` images that took `duration_ns` on the host."""
        self._durations_ns.append(int(duration_ns))
        self._sizes.append(int(batch_size))
        self._device_ms.append(device_ms)

    @contextmanager
    def time(self, batch_size: int) -> Iterator[None]:
        """Time the block as one call of `batch_size` images (not recorded if the block raises)."""
        t0 = time.perf_counter_ns()
        yield
        self.add(time.perf_counter_ns() - t0, batch_size)

    @property
    def total_s(self) -> float:
        """Sum of the recorded call durations in seconds."""
        return sum(self._durations_ns) / 1e9

    @property
    def images(self) -> int:
        """Images over all recorded calls."""
        return sum(self._sizes)

    def stats(
        self,
        *,
        wall_s: float | None = None,
        full_batches_only: bool = False,
        warn: bool = False,
        **kwargs: Any,
    ) -> LatencyStats | None:
        """Statistics of the recorded calls, or None when none was recorded.

        With `full_batches_only`, only calls of the largest batch size count (a dataset's smaller
        last batch would otherwise widen the distribution). Throughput uses `wall_s` when given,
        else the sum of the counted call durations (work between calls is not counted).
        """
        if not self._durations_ns:
            return None
        keep = list(range(len(self._sizes)))
        if full_batches_only:
            largest = max(self._sizes)
            keep = [i for i in keep if self._sizes[i] == largest]
        device = [self._device_ms[i] for i in keep]
        return stats_from_durations(
            np.asarray([self._durations_ns[i] for i in keep], dtype=np.float64) / _NS_PER_MS,
            batch_size=[self._sizes[i] for i in keep],
            wall_s=wall_s,
            device_times_ms=device if any(d is not None for d in device) else None,
            warn=warn,
            _stacklevel=3,
            **kwargs,
        )
