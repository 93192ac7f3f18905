"""A background sampler (>= 10 Hz) and the two reductions meters need: power integration, counter deltas.

`Sampler(read)` calls `read() -> {channel: value}` once on `start()`, then every `interval_s` in
a daemon thread, and once more on `stop()`, so the samples span the whole window. The first read
that raises stops the sampling and is kept as `error`: the meter then reports no energy, with
that reason, instead of integrating over a hole. `interval_s=None` runs no thread (tests call
`sample()` by hand); `clock` is injectable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeattack.errors import ConfigError
from edgeattack.metrics.energy.base import Clock, MeterError, MeterPermissionError, _describe

__all__ = ["DEFAULT_INTERVAL_S", "MAX_INTERVAL_S", "Sampler", "counter_delta", "integrate_power", "read_number"]

DEFAULT_INTERVAL_S = 0.05  # 20 Hz
MAX_INTERVAL_S = 0.1  # 10 Hz: the slowest rate a meter may sample at


class Sampler:
    """Samples `read()` from start to stop; `times` (s) and per-channel `values`."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, float]],
        *,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        clock: Clock = time.perf_counter,
        what: str = "meter",
    ) -> None:
        if interval_s is not None and not 0 < interval_s <= MAX_INTERVAL_S:
            raise ConfigError(f"sampling interval must be in (0, {MAX_INTERVAL_S}] s (>= 10 Hz), got {interval_s}")
        self._read = read
        self.interval_s = interval_s
        self._clock = clock
        self.what = what
        self._times: list[float] = []
        self._values: list[dict[str, float]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        with self._lock:
            self._times, self._values, self.error = [], [], None
        self._stop.clear()
        if not self.sample():
            raise MeterError(self.error or f"{self.what} could not be read")
        if self.interval_s is not None:
            self._thread = threading.Thread(target=self._run, name=f"edgeattack-{self.what}-sampler", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self.interval_s is not None
        while not self._stop.wait(self.interval_s):
            if not self.sample():
                return

    def sample(self) -> bool:
        """Take one sample now; False (and `error` set) when the read failed or failed before."""
        if self.error is not None:
            return False
        t = self._clock()
        try:
            values = {str(k): float(v) for k, v in self._read().items()}
        except Exception as exc:
            self.error = f"{self.what} stopped answering after {len(self._times)} samples ({_describe(exc)})"
            return False
        with self._lock:
            self._times.append(t)
            self._values.append(values)
        return True

    def stop(self) -> None:
        """Stop the thread and take the last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, 20 * (self.interval_s or 0.0)))
            if self._thread.is_alive() and self.error is None:
                self.error = f"{self.what} hung: a read did not return within the sampling thread's stop timeout"
            self._thread = None
        self.sample()

    def __len__(self) -> int:
        return len(self._times)

    @property
    def times(self) -> np.ndarray:
        with self._lock:
            return np.asarray(self._times, dtype=np.float64)

    def values(self, channel: str) -> np.ndarray:
        """One channel over the samples (NaN where a sample lacks it)."""
        with self._lock:
            return np.asarray([v.get(channel, np.nan) for v in self._values], dtype=np.float64)

    @property
    def channels(self) -> list[str]:
        with self._lock:
            return list(self._values[0]) if self._values else []

    def rate_hz(self) -> float | None:
        times = self.times
        span = float(times[-1] - times[0]) if times.size > 1 else 0.0
        return (times.size - 1) / span if span > 0 else None

    def check(self) -> list[str]:
        """Warnings about the samples: too slow, or a clock that did not advance."""
        warnings: list[str] = []
        times = self.times
        if times.size > 1 and (np.diff(times) < 0).any():
            raise MeterError(f"{self.what}: sample times went backwards (the clock is not monotonic)")
        rate = self.rate_hz()
        if self.interval_s is not None and rate is not None and times.size > 3 and rate < 1.0 / MAX_INTERVAL_S:
            warnings.append(f"{self.what} was sampled at {rate:.1f} Hz, below 10 Hz (a busy machine?)")
        return warnings


def integrate_power(times: Sequence[float] | np.ndarray, watts: Sequence[float] | np.ndarray) -> float:
    """Energy in J from power samples in W at `times` in s (trapezoid rule)."""
    t = np.asarray(times, dtype=np.float64)
    w = np.asarray(watts, dtype=np.float64)
    if t.shape != w.shape or t.ndim != 1:
        raise ValueError("times and power samples must be 1-D of the same length")
    if t.size < 2:
        return 0.0
    if not np.isfinite(w).all():
        raise MeterError("a power sample is missing or not finite")
    return float(np.sum((w[1:] + w[:-1]) * 0.5 * np.diff(t)))


def counter_delta(values: Sequence[float] | np.ndarray, max_range: float | None) -> tuple[float, int]:
    """How far a cumulative counter advanced over its samples, and how many wrap-arounds that took.

    A decrease between two samples is a wrap-around when `max_range` (the counter's range, e.g.
    RAPL's `max_energy_range_uj`) is known: the step is `value + max_range - previous`. Without it,
    a decrease is an error (MeterError): the counter was reset, never a made-up number.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return 0.0, 0
    if not np.isfinite(v).all():
        raise MeterError("a counter sample is missing or not finite")
    steps = np.diff(v)
    wrapped = steps < 0
    if wrapped.any():
        if not max_range or max_range <= 0:
            raise MeterError(f"the counter went backwards ({v[:-1][wrapped][0]:.0f} -> {v[1:][wrapped][0]:.0f}) "
                             "and its range is unknown: reset, not wrapped")
        if (v > max_range).any():
            raise MeterError(f"a counter value exceeds its range {max_range:.0f}")
        steps = np.where(wrapped, steps + max_range, steps)
    return float(steps.sum()), int(wrapped.sum())


def read_number(path: Path) -> float:
    """A number from a sysfs file; MeterError (MeterPermissionError) naming the file otherwise."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError as exc:
        raise MeterError(f"{path} vanished") from exc
    except PermissionError as exc:
        raise MeterPermissionError(f"{path} is not readable (permission denied)") from exc
    except OSError as exc:
        raise MeterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return float(text)
    except ValueError as exc:
        raise MeterError(f"{path} holds {text!r}, not a number") from exc
