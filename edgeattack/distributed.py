"""Which process of a `torchrun` launch this is, and shards of work over ranks (no torch needed).

`dist_env()` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); `Shard.parse("I/N")`
is the `--shard` option; `Shard.positions(n)` is the contiguous block of n items a shard owns, the
same split for every caller so shards merge back in order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgeattack.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv | None:
    """The torchrun launch this process belongs to, or None when it runs alone (WORLD_SIZE unset or 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: need 0 <= I < N (0-based I/N)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, e.g. `0/4`."""
        index, sep, count = text.partition("/")
        try:
            if not sep:
                raise ValueError(text)
            return cls(int(index), int(count))
        except ValueError as exc:
            raise ConfigError(f"--shard takes I/N with integers (e.g. 0/4), got {text!r}") from exc

    @classmethod
    def from_env(cls) -> Shard | None:
        """The shard of this torchrun rank, or None outside torchrun."""
        env = dist_env()
        return None if env is None else cls(env.rank, env.world_size)

    def positions(self, total: int) -> np.ndarray:
        """The contiguous block of positions 0..total-1 this shard owns (sizes differ by at most one)."""
        bounds = np.linspace(0, total, self.count + 1).round().astype(np.int64)
        return np.arange(bounds[self.index], bounds[self.index + 1], dtype=np.int64)

    @property
    def text(self) -> str:
        return f"{self.index}/{self.count}"
