"""The meter interface: one lifecycle and one reading for real energy meters, the estimate and memory.

A meter measures one window: `start()` ... `stop(inferences=n)`, or `with meter:` (then
`meter.reading`). The base owns the lifecycle, the clock, the idle baseline and the arithmetic;
a back-end implements `_start_impl()` and `_stop_impl() -> WindowData` (energies in joules).

Definitions (DESIGN.md "Metric definitions"):

- `energy_j`: energy over the whole window, idle power included, from the meter's domains
  `energy_domains` (a board-input rail, the sum of RAPL packages, the GPU).
- `idle_power_w`: the baseline, measured by `measure_idle` with no work running (or given).
- `active_energy_j = energy_j - idle_power_w * window_s`: what the workload added. It can come
  out slightly negative when the workload is lost in the noise; it is then flagged, not clamped.
- `energy_per_inference_j = energy_j / inferences`, `active_energy_per_inference_j` likewise.

Where something cannot be measured (no meter, permission denied, a rail that vanished mid-run, a
counter that ran backwards), the energy is None and `reason` says why: never a made-up number.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any, ClassVar

from edgeattack.errors import ConfigError, EdgeAttackError

__all__ = [
    "ENERGY_DEFINITIONS",
    "ESTIMATE",
    "MEASURED",
    "MEMORY",
    "NONE",
    "Clock",
    "EnergyResult",
    "Meter",
    "MeterError",
    "MeterPermissionError",
    "MeterReading",
    "WindowData",
]

Clock = Callable[[], float]

MEASURED = "measured"
ESTIMATE = "estimate"
MEMORY = "memory"
NONE = "none"

ENERGY_DEFINITIONS: dict[str, str] = {
    "energy_j": "energy over the measured window from `energy_domains`, idle power included (J)",
    "idle_power_w": "power with no work running, measured before the window (W)",
    "active_energy_j": "energy_j - idle_power_w * window_s: the energy the workload added (J)",
    "energy_per_inference_j": "energy_j / inferences (J)",
    "active_energy_per_inference_j": "active_energy_j / inferences (J)",
    "average_power_w": "energy_j / window_s (W)",
    "kind": "measured (a hardware meter), estimate (model-based, not a measurement), memory, none",
}


class MeterError(EdgeAttackError):
    """A meter that cannot be opened or read: missing, not permitted, not supported, or gone."""


class MeterPermissionError(MeterError, PermissionError):
    """A meter whose files or device this user may not read."""


@dataclass
class WindowData:
    """What a back-end measured over one window; the base turns it into a `MeterReading`."""

    energy_j: float | None
    method: str
    domain_energy_j: dict[str, float | None] = field(default_factory=dict)
    energy_domains: tuple[str, ...] = ()
    samples: int = 0
    sample_rate_hz: float | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    peak_memory_mib: float | None = None
    memory_delta_mib: float | None = None
    memory_method: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    average_power_w: float | None = None  # only where it is not energy_j / window_s


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _per(value: float | None, count: int | None) -> float | None:
    return None if value is None or not count else value / count


@dataclass(frozen=True)
class MeterReading:
    """One window of one meter (see the module docstring for the definitions). JSON-ready."""

    meter: str
    kind: str
    energy_j: float | None
    window_s: float | None
    average_power_w: float | None = None
    idle_power_w: float | None = None
    active_energy_j: float | None = None
    inferences: int | None = None
    energy_per_inference_j: float | None = None
    active_energy_per_inference_j: float | None = None
    samples: int = 0
    sample_rate_hz: float | None = None
    domain_energy_j: dict[str, float | None] = field(default_factory=dict)
    energy_domains: tuple[str, ...] = ()
    method: str = ""
    peak_memory_mib: float | None = None
    memory_delta_mib: float | None = None
    memory_method: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        """True when a hardware meter produced the energy (not an estimate, not missing)."""
        return self.kind == MEASURED and self.energy_j is not None

    def with_inferences(self, inferences: int | None) -> MeterReading:
        """The same window, with the per-inference energies for `inferences` inferences."""
        if inferences is not None and inferences < 0:
            raise ValueError(f"inferences must be non-negative, got {inferences}")
        return replace(
            self,
            inferences=inferences,
            energy_per_inference_j=_per(self.energy_j, inferences),
            active_energy_per_inference_j=_per(self.active_energy_j, inferences),
        )

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["energy_domains"] = list(self.energy_domains)
        doc["warnings"] = list(self.warnings)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MeterReading:
        values = {name: doc[name] for name in cls.__dataclass_fields__ if name in doc}
        for name in ("peak_memory_mib", "memory_delta_mib"):  # written as `*_mb` (same 2**20 unit) before
            old = name.removesuffix("_mib") + "_mb"
            if name not in values and old in doc:
                values[name] = doc[old]
        values["energy_domains"] = tuple(values.get("energy_domains") or ())
        values["warnings"] = tuple(values.get("warnings") or ())
        return cls(**values)


EnergyResult = MeterReading


class Meter(ABC):
    """Base of every meter: `start()`/`stop()` or a context manager, `available()`, an idle baseline.

    `clock` (seconds, monotonic) is injectable for tests; `min_window_s` is the shortest window the
    meter resolves well (a reading over a shorter one carries a warning; `measure_energy` repeats
    the workload until it is reached).
    """

    name: ClassVar[str] = "meter"
    kind: ClassVar[str] = MEASURED
    default_min_window_s: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        clock: Clock = time.perf_counter,
        idle_power_w: float | None = None,
        min_window_s: float | None = None,
    ) -> None:
        if idle_power_w is not None and not (math.isfinite(idle_power_w) and idle_power_w >= 0):
            raise ValueError(f"idle_power_w must be finite and non-negative, got {idle_power_w}")
        self.clock = clock
        self.idle_power_w = idle_power_w
        self.min_window_s = self.default_min_window_s if min_window_s is None else float(min_window_s)
        self._t0: float | None = None
        self._start_error: str | None = None
        self._inferences = 0
        self._window_inferences: int | None = None  # the count `stop` was given, for back-ends that need it
        self._reading: MeterReading | None = None

    # -- what a back-end implements -------------------------------------------------------------
    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, what it measures) where the meter works here, else (False, why not)."""
        return True, ""

    @abstractmethod
    def _start_impl(self) -> None:
        """Open the meter and take the first reading (raise MeterError when that fails)."""

    @abstractmethod
    def _stop_impl(self, window_s: float) -> WindowData:
        """Take the last reading, release the meter, return the window (raise MeterError when gone)."""

    def _abort_impl(self) -> None:  # noqa: B027 - optional hook, deliberately empty by default
        """Release whatever `_start_impl` acquired after it failed half-way (default: nothing)."""

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self) -> Meter:
        """Begin a window. A meter that cannot start still runs the window and reports why."""
        if self.running:
            raise RuntimeError(f"meter {self.name} is already running")
        self._reading = None
        self._inferences = 0
        self._start_error = None
        self._t0 = self.clock()
        try:
            self._start_impl()
        except ConfigError:  # the caller's mistake (e.g. a rail this board lacks): say so now
            self._abort_impl()
            self._t0 = None
            raise
        except Exception as exc:  # a failing meter must never break the workload it measures
            self._start_error = _describe(exc)
            self._abort_impl()
        return self

    def count(self, inferences: int = 1) -> None:
        """Add `inferences` to the window's count (for the context-manager form)."""
        self._inferences += int(inferences)

    def elapsed_s(self) -> float:
        """Seconds since `start()` on the meter's clock."""
        if self._t0 is None:
            raise RuntimeError(f"meter {self.name} is not running")
        return self.clock() - self._t0

    def stop(self, inferences: int | None = None) -> MeterReading:
        """End the window; `inferences` (default: what `count()` added) gives the per-inference energy."""
        if self._t0 is None:
            raise RuntimeError(f"meter {self.name} was not started")
        window = self.clock() - self._t0
        self._t0 = None
        count = inferences if inferences is not None else (self._inferences or None)
        self._window_inferences = count
        if self._start_error is not None:
            data = WindowData(None, "", reason=f"{self.name} meter could not start: {self._start_error}")
        else:
            try:
                data = self._stop_impl(window)
            except Exception as exc:
                data = WindowData(None, "", reason=f"{self.name} meter failed during the window: {_describe(exc)}")
        self._reading = self._reading_from(data, window).with_inferences(count)
        return self._reading

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.running:
            self.stop()

    @property
    def reading(self) -> MeterReading:
        """The last window's reading."""
        if self._reading is None:
            raise RuntimeError(f"meter {self.name} has no reading before a window has finished")
        return self._reading

    def measure_idle(self, duration_s: float = 1.0, *, sleep: Callable[[float], None] = time.sleep) -> float | None:
        """Measure the idle baseline over `duration_s` with no work; sets and returns `idle_power_w`.

        When the idle window cannot be measured the baseline stays unset (None is returned).
        """
        if self.kind != MEASURED:
            return None
        self.idle_power_w = None
        self.start()
        sleep(duration_s)
        reading = self.stop()
        self.idle_power_w = reading.average_power_w if reading.energy_j is not None else None
        self._reading = None
        return self.idle_power_w

    # -- the arithmetic --------------------------------------------------------------------------
    def _reading_from(self, data: WindowData, window_s: float) -> MeterReading:
        warnings = list(data.warnings)
        energy, reason = _finite(data.energy_j), data.reason
        if data.energy_j is not None and energy is None:
            reason = reason or f"the {self.name} meter returned a non-finite energy ({data.energy_j})"
        if energy is not None and energy < 0:
            energy, reason = None, reason or f"the {self.name} meter returned a negative energy ({data.energy_j:.6g} J)"
        if energy is None and reason is None and self.kind in (MEASURED, ESTIMATE):
            reason = f"the {self.name} meter returned no energy"
        if energy is not None and self.kind == MEASURED and window_s < self.min_window_s:
            warnings.append(
                f"window {window_s:.3f} s is shorter than the {self.name} meter's minimum {self.min_window_s:g} s: "
                "the energy is coarse (repeat the workload, e.g. with measure_energy)"
            )
        average = _finite(data.average_power_w)
        if average is None and energy is not None and self.kind == MEASURED and window_s > 0:
            average = energy / window_s
        idle = self.idle_power_w if self.kind == MEASURED else None
        active = None
        if energy is not None:
            active = energy - idle * window_s if idle is not None else (energy if self.kind == ESTIMATE else None)
        if active is not None and active < 0:
            warnings.append(
                f"idle-subtracted energy is negative ({active:.6g} J): the idle baseline ({idle:.4g} W) exceeds the "
                "window's average power, so the workload's energy is within the meter's noise"
            )
        return MeterReading(
            meter=self.name,
            kind=self.kind,
            energy_j=energy,
            window_s=window_s,
            average_power_w=average,
            idle_power_w=idle,
            active_energy_j=active,
            samples=data.samples,
            sample_rate_hz=_finite(data.sample_rate_hz),
            domain_energy_j={k: _finite(v) for k, v in data.domain_energy_j.items()},
            energy_domains=tuple(data.energy_domains),
            method=data.method,
            peak_memory_mib=_finite(data.peak_memory_mib),
            memory_delta_mib=_finite(data.memory_delta_mib),
            memory_method=data.memory_method,
            device=dict(data.device),
            reason=None if energy is not None and self.kind in (MEASURED, ESTIMATE) else reason,
            warnings=tuple(warnings),
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, MeterError) else f"{type(exc).__name__}: {text}"
