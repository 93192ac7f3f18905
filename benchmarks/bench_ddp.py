"""`edgeattack train` in one process vs on N gloo ranks under torchrun, same global batch, on the CPU.

Trains the digits ViT (`vit_tiny_digits`, 32x32) for `--epochs` epochs with global batch
`--batch-size`, once as `python -m edgeattack train` and once as `python -m torch.distributed.run
--nproc_per_node N -m edgeattack train`, each process with `--threads` torch threads (so N ranks use
N x threads cores), and prints a Markdown table: wall time of the whole command (start-up, data,
validation and test included), the training time per epoch the command reports, the ratio to one
process, and the largest difference of the saved weights from the one-process run.

    python benchmarks/bench_ddp.py [--ranks 2] [--epochs 2] [--batch-size 128] [--threads 1] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(ranks: int, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    """(wall seconds of the command, its train.json) for one launch."""
    command = [sys.executable, "-m", "edgeattack"]
    if ranks > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "edgeattack",
        ]
    command += [
        "train", "vit_tiny_digits", "--out", str(out), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", "cpu",
        *(("--limit", str(args.limit)) if args.limit else ()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "vit_tiny_digits.train.json").read_text())


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        single_wall, single = run(1, base / "one", args)
        multi_wall, multi = run(args.ranks, base / "many", args)
        diff = max_diff(base / "one" / "vit_tiny_digits.safetensors", base / "many" / "vit_tiny_digits.safetensors")
    for label, wall, record, gap in (
        ("1 process", single_wall, single, 0.0),
        (f"{args.ranks} gloo ranks", multi_wall, multi, diff),
    ):
        per_epoch = record["wall_s"] / args.epochs
        rows.append(
            f"| {label} | {args.threads * (1 if label == '1 process' else args.ranks)} | {wall:.1f} | "
            f"{per_epoch:.2f} | {per_epoch / (single['wall_s'] / args.epochs):.2f} | "
            f"{record['train_loss'][-1]:.6f} | {gap:.2e} |"
        )
    images = args.limit or 1258
    print(
        f"vit_tiny_digits, {images} train images, global batch {args.batch_size}, {args.epochs} epochs, "
        f"{os.cpu_count()} CPUs, torch threads per process {args.threads}\n"
    )
    print("| launch | threads total | command wall s | train s/epoch | ratio to 1 process | final train loss | max weight diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
