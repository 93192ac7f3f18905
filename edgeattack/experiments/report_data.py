"""The report's tables, read from an experiment store (numpy-free, torch-free).

Only the cells of the store's latest plan are reported (a cell dropped from the config stays in
the store but is not shown); a cell that is not finished with its current inputs is left out of
the numbers, and failed or skipped cells are listed with their errors, as is every artifact a
finished cell could not replay because its craft failed or was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeattack.experiments.plan import NOT_SELECTED
from edgeattack.experiments.store import CellRecord, ExperimentStore, open_store_for_report


def engine_label(model: str, engine: str) -> str:
    return f"{model}/{engine}"


def _get(doc: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


class _Tables:
    def __init__(self, records: list[CellRecord]) -> None:
        self.records = records
        self.done = {r.id: r for r in records if r.status == "done" and r.result is not None}

    def of(self, kind: str) -> list[CellRecord]:
        return [r for r in self.done.values() if r.kind == kind]

    def export_facts(self, model: str, engine: str) -> dict[str, Any]:
        record = self.done.get(f"export/{model}/{engine}")
        return record.result if record and record.result else {}

    def craft(self, cell_id: str) -> dict[str, Any]:
        record = self.done.get(cell_id)
        return record.result if record and record.result else {}

    def engines(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.of("replay"):
            model, engine = record.params["model"]["name"], record.params["engine"]["name"]
            facts, result = self.export_facts(model, engine), record.result or {}
            latency = result.get("latency") or {}
            rows.append(
                {
                    "engine": engine_label(model, engine),
                    "model": model,
                    "family": facts.get("family"),
                    "precision": facts.get("precision") or record.params["engine"]["precision"],
                    "backend": _get(result, "engine", "backend") or facts.get("backend"),
                    "size_mb": facts.get("size_mb"),
                    "params_m": facts.get("params_m"),
                    "gflops": facts.get("gflops"),
                    "clean_acc": _get(result, "clean", "clean_acc"),
                    "n_images": _get(result, "clean", "n_images"),
                    "latency_median_ms": latency.get("median_ms"),
                    "latency_p90_ms": latency.get("p90_ms"),
                    "throughput_ips": latency.get("throughput_ips"),
                    "batch_size": latency.get("batch_size"),
                    "providers": ",".join(_get(result, "engine", "providers") or []),
                }
            )
        return rows

    def transfer(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.of("replay"):
            result = record.result or {}
            label = engine_label(record.params["model"]["name"], record.params["engine"]["name"])
            for cell_id, item in zip(result.get("artifact_cells", []), result.get("perturbations", []), strict=False):
                craft = self.craft(cell_id)
                rows.append(
                    {
                        "artifact": cell_id.removeprefix("craft/"),
                        "method": craft.get("method") or item.get("method"),
                        "norm": item.get("norm"),
                        "eps": item.get("eps"),
                        "source": craft.get("source") or item.get("crafted_on"),
                        "engine": label,
                        "asr": _get(item, "metrics", "asr"),
                        "n_clean_correct": _get(item, "metrics", "n_clean_correct"),
                        "adv_acc": _get(item, "metrics", "adv_acc"),
                        "fooling_rate": _get(item, "metrics", "fooling_rate"),
                        "images": item.get("images_evaluated"),
                        **({"breakdown": item["breakdown"]} if item.get("breakdown") else {}),
                    }
                )
        return rows

    def blackbox(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.of("blackbox"):
            label = engine_label(record.params["model"]["name"], record.params["engine"]["name"])
            for item in (record.result or {}).get("blackbox", []):
                rows.append(
                    {
                        "engine": label,
                        "attack": item.get("label"),
                        "method": item.get("attack"),
                        "norm": item.get("norm"),
                        "eps": item.get("eps"),
                        "budget": item.get("budget"),
                        "images": item.get("images"),
                        "images_attacked": item.get("images_attacked"),
                        "asr": _get(item, "metrics", "asr"),
                        "n_clean_correct": _get(item, "metrics", "n_clean_correct"),
                        "success_within_budget": item.get("success_within_budget"),
                        "queries_median": _get(item, "queries", "median"),
                        "queries_mean": _get(item, "queries", "mean"),
                        "l2_median": _get(item, "norms", "l2_median"),
                        "linf_median": _get(item, "norms", "linf_median"),
                        "curve": item.get("success_curve") or [],
                    }
                )
        return rows

    def availability(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.of("availability"):
            model, engine = record.params["model"]["name"], record.params["engine"]["name"]
            result = record.result or {}
            cells = [None, *result.get("artifact_cells", [])]
            mechanism = _get(result, "token_sparsity", "mechanism")
            for cell_id, item in zip(cells, result.get("passes", []), strict=False):
                craft = self.craft(cell_id) if cell_id else {}
                energy = item.get("energy") or {}
                rows.append(
                    {
                        "engine": engine_label(model, engine),
                        "model": model,
                        "mechanism": mechanism,
                        "pass": "clean" if cell_id is None else cell_id.removeprefix("craft/"),
                        "method": item.get("method"),
                        "variant": craft.get("variant"),
                        "eps": craft.get("eps"),
                        "accuracy": item.get("accuracy"),
                        "prediction_kept": item.get("prediction_kept"),
                        "tur": item.get("tur"),
                        "tur_per_block": item.get("tur_per_block"),
                        "gflops": item.get("gflops"),
                        "latency_median_ms": _get(item, "latency", "median_ms"),
                        "latency_ratio": _get(item, "ratios", "latency_median"),
                        "gflops_ratio": _get(item, "ratios", "gflops"),
                        "tur_gap_closed": _get(item, "gap_closed", "tur"),
                        **_energy_columns(energy),
                        "latency_samples_ms": item.get("latency_samples_ms"),
                    }
                )
        return rows

    def token_depth(self) -> list[dict[str, Any]]:
        rows = []
        for record in self.of("depth"):
            result = record.result or {}
            for item in result.get("passes", []):
                rows.append(
                    {
                        "model": result.get("model"),
                        "pass": item.get("pass"),
                        "depth": item.get("depth"),
                        "images": item.get("images"),
                        "mean_depth": item.get("mean_depth"),
                        "tur": item.get("tur"),
                        "grid": item.get("grid"),
                    }
                )
        return rows

    def failures(self) -> list[dict[str, Any]]:
        """Failed, skipped and interrupted cells, then every artifact a finished cell could not replay."""
        rows = [
            {"cell": r.id, "kind": r.kind, "status": r.status, "error": r.error or "interrupted while running"}
            for r in self.records
            if r.status in ("failed", "skipped", "running")
        ]
        for record in self.done.values():
            missing = (record.result or {}).get("missing_artifacts") or {}
            for craft, reason in missing.items():
                if reason != NOT_SELECTED:
                    error = f"not replayed: artifact {craft} {reason}"
                    rows.append({"cell": record.id, "kind": record.kind, "status": "not replayed", "error": error})
        return rows


def _energy_columns(energy: dict[str, Any]) -> dict[str, Any]:
    """Measured and estimated energy per image (J), apart: each with its own meter/method, never one for the other.

    A measurement that failed is null with its reason; the meter's name goes only with a measured value.
    """
    measured, estimate = energy.get("measured_mj"), energy.get("estimate_mj")
    return {
        "energy_measured_j_per_image": None if measured is None else float(measured) / 1e3,
        "energy_meter": energy.get("meter") if measured is not None else None,
        "energy_measured_basis": energy.get("measured_basis") if measured is not None else None,
        "energy_not_measured_reason": None if measured is not None else energy.get("reason"),
        "energy_estimate_j_per_image": None if estimate is None else float(estimate) / 1e3,
        "energy_estimate_method": energy.get("estimate_method") if estimate is not None else None,
    }


def _runs_wall_s(runs: list[dict[str, Any]]) -> float | None:
    """Wall time of the finished runs together (cell times overlap in a pool, so they are not summed)."""
    from datetime import datetime

    spans = [
        (datetime.fromisoformat(r["finished"]) - datetime.fromisoformat(r["started"])).total_seconds()
        for r in runs
        if r.get("started") and r.get("finished")
    ]
    return sum(spans) if spans else None


def report_data(store_path: str | Path) -> Any:
    """The ReportData of the store at `store_path` (a directory or its store.sqlite)."""
    with open_store_for_report(store_path) as store:
        return _report_data(store)


def _report_data(store: ExperimentStore) -> Any:
    from edgeattack.report import ReportData

    plan = store.get_meta("plan")
    records = store.records(ids=plan) if plan else store.records()
    tables = _Tables(records)
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    runs = store.runs()
    config = store.get_meta("config") or {}
    name = store.get_meta("experiment") or store.directory.name
    return ReportData(
        title=f"edgeattack experiment: {name}",
        meta={
            "experiment": name,
            "store": str(store.directory),
            "created": store.get_meta("created"),
            "cells": counts,
            "planned": len(plan or records),
            "runs": len(runs),
            "last_run": runs[-1] if runs else None,
            "wall_s": _runs_wall_s(runs),
            "dataset": _get(config, "data", "dataset"),
            "eval_split": _get(config, "data", "eval_split"),
            "seed": config.get("seed"),
        },
        engines=tables.engines(),
        transfer=tables.transfer(),
        blackbox=tables.blackbox(),
        availability=tables.availability(),
        token_depth=tables.token_depth(),
        failures=tables.failures(),
    )


def write_store_report(
    store_path: str | Path,
    html_path: str | Path | None = None,
    *,
    markdown_path: str | Path | None = None,
    tables_dir: str | Path | None = None,
) -> Any:
    """Write the store's HTML report (default `<store>/report.html`), its Markdown twin and table exports.

    ConfigError when the store holds no finished cell (nothing to report).
    """
    from edgeattack.experiments.store import resolve_store
    from edgeattack.report import write_report

    directory = resolve_store(store_path)
    html = Path(html_path) if html_path is not None else directory / "report.html"
    data = report_data(directory)
    return write_report(data, html, markdown_path=markdown_path, tables_dir=tables_dir)
