"""Peak resident memory of the process while a block runs (CPU engines); Linux first, stdlib only.

On Linux, writing "5" to `/proc/self/clear_refs` resets the process's high-water mark `VmHWM` to
its current resident set, so the peak reached inside a block is `VmHWM` read at its end. Where
that file cannot be written (old kernels, some sandboxes, other systems), `resource.getrusage`'s
`ru_maxrss` is the fallback; it is the lifetime peak and cannot be reset, so the block's peak is
known only when the lifetime peak rose inside the block. Otherwise the delta is None, with the
reason, never a made-up number.

Sizes are in MiB (2**20 bytes) (what `/proc` calls kB is KiB). The high-water mark is per
process: nested or concurrent `PeakMemory` blocks reset each other's.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, final

__all__ = ["MemoryStats", "PeakMemory", "current_rss_mib"]

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_KIB_PER_MIB = 1024.0
_RESET_TOLERANCE_MIB = 4.0


@dataclass(frozen=True)
class MemoryStats:
    """Peak resident memory of a block: `peak_rss_delta_mib` = peak RSS inside it - the baseline RSS."""

    peak_rss_delta_mib: float | None
    peak_rss_mib: float | None
    baseline_rss_mib: float | None
    method: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MemoryStats:
        """Read a document; results written before the MiB rename (`*_mb` keys, same 2**20 unit) still load."""
        return cls(**{name: doc.get(name, doc.get(name.removesuffix("_mib") + "_mb")) for name in cls.__dataclass_fields__})


def _read_status_kib() -> dict[str, int] | None:
    """VmRSS and VmHWM in KiB from /proc/self/status, or None where it cannot be read."""
    try:
        text = Path(_STATUS).read_text()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = rest.split()
            if parts:
                values[key] = int(parts[0])
    return values if len(values) == 2 else None


def current_rss_mib() -> float | None:
    """The process's resident set size now, in MiB (None where /proc is not available)."""
    status = _read_status_kib()
    return None if status is None else status["VmRSS"] / _KIB_PER_MIB


def _reset_high_water_mark() -> str | None:
    """Reset VmHWM; None on success, else why it could not be done."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
    except OSError as exc:
        return f"cannot reset the peak RSS via {_CLEAR_REFS} ({exc.strerror or exc})"
    status = _read_status_kib()
    if status is None:
        return f"cannot read {_STATUS}"
    if (status["VmHWM"] - status["VmRSS"]) / _KIB_PER_MIB > _RESET_TOLERANCE_MIB:
        return "the kernel ignored the VmHWM reset (needs Linux >= 4.0)"
    return None


def _ru_maxrss_mib() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / _KIB_PER_MIB


@final
class PeakMemory:
    """Context manager: how far the process's resident memory rose above a baseline inside the block.

    The baseline is the RSS on entry, or `baseline_rss_mib` when given (to compare several blocks
    against one common starting point).

    >>> with PeakMemory() as peak:
    ...     run()
    >>> peak.peak_rss_delta_mib
    """

    def __init__(self, *, baseline_rss_mib: float | None = None) -> None:
        self._baseline_override = baseline_rss_mib
        self._baseline_mib: float | None = None
        self._reset_problem: str | None = None
        self._maxrss_before_mib: float | None = None
        self._result: MemoryStats | None = None

    def __enter__(self) -> PeakMemory:
        self._result = None
        self._reset_problem = _reset_high_water_mark()
        self._maxrss_before_mib = _ru_maxrss_mib()
        rss = current_rss_mib()
        self._baseline_mib = self._baseline_override if self._baseline_override is not None else rss
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._result = self._measure()

    def _measure(self) -> MemoryStats:
        baseline = self._baseline_mib
        if self._reset_problem is None:
            status = _read_status_kib()
            if status is not None:
                peak = status["VmHWM"] / _KIB_PER_MIB
                delta = None if baseline is None else max(peak - baseline, 0.0)
                return MemoryStats(delta, peak, baseline, "vmhwm")
            self._reset_problem = f"cannot read {_STATUS}"
        peak_after = _ru_maxrss_mib()
        if peak_after is None:
            return MemoryStats(None, None, baseline, "unavailable", f"{self._reset_problem}; no getrusage")
        before = self._maxrss_before_mib
        if baseline is not None and before is not None and peak_after > before:
            # The lifetime peak rose inside the block, so it is the block's peak.
            return MemoryStats(
                max(peak_after - baseline, 0.0), peak_after, baseline, "ru_maxrss", self._reset_problem
            )
        return MemoryStats(
            None,
            None,
            baseline,
            "ru_maxrss",
            f"{self._reset_problem}; ru_maxrss is the lifetime peak ({peak_after:.1f} MiB), which did not "
            "rise inside the block, so the block's own peak is unknown",
        )

    @property
    def result(self) -> MemoryStats:
        """The measurement, available after the block."""
        if self._result is None:
            raise RuntimeError("PeakMemory has no result before its block has finished")
        return self._result

    @property
    def peak_rss_delta_mib(self) -> float | None:
        """Peak RSS inside the block minus the baseline, in MiB; None when it cannot be measured."""
        return self.result.peak_rss_delta_mib

    @property
    def reason(self) -> str | None:
        """Why `peak_rss_delta_mib` is None (or why the fallback was used)."""
        return self.result.reason
