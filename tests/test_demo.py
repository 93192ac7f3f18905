"""The demo end to end (small settings): engines, artifacts, results, summary and transfer matrix."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.results import load


def test_demo_runs_the_whole_pipeline(tmp_path: Path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(out), "--limit", "24", "--latency-seconds", "0.05", "--pgd-steps", "2",
         "--uap-epochs", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    engines = ["torch-fp32", "onnx-fp32", "onnx-int8-qdq", "onnx-int8-dynamic"]
    assert list(summary["clean"]) == engines
    assert set(summary["transfer_matrix"]) == {"pgd@fp32", "pgd-weak@fp32", "uap@fp32", "pgd@int8-twin", "pgd-weak@int8-twin", "uap@int8-twin"}
    for row in summary["transfer_matrix"].values():
        assert list(row) == engines and all(0.0 <= cell["fooling_rate"] <= 1.0 for cell in row.values())
    # PGD crafted on the fp32 model fools the fp32 engines on most correctly classified images
    assert summary["transfer_matrix"]["pgd@fp32"]["onnx-fp32"]["asr"] > 0.5
    assert summary["parity"]["onnx-fp32"]["top1_agreement"] == 1.0
    assert summary["twin_agreement"]["top1_agreement"] >= 0.95
    for path in summary["results"].values():
        assert load(path).dataset.n_images == 24
    markdown = (out / "summary.md").read_text()
    assert "Transfer matrix" in markdown and "asr" in markdown
    assert sorted(p.name for p in (out / "engines").glob("*.onnx")) == [
        "vit_tiny_digits-fp32.onnx", "vit_tiny_digits-int8-dynamic.onnx", "vit_tiny_digits-int8-qdq.onnx"
    ]
