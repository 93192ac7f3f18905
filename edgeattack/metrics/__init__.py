"""Metrics (DESIGN.md "Metric definitions"): accuracy / ASR, latency, memory. No torch needed."""

from __future__ import annotations

from edgeattack.metrics.accuracy import (
    METRIC_DEFINITIONS,
    AccuracyMetrics,
    NormSummary,
    PerturbationNorms,
    accuracy_metrics,
    adv_acc,
    asr,
    clean_acc,
    fooling_rate,
    perturbation_norms,
    targeted_success,
)
from edgeattack.metrics.energy import (
    EnergyResult,
    Meter,
    MeterReading,
    available_meters,
    energy_summary,
    measure_energy,
    select_meter,
)
from edgeattack.metrics.latency import (
    CV_WARN_THRESHOLD,
    LatencyRecorder,
    LatencyStats,
    UnstableLatencyWarning,
    measure_latency,
    stats_from_durations,
)
from edgeattack.metrics.memory import MemoryStats, PeakMemory, current_rss_mib

__all__ = [
    "CV_WARN_THRESHOLD",
    "METRIC_DEFINITIONS",
    "AccuracyMetrics",
    "EnergyResult",
    "LatencyRecorder",
    "LatencyStats",
    "MemoryStats",
    "Meter",
    "MeterReading",
    "NormSummary",
    "PeakMemory",
    "PerturbationNorms",
    "UnstableLatencyWarning",
    "accuracy_metrics",
    "adv_acc",
    "asr",
    "available_meters",
    "clean_acc",
    "current_rss_mib",
    "energy_summary",
    "fooling_rate",
    "measure_energy",
    "measure_latency",
    "perturbation_norms",
    "select_meter",
    "stats_from_durations",
    "targeted_success",
]
