"""ONNX Runtime latency vs kept tokens on a DeiT-Ti-sized token-sparse ViT (224x224, 197 tokens, width 192).

Does a deployed token-sparse engine really get faster when it keeps fewer tokens (and slower when an
availability attack makes it keep them all)? The A-ViT export (physical dropping: NonZero-free
compaction with data-dependent widths) of `avit_deit_tiny_patch16_224` is built with its halting gate
switched off (no token halts by itself) and a per-block token cap of c tokens, so every block
processes exactly c tokens; the same for the masked (fixed-shape) export, and the dense timm
DeiT-Ti as the reference. Random weights: latency does not depend on them. Batch 1, one ORT thread,
the engines timed interleaved (round-robin) so drift hits all alike; medians of `--runs` runs.

Usage: python benchmarks/bench_token_latency.py [--runs 30] [--out /tmp/bench_tokens]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CAPS = (197, 148, 99, 50, 25)


def build(out: Path) -> list[tuple[str, Path, float | None]]:  # (name, path, nominal TUR)
    import torch

    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.sparsity.defence import with_token_cap
    from edgeattack.zoo import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    engines: list[tuple[str, Path, float | None]] = []
    dense = create_model("deit_tiny_patch16_224", random_weights=True)
    engines.append(("dense DeiT-Ti (timm)", out / "dense.onnx", 1.0))
    export_onnx(dense, engines[-1][1])
    for mode in ("physical", "masked"):
        model = create_model("avit_deit_tiny_patch16_224", random_weights=True, gate_center=1e6, drop_mode=mode)
        model.load_state_dict(
            {k: v for k, v in dense.state_dict().items() if k in model.state_dict()}, strict=False
        )
        for cap in CAPS if mode == "physical" else (CAPS[0], CAPS[-1]):
            capped = with_token_cap(model, cap)
            path = out / f"avit_{mode}_{cap}.onnx"
            export_onnx(capped, path)
            engines.append((f"A-ViT {mode}, {cap} tokens/block", path, cap / 197))
    return engines


def time_engines(engines: list[tuple[str, Path, float | None]], runs: int) -> tuple[list[float], list[float]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for _, p, _ in engines]
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    names = [s.get_inputs()[0].name for s in sessions]
    turs = []
    for s, n in zip(sessions, names, strict=True):
        for _ in range(5):
            outputs = s.run(None, {n: image})
        counts = outputs[1] if len(outputs) > 1 else None  # token_counts, measured by the engine itself
        turs.append(1.0 if counts is None else float(counts.sum() / (counts.shape[1] * 197)))
    times = np.zeros((len(sessions), runs))
    for r in range(runs):
        for i, (s, n) in enumerate(zip(sessions, names, strict=True)):
            t0 = time.perf_counter_ns()
            s.run(None, {n: image})
            times[i, r] = (time.perf_counter_ns() - t0) / 1e6
    return [float(np.median(t)) for t in times], turs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_tokens"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    engines = build(args.out)
    medians, turs = time_engines(engines, args.runs)
    full = medians[1]
    print(f"batch 1, 1 ORT thread, median of {args.runs} interleaved runs, 224x224 input\n")
    print("| engine | TUR (engine's token_counts) | median ms | vs A-ViT physical at 197 tokens | vs dense DeiT-Ti |")
    print("|---|---|---|---|---|")
    for (name, _, _), tur, median in zip(engines, turs, medians, strict=True):
        print(f"| {name} | {tur:.3f} | {median:.2f} | {median / full:.2f} | {median / medians[0]:.2f} |")


if __name__ == "__main__":
    main()
