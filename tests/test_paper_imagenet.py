"""The shipped `paper-imagenet` study runs end to end on a tiny ImageNet-style folder, to its report.

The test keeps the shipped config's structure (its models, engines, attacks, sources, black-box
attacks, splits and checkpoint paths) and changes only its scale: three synsets of two 256x256
JPEGs per split, four evaluated images, one PGD step at 8/255, one UAP epoch, small black-box
budgets, no latency runs, and the local executor. DeiT-tiny gets random weights written to the
shipped checkpoint path (`checkpoints/deit_tiny_patch16_224.safetensors`, relative to the working
directory). What runs is chosen with `--only`: every cell of DeiT-tiny on the torch engine and the
three ONNX Runtime engines (export, PGD crafted on the model and on its int8 twin, the UAP,
replays, black-box attacks). Not covered: the other seven models (deit_small/base at 224 on two
CPU cores are too slow for a test; the dry run plans them) and the two TensorRT engines (no GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.experiments.loading import resolve_config_path, validate_config
from edgeattack.experiments.plan import build_plan
from edgeattack.experiments.store import ExperimentStore

SYNSETS = ("n01440764", "n01443537", "n01484850")  # tench, goldfish, great white shark
MODEL = "deit_tiny_patch16_224"
ENGINES = ("torch", "ort-fp32", "ort-int8-dynamic", "ort-int8-qdq")
ONLY = [f"*/{MODEL}/torch*", f"*/{MODEL}/ort-*", f"craft/*@{MODEL}*"]
ONLY_ARGS = [arg for pattern in ONLY for arg in ("--only", pattern)]


def _imagenet(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for synset in SYNSETS:
            folder = root / split / synset
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{synset}_{i}.JPEG", quality=90)
    return root


def _small(doc: dict[str, Any], dataset: Path) -> dict[str, Any]:
    """The shipped study at test scale: same cells' structure, fewer images, steps and queries."""
    doc["data"].update(dataset=str(dataset), limit=4, fit_limit=4, calib_images=4)
    pgd, uap = doc["whitebox"]
    pgd.update(eps=["8/255"], steps=1)
    uap["params"]["epochs"] = 1
    for attack in doc["blackbox"]:
        attack.update(budget=8, limit=2)
    doc["metrics"] = {"latency_seconds": 0, "latency_runs": 1, "memory": False, "batch_size": 4}
    doc["executor"] = {"kind": "local", "threads": 2}
    return doc


def test_paper_imagenet_runs_to_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from edgeattack.zoo.factory import create_model

    monkeypatch.chdir(tmp_path)
    shipped = yaml.safe_load(resolve_config_path("paper-imagenet").read_text())
    dataset = _imagenet(tmp_path / "imagenet")
    doc = _small(yaml.safe_load(yaml.safe_dump(shipped)), dataset)
    config = tmp_path / "paper.yaml"
    config.write_text(yaml.safe_dump(doc))
    full = build_plan(validate_config(doc))
    assert full.counts()["craft"] == 8 * 2 + 8  # PGD on each model and its int8 twin, a UAP on each
    out = tmp_path / "out"

    # without checkpoints: the dry run plans everything and names every missing file at once
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "missing (8)" in result.output and "checkpoints/mini_deit_small_patch16_224.pth does not exist" in result.output
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out), *ONLY_ARGS])
    assert result.exit_code == 2 and "1 input file(s)" in result.output and not out.exists()

    checkpoint = Path(next(m["checkpoint"] for m in shipped["models"] if m["name"] == MODEL))
    checkpoint.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in create_model(MODEL, random_weights=True).net.state_dict().items()}, checkpoint)
    args = ["run", str(config), "-o", str(out), *ONLY_ARGS]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert "0 failed, 0 skipped" in result.output, result.output

    planned = full.restrict(ONLY)
    assert all(MODEL in c and "trt" not in c for c in planned.cells)  # --only brought no other model's cells
    crafts = [f"craft/pgd-8_255@{MODEL}", f"craft/pgd-8_255@{MODEL}~ort-int8-qdq", f"craft/uap-10_255@{MODEL}"]
    with ExperimentStore(out) as store:
        records = {r.id: r for r in store.records()}
    assert set(records) == set(planned.cells) and all(r.status == "done" for r in records.values())
    for engine in ENGINES:
        replay = records[f"replay/{MODEL}/{engine}"].result
        assert replay is not None and replay["clean"]["n_images"] == 4
        replayed = set(replay["artifact_cells"])
        assert set(crafts[:2]) <= replayed  # both transfer directions: model -> int8 and int8 twin -> every engine
        # the UAP is fitted on train and replayed on val; an artifact the replay refuses is named, not fatal
        assert crafts[2] in replayed or replay["missing_artifacts"][crafts[2]].startswith("cannot be replayed")
        for attack in ("spatial", "salt_and_pepper", "blended_noise"):
            blackbox = records[f"blackbox/{MODEL}/{engine}/{attack}"].result
            assert blackbox is not None and blackbox["blackbox"][0]["images"] == 2
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    markdown = (out / "report.md").read_text()
    assert f"{MODEL}/ort-int8-qdq" in markdown and "pgd-8_255" in markdown
