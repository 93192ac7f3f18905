"""Crafting and replaying per-image perturbations stream: peak memory does not grow with the split.

A child process crafts FGSM with `edgeattack attack` over a folder of 600 and of 6,000 digit-sized
images (the shipped vit_tiny_digits, 32x32), then replays the per-image artifact with `evaluate`;
each reports its own peak RSS. Holding the split would cost about 48 KiB per image (images,
adversarials, deltas: over 250 MiB more for the large folder); streaming keeps the difference
to a few batches plus allocator noise (up to 35 MiB seen).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from edgeattack.cli.app import app
    root, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "attack":
        args = ["attack", "-m", "fgsm", "--model", "vit_tiny_digits", "--eps", "8/255", "--data", root,
                "--split", "all", "--batch-size", "128", "--quantize-inputs", "-o", out]
    else:
        args = ["evaluate", "--engine", "vit_tiny_digits", "-p", out, "--data", root, "--split", "all",
                "--no-latency", "-b", "128", "-o", out + ".json"]
    try:
        app(args, standalone_mode=False)
    finally:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"peak_mib": peak}))
    """
)


def _folder(root: Path, images: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / str(i % 10)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def _peak(root: Path, out: Path, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), str(out), mode], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")
def test_crafting_and_replay_memory_does_not_grow_with_the_split(tmp_path: Path):
    from edgeattack.artifacts import PerturbationArtifact

    peaks = {}
    for name, count in (("few", 600), ("many", 6000)):
        root = _folder(tmp_path / name, count)
        out = tmp_path / f"{name}.npz"
        peaks[name] = (_peak(root, out, "attack"), _peak(root, out, "replay"))
        artifact = PerturbationArtifact.load(out)
        assert artifact.delta.shape[0] == count and artifact.meta.kind == "per_image"
    (craft_few, replay_few), (craft_many, replay_many) = peaks["few"], peaks["many"]
    assert craft_many - craft_few <= 60, peaks  # both folders fill whole chunks (4 batches of 128)
    assert replay_many - replay_few <= 60, peaks
