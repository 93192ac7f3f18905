"""The same experiment sweep run by each executor on this machine: local, process pool, Ray.

Every executor gets a fresh store and the same config (the digits ViT and its distilled and
DynamicViT siblings; fp32 and int8 ONNX engines; PGD at several eps on each model; every
artifact replayed on every engine), so the wall times compare like with like. The local
executor runs cells one by one with all cores per cell; the pools run `--workers` cells at once
with cores/workers threads each, except that a cell timing latency runs alone with every core
(`metrics.exclusive_timing`). Prints a Markdown table with the ratios to the local run.

    python benchmarks/bench_executors.py [--workers 2] [--limit 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from edgeattack.experiments.loading import validate_config
from edgeattack.experiments.plan import build_plan
from edgeattack.experiments.runner import run_experiment
from edgeattack.experiments.store import ExperimentStore


def sweep(limit: int, steps: int) -> dict:
    return {
        "name": "executor-sweep",
        "data": {"limit": limit, "calib_images": 64},
        "models": ["vit_tiny_digits", "deit_tiny_digits_distilled", "dynamicvit_tiny_digits_r07"],
        "engines": [{"name": "fp32"}, {"name": "int8", "precision": "int8"}],
        "whitebox": [{"name": "pgd", "method": "pgd", "eps": ["2/255", "4/255", "8/255"], "steps": steps}],
        "metrics": {"latency_seconds": 0.2, "latency_runs": 10},
        "availability": {"token_depth": False},
    }


def run_one(executor: str, workers: int, limit: int, steps: int, root: Path) -> tuple[float, int, dict[str, float]]:
    config = validate_config(sweep(limit, steps))
    start = time.perf_counter()
    summary = run_experiment(config, root / executor, executor=executor, workers=workers)
    wall = time.perf_counter() - start
    if not summary.ok:
        raise SystemExit(f"{executor}: {summary.describe()}")
    with ExperimentStore(root / executor) as store:
        cell_s = {kind: sum(r.wall_s or 0 for r in store.records() if r.kind == kind) for kind in ("export", "craft", "replay")}
    return wall, len(summary.ran), cell_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="PGD iterations (the crafts' share of the work)")
    parser.add_argument("--executors", default="local,process,ray")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cells = len(build_plan(validate_config(sweep(args.limit, args.steps))))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as work:
        for executor in args.executors.split(","):
            workers = 1 if executor == "local" else args.workers
            wall, ran, cell_s = run_one(executor, workers, args.limit, args.steps, Path(work))
            rows.append((executor, workers, wall, ran, cell_s))
    base = rows[0][2]
    print(f"Executor sweep: {cells} cells (3 models x fp32/int8 ONNX, PGD ({args.steps} steps) at 3 eps per model, every "
          f"artifact replayed on every engine), {args.limit} test images; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}. Pools run cells that time latency alone, with every core.")
    print()
    print("| executor | cells at once | wall s | vs local | cells ran | export s | craft s | replay s (summed over cells) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for executor, workers, wall, ran, cell_s in rows:
        print(f"| {executor} | {workers} | {wall:.1f} | {base / wall:.2f}x | {ran} | {cell_s['export']:.1f} | "
              f"{cell_s['craft']:.1f} | {cell_s['replay']:.1f} |")


if __name__ == "__main__":
    main()
