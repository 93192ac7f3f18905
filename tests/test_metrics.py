"""Metrics on hand-made cases: the DESIGN.md definitions, latency statistics, peak memory."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from edgeattack.metrics import (
    AccuracyMetrics,
    LatencyRecorder,
    PeakMemory,
    UnstableLatencyWarning,
    accuracy_metrics,
    adv_acc,
    asr,
    clean_acc,
    fooling_rate,
    measure_latency,
    perturbation_norms,
    stats_from_durations,
    targeted_success,
)
from edgeattack.metrics import memory as memory_module

# accuracy -----------------------------------------------------------------------------------


def test_asr_denominator_is_the_images_this_engine_gets_right():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 0, 0])  # right on images 0 and 1 only
    adv = np.array([0, 2, 0, 0])  # image 1 flipped
    assert clean_acc(clean, labels) == 0.5
    assert adv_acc(adv, labels) == 0.25
    assert asr(clean, adv, labels) == 0.5  # 1 of the 2 correct, not 1 of 4


def test_asr_is_none_when_engine_gets_nothing_right():
    labels = np.array([0, 1])
    assert asr(np.array([1, 0]), np.array([1, 1]), labels) is None


def test_fooling_rate_counts_changes_including_already_wrong_images():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 0, 0])
    adv = np.array([0, 2, 1, 0])  # image 1 (right) and image 2 (already wrong) change
    assert fooling_rate(clean, adv) == 0.5
    assert asr(clean, adv, labels) == 0.5


def test_targeted_success_excludes_images_already_of_the_target():
    labels = np.array([3, 0, 1, 2, 3])
    adv = np.array([3, 3, 1, 3, 3])
    # eligible: images 1, 2, 3 (label != 3); of those 1 and 3 reach the target
    assert targeted_success(adv, 3, labels) == pytest.approx(2 / 3)
    assert targeted_success(np.array([3, 3]), 3, np.array([3, 3])) is None
    # one target per image
    assert targeted_success(np.array([1, 2]), np.array([1, 0]), np.array([0, 1])) == 0.5


def test_metrics_accept_logits_and_reject_mismatched_lengths():
    logits = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert clean_acc(logits, np.array([1, 0])) == 1.0
    with pytest.raises(ValueError, match="disagree"):
        clean_acc(np.array([0, 1, 1]), np.array([0, 1]))


def test_empty_inputs_give_none_not_nan():
    empty = np.zeros(0, dtype=np.int64)
    metrics = accuracy_metrics(empty, empty, empty)
    assert (metrics.clean_acc, metrics.adv_acc, metrics.asr, metrics.fooling_rate) == (None, None, None, None)


def test_accuracy_metrics_names_every_metric_and_round_trips():
    labels = np.array([0, 1, 2, 3])
    metrics = accuracy_metrics(labels, np.array([0, 1, 0, 0]), np.array([0, 2, 1, 0]), target=2)
    doc = metrics.to_dict()
    for name in ("clean_acc", "adv_acc", "asr", "fooling_rate", "targeted_success", "n_clean_correct"):
        assert name in doc
    assert doc["n_clean_correct"] == 2 and doc["n_changed"] == 2
    assert doc["targeted_success"] == pytest.approx(1 / 3)
    assert AccuracyMetrics.from_dict(doc) == metrics


def test_perturbation_norms_per_image_and_summary():
    clean = np.zeros((3, 1, 2, 2), dtype=np.float32)
    adv = clean.copy()
    adv[0, 0, 0, 0] = 0.3
    adv[0, 0, 1, 1] = 0.4  # l2 0.5, linf 0.4
    adv[1] += 0.1  # four values of 0.1: l2 0.2, linf 0.1
    norms = perturbation_norms(clean, adv)
    np.testing.assert_allclose(norms.l2, [0.5, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(norms.linf, [0.4, 0.1, 0.0], atol=1e-6)
    summary = norms.summary
    assert summary.n_images == 3
    assert summary.l2_median == pytest.approx(0.2, abs=1e-6)
    assert summary.l2_mean == pytest.approx(0.7 / 3, abs=1e-6)
    assert summary.linf_max == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        perturbation_norms(clean, adv[:2])


# latency ------------------------------------------------------------------------------------


def test_stats_from_known_durations():
    durations = [float(v) for v in range(1, 101)]  # 1..100 ms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableLatencyWarning)
        stats = stats_from_durations(durations, batch_size=4)
    assert stats.runs == 100 and stats.images == 400 and stats.batch_size == 4
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)
    assert stats.cv == pytest.approx(np.std(durations) / 50.5)
    # images / wall time; wall defaults to the sum of the durations (5.05 s)
    assert stats.throughput_ips == pytest.approx(400 / 5.05)
    assert stats.device_compute_ms is None
    assert stats_from_durations(durations, batch_size=4, wall_s=10.0, warn=False).throughput_ips == 40.0


def test_cv_above_threshold_warns_and_marks_unstable():
    with pytest.warns(UnstableLatencyWarning, match="coefficient of variation"):
        stats = stats_from_durations([10.0, 10.0, 13.0], batch_size=1)
    assert stats.unstable and stats.cv > 0.025
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady = stats_from_durations([10.0, 10.1, 9.9, 10.0], batch_size=1)
    assert not steady.unstable


def test_per_call_batch_sizes_and_bad_input():
    stats = stats_from_durations([2.0, 2.0, 1.0], batch_size=[8, 8, 3], warn=False)
    assert stats.images == 19 and stats.batch_size == 8
    with pytest.raises(ValueError):
        stats_from_durations([], batch_size=1)
    with pytest.raises(ValueError):
        stats_from_durations([1.0, 2.0], batch_size=[1])


def test_measure_latency_warms_up_then_meets_both_minimums():
    calls: list[int] = []

    def fn(batch: np.ndarray) -> None:
        calls.append(len(batch))

    batch = np.zeros((5, 3))
    start = time.perf_counter()
    stats = measure_latency(
        fn,
        batch,
        warmup_min_s=0.02,
        warmup_min_runs=3,
        min_runs=25,
        min_seconds=0.05,
        device_time_fn=lambda: 2.0,
        warn=False,
    )
    elapsed = time.perf_counter() - start
    assert stats.warmup_runs >= 3 and stats.warmup_s >= 0.02
    assert stats.runs >= 25 and stats.wall_s >= 0.05
    assert len(calls) == stats.warmup_runs + stats.runs
    assert stats.batch_size == 5 and stats.images == 5 * stats.runs
    assert stats.device_compute_ms == 2.0
    assert elapsed >= 0.07
    assert stats.throughput_ips == pytest.approx(stats.images / stats.wall_s)


def test_latency_recorder_stream():
    recorder = LatencyRecorder()
    assert recorder.stats() is None
    recorder.add(2_000_000, 4)
    recorder.add(4_000_000, 4)
    recorder.add(1_000_000, 1)
    with recorder.time(4):
        pass
    stats = recorder.stats()
    assert stats is not None and stats.runs == 4 and stats.images == 13
    full = recorder.stats(full_batches_only=True)
    assert full is not None and full.runs == 3 and full.images == 12
    assert recorder.images == 13
    assert recorder.total_s >= 0.007


def test_latency_stats_round_trip():
    stats = stats_from_durations([1.0, 1.0], batch_size=2)
    assert type(stats).from_dict(stats.to_dict()) == stats


# memory -------------------------------------------------------------------------------------


def _clear_refs_writable() -> bool:
    return memory_module._reset_high_water_mark() is None


@pytest.mark.skipif(not _clear_refs_writable(), reason="/proc/self/clear_refs cannot reset VmHWM here")
def test_peak_memory_sees_an_allocation_of_known_size():
    size_mb = 64
    with PeakMemory() as peak:
        _touch_fresh_pages(size_mb)
    assert peak.result.method == "vmhwm"
    assert peak.peak_rss_delta_mib is not None
    assert peak.peak_rss_delta_mib >= size_mb * 0.9
    # The mark is reset: a later empty block does not see the earlier allocation.
    with PeakMemory() as empty:
        pass
    assert empty.peak_rss_delta_mib is not None and empty.peak_rss_delta_mib < size_mb * 0.5


def test_peak_memory_fallback_reports_none_with_a_reason(monkeypatch):
    monkeypatch.setattr(memory_module, "_CLEAR_REFS", "/nonexistent-dir/clear_refs")
    with PeakMemory() as peak:
        pass  # the lifetime peak cannot rise here, so the block's own peak is unknown
    assert peak.result.method == "ru_maxrss"
    assert peak.peak_rss_delta_mib is None
    assert peak.reason and "clear_refs" in peak.reason


def test_peak_memory_result_before_exit_is_an_error():
    meter = PeakMemory()
    with pytest.raises(RuntimeError):
        _ = meter.result


def _touch_fresh_pages(size_mb: int) -> None:
    """Make `size_mb` of new pages resident: an anonymous mmap, one write per page (a malloc'd
    array can reuse pages freed earlier in the test session, which would not raise the RSS)."""
    import mmap

    size = size_mb << 20
    with mmap.mmap(-1, size) as region:
        for offset in range(0, size, mmap.PAGESIZE):
            region[offset] = 1
