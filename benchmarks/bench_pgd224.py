"""PGD crafting at 224x224: edgeattack vs torchattacks.PGD on a random-weight timm deit_tiny_patch16_224.

Both attack the same torch module (timm's deit_tiny_patch16_224, random weights, behind the same
ImageNet-normalisation wrapper so both see [0,1] images) on the same random images, labelled with
the model's own clean predictions (so every image is eligible), with eps 4/255, 10 steps, step
size 1/255, random start off, one batch of all images, on the CPU with a fixed thread count.
edgeattack runs with and without its per-image early stopping (`early_stop`, a PGD parameter).
Times cover the whole public call (edgeattack's includes input checks, the success bookkeeping
and one forward pass on the final images, which torchattacks does not do); the median of
`--repeats` runs, tools in rotating order. Ratio = torchattacks time / edgeattack time (>1: edgeattack
faster). Success = fraction of images whose prediction changed, measured afterwards alike for all.

    python benchmarks/bench_pgd224.py [--images 16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable


def build_model() -> object:
    import timm
    import torch

    class Normalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model("deit_tiny_patch16_224", pretrained=False)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

        def forward(self, x: object) -> object:
            return self.net((x - self.mean) / self.std)

    torch.manual_seed(0)
    return Normalised().eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    import torchattacks

    from edgeattack.attacks.whitebox import PGD

    torch.set_num_threads(args.threads)
    eps, alpha = 4 / 255, 1 / 255
    model = build_model()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand((args.images, 3, 224, 224), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    def tools_for(steps: int) -> dict[str, Callable[[], object]]:
        common = {"eps": eps, "steps": steps, "step_size": alpha, "random_start": False, "batch_size": args.images}
        ours_es = PGD(**common, early_stop=True)
        ours_full = PGD(**common, early_stop=False)
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
        return {
            "torchattacks.PGD": lambda: ta(x, y),
            "edgeattack PGD (early_stop=False)": lambda: torch.from_numpy(ours_full(model, x, y, bounds=(0, 1)).adversarial),
            "edgeattack PGD (early_stop=True)": lambda: torch.from_numpy(ours_es(model, x, y, bounds=(0, 1)).adversarial),
        }

    def timed(tools: dict[str, Callable[[], object]]) -> tuple[dict[str, float], dict[str, object]]:
        names = list(tools)
        times: dict[str, list[float]] = {n: [] for n in names}
        outputs: dict[str, object] = {}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                outputs[name] = tools[name]()
                times[name].append(time.perf_counter() - start)
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        return {n: statistics.median(t) for n, t in times.items()}, outputs

    medians, outputs = timed(tools_for(args.steps))
    full = {k: v for k, v in tools_for(2 * args.steps).items() if "early_stop=True" not in k}
    doubled, _ = timed(full)
    ta_time = medians["torchattacks.PGD"]
    print(
        f"\nPGD L-inf at 224x224 on random-weight timm deit_tiny_patch16_224, {args.images} random images (labels: clean "
        f"predictions), eps 4/255, step 1/255, {args.steps} steps, no random start, batch {args.images}; CPU, torch "
        f"{torch.__version__}, {args.threads} threads, torchattacks {torchattacks.__version__}, Python "
        f"{platform.python_version()}; median of {args.repeats}.\n"
    )
    print("| tool | median s | torchattacks / tool (>1: faster) | success rate | max L-inf x255 |")
    print("|---|---:|---:|---:|---:|")
    for name in medians:
        adv = outputs[name]
        with torch.no_grad():
            success = float((model(adv).argmax(1) != y).float().mean())
        linf = float((adv - x).abs().max()) * 255
        print(f"| {name} | {medians[name]:.2f} | {ta_time / medians[name]:.3f} | {success:.3f} | {linf:.2f} |")
    print(
        f"\nThe step itself: each tool also run with {2 * args.steps} steps; per step = (t({2 * args.steps}) - "
        f"t({args.steps})) / {args.steps}, fixed cost = t({args.steps}) - {args.steps} x per step (input checks, "
        "success bookkeeping, final forward pass).\n"
    )
    print("| tool | s per step | torchattacks / tool per step (>1: faster) | fixed cost s |")
    print("|---|---:|---:|---:|")
    ta_step = (doubled["torchattacks.PGD"] - ta_time) / args.steps
    for name in full:
        step = (doubled[name] - medians[name]) / args.steps
        print(f"| {name} | {step:.4f} | {ta_step / step:.3f} | {medians[name] - args.steps * step:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
