"""The report's derived tables: the rows of ReportData pivoted into what a figure draws.

`transfer_matrix` (ASR per perturbation × engine), `asr_eps_panels` (ASR vs ε per method, source
and target model) and `latency_groups` (latency samples per engine and pass), each with the
`_..._rows` builder of its table of formatted cells (see `tables.table_rows`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgeattack.report.data import (
    ReportData,
    compact_floats,
    eps_label,
    finite_number,
    is_missing,
    model_of,
    perturbation_label,
)
from edgeattack.report.formatting import MISSING, ms, percent

__all__ = [
    "MAX_EPS_PANELS",
    "EpsCurve",
    "EpsPanel",
    "asr_eps_panels",
    "latency_groups",
    "model_order",
    "shown_eps_panels",
    "source_models",
    "transfer_matrix",
]

MAX_EPS_PANELS = 8
"""The ASR vs ε figure draws at most this many (method, source) panels: those with the most ε values."""


def transfer_matrix(data: ReportData) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(perturbation labels, engines, ASR[perturbation][engine]) from the transfer table.

    Perturbations are ordered by method (first appearance), source, then ε; engines follow the
    engines table, then first appearance. A pair measured twice keeps its last value.
    """
    rows = [row for row in data.transfer if not is_missing(row.get("engine"))]
    method_order: dict[str, int] = {}
    for row in rows:
        method_order.setdefault(str(row.get("method")), len(method_order))

    def order(row: Mapping[str, Any]) -> tuple[Any, ...]:
        eps = row.get("eps")
        eps_key = float(eps) if isinstance(eps, (int, float)) and not is_missing(eps) else math.inf
        return method_order[str(row.get("method"))], str(row.get("source")), str(row.get("norm")), eps_key

    labels: list[str] = []
    for row in sorted(rows, key=order):
        label = perturbation_label(row)
        if label not in labels:
            labels.append(label)
    engines = [str(e["engine"]) for e in data.engines if not is_missing(e.get("engine"))]
    engines = [e for e in dict.fromkeys(engines) if any(str(r["engine"]) == e for r in rows)]
    for row in rows:
        if str(row["engine"]) not in engines:
            engines.append(str(row["engine"]))
    values: list[list[float | None]] = [[None] * len(engines) for _ in labels]
    for row in rows:
        asr = row.get("asr")
        value = None if is_missing(asr) or isinstance(asr, bool) else float(asr)
        values[labels.index(perturbation_label(row))][engines.index(str(row["engine"]))] = value
    return labels, engines, values


def _transfer_matrix_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    labels, engines, values = transfer_matrix(data)
    headers = ["Perturbation (ASR %)", *engines]
    return headers, [[label, *(percent(v) for v in line)] for label, line in zip(labels, values, strict=True)]


@dataclass(frozen=True)
class EpsCurve:
    """One target model in an ASR vs ε panel: per ε, (mean, min, max) ASR over the model's engines."""

    model: str
    white_box: bool
    engines: int
    points: dict[float, tuple[float, float, float]]


@dataclass(frozen=True)
class EpsPanel:
    """The replays of one (norm, method, source): one curve per target model, white-box first."""

    norm: str
    method: str
    source: str
    eps: tuple[float, ...]
    curves: tuple[EpsCurve, ...]

    @property
    def title(self) -> str:
        return f"{self.method}{' L2' if self.norm == 'l2' else ''} @{self.source}"


def _is_l2(norm: Any) -> bool:
    return str(norm or "").lower() in ("l2", "2")




def source_models(source: str) -> set[str]:
    """The models a perturbation was crafted on: `a+b~twin` (an ensemble, as a twin) → {a, b}."""
    return {part for part in source.split("~", 1)[0].split("+") if part}


def model_order(data: ReportData) -> list[str]:
    """Every target model: in the engines table's order, then in the transfer table's."""
    engines = [str(row.get("engine")) for row in (*data.engines, *data.transfer) if not is_missing(row.get("engine"))]
    return list(dict.fromkeys(model_of(engine) for engine in engines))


