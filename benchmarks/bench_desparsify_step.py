"""Cost of one DeSparsify step vs one PGD step on the same token-sparse digits model.

Both attack `--model` (default ats_tiny_digits) on the same `--images` digits test images in one
batch on the CPU. Per step: (wall time of the whole call) / steps. DeSparsify is timed with
`track_best=True` (its default: every step also measures the token utilisation of the iterate, a
second forward pass with token counts) and `track_best=False`; PGD with `early_stop=False`.

    python benchmarks/bench_desparsify_step.py [--model ats_tiny_digits] [--images 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ats_tiny_digits")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from edgeattack.attacks.whitebox import PGD, DeSparsify
    from edgeattack.data import load_digits_dataset
    from edgeattack.zoo import create_model

    torch.set_num_threads(args.threads)
    model = create_model(args.model)
    data = load_digits_dataset("test").take(args.images)
    attacks = {
        "PGD (early_stop=False)": PGD(eps=8 / 255, steps=args.steps, early_stop=False, random_start=False),
        "DeSparsify (track_best=True)": DeSparsify(eps=8 / 255, steps=args.steps, track_best=True),
        "DeSparsify (track_best=False)": DeSparsify(eps=8 / 255, steps=args.steps, track_best=False),
    }
    for attack in attacks.values():  # warm-up
        type(attack)(eps=8 / 255, steps=1)(model, data.take(4))
    rows = []
    for name, attack in attacks.items():
        start = time.perf_counter()
        attack(model, data)
        wall = time.perf_counter() - start
        rows.append((name, wall, wall / args.steps))
    pgd_step = rows[0][2]
    print(
        f"\n{args.model}, {args.images} digits test images in one batch, {args.steps} steps, eps 8/255; CPU, torch "
        f"{torch.__version__}, {args.threads} threads, Python {platform.python_version()}.\n"
    )
    print("| attack | total s | s per step | step / PGD step |")
    print("|---|---:|---:|---:|")
    for name, wall, step in rows:
        print(f"| {name} | {wall:.2f} | {step:.3f} | {step / pgd_step:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
