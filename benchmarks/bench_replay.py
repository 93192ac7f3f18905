"""Replay throughput: `edgeattack.evaluate` vs a bare onnxruntime loop over the same images.

Both sides run the same ONNX file with the same session options (CPU provider, the same intra-op
thread count), the same batch size, on the clean images and on the same universal adversarial
images (clip(x + delta, 0, 1)); both produce top-1 predictions. `evaluate` additionally checks
inputs and logits, computes norms and metrics, times each call and tracks peak memory; its
latency measurement is switched off. The best of `--repeats` runs is reported as a Markdown table.

    python benchmarks/bench_replay.py [--onnx PATH] [--batch-size 64] [--limit N] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.data import load_dataset
from edgeattack.engines.onnxruntime_engine import OnnxRuntimeEngine
from edgeattack.evaluate import evaluate

logger = logging.getLogger("bench_replay")


def export_vit_tiny_digits(path: Path) -> Path:
    """Export the shipped vit_tiny_digits to ONNX with edgeattack metadata."""
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    export_onnx(create_model("vit_tiny_digits"), path)
    return path


def bare_loop(session: object, input_name: str, images: np.ndarray, delta: np.ndarray, batch: int) -> float:
    """Seconds for clean + adversarial top-1 predictions with a plain InferenceSession."""
    start = time.perf_counter()
    for source in ("clean", "adv"):
        preds = []
        for i in range(0, len(images), batch):
            x = images[i : i + batch]
            if source == "adv":
                x = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
            preds.append(session.run(None, {input_name: np.ascontiguousarray(x)})[0].argmax(axis=1))  # type: ignore[attr-defined]
        np.concatenate(preds)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onnx", type=Path, default=None, help="ONNX engine (default: export vit_tiny_digits)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="number of images (default: the whole split)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (both sides)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or export_vit_tiny_digits(Path(tmp) / "vit_tiny_digits.onnx")
        dataset = load_dataset("digits", split=args.split, limit=args.limit)
        delta = (
            np.random.default_rng(0).uniform(-8 / 255, 8 / 255, (1, *dataset.input_shape)).astype(np.float32)
        )
        artifact = PerturbationArtifact(
            delta=delta,
            meta=ArtifactMeta(
                kind="universal",
                method="random",
                norm="linf",
                eps=8 / 255,
                input_size=dataset.input_shape,
                dataset=dataset.name,
                split=dataset.split,
                seed=0,
            ),
        )
        artifact_path = artifact.save(Path(tmp) / "uap.npz")

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        input_name = session.get_inputs()[0].name
        engine = OnnxRuntimeEngine(onnx_path, intra_op_threads=args.threads)

        images = dataset.images
        n_images = 2 * len(dataset)  # clean pass + adversarial pass
        with engine:
            bare_loop(session, input_name, images[: args.batch_size], delta, args.batch_size)  # warm both
            evaluate(
                engine,
                dataset.subset(np.arange(min(args.batch_size, len(dataset)))),
                [artifact_path],
                batch_size=args.batch_size,
                measure_latency=False,
            )
            bare_s, eval_s = [], []
            for _ in range(args.repeats):
                bare_s.append(bare_loop(session, input_name, images, delta, args.batch_size))
                start = time.perf_counter()
                evaluate(engine, dataset, [artifact_path], batch_size=args.batch_size, measure_latency=False)
                eval_s.append(time.perf_counter() - start)

    bare, ours = min(bare_s), min(eval_s)
    rows = [
        ("bare onnxruntime loop", bare, n_images / bare),
        ("edgeattack evaluate", ours, n_images / ours),
    ]
    print(f"ONNX: {Path(onnx_path).name}, {dataset.spec}, threads {args.threads}, best of {args.repeats}\n")
    print("| replay | images | batch | seconds | images/s | ratio to bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds, ips in rows:
        print(
            f"| {name} | {n_images} | {args.batch_size} | {seconds:.3f} | {ips:.0f} | {bare / seconds:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
