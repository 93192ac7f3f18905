"""Black-box attacks on one ONNX Runtime engine: edgeattack vs foolbox 3, and the oracle's overhead.

Both libraries attack the same engine (the shipped vit_tiny_digits exported to ONNX fp32, one ORT
thread) on the same test images, with the same hyper-parameters and the same mode; foolbox reaches
the engine through `foolbox.models.NumPyModel` wrapped in a query counter.

Minimal mode (the first table): both minimise the L2 of the perturbation with no query budget, each
running its full step schedule: queries and wall time per library, the success rate (an adversarial
found) and the median L2 of the adversarials found. The ratio rows are foolbox / edgeattack, so a
time ratio above 1 is edgeattack faster and an L2 ratio above 1 is edgeattack's perturbations smaller.

Bounded mode (the second table), at eps = foolbox's minimal-mode median L2: foolbox's convention
(its attack runs as above, then each adversarial is clipped to the eps ball and tested again) against
edgeattack's bounded mode, which runs the same schedule but stops an image once it is within eps and
clips to the ball at the end (the same test). Success at eps is verified on the engine for both.

The third table is the engine-call overhead of `EngineOracle` (clip, count, budget check, NaN check,
latency record) against a bare `session.run` loop over the same batches, measured side by side.

Usage: python benchmarks/bench_blackbox.py [--images 32] [--out /tmp/bench_bb]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def export_engine(out: Path) -> Path:
    import torch

    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    torch.set_num_threads(1)
    path = out / "vit_tiny_digits_fp32.onnx"
    if not path.exists():
        export_onnx(create_model("vit_tiny_digits"), path)
    return path


def run_foolbox(engine, attack, x: np.ndarray, y: np.ndarray) -> dict:
    """foolbox's minimal attack on the clean-correct images: its adversarials, their L2 (inf where it failed)."""
    import foolbox as fb

    counter = {"queries": 0}

    def predict(batch: np.ndarray) -> np.ndarray:
        counter["queries"] += len(batch)
        return engine.infer(np.ascontiguousarray(batch, dtype=np.float32))

    model = fb.models.NumPyModel(predict, bounds=(0.0, 1.0), data_format="channels_first")
    correct = predict(x).argmax(1) == y
    counter["queries"] = 0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, adv, success = attack(model, x[correct], fb.criteria.Misclassification(y[correct]), epsilons=None)
    wall = time.perf_counter() - t0
    adv, success = np.asarray(adv), np.asarray(success).reshape(-1)
    l2 = np.sqrt(((adv - x[correct]) ** 2).reshape(len(adv), -1).sum(1))
    return {
        "x": x[correct],
        "y": y[correct],
        "adv": adv,
        "l2": np.where(success, l2, np.inf),
        "per_image": counter["queries"] / max(int(correct.sum()), 1),
        "wall_s": wall,
        "predict": predict,
    }


def foolbox_success_at(result: dict, eps: float) -> float:
    """foolbox's bounded-mode verdict: clip each adversarial to the L2 ball of radius eps, then test it."""
    import eagerpy as ep
    import foolbox as fb

    x, adv = ep.astensor(result["x"]), ep.astensor(result["adv"])
    clipped = fb.distances.l2.clip_perturbation(x, adv, eps).raw
    fooled = result["predict"](np.asarray(clipped, dtype=np.float32)).argmax(1) != result["y"]
    return float(fooled.mean())


def run_edgeattack(engine, attack, x: np.ndarray, y: np.ndarray) -> dict:
    from edgeattack.attacks.blackbox import EngineOracle

    engine.reset_counter()
    oracle = EngineOracle(engine, len(x), budget=None)
    t0 = time.perf_counter()
    outcome = attack(oracle, x, y)
    wall = time.perf_counter() - t0
    attacked = outcome.clean_pred == y
    queries = int(oracle.queries[attacked].sum() - attacked.sum())  # without the clean query, as foolbox
    return {
        "l2": np.where(outcome.success, outcome.l2, np.inf)[attacked],
        "success": float(outcome.success[attacked].mean()),
        "per_image": queries / max(int(attacked.sum()), 1),
        "wall_s": wall,
    }


def _median_found(l2: np.ndarray) -> float:
    found = l2[np.isfinite(l2)]
    return float(np.median(found)) if found.size else float("nan")


