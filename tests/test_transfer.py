"""The transfer matrix across families: every source replayed on every target engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeattack.errors import ModelNotFoundError
from edgeattack.transfer import INT8, TransferConfig, family_models, run_transfer
from edgeattack.zoo import read_manifest


def test_family_selection():
    everything = family_models("all")
    assert everything[:2] == ["vit_tiny_digits", INT8]
    assert set(everything[2:]) == {n for n, e in read_manifest().items() if e.family != "original"}
    assert family_models("vit_tiny_digits, int8-qdq") == ["vit_tiny_digits", INT8]
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        family_models("vit_tiny_digit")


def test_transfer_matrix_over_three_families(tmp_path: Path):
    models = ["vit_tiny_digits", INT8, "dynamicvit_tiny_digits_r07"]
    summary = run_transfer(tmp_path, models, TransferConfig(limit=16, steps=3, eps=8 / 255))
    doc = json.loads((tmp_path / "transfer.json").read_text())
    assert list(doc["transfer_matrix"]) == models
    for row in doc["transfer_matrix"].values():
        assert list(row) == models
        assert all(cell["asr"] is None or 0.0 <= cell["asr"] <= 1.0 for cell in row.values())
    # white-box PGD at 8/255 fools its own model's engine on most images
    for name in models:
        assert doc["transfer_matrix"][name][name]["asr"] > 0.5
    assert summary.markdown_path is not None and "source \\ target" in summary.markdown_path.read_text()
