"""Peak process memory under the meter interface: `edgeattack.metrics.memory.PeakMemory` (VmHWM).

`ProcessMemoryMeter` reports `peak_memory_mib` (the process's peak resident set in the window) and
`memory_delta_mib` (that peak minus the RSS at the start, or minus `baseline_rss_mib`), with the
method (`vmhwm`, or the `ru_maxrss` fallback) and the reason where it cannot tell. It measures no
energy (`kind="memory"`). GPU device memory comes with `NvmlMeter`'s readings.
"""

from __future__ import annotations

import time

from edgeattack.metrics.energy.base import MEMORY, Clock, Meter, WindowData
from edgeattack.metrics.memory import PeakMemory

__all__ = ["ProcessMemoryMeter"]


class ProcessMemoryMeter(Meter):
    """The process's peak resident memory over the window (Linux VmHWM reset, ru_maxrss fallback)."""

    name = "process-memory"
    kind = MEMORY
    default_min_window_s = 0.0

    def __init__(self, *, baseline_rss_mib: float | None = None, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock=clock)
        self.baseline_rss_mib = baseline_rss_mib
        self._peak: PeakMemory | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "peak resident memory of this process (VmHWM, or ru_maxrss where it cannot be reset)"

    def _start_impl(self) -> None:
        self._peak = PeakMemory(baseline_rss_mib=self.baseline_rss_mib)
        self._peak.__enter__()

    def _stop_impl(self, window_s: float) -> WindowData:
        assert self._peak is not None
        self._peak.__exit__(None, None, None)
        stats = self._peak.result
        return WindowData(
            None,
            "",
            reason=stats.reason or "this meter measures memory, not energy",
            peak_memory_mib=stats.peak_rss_mib,
            memory_delta_mib=stats.peak_rss_delta_mib,
            memory_method=f"process resident set ({stats.method})",
            device={"baseline_rss_mib": stats.baseline_rss_mib},
        )
