"""Streaming data: peak RSS and wall time of `evaluate` (clean + one universal replay) vs the split size.

A folder of N synthetic JPEGs (ImageNet-like sizes, 3 classes) is opened with DeiT-Ti's exact timm
preprocessing (`preprocess_for`: resize 248, center crop 224, bicubic) and evaluated on a
random-weight DeiT-Ti exported to ONNX with edgeattack's exporter (onnxruntime, CPU). Each run is a
fresh subprocess, so its peak RSS (`ru_maxrss`) is its own: "lazy" is the default folder dataset
(decoded batch by batch, next batch prefetched), "eager" decodes the whole split first
(`load_image_folder(..., lazy=False)`, what edgeattack did before) and is run only up to
`--eager-max` images. Prints a Markdown table.

    python benchmarks/bench_streaming.py [--sizes 100 1000 10000] [--eager-max 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
import numpy as np
from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.data import load_image_folder, preprocess_for
from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
from edgeattack.evaluate import evaluate
from edgeattack.zoo.registry import get_entry

onnx, root, mode, n, threads, batch = sys.argv[1:7]
start = time.perf_counter()
dataset = load_image_folder(root, preprocess=preprocess_for(get_entry("deit_tiny_patch16_224").config),
                            limit=int(n), selection="first", lazy=mode == "lazy")
delta = np.random.default_rng(0).uniform(-4 / 255, 4 / 255, (1, 3, 224, 224)).astype(np.float32)
meta = ArtifactMeta(kind="universal", method="random", norm="linf", eps=4 / 255, input_size=(3, 224, 224),
                    dataset=dataset.name, split=dataset.split, seed=0)
artifact = PerturbationArtifact(delta=delta, meta=meta, indices=np.zeros(0, np.int64))
with OnnxRuntimeEngine(onnx, intra_op_threads=int(threads)) as engine:
    result = evaluate(engine, dataset, [artifact], batch_size=int(batch), measure_latency=False)
wall = time.perf_counter() - start
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall,
                  "n": result.clean.n_images, "replayed": result.perturbations[0].images_evaluated}))
"""


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """`n` JPEGs of ImageNet-like sizes (landscape and portrait), split over 3 class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400)]
    base = {s: rng.integers(0, 256, (s[1] // 8, s[0] // 8, 3), dtype=np.uint8) for s in sizes}
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        small = np.roll(base[(w, h)], i, axis=1)
        image = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:06d}.jpg", quality=85)
    return root


def export_deit_tiny(path: Path) -> Path:
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    export_onnx(create_model("deit_tiny_patch16_224", random_weights=True), path)
    return path


def run(onnx: Path, root: Path, mode: str, n: int, threads: int, batch: int) -> dict:
    args = [sys.executable, "-c", CHILD, str(onnx), str(root), mode, str(n), str(threads), str(batch)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--eager-max", type=int, default=1000, help="largest split also run eagerly")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_streaming_"))
    t0 = time.perf_counter()
    root = make_folder(work / "val", max(args.sizes))
    onnx = export_deit_tiny(work / "deit_tiny_random.onnx")
    print(f"setup: {max(args.sizes)} JPEGs + DeiT-Ti ONNX export in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rows = []
    for n in args.sizes:
        for mode in ("lazy", "eager"):
            if mode == "eager" and n > args.eager_max:
                continue
            r = run(onnx, root, mode, n, args.threads, args.batch_size)
            rows.append((n, mode, r))
            print(f"{n} {mode}: {r}", file=sys.stderr)
    print("| images | data | peak RSS (MiB) | wall (s) | images/s (clean + replay) |")
    print("|---:|---|---:|---:|---:|")
    for n, mode, r in rows:
        print(f"| {n} | {mode} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} | {2 * n / r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