def compare(engine, x: np.ndarray, y: np.ndarray) -> tuple[list[str], list[str]]:
    """The minimal-mode and bounded-mode tables (see the module docstring)."""
    import foolbox as fb

    from edgeattack.attacks.blackbox.hopskipjump import HopSkipJump
    from edgeattack.attacks.blackbox.noise import BlendedUniformNoise, SaltAndPepper

    cases = [
        ("salt_and_pepper (steps 1000)", fb.attacks.SaltAndPepperNoiseAttack(steps=1000),
         lambda **kw: SaltAndPepper(steps=1000, **kw)),
        ("blended_noise (directions 1000, steps 1000)",
         fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=1000, steps=1000),
         lambda **kw: BlendedUniformNoise(directions=1000, steps=1000, **kw)),
        ("hopskipjump L2 (steps 10)",
         fb.attacks.HopSkipJumpAttack(steps=10, initial_gradient_eval_steps=100, max_gradient_eval_steps=10000),
         lambda **kw: HopSkipJump(steps=10, initial_gradient_eval_steps=100, max_gradient_eval_steps=10000, **kw)),
    ]
    minimal = [
        "| attack | library | success | median L2 of adversarials | queries / image | wall s |",
        "|---|---|---|---|---|---|",
    ]
    bounded = [
        "| attack | eps (L2) | library | success at eps | queries / image | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, fb_attack, make in cases:
        theirs = run_foolbox(engine, fb_attack, x, y)
        ours = run_edgeattack(engine, make(), x, y)
        l2_theirs, l2_ours = _median_found(theirs["l2"]), _median_found(ours["l2"])
        minimal += [
            f"| {label} | foolbox 3.3 | {float(np.isfinite(theirs['l2']).mean()):.3f} | {l2_theirs:.3f} | "
            f"{theirs['per_image']:.0f} | {theirs['wall_s']:.1f} |",
            f"| {label} | edgeattack | {ours['success']:.3f} | {l2_ours:.3f} | {ours['per_image']:.0f} | "
            f"{ours['wall_s']:.1f} |",
            f"| {label} | foolbox / edgeattack | | {l2_theirs / l2_ours:.2f}x | "
            f"{theirs['per_image'] / max(ours['per_image'], 1e-9):.2f}x | {theirs['wall_s'] / ours['wall_s']:.2f}x |",
        ]
        eps = float(np.median(theirs["l2"]))
        at_eps = run_edgeattack(engine, make(eps=eps), x, y)
        bounded += [
            f"| {label} | {eps:.3f} | foolbox 3.3 | {foolbox_success_at(theirs, eps):.3f} | {theirs['per_image']:.0f} | "
            f"{theirs['wall_s']:.1f} |",
            f"| {label} | {eps:.3f} | edgeattack | {at_eps['success']:.3f} | {at_eps['per_image']:.0f} | "
            f"{at_eps['wall_s']:.1f} |",
            f"| {label} | | foolbox / edgeattack | | {theirs['per_image'] / max(at_eps['per_image'], 1e-9):.2f}x | "
            f"{theirs['wall_s'] / at_eps['wall_s']:.2f}x |",
        ]
    return minimal, bounded


def oracle_overhead(engine, x: np.ndarray, repeats: int = 5) -> list[str]:
    from edgeattack.attacks.blackbox import EngineOracle

    session = engine.session
    input_name = engine.metadata.input_name
    lines = ["| batch | bare session.run img/s | EngineOracle img/s | oracle / bare time |", "|---|---|---|---|"]
    for batch in (1, 16, 64):
        batches = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)][: max(1, 256 // batch)]
        bare, oracle_t = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in batches:
                session.run(None, {input_name: b})
            bare.append(time.perf_counter() - t0)
            oracle = EngineOracle(engine, len(batches) * batch, budget=None, batch_size=batch)
            t0 = time.perf_counter()
            for k, b in enumerate(batches):
                oracle.logits(b, np.arange(k * batch, (k + 1) * batch))
            oracle_t.append(time.perf_counter() - t0)
        images = len(batches) * batch
        b_s, o_s = float(np.median(bare)), float(np.median(oracle_t))
        lines.append(f"| {batch} | {images / b_s:.0f} | {images / o_s:.0f} | {o_s / b_s:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_bb"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from edgeattack.data import load_dataset
    from edgeattack.engines import open_engine

    path = export_engine(args.out)
    data = load_dataset("digits", split="test", limit=args.images)
    with open_engine(path, intra_op_threads=1) as engine:
        print(f"engine {path.name}, providers {engine.providers}, {len(data)} digits test images, 1 ORT thread\n")
        minimal, bounded = compare(engine, data.images, data.labels)
        print("minimal mode (no budget, same schedule):\n" + "\n".join(minimal))
        print("\nbounded mode at eps = foolbox's minimal-mode median L2:\n" + "\n".join(bounded))
        print()
        print("\n".join(oracle_overhead(engine, load_dataset("digits", split="test").images)))


if __name__ == "__main__":
    main()
