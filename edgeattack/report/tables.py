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
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json
from edgeattack.report.data import ReportData, eps_label, is_missing
from edgeattack.report.formatting import (
    MISSING,
    Formatter,
    fixed1,
    fixed2,
    general,
    integer,
    is_numeric_text,
    label,
    milli,
    ms,
    per_255,
    percent,
    percent_list,
    providers,
    text,
    times,
)
from edgeattack.report.pivots import (
    MAX_EPS_PANELS,
    EpsCurve,
    EpsPanel,
    _asr_vs_eps_rows,
    _latency_distribution_rows,
    _transfer_matrix_rows,
    asr_eps_panels,
    latency_groups,
    model_order,
    shown_eps_panels,
    source_models,
    transfer_matrix,
)
from edgeattack.report.robustness import autoattack_rows

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
    "table_note",
    "table_rows",
    "transfer_matrix",
    "write_tables",
]

FOLD_ROWS = 40
"""A table with a `Block.summary` and more rows than this is folded away in the HTML and Markdown."""


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


def _asr(row: Mapping[str, Any]) -> str:
    """The ASR as a percentage, or why there is none: no image correct when clean leaves it undefined."""
    if not is_missing(row.get("asr")):
        return percent(row["asr"])
    if row.get("n_clean_correct") == 0:
        return "undefined: no clean-correct image"
    return MISSING


def _attacked(row: Mapping[str, Any]) -> str:
    """`attacked/total`: the images a black-box attack ran on (clean-correct) out of those it was given."""
    if is_missing(row.get("images_attacked")) or is_missing(row.get("images")):
        return MISSING
    return f"{int(row['images_attacked'])}/{int(row['images'])}"


def _energy_meter(row: Mapping[str, Any]) -> Any:
    """The meter that measured the row's energy, or why nothing did (never the estimate's label)."""
    if not is_missing(row.get("energy_measured_j_per_image")):
        return row.get("energy_meter")
    return "none" if row.get("energy_not_measured_reason") else None


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
        Column("asr", "ASR (%)", value=_asr),
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
        Column("attacked", "Attacked / images", value=_attacked),
        Column("asr", "ASR (%)", value=_asr),
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
        Column("energy_measured_j_per_image", "Energy measured (mJ/image)", milli),
        Column("energy_meter", "Energy meter", value=_energy_meter),
        Column("energy_estimate_j_per_image", "Energy estimate (mJ/image, model, not measured)", milli),
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


DERIVED_TABLES = ("transfer_matrix", "asr_vs_eps", "latency_distribution", "autoattack")


def table_rows(data: ReportData, name: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of formatted cells of table `name` (a table of ReportData, or a derived one).

    Derived tables: `transfer_matrix` (ASR per perturbation × engine, the numbers of the heatmap),
    `asr_vs_eps` (mean ASR per ε and target model, the numbers of the ASR vs ε panels) and
    `latency_distribution` (summary of the availability passes' latency samples) and `autoattack`
    (robust accuracy per engine under AutoAttack crafted on the model vs its int8 twin, `robustness`).
    """
    if name == "transfer_matrix":
        return _transfer_matrix_rows(data)
    if name == "asr_vs_eps":
        return _asr_vs_eps_rows(data)
    if name == "latency_distribution":
        return _latency_distribution_rows(data)
    if name == "autoattack":
        return autoattack_rows(data)
    rows = data.table(name)
    columns = COLUMNS[name]
    if name == "failures" and not any("status" in row for row in rows):
        columns = tuple(c for c in columns if c.key != "status")
    return [c.header for c in columns], [[c.cell(row) for c in columns] for row in rows]


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


def table_note(data: ReportData, name: str) -> str:
    """A sentence to add to the caption of table `name` ('' when none): for availability, what its energy columns are."""
    return _energy_note(data) if name == "availability" else ""


def _energy_note(data: ReportData) -> str:
    """Why energy was not measured (once per distinct reason), and what the estimate is."""
    rows = data.table("availability")
    reasons = list(dict.fromkeys(str(r["energy_not_measured_reason"]) for r in rows if r.get("energy_not_measured_reason")))
    methods = list(dict.fromkeys(str(r["energy_estimate_method"]) for r in rows if r.get("energy_estimate_method")))
    parts = [f"Energy not measured: {'; '.join(reasons)}." if reasons else ""]
    parts.append(f"Energy estimate: {methods[0]}." if methods else "")
    return " ".join(p for p in parts if p)


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
