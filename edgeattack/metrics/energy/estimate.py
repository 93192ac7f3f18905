"""The labelled model-based estimate, and the meter that measures nothing (with the reason).

`EstimateMeter` is *not a measurement*: counted multiply-adds x 4.6 pJ (a 32-bit float multiply
3.7 pJ + add 0.9 pJ at 45 nm, Horowitz, ISSCC 2014), compute only: no memory traffic, no idle or
static power, no data movement, which dominate on real hardware. Its readings have
`kind="estimate"` and say so in `method`; `energy_summary` keeps them in `estimate_mj`, never in
`measured_mj`. MACs come from the engine's GFLOPs (one multiply-add = one FLOP, DESIGN.md).

`NoMeter` is what `select_meter` returns where no meter works: every reading has `energy_j=None`
and the reason.
"""

from __future__ import annotations

import math
import time

from edgeattack.metrics.energy.base import ESTIMATE, NONE, Clock, Meter, WindowData

__all__ = ["ENERGY_ESTIMATE_METHOD", "PJ_PER_MAC", "EstimateMeter", "NoMeter", "estimate_energy_j"]

PJ_PER_MAC = 4.6
ENERGY_ESTIMATE_METHOD = (
    "estimate, not a measurement: counted multiply-adds x 4.6 pJ (fp32 multiply 3.7 pJ + add 0.9 pJ at 45 nm, "
    "Horowitz, ISSCC 2014); compute only, no memory traffic or idle power"
)


def estimate_energy_j(macs: float) -> float:
    """The estimate for `macs` multiply-adds, in J (not a measurement)."""
    if not (math.isfinite(macs) and macs >= 0):
        raise ValueError(f"MACs must be finite and non-negative, got {macs}")
    return macs * PJ_PER_MAC * 1e-12


class EstimateMeter(Meter):
    """MACs per inference x inferences x 4.6 pJ; labelled `estimate`. Give MACs or GFLOPs per inference."""

    name = "estimate"
    kind = ESTIMATE
    default_min_window_s = 0.0

    def __init__(
        self,
        macs_per_inference: float | None = None,
        *,
        gflops_per_inference: float | None = None,
        clock: Clock = time.perf_counter,
    ) -> None:
        super().__init__(clock=clock)
        if macs_per_inference is not None and gflops_per_inference is not None:
            raise ValueError("give macs_per_inference or gflops_per_inference, not both")
        macs = macs_per_inference if gflops_per_inference is None else gflops_per_inference * 1e9
        if macs is not None:
            estimate_energy_j(macs)  # validates
        self.macs_per_inference = macs

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "model-based estimate (MACs x 4.6 pJ, compute only), not a measurement"

    def _start_impl(self) -> None:
        pass

    def _stop_impl(self, window_s: float) -> WindowData:
        if self.macs_per_inference is None:
            return WindowData(None, ENERGY_ESTIMATE_METHOD, reason="the estimate needs the MACs (or GFLOPs) per inference")
        if not self._window_inferences:
            return WindowData(None, ENERGY_ESTIMATE_METHOD, reason="the estimate needs a count of inferences")
        energy = estimate_energy_j(self.macs_per_inference * self._window_inferences)
        return WindowData(energy, ENERGY_ESTIMATE_METHOD, domain_energy_j={"compute": energy}, energy_domains=("compute",),
                          device={"macs_per_inference": self.macs_per_inference, "pj_per_mac": PJ_PER_MAC})


class NoMeter(Meter):
    """No energy meter: readings carry `energy_j=None` and `reason`."""

    name = "none"
    kind = NONE
    default_min_window_s = 0.0

    def __init__(self, reason: str = "no energy meter requested", *, clock: Clock = time.perf_counter) -> None:
        super().__init__(clock=clock)
        self.reason = reason

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "reports no energy, with the reason"

    def _start_impl(self) -> None:
        pass

    def _stop_impl(self, window_s: float) -> WindowData:
        return WindowData(None, "", reason=self.reason)
