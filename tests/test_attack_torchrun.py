"""`edgeattack attack` under torchrun: each rank crafts its shard, merge-artifacts gives the one-process artifact."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch.distributed")

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(launcher: list[str], args: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_torchrun_ranks_craft_shards_that_merge_into_the_one_process_artifact(tmp_path: Path):
    from edgeattack.artifacts import PerturbationArtifact

    attack = ["attack", "-m", "pgd", "--model", "vit_tiny_digits", "--eps", "8/255", "--steps", "3",
              "--param", "random_start=true", "--limit", "48", "--batch-size", "8", "--device", "cpu"]
    single = tmp_path / "single.npz"
    _run([sys.executable, "-m", "edgeattack"], [*attack, "-o", str(single)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), "-m", "edgeattack"]
    _run(torchrun, [*attack, "-o", str(tmp_path / "ranked.npz")])
    shards = sorted(tmp_path.glob("ranked.rank*-of-2.npz"))
    assert [p.name for p in shards] == ["ranked.rank0-of-2.npz", "ranked.rank1-of-2.npz"]
    assert {PerturbationArtifact.load(p).meta.params["shard"] for p in shards} == {"0/2", "1/2"}
    merged = tmp_path / "merged.npz"
    _run([sys.executable, "-m", "edgeattack"], ["merge-artifacts", str(merged), *map(str, shards)])
    one, joined = PerturbationArtifact.load(single), PerturbationArtifact.load(merged)
    np.testing.assert_array_equal(joined.indices, one.indices)
    np.testing.assert_allclose(np.asarray(joined.delta), np.asarray(one.delta), atol=1e-6)
