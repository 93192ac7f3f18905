"""The report's tables as text: which columns, in which order, with which units and formatting.

`table_rows` is shared by the HTML and Markdown renderers, so both show the same numbers. Rates
(fractions in [0, 1]) are shown as percentages under a `(%)` header, times in ms with two
decimals, ε as `n/255` for L∞ budgets. A missing value (None, NaN) is shown as `–`.

`write_tables` exports the raw rows (not the formatted text) as `<table>.csv` and `<table>.json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json
from edgeattack.report.data import (
    ReportData,
    compact_floats,
    eps_label,
    is_missing,
    model_of,
    perturbation_label,
)

__all__ = [
    "COLUMNS",
    "DERIVED_TABLES",
    "FOLD_ROWS",
    "MAX_EPS_PANELS",
    "MISSING",
    "Column",
    "EpsCurve",
    "EpsPanel",
    "asr_eps_panels",
    "block_note",
    "is_numeric_text",
    "latency_groups",
    "meta_items",
    "model_order",
    "shown_eps_panels",
    "source_models",
    "table_rows",
    "transfer_matrix",
    "write_tables",
]

MISSING = "–"
FOLD_ROWS = 40
"""A table with a `Block.summary` and more rows than this is folded away in the HTML and Markdown."""
MAX_EPS_PANELS = 8
"""The ASR vs ε figure draws at most this many (method, source) panels: those with the most ε values."""

_NUMERIC = re.compile(r"^[-+−]?\d[\d.,]*( \d[\d.,]*)*\s?(%|×|/255)?$")

Formatter = Callable[[Any], str]


def _guard(fmt: Formatter) -> Formatter:
    """`fmt` with missing values shown as MISSING and values it cannot format shown as text."""

    def guarded(value: Any) -> str:
        if is_missing(value):
            return MISSING
        if isinstance(value, bool):
            return "yes" if value else "no"
        try:
            return fmt(value)
        except (TypeError, ValueError, OverflowError):
            return str(value)

    return guarded


text = _guard(str)
label = _guard(lambda v: compact_floats(str(v)))
percent = _guard(lambda v: f"{float(v) * 100:.1f}")
ms = _guard(lambda v: f"{float(v):.2f}")
fixed1 = _guard(lambda v: f"{float(v):.1f}")
fixed2 = _guard(lambda v: f"{float(v):.2f}")
times = _guard(lambda v: f"{float(v):.2f}×")
general = _guard(lambda v: f"{float(v):.4g}")
integer = _guard(lambda v: f"{int(v):d}" if float(v).is_integer() else f"{float(v):.1f}")
milli = _guard(lambda v: f"{float(v) * 1e3:.3g}")
per_255 = _guard(lambda v: f"{float(v) * 255:.2f}")
percent_list = _guard(lambda v: " ".join(f"{float(x) * 100:.0f}" for x in v) if v else MISSING)
providers = _guard(lambda v: ", ".join(p.strip().removesuffix("ExecutionProvider") for p in str(v).split(",")))


@dataclass(frozen=True)
class Column:
    """One shown column: `key` of the row (or a `value` computed from it), its header and formatter."""

    key: str
    header: str
    fmt: Formatter = text
    value: Callable[[Mapping[str, Any]], Any] | None = None

    def cell(self, row: Mapping[str, Any]) -> str:
        return self.fmt(self.value(row) if self.value is not None else row.get(self.key))


def _eps(row: Mapping[str, Any]) -> str:
    return eps_label(row.get("eps"), row.get("norm"))


def _grid_values(row: Mapping[str, Any]) -> list[float]:
    grid = row.get("grid") or []
    try:
        return [float(v) for line in grid for v in line if not is_missing(v)]
    except TypeError:
        return []


def _grid_stat(stat: Callable[[list[float]], float]) -> Callable[[Mapping[str, Any]], Any]:
    def value(row: Mapping[str, Any]) -> Any:
        values = _grid_values(row)
        return stat(values) if values else None

    return value


def _mean_depth(row: Mapping[str, Any]) -> Any:
    if not is_missing(row.get("mean_depth")):
        return row["mean_depth"]
    return _grid_stat(statistics.fmean)(row)


def _grid_shape(row: Mapping[str, Any]) -> str:
    grid = row.get("grid") or []
    if not grid or not isinstance(grid, list) or not isinstance(grid[0], list):
        return MISSING
    return f"{len(grid)}×{len(grid[0])}"


COLUMNS: dict[str, tuple[Column, ...]] = {
    "engines": (
        Column("engine", "Engine"),
        Column("model", "Model"),
        Column("family", "Family"),
        Column("precision", "Precision"),
        Column("backend", "Backend"),
        Column("size_mb", "Size (MB)", fixed2),
        Column("params_m", "Params (M)", fixed2),
        Column("gflops", "GFLOPs", fixed2),
        Column("clean_acc", "Clean acc. (%)", percent),
        Column("n_images", "Images", integer),
        Column("latency_median_ms", "Latency median (ms)", ms),
        Column("latency_p90_ms", "Latency p90 (ms)", ms),
        Column("throughput_ips", "Throughput (img/s)", fixed1),
        Column("batch_size", "Batch", integer),
        Column("providers", "Providers", providers),
    ),
    "transfer": (
        Column("artifact", "Artifact", label),
        Column("method", "Method", label),
        Column("norm", "Norm"),
        Column("eps", "ε", value=_eps),
        Column("source", "Crafted on"),
        Column("engine", "Replayed on"),
        Column("asr", "ASR (%)", percent),
        Column("adv_acc", "Adv. acc. (%)", percent),
        Column("fooling_rate", "Fooling rate (%)", percent),
        Column("images", "Images", integer),
    ),
    "blackbox": (
        Column("engine", "Engine"),
        Column("attack", "Attack", label),
        Column("method", "Method", label),
        Column("norm", "Norm"),
        Column("eps", "ε", value=_eps),
        Column("budget", "Budget (queries)", integer),
        Column("asr", "ASR (%)", percent),
        Column("success_within_budget", "Success within budget (%)", percent),
        Column("queries_median", "Queries median", fixed1),
        Column("queries_mean", "Queries mean", fixed1),
        Column("l2_median", "L2 median", general),
        Column("linf_median", "L∞ median (/255)", per_255),
    ),
    "availability": (
        Column("engine", "Engine"),
        Column("mechanism", "Mechanism"),
        Column("pass", "Pass", label),
        Column("method", "Method", label),
        Column("variant", "Variant", label),
        Column("eps", "ε", value=_eps),
        Column("accuracy", "Accuracy (%)", percent),
        Column("prediction_kept", "Pred. kept (%)", percent),
        Column("tur", "TUR (%)", percent),
        Column("tur_per_block", "TUR per block (%)", percent_list),
        Column("gflops", "GFLOPs", fixed2),
        Column("latency_median_ms", "Latency median (ms)", ms),
        Column("latency_ratio", "Latency ratio", times),
        Column("gflops_ratio", "GFLOPs ratio", times),
        Column("tur_gap_closed", "TUR gap closed (%)", percent),
        Column("energy_j_per_image", "Energy (mJ/image)", milli),
        Column("energy_meter", "Energy meter"),
    ),
    "token_depth": (
        Column("model", "Model"),
        Column("pass", "Pass", label),
        Column("depth", "Depth (blocks)", integer),
        Column("images", "Images", integer),
        Column("mean_depth", "Mean blocks reached", fixed2, value=_mean_depth),
        Column("min_depth", "Min (blocks)", fixed2, value=_grid_stat(min)),
        Column("max_depth", "Max (blocks)", fixed2, value=_grid_stat(max)),
        Column("tur", "TUR (%)", percent),
        Column("grid", "Grid (tokens)", value=_grid_shape),
    ),
    "failures": (
        Column("cell", "Cell"),
        Column("kind", "Kind"),
        Column("status", "Status"),
        Column("error", "Error"),
    ),
}

DERIVED_TABLES = ("transfer_matrix", "asr_vs_eps", "latency_distribution")


def is_numeric_text(text: str) -> bool:
    """A formatted cell that holds a number (or numbers, a ratio, an ε): right-aligned by the renderers."""
    return bool(_NUMERIC.match(text))


def table_rows(data: ReportData, name: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of formatted cells of table `name` (a table of ReportData, or a derived one).

    Derived tables: `transfer_matrix` (ASR per perturbation × engine, the numbers of the heatmap),
    `asr_vs_eps` (mean ASR per ε and target model, the numbers of the ASR vs ε panels) and
    `latency_distribution` (summary of the availability passes' latency samples).
    """
    if name == "transfer_matrix":
        return _transfer_matrix_rows(data)
    if name == "asr_vs_eps":
        return _asr_vs_eps_rows(data)
    if name == "latency_distribution":
        return _latency_distribution_rows(data)
    rows = data.table(name)
    columns = COLUMNS[name]
    if name == "failures" and not any("status" in row for row in rows):
        columns = tuple(c for c in columns if c.key != "status")
    return [c.header for c in columns], [[c.cell(row) for c in columns] for row in rows]


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


