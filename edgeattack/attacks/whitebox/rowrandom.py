"""Per-image random streams, so a result never depends on how images are batched or which are still robust.

Every random draw of the AutoAttack components belongs to one image: it comes from a stream seeded
with (attack seed, the image's dataset index, a stream number). Two kinds:

- `row_generators`: one CPU `torch.Generator` per image, for the few large draws of an attack (the
  random start of each APGD restart, FAB's restarts);
- `row_uniform`: a counter-based generator (SplitMix64 over the stream's key and a counter), for
  attacks that draw a few numbers per image at every one of thousands of iterations (Square): one
  vectorised numpy call per iteration instead of one generator call per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.attacks.whitebox.model import Tensor, torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def stream_seed(seed: int, index: int, stream: int = 0) -> int:
    """The seed of image `index`'s stream number `stream` under attack seed `seed` (independent streams)."""
    entropy = [int(seed) % 2**63, int(index) % 2**63, int(stream) % 2**63]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint64)
    return int(state[0] ^ (state[1] >> np.uint64(1))) & (2**63 - 1)


def row_generators(seed: int, ids: Sequence[int] | np.ndarray, stream: int = 0) -> list[Any]:
    """One CPU `torch.Generator` per dataset index in `ids`, seeded with `stream_seed`."""
    return [torch.Generator().manual_seed(stream_seed(seed, int(i), stream)) for i in ids]


def draw_rows(generators: Sequence[Any], rows: Tensor | np.ndarray, shape: tuple[int, ...], kind: str) -> Tensor:
    """A [len(rows), *shape] CPU tensor: `torch.rand` ("uniform") or `torch.randn` ("normal") per row,
    each from its own generator (`generators[r]` for r in `rows`)."""
    sample = torch.rand if kind == "uniform" else torch.randn
    picked = [int(r) for r in (rows.tolist() if hasattr(rows, "tolist") else rows)]
    if not picked:
        return torch.zeros((0, *shape))
    return torch.stack([sample(shape, generator=generators[r]) for r in picked])


def row_keys(seed: int, ids: Sequence[int] | np.ndarray, stream: int = 0) -> np.ndarray:
    """uint64 keys of the counter-based streams of `ids` (see `row_uniform`)."""
    return np.array([stream_seed(seed, int(i), stream) for i in ids], dtype=np.uint64)


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def row_uniform(keys: np.ndarray, counter: int, lanes: int) -> np.ndarray:
    """[len(keys), lanes] float64 uniforms in [0, 1): the `counter`-th block of each key's stream.

    SplitMix64: value i of a stream is mix(key + i * golden), with i = counter * lanes + lane + 1; the
    draws of one image depend only on its key and the counter, never on the other rows.
    """
    steps = np.uint64(counter) * np.uint64(lanes) + np.arange(1, lanes + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = keys[:, None] + steps[None, :] * _GOLDEN
    return (_splitmix(state) >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


__all__ = ["draw_rows", "row_generators", "row_keys", "row_uniform", "stream_seed"]
