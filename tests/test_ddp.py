"""Training under torchrun: 2 gloo ranks on the CPU equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("torch.distributed")

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args: list[str], ranks: int) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "edgeattack"]
    if ranks > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "edgeattack",
        ]
    return subprocess.run(
        [*launcher, *args], capture_output=True, text=True, env=_env(), timeout=240, check=False
    )


def _diffs(a: Path, b: Path) -> tuple[float, float]:
    """(max abs difference, fraction of elements differing by more than 1e-5) of two weight files."""
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    gaps = [(left[k].double() - right[k].double()).abs().flatten() for k in left]
    every = torch.cat(gaps)
    return float(every.max()), float((every > 1e-5).double().mean())


def _adam_equal(a: Path, b: Path) -> None:
    """Equal up to float rounding as AdamW sees it: it divides each gradient by its own size, so the
    few elements whose true gradient is zero (a key bias under softmax) or tiny move by rounding
    noise times the step size; everything else agrees to 1e-5."""
    worst, share = _diffs(a, b)
    assert share < 2e-4, share
    assert worst < 5e-4, worst


WORKER = """
import sys, numpy as np, torch
from edgeattack.data.base import ImageDataset
from edgeattack.training import LoopConfig, run_training, training_session

rng = np.random.default_rng(0)
data = ImageDataset(rng.random((35, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, 35), name="toy", split="train")
with training_session("cpu") as runtime:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    step = lambda net, x, y: (torch.nn.functional.cross_entropy(net(x), y), {"half": x.mean()})
    result = run_training(model, data, step, lambda: torch.optim.SGD(model.parameters(), lr=0.5),
                          LoopConfig(epochs=2, batch_size=8, max_shift=1, warmup_epochs=1, grad_clip=1.0))
    if runtime.is_main:
        torch.save({"state": model.state_dict(), "epochs": result.epochs, "steps": result.steps}, sys.argv[1])
"""


def test_loop_on_two_ranks_equals_one_process_exactly_with_sgd(tmp_path: Path):
    # 35 images in global batches of 8: the last batch of 3 splits 2 + 1, so the ranks weigh their losses
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    outs = []
    for ranks in (1, 2):
        out = tmp_path / f"{ranks}.pt"
        launcher = [sys.executable]
        if ranks > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                         "--master_port", str(_free_port())]
        done = subprocess.run([*launcher, str(script), str(out)], capture_output=True, text=True, env=_env(),
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        outs.append(torch.load(out))
    one, two = outs
    assert one["steps"] == two["steps"] == 10
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, atol=1e-6, rtol=1e-5)
    for mine, theirs in zip(one["epochs"], two["epochs"], strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6)


def _both(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run `args` in one process and on 2 ranks, into tmp_path/one and tmp_path/two."""
    outs = tmp_path / "one", tmp_path / "two"
    for ranks, out in zip((1, 2), outs, strict=True):
        done = _run([*args, "--out", str(out)], ranks)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return outs


def test_train_on_two_gloo_ranks_equals_one_process(tmp_path: Path):
    # 150 images, global batch 64: steps of 64, 64 and a partial 22 (11 per rank)
    args = ["train", "vit_tiny_digits", "--epochs", "1", "--batch-size", "64", "--limit", "150",
            "--device", "cpu", "--threads", "1"]
    one, two = _both(args, tmp_path)
    _adam_equal(one / "vit_tiny_digits.safetensors", two / "vit_tiny_digits.safetensors")
    record = json.loads((two / "vit_tiny_digits.train.json").read_text())
    assert record["world_size"] == 2 and record["device"] == "cpu" and record["precision"] == "fp32"
    single = json.loads((one / "vit_tiny_digits.train.json").read_text())
    assert single["world_size"] == 1
    assert record["train_loss"][0] == pytest.approx(single["train_loss"][0], rel=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_distill_on_two_gloo_ranks_equals_one_process(tmp_path: Path):
    args = ["compress", "--method", "distill", "--epochs", "1", "--param", "max_steps=3", "--param",
            "batch_size=32", "--limit", "96", "--device", "cpu"]
    one, two = _both(args, tmp_path)
    name = "deit_tiny_digits_distilled"
    _adam_equal(one / f"{name}.safetensors", two / f"{name}.safetensors")
    report = json.loads((two / f"{name}.report.json").read_text())
    assert report["steps"] == 3 and report["training"]["world_size"] == 2


def test_a_failing_launch_fails_clearly(tmp_path: Path):
    done = _run(["train", "vit_tiny_digits", "--epochs", "1", "--batch-size", "63", "--limit", "64",
                 "--device", "cpu", "--out", str(tmp_path)], 2)
    assert done.returncode != 0
    assert "multiple of the 2 ranks" in done.stdout + done.stderr
    assert not (tmp_path / "vit_tiny_digits.safetensors").exists()


def test_torchrun_attack_ranks_craft_shards_that_merge_into_the_one_process_artifact(tmp_path: Path):
    """`edgeattack attack` under torchrun: each rank crafts its shard; merge-artifacts gives the one-process artifact."""
    import numpy as np

    from edgeattack.artifacts import PerturbationArtifact

    attack = ["attack", "-m", "pgd", "--model", "vit_tiny_digits", "--eps", "8/255", "--steps", "3",
              "--param", "random_start=true", "--limit", "48", "--batch-size", "8", "--device", "cpu"]
    for ranks, out in ((1, "single.npz"), (2, "ranked.npz")):
        done = _run([*attack, "-o", str(tmp_path / out)], ranks)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shards = sorted(tmp_path.glob("ranked.rank*-of-2.npz"))
    assert [p.name for p in shards] == ["ranked.rank0-of-2.npz", "ranked.rank1-of-2.npz"]
    assert {PerturbationArtifact.load(p).meta.params["shard"] for p in shards} == {"0/2", "1/2"}
    merged = tmp_path / "merged.npz"
    done = _run(["merge-artifacts", str(merged), *map(str, shards)], 1)
    assert done.returncode == 0, done.stderr[-2000:]
    one, joined = PerturbationArtifact.load(tmp_path / "single.npz"), PerturbationArtifact.load(merged)
    np.testing.assert_array_equal(joined.indices, one.indices)
    np.testing.assert_allclose(np.asarray(joined.delta), np.asarray(one.delta), atol=1e-6)