def _number(value: Any) -> float | None:
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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
        eps, asr = _number(row.get("eps")), _number(row.get("asr"))
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


def block_note(data: ReportData, name: str) -> str:
    """A sentence to add to the caption of block `name` for this data ('' when none)."""
    if name != "asr_vs_eps":
        return ""
    panels = asr_eps_panels(data)
    left_out = len(panels) - len(shown_eps_panels(panels))
    if left_out <= 0:
        return ""
    return (
        f"{left_out} of {len(panels)} method/source panels are left out (those with the fewest ε values); "
        "the table below has them all."
    )


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


def meta_items(data: ReportData) -> list[tuple[str, str]]:
    """The report header: (label, text) per meta entry, in the meta's order."""
    items = []
    for key, value in data.meta.items():
        items.append((str(key).replace("_", " "), _meta_text(str(key), value)))
    return items


def _meta_text(key: str, value: Any) -> str:
    if is_missing(value):
        return MISSING
    if key == "wall_s" and isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes, seconds = divmod(float(value), 60.0)
        return f"{float(value):.1f} s" + (f" ({int(minutes)} min {seconds:.0f} s)" if minutes >= 1 else "")
    if isinstance(value, Mapping):
        return " · ".join(f"{k} {_meta_text(str(k), v)}" for k, v in value.items()) or MISSING
    if isinstance(value, (list, tuple)):
        return ", ".join(_meta_text(key, v) for v in value) or MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order."""
    keys: dict[str, None] = {}
    for row in rows:
        for key in row:
            keys.setdefault(str(key), None)
    return list(keys)


def _json_safe(value: Any) -> Any:
    """The value with NaN/inf replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, list, tuple, Mapping)):
        return json.dumps(value)
    return str(value)


def write_tables(data: ReportData, directory: str | Path) -> list[Path]:
    """Write `<table>.csv` and `<table>.json` of every non-empty table into `directory`; the paths written.

    The JSON holds the raw rows (NaN written as null); the CSV one column per key, lists and
    objects JSON-encoded in their cell, None as an empty cell.
    """
    target = Path(directory)
    written: list[Path] = []
    for name in data.TABLES:
        rows = [_json_safe(dict(row)) for row in data.table(name)]
        if not rows:
            continue
        written.append(atomic_write_json(target / f"{name}.json", rows))
        keys = _columns_of(rows)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(keys)
        for row in rows:
            writer.writerow([_csv_cell(row.get(key)) for key in keys])
        written.append(atomic_write_bytes(target / f"{name}.csv", buffer.getvalue().encode("utf-8")))
    return written
