"""AutoAttack (standard, L-inf): edgeattack vs torchattacks.AutoAttack, robust accuracy, breakdown and time.

Both attack a shipped digits model (`--model`, default vit_tiny_digits; its shipped weights, or `--checkpoint`) on the same digits test images
(the whole split by default, one batch), with the same eps, seed 0 and the budget of
`torchattacks.AutoAttack(version="standard")` as shipped: APGD-CE, APGD-T and FAB-T with
`--steps` iterations (torchattacks' default is 10; the reference AutoAttack and edgeattack's
default are 100) and 9 target classes, Square with `--n-queries` queries (5000). torchattacks is
used unchanged but for `--steps` (its sub-attacks' `steps` are set when it is not 10); its Square
rescales its p schedule to the budget while the reference and edgeattack do not.

Per stage the table gives the robust accuracy after each attack of the sequence (edgeattack from
its per-image `broken_by`, torchattacks from its `MultiAttack` records), and the final robust
accuracy measured the same way for both: one forward pass on the returned images, after checking
they keep to the eps-ball and the [0,1] bounds. Times are one run each, the whole public call, on
the CPU with a fixed thread count, the two tools alternating per eps.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_autoattack.py [--images 270] [--eps 8/255,3/255]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench_autoattack")

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
STAGE_TITLES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T", "square": "Square"}


def run_edgeattack(
    model: Any, x: Any, y: Any, eps: float, steps: int, n_queries: int, classes: int
) -> dict[str, Any]:
    import torch

    from edgeattack.artifact_breakdown import robust_after
    from edgeattack.attacks.whitebox import AutoAttack

    attack = AutoAttack(
        eps=eps, version="standard", steps=steps, n_queries=n_queries, n_target_classes=min(9, classes - 1),
        seed=0, batch_size=1 << 30,
    )
    start = time.perf_counter()
    out = attack(model, x, y)
    wall = time.perf_counter() - start
    stages = robust_after(out.broken_by, out.breakers)
    return {"adv": torch.from_numpy(out.adversarial), "wall": wall, "stages": [stages[s] for s in STAGES]}


def run_torchattacks(
    model: Any, x: Any, y: Any, eps: float, steps: int, n_queries: int, classes: int
) -> dict[str, Any]:
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=classes, seed=0)
    multi = attack._autoattack
    for sub in multi.attacks:
        if hasattr(sub, "steps"):
            sub.steps = steps
        if hasattr(sub, "n_queries"):
            sub.n_queries = n_queries
    multi._accumulate_multi_atk_records = True
    multi._multi_atk_records = [0.0] * (len(multi.attacks) + 1)
    start = time.perf_counter()
    adv = attack(x, y)
    wall = time.perf_counter() - start
    records = multi._multi_atk_records
    n = float(x.shape[0])
    return {"adv": adv, "wall": wall, "stages": [records[k + 1] / n for k in range(len(STAGES))]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="first N test images (default: the whole split)")
    parser.add_argument("--eps", default="8/255,3/255", help="comma-separated L-inf budgets")
    parser.add_argument("--steps", type=int, default=10, help="APGD / APGD-T / FAB-T iterations (torchattacks: 10)")
    parser.add_argument("--n-queries", type=int, default=5000, help="Square's query budget")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for both tools)")
    parser.add_argument("--model", default="vit_tiny_digits", help="a shipped digits zoo model")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights for --model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    import torchattacks

    from edgeattack.data import load_digits_dataset
    from edgeattack.zoo import create_model

    torch.set_num_threads(args.threads)
    model = create_model(args.model, checkpoint=args.checkpoint).eval()
    test = load_digits_dataset("test").take(args.images)
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    with torch.no_grad():
        clean_logits = model(x)
    classes = int(clean_logits.shape[1])
    clean_acc = float((clean_logits.argmax(1) == y).float().mean())
    budgets = [float(Fraction(e.strip())) for e in args.eps.split(",")]
    tools = {"edgeattack": run_edgeattack, "torchattacks": run_torchattacks}
    rows = []
    for i, eps in enumerate(budgets):
        order = list(tools) if i % 2 == 0 else list(reversed(tools))
        results = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in order:
                results[name] = tools[name](model, x, y, eps, args.steps, args.n_queries, classes)
                wall = results[name]["wall"]
                print(f"eps {eps * 255:.3g}/255: {name} done in {wall:.1f} s", file=sys.stderr, flush=True)
        base = results["torchattacks"]["wall"]
        for name in tools:
            adv = results[name]["adv"].detach()
            linf = float((adv - x).abs().amax())
            if linf > eps + 1e-5 or float(adv.min()) < 0 or float(adv.max()) > 1:
                logger.warning("%s left the threat model at eps %.5f: linf %.5f", name, eps, linf)
            with torch.no_grad():
                robust = float((model(adv).argmax(1) == y).float().mean())
            wall = results[name]["wall"]
            rows.append((eps, name, robust, results[name]["stages"], wall, wall / base))
        gap = 100 * abs(rows[-1][2] - rows[-2][2])
        print(f"eps {eps * 255:.3g}/255: robust accuracy gap {gap:.2f} points", file=sys.stderr, flush=True)

    print(
        f"\nAutoAttack standard (L-inf) on {args.model}, {len(test)} digits test images in one batch, seed 0; "
        f"APGD-CE/APGD-T/FAB-T {args.steps} iterations, 9 target classes, Square {args.n_queries} queries; "
        f"CPU, torch {torch.__version__} with {args.threads} threads, torchattacks {torchattacks.__version__}, "
        f"Python {platform.python_version()}. clean_acc {clean_acc:.4f}.\n"
    )
    header = ("eps", "tool", "robust acc", *(f"after {STAGE_TITLES[s]}" for s in STAGES), "wall s", "time / torchattacks")
    print("| " + " | ".join(header) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for eps, name, robust, stages, wall, ratio in rows:
        cells = " | ".join(f"{s:.4f}" for s in stages)
        print(f"| {eps * 255:.3g}/255 | {name} | {robust:.4f} | {cells} | {wall:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
