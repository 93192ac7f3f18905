"""`edgeattack compress`: every method from the shipped teacher, saved and reloaded by zoo name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.zoo import create_model, read_manifest

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("method", "extra", "name"),
    [
        ("dynamicvit", ("--rho", "0.7"), "dynamicvit_tiny_digits_r07"),
        ("distill", (), "deit_tiny_digits_distilled"),
        ("minivit", (), "minivit_tiny_digits"),
        ("sparse24", (), "vit_tiny_digits_sparse24"),
    ],
)
def test_compress_saves_a_model_the_zoo_reloads(tmp_path: Path, method: str, extra: tuple[str, ...], name: str):
    result = invoke("compress", "--method", method, *extra, "--epochs", "1", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    entry = read_manifest(tmp_path)[name]
    assert entry.command.startswith(f"edgeattack compress --method {method}")
    assert 0.0 <= entry.metrics["test_acc"] <= 1.0
    assert json.loads((tmp_path / f"{name}.report.json").read_text())
    reloaded = create_model(name, checkpoint=tmp_path / entry.file)
    assert reloaded.weights_sha256 == entry.sha256
    with torch.no_grad():
        assert reloaded(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_int8_dynamic_needs_no_training(tmp_path: Path):
    result = invoke("compress", "--method", "int8-dynamic", "-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert list(tmp_path.glob("*.pt"))


def test_compress_errors(tmp_path: Path):
    unknown = invoke("compress", "--method", "prune", "-o", tmp_path)
    assert unknown.exit_code == 2 and "unknown compression method" in unknown.output
    no_rate = invoke("compress", "--method", "dynamicvit", "-o", tmp_path)
    assert no_rate.exit_code == 2 and "keep rate" in no_rate.output
    bad_rate = invoke("compress", "--method", "dynamicvit", "--rho", "0.9", "-o", tmp_path)
    assert bad_rate.exit_code == 2 and "0.9" in bad_rate.output


def test_diverging_training_keeps_the_last_good_weights(tmp_path: Path):
    result = invoke("compress", "--method", "sparse24", "--epochs", "1", "--lr", "1e30", "-o", tmp_path)
    assert result.exit_code == 2, result.output
    assert "last good weights" in result.output
    assert list((tmp_path / "diverged").glob("*.last-good.safetensors"))
