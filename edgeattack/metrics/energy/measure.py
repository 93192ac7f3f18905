"""Measure a workload's energy per call over a long-enough window, and the summary results carry.

`measure_energy(fn, meter)` repeats `fn()` until the meter's window is at least `min_window_s`
(energy counters update every 20-100 ms, so one short call cannot be measured) and returns the
reading with the energy per inference. `energy_summary(reading, gflops_per_inference=g)` is the
`energy` block of a result: the measured value (idle-subtracted where a baseline exists), which
meter measured it, why it is missing, and the labelled estimate beside it, never in its place.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeattack.metrics.energy.base import ESTIMATE, MEASURED, Meter, MeterReading
from edgeattack.metrics.energy.estimate import ENERGY_ESTIMATE_METHOD, estimate_energy_j

__all__ = ["NO_METER_REASON", "energy_summary", "measure_energy"]

NO_METER_REASON = "no energy meter was used (none given, or none works here: see `edgeattack doctor`)"


def measure_energy(
    fn: Callable[[], Any],
    meter: Meter,
    *,
    min_window_s: float | None = None,
    min_calls: int = 1,
    max_calls: int | None = None,
    inferences_per_call: int = 1,
    warmup_calls: int = 0,
    idle_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> MeterReading:
    """Call `fn()` at least `min_calls` times and until `min_window_s` (default: the meter's) has passed.

    Returns the window's reading with `inferences = calls x inferences_per_call`, so
    `energy_per_inference_j` is the energy per call when `inferences_per_call` is 1 (per image when
    it is the batch size). `idle_s` first measures the idle baseline where the meter has none.
    `max_calls` caps the calls (the reading then warns that the window is short). Only measuring
    meters wait for the window; the others run `fn` `min_calls` times. If `fn` raises, the meter is
    stopped and the exception propagates.
    """
    if min_calls < 1 or inferences_per_call < 1 or warmup_calls < 0:
        raise ValueError("min_calls and inferences_per_call must be >= 1, warmup_calls >= 0")
    if max_calls is not None and max_calls < min_calls:
        raise ValueError(f"max_calls ({max_calls}) is below min_calls ({min_calls})")
    window = meter.min_window_s if min_window_s is None else float(min_window_s)
    measuring = meter.kind == MEASURED
    if measuring and idle_s and meter.idle_power_w is None:
        meter.measure_idle(idle_s, sleep=sleep)
    for _ in range(warmup_calls):
        fn()
    calls = 0
    meter.start()
    try:
        while True:
            fn()
            calls += 1
            if max_calls is not None and calls >= max_calls:
                break
            if calls >= min_calls and (not measuring or meter.elapsed_s() >= window):
                break
    except BaseException:
        meter.stop(calls * inferences_per_call)
        raise
    return meter.stop(calls * inferences_per_call)


def energy_summary(
    reading: MeterReading | None,
    *,
    gflops_per_inference: float | None = None,
    macs_per_inference: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The `energy` block of a result, per inference, in mJ: the measurement and the estimate, apart.

    Keys: `measured_mj` (a hardware meter's energy per inference, idle-subtracted where the idle
    baseline was measured, `measured_basis` says which), `meter` and `measured_method` (the meter
    that measured `measured_mj` and how; None when nothing was measured, so a failed window never
    lends its meter's name to anything), `reason` (why `measured_mj` is None, e.g. "nvml meter
    failed during the window: ..."), `estimate_mj` and `estimate_method` (MACs x 4.6 pJ; MACs =
    GFLOPs x 1e9, one multiply-add per FLOP; never a measurement), and `measurement` (the whole
    reading, failed or not, or None).
    """
    if gflops_per_inference is not None and macs_per_inference is not None:
        raise ValueError("give gflops_per_inference or macs_per_inference, not both")
    macs = gflops_per_inference * 1e9 if gflops_per_inference is not None else macs_per_inference
    estimate = None if macs is None else estimate_energy_j(macs) * 1e3
    if reading is not None and reading.kind == ESTIMATE and estimate is None:
        estimate = None if reading.energy_per_inference_j is None else reading.energy_per_inference_j * 1e3
    measured = basis = None
    why = reason
    if reading is not None and reading.kind == MEASURED:
        if reading.active_energy_per_inference_j is not None:
            measured, basis = reading.active_energy_per_inference_j * 1e3, "idle-subtracted"
        elif reading.energy_per_inference_j is not None:
            measured, basis = reading.energy_per_inference_j * 1e3, "gross: no idle baseline was measured"
        elif reading.energy_j is not None:
            why = f"the {reading.meter} reading has no count of inferences"
        else:
            why = reading.reason or f"the {reading.meter} meter returned no energy"
    elif reading is not None and reading.kind != ESTIMATE:
        why = reading.reason or why
    return {
        "measured_mj": measured,
        "measured_basis": basis,
        "meter": None if measured is None or reading is None else reading.meter,
        "measured_method": None if measured is None or reading is None else reading.method,
        "reason": None if measured is not None else (why or NO_METER_REASON),
        "estimate_mj": estimate,
        "estimate_method": ENERGY_ESTIMATE_METHOD if estimate is not None else None,
        "measurement": None if reading is None else reading.to_dict(),
    }
