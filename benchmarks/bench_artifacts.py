"""Artifact size and speed: schema 1 (one float32 `delta`, compressed .npz) vs schema 2 (grid shards).

Deltas at 224x224: PGD (L-inf 4/255, 5 steps, quantized) crafted on a random-weight DeiT-Ti for
`--craft` images of random uint8-grid pixels (delta = adversarial - clean, both on the 1/255 grid,
as for decoded JPEGs), plus `--images` synthetic deltas drawn from the crafted deltas' level
histogram (PGD-like: mostly +-4/255), plus the same synthetic deltas made off-grid (small uniform
noise added: the float32 fallback). Each set is written as schema 1 (`np.savez_compressed`, as
edgeattack <= schema 1 did) and schema 2 (`ArtifactWriter`), then read back whole and one image at
random. Prints a Markdown table: bytes per image, write / read-all / read-one times per image.

    python benchmarks/bench_artifacts.py [--images 64] [--craft 8] [--shard-size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeattack.artifacts import ArtifactMeta, ArtifactWriter, PerturbationArtifact

SIZE = (3, 224, 224)


def craft_pgd(n: int, seed: int) -> tuple[np.ndarray, float]:
    """(deltas [n,3,224,224], seconds): PGD on a random-weight DeiT-Ti, random grid images."""
    from edgeattack.attacks.whitebox import make_attack
    from edgeattack.zoo.factory import create_model

    model = create_model("deit_tiny_patch16_224", random_weights=True)
    rng = np.random.default_rng(seed)
    images = (rng.integers(0, 256, (n, *SIZE)).astype(np.float32) / np.float32(255)).astype(np.float32)
    labels = rng.integers(0, 1000, n)
    attack = make_attack("pgd", eps=4 / 255, steps=5, quantize=True)
    start = time.perf_counter()
    out = attack(model, images, labels)
    return np.asarray(out.delta, dtype=np.float32), time.perf_counter() - start


def synthetic_like(crafted: np.ndarray | None, n: int, seed: int) -> np.ndarray:
    """n grid deltas whose levels follow the crafted deltas' histogram (mostly +-4 without any)."""
    rng = np.random.default_rng(seed)
    if crafted is not None and crafted.size:
        levels, counts = np.unique(np.rint(crafted * 255).astype(np.int64), return_counts=True)
        probs = counts / counts.sum()
    else:
        levels, probs = np.array([-4, -3, -2, -1, 0, 1, 2, 3, 4]), np.array([40, 2, 2, 2, 8, 2, 2, 2, 40]) / 100
    k = rng.choice(levels, size=(n, *SIZE), p=probs)
    clean = rng.integers(4, 252, (n, *SIZE))
    return ((clean + k).astype(np.float32) / np.float32(255)) - (clean.astype(np.float32) / np.float32(255))


def meta_for() -> ArtifactMeta:
    return ArtifactMeta(kind="per_image", method="pgd", norm="linf", eps=4 / 255, input_size=SIZE,
                        dataset="bench", split="val", seed=0, params={"steps": 5})


def best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(delta: np.ndarray, folder: Path, shard_size: int, repeats: int) -> dict[str, dict[str, float]]:
    n = len(delta)
    indices = np.arange(n, dtype=np.int64)
    meta = meta_for()
    v1 = folder / "v1.npz"
    v2 = folder / "v2.npz"
    doc = json.loads(meta.to_json())
    doc["schema_version"] = 1

    def write_v1() -> None:
        np.savez_compressed(v1, delta=delta, indices=indices, meta=np.asarray(json.dumps(doc)))

    def write_v2() -> None:
        with ArtifactWriter(v2, meta, shard_size=shard_size) as writer:
            for begin in range(0, n, 16):  # the attack's batches
                writer.add(delta[begin : begin + 16], indices[begin : begin + 16])
            writer.close()

    rows: dict[str, dict[str, float]] = {}
    for name, path, write in (("schema 1 (float32, compressed npz)", v1, write_v1), ("schema 2 (shards)", v2, write_v2)):
        write_s = best(write, repeats)
        read_all_s = best(lambda p=path: PerturbationArtifact.load(p).delta[:], repeats)
        rng = np.random.default_rng(0)
        read_one_s = best(lambda p=path, r=rng: PerturbationArtifact.load(p).delta[int(r.integers(n))], repeats)
        loaded = PerturbationArtifact.load(path)
        rows[name] = {
            "bytes": path.stat().st_size / n,
            "write_ms": 1e3 * write_s / n,
            "read_ms": 1e3 * read_all_s / n,
            "read_one_ms": 1e3 * read_one_s,
            "max_err": float(np.abs(loaded.delta[:] - delta).max()),
            "dtype": loaded.meta.storage.get("dtype", "float32") if loaded.meta.storage else "float32",
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic PGD-like deltas")
    parser.add_argument("--craft", type=int, default=8, help="deltas crafted by real PGD (0: skip)")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    crafted = None
    sets: list[tuple[str, np.ndarray]] = []
    if args.craft:
        crafted, craft_s = craft_pgd(args.craft, args.seed)
        print(f"crafted {args.craft} PGD deltas (DeiT-Ti, random weights, L-inf 4/255, 5 steps) in {craft_s:.1f} s", file=sys.stderr)
        sets.append((f"PGD crafted ({args.craft})", crafted))
    synthetic = synthetic_like(crafted, args.images, args.seed + 1)
    sets.append((f"PGD-like synthetic ({args.images})", synthetic))
    noise = np.random.default_rng(args.seed + 2).uniform(-1e-3, 1e-3, synthetic.shape).astype(np.float32)
    sets.append((f"off-grid synthetic ({args.images})", synthetic + noise))
    print("| deltas | format | stored as | bytes/image | write ms/image | read-all ms/image | read-one ms | max abs change |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, delta in sets:
            for name, r in measure(delta, Path(tmp), args.shard_size, args.repeats).items():
                print(
                    f"| {label} | {name} | {r['dtype']} | {r['bytes']:,.0f} | {r['write_ms']:.2f} | {r['read_ms']:.2f} "
                    f"| {r['read_one_ms']:.1f} | {r['max_err']:.1e} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
