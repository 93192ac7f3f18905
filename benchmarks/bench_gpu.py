"""GPU suite: CUDA crafting fp32 vs bf16, ORT CUDA replay vs bare ORT, NVML energy per adversarial set.

Run by `benchmarks/gpu_suite.sh` on a machine with one NVIDIA GPU (about 8 minutes on an H100):
everything is local (a synthetic ImageNet-style folder, random-weight DeiT models), so it needs no
network. Each section prints one markdown table of figures measured side by side in this run.

    python benchmarks/bench_gpu.py --images 256 --models deit_small_patch16_224 deit_base_patch16_224
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_folder(root: Path, images: int, classes: int = 8, seed: int = 0) -> Path:
    """An ImageNet-style `val/<synset>/<jpeg>` tree of smooth random photos (400×300)."""
    from PIL import Image

    from edgeattack.zoo.config import imagenet_synsets

    rng = np.random.default_rng(seed)
    synsets = imagenet_synsets()
    val = root / "val"
    for i in range(images):
        folder = val / synsets[(i % classes) * 97]
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
        Image.fromarray(small).resize((400, 300), Image.BICUBIC).save(folder / f"img{i:05d}.jpg", quality=90)
    return root


def edgeattack_cli(*args: str) -> float:
    """Run `edgeattack ARGS` and return its wall time; raise with its output when it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgeattack", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"edgeattack {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def crafting_table(data: Path, work: Path, models: list[str], images: int, batch: int) -> tuple[str, dict[str, Path]]:
    """PGD L-inf 4/255, 10 steps on CUDA, fp32 vs bf16 autocast, per model."""
    rows = ["| model | precision | wall s | images/s | bf16 speed-up | success rate |", "|---|---|---:|---:|---:|---:|"]
    artifacts: dict[str, Path] = {}
    for model in models:
        times: dict[str, float] = {}
        for precision in ("fp32", "bf16"):
            out = work / f"pgd-{model}-{precision}.npz"
            times[precision] = edgeattack_cli(
                "attack", "-m", "pgd", "--model", model, "--random-weights", "--device", "cuda",
                "--precision", precision, "--batch-size", str(batch), "--eps", "4/255", "--steps", "10",
                "--step-size", "1/255", "--data", str(data), "--split", "val", "--limit", str(images), "-o", str(out),
            )
            from edgeattack.artifacts import PerturbationArtifact

            params = PerturbationArtifact.load(out).meta.params
            rate = params.get("success_rate")
            speedup = f"{times['fp32'] / times['bf16']:.2f}×" if precision == "bf16" else "–"
            rows.append(
                f"| {model} | {precision} | {times[precision]:.1f} | {images / times[precision]:.1f} | {speedup} | "
                f"{'n/a' if rate is None else f'{rate:.3f}'} |"
            )
            artifacts[f"{model}-{precision}"] = out
    return "\n".join(rows), artifacts


def replay_table(data: Path, work: Path, model: str, artifact: Path, images: int, batch: int) -> tuple[str, Path]:
    """The same replay through edgeattack's ORT engine (CUDA EP) and a bare ORT session on the same batches."""
    import onnxruntime as ort

    from edgeattack.artifacts import PerturbationArtifact
    from edgeattack.data import load_dataset
    from edgeattack.evaluate import evaluate

    onnx_path = work / f"{model}.onnx"
    edgeattack_cli("export", model, "--random-weights", "-o", str(onnx_path))
    from edgeattack.engines import open_engine

    engine = open_engine(onnx_path, providers=["cuda"])
    with engine:
        if "CUDAExecutionProvider" not in engine.providers:
            raise RuntimeError(f"ONNX Runtime fell back to {engine.providers}: install onnxruntime-gpu")
        dataset = load_dataset(str(data), split="val", limit=images, class_names=engine.metadata.labels or None)
        start = time.perf_counter()
        evaluate(engine, dataset, [artifact], batch_size=batch, measure_latency=False, measure_memory=False)
        ours = time.perf_counter() - start
    loaded = PerturbationArtifact.load(artifact)
    session = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    start = time.perf_counter()
    for begin in range(0, len(dataset), batch):
        clean = np.asarray(dataset.images[begin : begin + batch])
        session.run(None, {name: clean})
        adv = loaded.apply(clean, labels=dataset.labels[begin : begin + batch], indices=dataset.indices[begin : begin + batch])
        session.run(None, {name: adv})
    bare = time.perf_counter() - start
    rows = [
        "| path | wall s (decode + clean + replay) | time / bare ORT |",
        "|---|---:|---:|",
        f"| bare onnxruntime CUDA EP | {bare:.2f} | 1.00 |",
        f"| edgeattack evaluate (CUDA EP) | {ours:.2f} | {ours / bare:.2f} |",
    ]
    return "\n".join(rows), onnx_path


def energy_table(data: Path, work: Path, onnx_path: Path, artifact: Path, images: int) -> str:
    """`edgeattack availability` with the NVML meter: measured energy per image, clean vs adversarial."""
    out = work / "availability.json"
    edgeattack_cli(
        "availability", "--engine", str(onnx_path), "-p", str(artifact), "--provider", "cuda", "--meter", "nvml",
        "--data", str(data), "--split", "val", "--limit", str(images), "-o", str(out),
    )
    document = json.loads(out.read_text())
    rows = ["| pass | measured mJ/image | estimated mJ/image (labelled estimate) | meter |", "|---|---:|---:|---|"]
    for p in document.get("passes", []):
        energy = p.get("energy") or {}
        measured, estimate = energy.get("measured_mj"), energy.get("estimate_mj")
        rows.append(
            f"| {p.get('label')} | {'null: ' + str(energy.get('reason')) if measured is None else f'{measured:.3f}'} | "
            f"{'null' if estimate is None else f'{estimate:.3f}'} | {energy.get('meter') or ''} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["deit_small_patch16_224", "deit_base_patch16_224"])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeattack-gpu-"))
    data = make_folder(work / "imagenet", args.images)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {args.images} images at 224, batch {args.batch_size}")
    print(f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}\n")
    table, artifacts = crafting_table(data, work, args.models, args.images, args.batch_size)
    print("## CUDA crafting: PGD L-inf 4/255, 10 steps, fp32 vs bf16 autocast\n")
    print(table + "\n")
    model = args.models[0]
    print(f"## Replay on ONNX Runtime's CUDA EP: edgeattack evaluate vs a bare session ({model})\n")
    replay, onnx_path = replay_table(data, work, model, artifacts[f"{model}-fp32"], args.images, args.batch_size)
    print(replay + "\n")
    print(f"## NVML energy per adversarial set ({model}, ORT CUDA EP)\n")
    print(energy_table(data, work, onnx_path, artifacts[f"{model}-fp32"], min(args.images, 64)) + "\n")
    os.environ.setdefault("EDGEATTACK_GPU_SUITE_WORK", str(work))


if __name__ == "__main__":
    main()
