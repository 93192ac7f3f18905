"""Where a training run computes: device, autocast precision, and its place in a torchrun launch.

`training_session(device, precision)` resolves `--device`/`--precision`; launched by torchrun it
also starts the process group (gloo on the CPU, nccl on CUDA, each rank on cuda:LOCAL_RANK) and
destroys it at the end. Inside the session `current_runtime()` is what every trainer's loop
(`edgeattack.training.loop.run_training`) uses, so library trainers need no extra arguments.
Outside one, training runs in one process on the CPU in float32, as it always did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from edgeattack.devices import Precision, device_record, precision_record, resolve_device
from edgeattack.distributed import dist_env
from edgeattack.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class TrainRuntime:
    """A device, an autocast policy, and this process's rank among `world_size` (1: no process group)."""

    device: str = "cpu"
    precision: Precision = field(default_factory=Precision)
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs, validates and writes (rank 0)."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What a report records: device (and GPU name), precision (and TF32 switches), world size."""
        return {
            **device_record(self.device),
            **precision_record(self.precision, self.device),
            "world_size": self.world_size,
        }


_CURRENT: ContextVar[TrainRuntime | None] = ContextVar("edgeattack_train_runtime", default=None)


def current_runtime() -> TrainRuntime:
    """The runtime of the enclosing `training_session`/`use_runtime`, else CPU float32 in one process."""
    return _CURRENT.get() or TrainRuntime()


@contextlib.contextmanager
def use_runtime(runtime: TrainRuntime) -> Iterator[TrainRuntime]:
    """Make `runtime` the current one inside the block."""
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)


def session_device(spec: str, local_rank: int | None) -> str:
    """The torch device for `--device spec`; under torchrun (`local_rank` given) a GPU is cuda:LOCAL_RANK."""
    if local_rank is None:
        return resolve_device(spec)
    import torch

    text = (spec or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if text not in ("auto", "cuda"):
        raise ConfigError(
            f"--device {spec} under torchrun: each rank uses cuda:LOCAL_RANK; pass --device cuda, auto or cpu"
        )
    return resolve_device(f"cuda:{local_rank}")


@contextlib.contextmanager
def training_session(
    device: str = "auto", precision: str = "fp32", *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[TrainRuntime]:
    """Resolve the runtime, start the torchrun process group if launched by torchrun, make it current.

    A rank that raises logs which rank failed before the error propagates; torchrun then stops the
    other ranks and the launch exits non-zero.
    """
    env = dist_env()
    policy = Precision(precision)
    resolved = session_device(device, None if env is None else env.local_rank)
    policy.check_device(resolved)
    if env is None:
        with use_runtime(TrainRuntime(device=resolved, precision=policy)) as runtime:
            yield runtime
        return
    import torch
    import torch.distributed as dist

    if resolved.startswith("cuda"):
        torch.cuda.set_device(torch.device(resolved))
    backend = "nccl" if resolved.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    runtime = TrainRuntime(device=resolved, precision=policy, rank=env.rank, world_size=env.world_size)
    logger.info("rank %d/%d on %s (%s)", env.rank, env.world_size, resolved, backend)
    try:
        with use_runtime(runtime):
            yield runtime
        dist.barrier()  # the ranks leave together: a rank that tears down early can abort a peer's gloo threads
    except BaseException as exc:
        logger.error("rank %d of %d failed: %s: %s", env.rank, env.world_size, type(exc).__name__, exc)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
