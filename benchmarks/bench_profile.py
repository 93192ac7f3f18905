"""Model profiles: parameters, stored sizes, analytic GFLOPs, PyTorch and ONNX Runtime throughput.

For DeiT-Ti / S / B (timm architectures, random weights: sizes and FLOPs do not depend on the
values, nothing is downloaded) and the shipped vit_tiny_digits, printed as a Markdown table next to
the paper's figures. Sizes: fp32 = safetensors of the state dict; int8 = torch dynamic int8
(Linear weights) saved with torch.save. MB = 10^6 bytes, MiB = 2^20 bytes. GFLOPs: one multiply-add
= one FLOP, per image. Throughput: images/s at `--batch-size` on the CPU with `--threads` threads,
after `--warmup` untimed calls, at least `--runs` timed calls and `--seconds` seconds.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_profile.py [--batch-size 64] [--threads 1]
        [--runs 3] [--seconds 2] [--models deit_tiny_patch16_224 ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeattack.metrics.flops import human_size

DEFAULT_MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "vit_tiny_digits")
PAPER = {  # fp32 as printed (ls -h, MiB rounded up), int8 (MB), GFLOPs (DeiT paper)
    "deit_tiny_patch16_224": ("22M", "6.4M", 1.3),
    "deit_small_patch16_224": ("85M", "23M", 4.6),
    "deit_base_patch16_224": ("331M", "89M", 17.6),
}


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", default=None, help="also write the profiles as a JSON list")
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    from edgeattack.zoo.profile import profile_model

    profiles = []
    for name in args.models:
        start = time.perf_counter()
        profile = profile_model(
            name,
            batch_size=args.batch_size,
            threads=args.threads,
            warmup_runs=args.warmup,
            min_runs=args.runs,
            min_seconds=args.seconds,
        )
        print(f"# {name}: profiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        profiles.append(profile)

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), batch {args.batch_size}, >= {args.runs} timed calls and >= {args.seconds:g} s "
        f"after {args.warmup} warm-up call(s); random weights for the DeiTs.\n"
    )
    print(
        "| model | params | fp32 MB | fp32 MiB (ls -h) | paper fp32 | int8 MB | int8 MiB | paper int8 "
        "| GFLOPs | paper GFLOPs | torch img/s | ORT img/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in profiles:
        paper = PAPER.get(p.name, ("", "", None))
        print(
            f"| {p.name} | {p.params / 1e6:.2f} M | {p.size_fp32_mb:.2f} | {p.size_fp32_mib:.2f} "
            f"({human_size(p.size_fp32_bytes)}) | {paper[0]} | {_num(p.size_int8_mb, '.2f')} "
            f"| {_num(p.size_int8_mib, '.2f')} | {paper[1]} | {_num(p.gflops, '.3f')} "
            f"| {'' if paper[2] is None else paper[2]} | {_num(p.throughput_torch_ips, '.1f')} "
            f"| {_num(p.throughput_ort_ips, '.1f')} |"
        )
    unstable = [
        f"{p.name} ({engine}, cv {stats['cv']:.1%})"
        for p in profiles
        for engine, stats in (("torch", p.latency_torch), ("onnxruntime", p.latency_ort))
        if stats and stats["unstable"]
    ]
    if unstable:
        print(f"\nCoefficient of variation above 2.5 %: {', '.join(unstable)}.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([p.to_dict() for p in profiles], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
