"""Single-image DeSparsify with a larger eps on A-ViT and AdaViT: TUR and batch-1 ORT latency ratio.

Usage: python benchmarks/bench_desparsify_budget.py
(uses the engines that benchmarks/bench_desparsify.py exported to /tmp/bench_desparsify)
"""

from __future__ import annotations

import time

import torch

from edgeattack.attacks.whitebox import make_attack
from edgeattack.availability import evaluate_availability
from edgeattack.data import load_digits_dataset
from edgeattack.engines import open_engine
from edgeattack.zoo import create_model

HEADER = (
    "| engine | budget | TUR clean → adv | TUR gap closed | accuracy clean → adv | prediction kept "
    "| latency median ms clean → adv | × latency (median) | × latency (mean) | × GFLOPs | crafting |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    torch.set_num_threads(1)
    test = load_digits_dataset("test").take(64)
    print(HEADER, flush=True)
    for name, eps, steps in (("avit_tiny_digits", 32 / 255, 200), ("adavit_tiny_digits", 24 / 255, 100)):
        model = create_model(name)
        t0 = time.time()
        artifact = make_attack("desparsify", variant="single", eps=eps, steps=steps)(model, test).to_artifact()
        with open_engine(f"/tmp/bench_desparsify/{name}.onnx", intra_op_threads=1) as engine:
            result = evaluate_availability(engine, test, [artifact], latency_images=64, latency_rounds=7)
        c, a = result.passes
        print(
            f"| {name} | {eps * 255:.0f}/255, {steps} steps | {c.tur:.3f} -> {a.tur:.3f} | {a.gap_closed['tur']:.3f} | "
            f"{c.accuracy:.3f} -> {a.accuracy:.3f} | {a.prediction_kept:.3f} | {c.latency.median_ms:.3f} -> "
            f"{a.latency.median_ms:.3f} | {a.ratios['latency_median']:.2f} | {a.ratios['latency_mean']:.2f} | "
            f"{a.ratios['gflops']:.2f} | craft {time.time() - t0:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
