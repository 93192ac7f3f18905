"""AutoAttack in a study: crafted on the reference model and on the int8 twin, replayed on every engine,
and the report's robustness-of-record table (one row per engine, with the per-attack breakdown)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgeattack.experiments.loading import validate_config
from edgeattack.experiments.report_data import report_data, write_store_report
from edgeattack.experiments.runner import run_experiment
from edgeattack.experiments.store import ExperimentStore
from edgeattack.report.robustness import autoattack_rows

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

N = 6
STUDY: dict[str, Any] = {
    "name": "aa",
    "data": {"limit": N, "fit_limit": 8, "calib_images": 16},
    "models": ["vit_tiny_digits"],
    "engines": [{"name": "fp32"}, {"name": "int8", "precision": "int8"}],
    "whitebox": [
        {
            "name": "aa",
            "method": "autoattack",
            "eps": ["2/255"],
            "steps": 2,
            "params": {"n_queries": 10, "n_target_classes": 1},
            "sources": ["model", "twin:int8"],
        }
    ],
    "metrics": {"latency_seconds": 0, "latency_runs": 1, "memory": False},
    "executor": {"threads": 1},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aa-study")
    summary = run_experiment(validate_config(STUDY), out)
    assert summary.ok, summary.describe()
    return out


def test_both_crafts_keep_the_breakdown_and_every_engine_replays_it(store: Path) -> None:
    with ExperimentStore(store) as db:
        for cell in ("craft/aa-2_255@vit_tiny_digits", "craft/aa-2_255@vit_tiny_digits~int8"):
            summary = db.get(cell).result["summary"]
            assert sum(summary["broken_count"].values()) == N
        for engine in ("fp32", "int8"):
            items = db.get(f"replay/vit_tiny_digits/{engine}").result["perturbations"]
            assert len(items) == 2
            for item in items:
                breakdown = item["breakdown"]
                assert breakdown["images"] == N
                assert breakdown["engine_robust_acc"] == pytest.approx(item["metrics"]["adv_acc"])


def test_report_has_one_autoattack_row_per_engine(store: Path, tmp_path: Path) -> None:
    data = report_data(store)
    headers, rows = autoattack_rows(data)
    assert [row[0] for row in rows] == ["vit_tiny_digits/fp32", "vit_tiny_digits/int8"]
    assert "Robust acc. crafted on reference (%)" in headers and "Robust acc. crafted on twin (%)" in headers
    for row in rows:
        cells = dict(zip(headers, row, strict=True))
        assert cells["Twin of"] == "int8" and cells["Images"] == str(N)
        for side in ("reference", "twin"):
            assert 0.0 <= float(cells[f"Robust acc. crafted on {side} (%)"]) <= 100.0
            assert "apgd-ce" in cells[f"Misclassified here / broken on source, per attack ({side})"]
    fp32 = dict(zip(headers, rows[0], strict=True))
    # the fp32 engine is the reference model: what broke the model breaks it, and nothing more
    assert fp32["Robust on source, broken here (reference)"] == "0"
    assert fp32["Broken on source, robust here (reference)"] == "0"
    files = write_store_report(store, tmp_path / "report.html", markdown_path=tmp_path / "report.md")
    for text in (files.html.read_text(), files.markdown.read_text()):
        assert "Robustness of record (AutoAttack)" in text and "Robust acc. crafted on twin" in text