def asr_eps_panels(data: ReportData) -> list[EpsPanel]:
    """Every (norm, method, source) replayed at two or more ε values, in first-seen order.

    Each target model's curve averages the ASR of its engines at each ε (min and max kept for the
    band); the source's own models (white-box) come first.
    """
    cells: dict[tuple[str, str, str], dict[str, dict[float, dict[str, float]]]] = {}
    for row in data.transfer:
        eps, asr = finite_number(row.get("eps")), finite_number(row.get("asr"))
        if eps is None or asr is None or is_missing(row.get("engine")):
            continue
        key = ("l2" if _is_l2(row.get("norm")) else "linf", str(row.get("method")), str(row.get("source")))
        engine = str(row["engine"])
        cells.setdefault(key, {}).setdefault(model_of(engine), {}).setdefault(eps, {})[engine] = asr
    order = {model: index for index, model in enumerate(model_order(data))}
    panels = []
    for (norm, method, source), models in cells.items():
        eps_values = tuple(sorted({eps for per_eps in models.values() for eps in per_eps}))
        if len(eps_values) < 2:
            continue
        own = source_models(source)
        curves = [
            EpsCurve(
                model=model,
                white_box=model in own,
                engines=len({engine for by_engine in per_eps.values() for engine in by_engine}),
                points={
                    eps: (statistics.fmean(v.values()), min(v.values()), max(v.values()))
                    for eps, v in sorted(per_eps.items())
                },
            )
            for model, per_eps in models.items()
        ]
        curves.sort(key=lambda curve: (not curve.white_box, order.get(curve.model, len(order))))
        panels.append(EpsPanel(norm, method, source, eps_values, tuple(curves)))
    return panels


def shown_eps_panels(panels: Sequence[EpsPanel]) -> list[EpsPanel]:
    """The MAX_EPS_PANELS panels with the most ε values (first-seen order among ties and in the result)."""
    ranked = sorted(range(len(panels)), key=lambda i: -len(panels[i].eps))[:MAX_EPS_PANELS]
    return [panels[i] for i in sorted(ranked)]


def _asr_vs_eps_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    panels = asr_eps_panels(data)
    columns = sorted({(panel.norm, eps) for panel in panels for eps in panel.eps})
    headers = ["Method", "Crafted on", "Target model", "Kind", "Engines"]
    headers += ["ε = " + ("L2 " if norm == "l2" else "") + eps_label(eps, norm) for norm, eps in columns]
    rows = []
    for panel in panels:
        for curve in panel.curves:
            cells = [
                percent(curve.points[eps][0]) if norm == panel.norm and eps in curve.points else MISSING
                for norm, eps in columns
            ]
            kind = "white-box" if curve.white_box else "transfer"
            rows.append([compact_floats(panel.method), panel.source, curve.model, kind, str(curve.engines), *cells])
    return headers, rows


def latency_groups(data: ReportData) -> dict[str, list[tuple[str, list[float]]]]:
    """Per availability engine, its passes (clean first) with their latency samples in ms."""
    groups: dict[str, list[tuple[str, list[float]]]] = {}
    for row in data.availability:
        samples = row.get("latency_samples_ms")
        if not samples or not isinstance(samples, list):
            continue
        values = [float(v) for v in samples if not is_missing(v)]
        if not values:
            continue
        passes = groups.setdefault(str(row.get("engine")), [])
        label = str(row.get("pass") or "?")
        taken = [name for name, _ in passes]
        if label in taken:
            label = f"{label} #{taken.count(label) + 1}"
        passes.append((label, values))
    for passes in groups.values():
        passes.sort(key=lambda item: item[0] != "clean")
    return groups


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _latency_distribution_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    headers = ["Engine", "Pass", "Samples", "Median (ms)", "p10 (ms)", "p90 (ms)", "Mean (ms)", "Max (ms)"]
    rows = []
    for engine, passes in latency_groups(data).items():
        for label, values in passes:
            rows.append(
                [
                    engine,
                    label,
                    str(len(values)),
                    ms(_quantile(values, 0.5)),
                    ms(_quantile(values, 0.1)),
                    ms(_quantile(values, 0.9)),
                    ms(statistics.fmean(values)),
                    ms(max(values)),
                ]
            )
    return headers, rows
