"""`edgeattack demo`: `edgeattack run` on the embedded quickstart config, ending with the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.experiments.loading import load_config
from edgeattack.experiments.plan import build_plan
from edgeattack.experiments.store import ExperimentStore


def test_demo_runs_the_quickstart_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    settings = ["--set", "metrics.latency_seconds=0", "--set", "metrics.latency_runs=2", "--set", "data.fit_limit=48"]
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--limit", "24", *settings], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    plan = build_plan(load_config("quickstart"))
    assert f"{len(plan)} cells: {len(plan)} ran" in result.output
    # a short summary: one line per finished cell (no terminal here), the run summary, the report, one note
    lines = result.output.splitlines()
    cell_lines = [line for line in lines if re.match(r"quickstart: (done|failed|skipped) \S+: \d+/\d+ \(\d+ s\)$", line)]
    assert len(cell_lines) == len(plan)
    assert not [line for line in lines if "WARNING:root" in line or "Axis 1 is out-of-range" in line]
    assert not [line for line in lines if line.startswith("warning:")], "the cells' warnings are in the log"
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].endswith(f"full log: {out / 'run.log'}")
    assert len(lines) <= len(plan) + 4, "\n".join(lines)
    log = (out / "run.log").read_text()
    assert " WARNING " in log and "[export/" in log, "third-party and cell warnings are filed, tagged with their cell"
    with ExperimentStore(out) as store:
        records = {r.id: r for r in store.records()}
    assert set(records) == set(plan.cells) and all(r.status == "done" for r in records.values())
    replay = records["replay/vit_tiny_digits/fp32"].result
    assert replay is not None and replay["clean"]["n_images"] == 24
    by_artifact = dict(zip(replay["artifact_cells"], replay["perturbations"], strict=True))
    # PGD at 8/255 crafted on the model fools its own fp32 engine; the int8 twin's transfers back
    assert by_artifact["craft/pgd-8_255@vit_tiny_digits"]["metrics"]["asr"] > 0.8
    assert by_artifact["craft/pgd-int8-8_255@vit_tiny_digits~int8"]["metrics"]["asr"] > 0.5
    html = (out / "report.html").read_text()
    for section in ("Transfer matrix", "ASR vs", "Black-box", "DeSparsify", "Token depth"):
        assert section in html
    transfer = json.loads((out / "tables" / "transfer.json").read_text())
    assert len(transfer) == 20 * 20  # every PGD/UAP perturbation on every engine of every model
    _check_readme_tables(out)
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--limit", "24", *settings], catch_exceptions=False)
    assert again.exit_code == 0 and f"0 ran, {len(plan)} already finished" in again.output
    assert not [line for line in again.output.splitlines() if line.startswith("quickstart: ")], "cached cells print nothing"


def _check_readme_tables(store: Path) -> None:
    """The README's tables come from the store by script; the twin row reads the fp32 engine, as captioned."""
    import importlib.util

    from edgeattack.experiments.report_data import report_data

    script = Path(__file__).resolve().parents[1] / "scripts" / "readme_tables.py"
    spec = importlib.util.spec_from_file_location("readme_tables", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = report_data(store)
    block = module.render(data, 2 / 255, "2/255", "edgeattack demo --limit 24")
    twin_row = next(line for line in block.splitlines() if line.startswith("| original's int8 twin |"))
    expected = next(
        r["asr"] for r in data.transfer
        if r["artifact"] == "pgd-int8-2_255@vit_tiny_digits~int8" and r["engine"] == "vit_tiny_digits/fp32"
    )
    assert twin_row.split("|")[2].strip() == f"{100 * expected:.1f}"
    readme = (script.parents[1] / "README.md").read_text()
    assert module.BEGIN in readme and module.END in readme
