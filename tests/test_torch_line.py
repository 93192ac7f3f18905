"""The torch line (DESIGN.md): the evaluation side imports and runs where torch cannot be imported.

A child Python process gets a directory at the front of its PYTHONPATH whose `torch`, `timm`,
`tensorrt` (and the other torch-extra packages a device install lacks) raise ImportError on
import. `run_without_torch` is the helper to run anything in such a process, e.g.

    run_without_torch(["-m", "edgeattack.cli.app", "--help"], blocker_dir)
    run_without_torch(["-c", "import edgeattack.evaluate"], blocker_dir)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Packages a device install (`pip install edgeattack[cpu]`) does not have: the `torch` extra and TensorRT.
BLOCKED_MODULES = ("torch", "torchvision", "timm", "tensorrt", "safetensors", "onnx", "onnxscript")

TORCH_FREE_MODULES = (
    "edgeattack",
    "edgeattack.engines",
    "edgeattack.engines.onnxruntime_engine",
    "edgeattack.metrics",
    "edgeattack.evaluate",
    "edgeattack.results",
    "edgeattack.artifacts",
    "edgeattack.data",
    "edgeattack.attacks",
    "edgeattack.attacks.blackbox",
    "edgeattack.attacks.blackbox.spatial",
    "edgeattack.attacks.blackbox.noise",
    "edgeattack.attacks.blackbox.hopskipjump",
    "edgeattack.attacks.blackbox.square",
    "edgeattack.blackbox_transfer",
    "edgeattack.metrics.tokens",
    "edgeattack.availability",
    "edgeattack.cli.availability",
    "edgeattack.bundle",
    "edgeattack.doctor",
    "edgeattack.cli.doctor",
    "edgeattack.engines.tensorrt_engine",
    "edgeattack.engines.cuda_buffers",
    "edgeattack.engines.tensorrt_plan",
    "edgeattack.engines.tensorrt_support",
    "edgeattack.export.tensorrt_build",
    "edgeattack.export.tensorrt_source",
    "edgeattack.export.tensorrt_network",
    "edgeattack.metrics.energy",
    "edgeattack.metrics.energy.select",
    "edgeattack.cli.bundle",
    "edgeattack.export",
    "edgeattack.experiments.config",
    "edgeattack.experiments.loading",
    "edgeattack.experiments.plan",
    "edgeattack.experiments.store",
    "edgeattack.experiments.runner",
    "edgeattack.experiments.cells",
    "edgeattack.experiments.executors",
    "edgeattack.experiments.process_executor",
    "edgeattack.experiments.ray_executor",
    "edgeattack.experiments.report_data",
    "edgeattack.report",
    "edgeattack.cli.run",
)


def make_blocker_dir(root: Path, modules: tuple[str, ...] = BLOCKED_MODULES) -> Path:
    """A directory of packages named `modules` whose import raises ImportError; returns it."""
    root.mkdir(parents=True, exist_ok=True)
    for name in modules:
        package = root / name
        package.mkdir(exist_ok=True)
        (package / "__init__.py").write_text(
            f'raise ImportError("{name} is blocked: this process checks the torch line")\n'
        )
    return root


def run_without_torch(
    args: list[str],
    blocker_dir: Path,
    *,
    cwd: Path | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python *args` with the blocked packages shadowing the real ones; output captured as text.

    The repository root follows the blocker directory on PYTHONPATH, so the checkout is imported
    even where it is not pip-installed.
    """
    child_env = dict(os.environ)
    child_env.update(env or {})
    paths = [str(blocker_dir), str(REPO_ROOT)]
    if child_env.get("PYTHONPATH"):
        paths.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=str(cwd or blocker_dir.parent),
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python_without_torch(code: str, blocker_dir: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet without torch; fails the test with the child's output if it exits non-zero."""
    completed = run_without_torch(["-c", textwrap.dedent(code)], blocker_dir, **kwargs)
    assert completed.returncode == 0, f"child failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.fixture(scope="module")
def blocker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_blocker_dir(tmp_path_factory.mktemp("torchless") / "blocked")


def test_blocker_really_blocks(blocker_dir):
    completed = run_without_torch(["-c", "import torch"], blocker_dir)
    assert completed.returncode != 0 and "blocked" in completed.stderr


def test_evaluation_side_imports_without_torch(blocker_dir):
    code = f"""
        import importlib, sys
        for name in {TORCH_FREE_MODULES!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in {BLOCKED_MODULES!r} if m in sys.modules)
        assert not loaded, f"imported: {{loaded}}"
        print("ok")
    """
    assert run_python_without_torch(code, blocker_dir).stdout.strip() == "ok"


def _export_onnx(path: Path) -> Path:
    """vit_tiny_digits as ONNX with edgeattack metadata, exported by this (torch-having) process."""
    pytest.importorskip("torch")
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    export_onnx(create_model("vit_tiny_digits"), path)
    return path


def test_evaluate_end_to_end_without_torch(blocker_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
    from edgeattack.data import load_dataset

    onnx_path = _export_onnx(tmp_path / "vit_tiny_digits.onnx")
    dataset = load_dataset("digits", split="test", limit=12)
    meta = ArtifactMeta(
        kind="universal",
        method="random",
        norm="linf",
        eps=8 / 255,
        input_size=(3, 32, 32),
        dataset="digits",
        split="train",
        seed=0,
    )
    delta = np.random.default_rng(0).uniform(-8 / 255, 8 / 255, (1, 3, 32, 32)).astype(np.float32)
    artifact = PerturbationArtifact(delta=delta, meta=meta).save(tmp_path / "uap.npz")
    out = tmp_path / "result.json"

    code = f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        from edgeattack.data import load_dataset
        from edgeattack.evaluate import evaluate
        from edgeattack.results import load

        dataset = load_dataset("digits", split="test", limit=12)
        result = evaluate({str(onnx_path)!r}, dataset, [{str(artifact)!r}], batch_size=4,
                          latency_runs=2, latency_seconds=0.01)
        path = result.save({str(out)!r})
        assert load(path).to_dict() == result.to_dict()
        assert "torch" not in sys.modules, "evaluate imported torch"
        print(path)
    """
    completed = run_python_without_torch(code, blocker_dir)
    assert Path(completed.stdout.strip()) == out
    doc = json.loads(out.read_text())
    assert doc["dataset"]["n_images"] == len(dataset) == 12
    assert doc["perturbations"][0]["images_evaluated"] == 12
    assert doc["latency"]["batch_size"] == 4
    assert doc["engine"]["backend"] == "onnxruntime"


def test_blackbox_attacks_and_transfer_run_without_torch(blocker_dir, tmp_path):
    """`edgeattack evaluate` with black-box attacks on two ONNX engines, in a process without torch."""
    pytest.importorskip("onnxruntime")
    engine = _export_onnx(tmp_path / "vit_a.onnx")
    other = tmp_path / "vit_b.onnx"
    other.write_bytes(engine.read_bytes())
    args = ["-m", "edgeattack.cli.app", "evaluate", "-e", str(engine), "-e", str(other), "--limit", "6",
            "-B", "spatial", "-B", "square:eps=0.1", "--budget", "40", "-o", str(tmp_path / "out")]
    completed = run_without_torch(args, blocker_dir, timeout=300)
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    doc = json.loads(next((tmp_path / "out").glob("transfer-blackbox-*.json")).read_text())
    assert [m["attack"] for m in doc["matrices"]] == ["spatial", "square:eps=0.1"]
    attacked = doc["results"][0]["blackbox"]
    assert all(b["queries"]["max"] <= 40 for b in attacked)


def test_experiment_cells_on_an_onnx_engine_run_without_torch(blocker_dir, tmp_path, onnx_engines):
    """Replay and black-box cells of an ONNX engine (what a board joined as a Ray node runs) need no torch."""
    from edgeattack.experiments.loading import validate_config
    from edgeattack.experiments.plan import build_plan

    config = validate_config(
        {
            "name": "board",
            "data": {"limit": 8},
            "models": ["vit_tiny_digits"],
            "engines": [{"name": "fp32"}],
            "blackbox": [{"spec": "salt_and_pepper", "budget": 30, "limit": 2}],
            "metrics": {"latency_seconds": 0, "latency_runs": 1},
        }
    )
    plan = build_plan(config)
    cells = {k: plan.cells[k] for k in ("replay/vit_tiny_digits/fp32", "blackbox/vit_tiny_digits/fp32/salt_and_pepper")}
    tasks = [
        {"id": c.id, "kind": c.kind, "params": c.params, "inputs": {"engine": str(onnx_engines["fp32"])},
         "workdir": str(tmp_path / c.kind), "resources": c.resources}
        for c in cells.values()
    ]
    for task in tasks:
        Path(task["workdir"]).mkdir()
    code = f"""
        import json, sys
        from edgeattack.experiments.cells import run_cell
        from edgeattack.experiments.task import CellTask
        for doc in json.loads({json.dumps(json.dumps(tasks))}):
            outcome = run_cell(CellTask(**doc))
            print(doc["kind"], outcome.result["clean"]["clean_acc"], sorted(outcome.outputs))
        loaded = sorted(m for m in {BLOCKED_MODULES!r} if m in sys.modules)
        assert not loaded, loaded
    """
    out = run_python_without_torch(code, blocker_dir).stdout
    assert "replay" in out and "blackbox" in out and "['result']" in out
    assert json.loads((tmp_path / "blackbox" / "result.json").read_text())["blackbox"][0]["attack"] == "salt_and_pepper"
