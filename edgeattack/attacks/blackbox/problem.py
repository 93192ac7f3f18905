"""The state of one black-box attack on a chunk of images, seen only through the oracle.

An attack's `run` queries through `Problem.query`, which charges the oracle, judges every answer
with the attack's criterion (untargeted: top-1 differs from the label; targeted: top-1 is the
target) and keeps, per image, the closest adversarial found so far under the attack's norm and the
number of queries it had used when it first found one (within `eps` in the bounded mode). Attacks
therefore never lose an adversarial they have seen, and the base class returns `best` as it is.
No torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeattack.attacks.blackbox.oracle import EngineOracle

__all__ = ["NORMS", "Problem", "distances", "project_to_ball"]

NORMS = ("l2", "linf", "none")
_TOLERANCE = 1e-6


def distances(delta: np.ndarray, norm: str) -> np.ndarray:
    """Per-image norm of `delta` [N, ...]; "none" gives zeros (any adversarial is as good)."""
    flat = delta.reshape(delta.shape[0], -1).astype(np.float64)
    if norm == "l2":
        return np.sqrt((flat**2).sum(axis=1))
    if norm == "linf":
        return np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(flat.shape[0])
    return np.zeros(flat.shape[0])


def project_to_ball(x0: np.ndarray, x: np.ndarray, eps: float | None, norm: str) -> np.ndarray:
    """`x` moved into the `norm` ball of radius `eps` around `x0` (unchanged for eps None or norm "none").

    L2 scales the perturbation down to length eps, L-inf clips it per pixel; both keep `x` inside any
    box that holds `x0` and `x`, so no new bound clipping is needed. This is foolbox's bounded-mode
    convention: a minimal attack's best adversarial is clipped to the budget, then tested again.
    """
    if eps is None or norm == "none":
        return x
    delta = (x - x0).astype(np.float64)
    if norm == "linf":
        delta = np.clip(delta, -eps, eps)
    else:
        length = np.sqrt((delta.reshape(delta.shape[0], -1) ** 2).sum(axis=1))
        scale = np.minimum(1.0, eps / np.maximum(length, 1e-300))
        delta *= scale.reshape(-1, *([1] * (delta.ndim - 1)))
    return (x0 + delta).astype(np.float32)


@dataclass
class Problem:
    """Images `x0` [n, C, H, W] (oracle ids `ids`) to attack under `norm`, within `eps` if bounded."""

    oracle: EngineOracle
    x0: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    norm: str
    eps: float | None = None
    target: np.ndarray | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    best: np.ndarray = field(init=False)
    best_dist: np.ndarray = field(init=False)
    found: np.ndarray = field(init=False)
    queries_to_success: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = self.x0.shape[0]
        self.best = self.x0.copy()
        self.best_dist = np.full(n, np.inf)
        self.found = np.zeros(n, dtype=bool)
        self.queries_to_success = np.full(n, -1, dtype=np.int64)

    # geometry --------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.x0.shape[0])

    @property
    def bounds(self) -> tuple[float, float]:
        return self.oracle.low, self.oracle.high

    @property
    def targeted(self) -> bool:
        return self.target is not None

    def clip(self, x: np.ndarray) -> np.ndarray:
        low, high = self.bounds
        return np.clip(x, low, high).astype(np.float32)

    def distance(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return distances(x - self.x0[rows], self.norm)

    def within_eps(self, dist: np.ndarray) -> np.ndarray:
        if self.eps is None or self.norm == "none":
            return np.ones(dist.shape, dtype=bool)
        return dist <= self.eps * (1 + _TOLERANCE) + 1e-7

    @property
    def success(self) -> np.ndarray:
        """Images with an adversarial found (within eps in the bounded mode)."""
        return self.found & self.within_eps(self.best_dist)

    # budget ----------------------------------------------------------------------------------
    def remaining(self, rows: np.ndarray | None = None) -> np.ndarray:
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        return self.oracle.remaining(self.ids[rows])

    def active(self, need: int = 1) -> np.ndarray:
        """Rows still worth querying: `need` queries left and, when bounded, not yet successful.

        A minimal-perturbation attack without eps keeps refining found adversarials while budget lasts.
        """
        keep = self.remaining() >= need
        if self.eps is not None or self.norm == "none":
            keep &= ~self.success
        return np.flatnonzero(keep)

    # criterion -------------------------------------------------------------------------------
    def is_adversarial(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        pred = logits.argmax(axis=1)
        if self.target is not None:
            return pred == self.target[rows]
        return pred != self.labels[rows]

    def margin(self, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Score-based loss, negative exactly when adversarial.

        Untargeted: z_label − max_{j≠label} z_j. Targeted: max_{j≠target} z_j − z_target.
        """
        cls = self.target[rows] if self.target is not None else self.labels[rows]
        picked = logits[np.arange(len(rows)), cls]
        others = logits.copy()
        others[np.arange(len(rows)), cls] = -np.inf
        best_other = others.max(axis=1)
        return picked - best_other if self.target is None else best_other - picked

    # queries ---------------------------------------------------------------------------------
    def query(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, is_adversarial) for candidate images `x` of problem rows `rows` (may repeat).

        Charges one query per row to the oracle and records every adversarial that beats the best
        one of its image.
        """
        rows = np.asarray(rows, dtype=np.int64)
        x = self.clip(x)
        logits = self.oracle.logits(x, self.ids[rows])
        adv = self.is_adversarial(logits, rows)
        if adv.any():
            self._record(x[adv], rows[adv])
        return logits, adv

    def labels_of(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Only the adversarial verdicts of `query` (decision-based attacks)."""
        return self.query(x, rows)[1]

    def _record(self, x: np.ndarray, rows: np.ndarray) -> None:
        dist = self.distance(x, rows)
        candidate = np.full(self.n, np.inf)
        np.minimum.at(candidate, rows, dist)
        improves = dist < self.best_dist[rows]
        winners = improves & (dist == candidate[rows])
        if not winners.any():
            return
        unique_rows, first = np.unique(rows[winners], return_index=True)
        picked = np.flatnonzero(winners)[first]
        self.best[unique_rows] = x[picked]
        self.best_dist[unique_rows] = dist[picked]
        self.found[unique_rows] = True
        waiting = unique_rows[self.queries_to_success[unique_rows] < 0]
        reached = waiting[self.within_eps(self.best_dist[waiting])]
        self.queries_to_success[reached] = self.oracle.queries[self.ids[reached]]
