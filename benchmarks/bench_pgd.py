"""PGD L-inf crafting time and robust accuracy: edgeattack vs torchattacks.PGD vs foolbox LinfPGD.

All three attack the same model (vit_tiny_digits with its shipped weights, or `--checkpoint`; random
weights with a warning when neither exists) on the same test images, with the same batch (all
images at once), steps, eps (8/255), absolute step size (2/255) and a random start, on the CPU with a
fixed torch thread count. Each repeat runs every tool once, in a rotating order so that load
changes on the machine hit all tools alike; the median wall time is reported. Times cover the whole
public call (edgeattack's includes its input checks, clean and final predictions and success
bookkeeping; foolbox's includes its success check). Robust accuracy is measured afterwards, the
same way for all, on the images each tool returned; the L-inf norm of every perturbation is checked.

edgeattack appears twice: its default (`early_stop=True`: an image is frozen at the first step where
it is misclassified, which never raises robust accuracy) and `early_stop=False` (every step on every
image, as torchattacks and foolbox do).

    python benchmarks/bench_pgd.py [--images 256] [--repeats 5] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger("bench_pgd")


def build_tools(model: object, eps: float, alpha: float, steps: int) -> dict[str, Callable[[object, object], object]]:
    """name -> fn(images, labels) returning adversarial images as a torch tensor."""
    import foolbox as fb
    import torch
    import torchattacks

    from edgeattack.attacks.whitebox import PGD

    ours = PGD(eps=eps, steps=steps, step_size=alpha, random_start=True, batch_size=1 << 30)
    ours_full = PGD(eps=eps, steps=steps, step_size=alpha, random_start=True, early_stop=False, batch_size=1 << 30)
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
    fb_attack = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)

    def run_ours(x: object, y: object) -> object:
        return torch.from_numpy(ours(model, x, y).adversarial)

    def run_ours_full(x: object, y: object) -> object:
        return torch.from_numpy(ours_full(model, x, y).adversarial)

    def run_ta(x: object, y: object) -> object:
        return ta(x, y)

    def run_fb(x: object, y: object) -> object:
        _, clipped, _ = fb_attack(fmodel, x, y, epsilons=eps)
        return clipped

    return {
        "edgeattack PGD": run_ours,
        "edgeattack PGD (early_stop=False)": run_ours_full,
        "torchattacks.PGD": run_ta,
        "foolbox LinfPGD": run_fb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="test images attacked (one batch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool (median reported)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--step-size", type=float, default=2 / 255)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (fixed for all tools)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights for vit_tiny_digits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import foolbox
    import torch
    import torchattacks

    from edgeattack.data import load_digits_dataset
    from edgeattack.zoo import create_model
    from edgeattack.zoo.manifest import read_manifest

    torch.set_num_threads(args.threads)
    model = create_model("vit_tiny_digits", checkpoint=args.checkpoint).eval()
    weights = (
        str(args.checkpoint)
        if args.checkpoint
        else ("shipped" if "vit_tiny_digits" in read_manifest() else "RANDOM (no shipped weights)")
    )
    test = load_digits_dataset("test").take(args.images)
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    tools = build_tools(model, args.eps, args.step_size, args.steps)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in tools.values():  # warm-up on a few images
            torch.manual_seed(0)
            fn(x[:8], y[:8])
        times: dict[str, list[float]] = {name: [] for name in tools}
        outputs: dict[str, object] = {}
        names = list(tools)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                torch.manual_seed(r)
                start = time.perf_counter()
                adv = tools[name](x, y)
                times[name].append(time.perf_counter() - start)
                outputs[name] = adv
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    with torch.no_grad():
        clean_acc = float((model(x).argmax(1) == y).float().mean())
    base = statistics.median(times["edgeattack PGD"])
    rows = []
    for name in names:
        adv = outputs[name]
        with torch.no_grad():
            robust = float((model(adv).argmax(1) == y).float().mean())
        linf = float((adv - x).abs().max())
        if linf > args.eps + 1e-5 or float(adv.min()) < 0 or float(adv.max()) > 1:
            logger.warning("%s left the threat model: linf %.5f", name, linf)
        med = statistics.median(times[name])
        rows.append((name, med, min(times[name]), max(times[name]), args.images / med, med / base, robust, linf))

    print(
        f"\nPGD L-inf on vit_tiny_digits ({weights} weights), {args.images} digits test images in one batch, "
        f"eps {args.eps * 255:.3g}/255, step {args.step_size * 255:.3g}/255, {args.steps} steps, random start; "
        f"CPU, torch {torch.__version__} with {args.threads} threads, torchattacks {torchattacks.__version__}, "
        f"foolbox {foolbox.__version__}, Python {platform.python_version()}; median of {args.repeats} runs. "
        f"clean_acc {clean_acc:.3f}.\n"
    )
    print("| tool | median s | min s | max s | images/s | time / edgeattack | adv_acc (robust) | max L-inf ×255 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, med, lo, hi, ips, ratio, robust, linf in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} | {ips:.1f} | {ratio:.2f} | {robust:.3f} | {linf * 255:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
