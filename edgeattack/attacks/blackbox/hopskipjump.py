"""HopSkipJump: a decision-based attack that walks along the decision boundary. No torch.

Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack",
IEEE S&P 2020 (arXiv:1904.02144).

Every image starts from uniform noise that the engine already judges adversarial and is pulled
towards its original by a binary search. Each iteration then

1. estimates the direction of the boundary's normal at the current boundary point by Monte-Carlo
   sampling of the top-1 decision (`initial_gradient_eval_steps * sqrt(t + 1)` samples, at most
   `max_gradient_eval_steps`), with the paper's baseline subtraction;
2. steps along it (L2: the unit direction; L-inf: its sign) with a geometric step-size search
   starting at `distance / sqrt(t + 1)`, halving until the step lands on the adversarial side;
3. binary-searches back to the boundary towards the original (blend for L2, box projection for
   L-inf), to the paper's tolerance theta = gamma / d^(3/2) (L2) or gamma / d^2 (L-inf), d = C*H*W.

All images of a problem move in lockstep and every phase is one `problem.query` per round for all
of them. The attack is budget-aware: the gradient estimate of an image takes what is left after
reserving its binary search and one step-size query, an image that cannot afford that stops, and
a binary search cut short by the budget still ends on a checked adversarial. `Problem` keeps the
closest adversarial of every image, so nothing found is lost. In the bounded mode an image stops
as soon as it is within eps.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from edgeattack.attacks.blackbox.base import BlackBoxAttack
from edgeattack.attacks.blackbox.problem import Problem, distances
from edgeattack.errors import ConfigError

__all__ = ["HSJ", "HopSkipJump"]

_QUERY_BLOCK = 2048
"""Most images in one gradient-estimation query (bounds the memory of the samples)."""

_MAX_HALVINGS = 25
"""Most step-size halvings per iteration before an image keeps its current point."""

_INIT_TOLERANCE = 1e-3
"""Blend tolerance of the initial search in the L-inf mode (the L-inf search follows it)."""


def _live(problem: Problem, rows: np.ndarray, need: int = 1) -> np.ndarray:
    """Mask over `rows`: still worth querying with `need` queries (see `Problem.active`)."""
    return np.isin(rows, problem.active(need))


class HopSkipJump(BlackBoxAttack):
    """HopSkipJump (L2 or L-inf), minimal-perturbation or bounded by eps."""

    name: ClassVar[str] = "hopskipjump"
    kind: ClassVar[str] = "decision"
    norms: ClassVar[tuple[str, ...]] = ("l2", "linf")
    minimal: ClassVar[bool] = True

    def __init__(
        self,
        *,
        steps: int = 64,
        initial_gradient_eval_steps: int = 100,
        max_gradient_eval_steps: int = 10000,
        gamma: float = 1.0,
        init_attempts: int = 100,
        **common,
    ) -> None:
        super().__init__(**common)
        if steps < 0:
            raise ConfigError(f"steps must be >= 0, got {steps}")
        if initial_gradient_eval_steps < 1:
            raise ConfigError(f"initial_gradient_eval_steps must be >= 1, got {initial_gradient_eval_steps}")
        if max_gradient_eval_steps < initial_gradient_eval_steps:
            raise ConfigError(
                f"max_gradient_eval_steps ({max_gradient_eval_steps}) must be >= "
                f"initial_gradient_eval_steps ({initial_gradient_eval_steps})"
            )
        if not (np.isfinite(gamma) and gamma > 0):
            raise ConfigError(f"gamma must be a positive number, got {gamma}")
        if init_attempts < 1:
            raise ConfigError(f"init_attempts must be >= 1, got {init_attempts}")
        self.steps = steps
        self.initial_gradient_eval_steps = initial_gradient_eval_steps
        self.max_gradient_eval_steps = max_gradient_eval_steps
        self.gamma = gamma
        self.init_attempts = init_attempts

    # the search --------------------------------------------------------------------------------
    def run(self, problem: Problem) -> None:
        d = int(np.prod(problem.x0.shape[1:]))
        theta = self.gamma / (d * math.sqrt(d)) if self.norm == "l2" else self.gamma / (d * d)
        low, high = problem.bounds

        x_adv, alive = self._initialize(problem, theta)
        for step in range(self.steps):
            rows = np.flatnonzero(alive)
            rows = rows[_live(problem, rows)]
            if rows.size == 0:
                return
            dist = problem.distance(x_adv[rows], rows)
            if step == 0:
                delta = np.full(rows.size, 0.1 * (high - low))
            else:
                # sqrt(d) * theta * dist (L2) or d * theta * dist (L-inf): gamma * dist / d either way
                delta = (math.sqrt(d) if self.norm == "l2" else d) * theta * dist
            delta = np.maximum(delta, 1e-12)

            planned = int(min(self.initial_gradient_eval_steps * math.sqrt(step + 1), self.max_gradient_eval_steps))
            reserve = self._search_steps(x_adv[rows], problem.x0[rows], theta, (low, high)) + 1
            n_evals = np.minimum(planned, problem.remaining(rows) - reserve)
            affordable = n_evals >= 1
            alive[rows[~affordable]] = False
            rows, dist, delta, n_evals = rows[affordable], dist[affordable], delta[affordable], n_evals[affordable]
            if rows.size == 0:
                return

            grad = self._gradient(problem, rows, x_adv[rows], n_evals, delta)
            update = np.sign(grad) if self.norm == "linf" else grad
            moved = self._step_size_search(problem, rows, x_adv[rows], update, dist / math.sqrt(step + 1))
            x_adv[rows] = self._binary_search(problem, rows, moved, theta, self.norm)

    def _initialize(self, problem: Problem, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """Uniform noise judged adversarial, blended towards the original by a binary search.

        Returns the starting points and which images have one.
        """
        low, high = problem.bounds
        x_adv = problem.x0.copy()
        found = np.zeros(problem.n, dtype=bool)
        for _ in range(self.init_attempts):
            rows = np.flatnonzero(~found)
            rows = rows[_live(problem, rows)]
            if rows.size == 0:
                break
            noise = problem.rng.uniform(low, high, size=(rows.size, *problem.x0.shape[1:])).astype(np.float32)
            adv = problem.labels_of(noise, rows)
            x_adv[rows[adv]] = noise[adv]
            found[rows[adv]] = True
        rows = np.flatnonzero(found)
        if rows.size == 0:
            return x_adv, found
        tolerance = theta if self.norm == "l2" else _INIT_TOLERANCE
        x_adv[rows] = self._binary_search(problem, rows, x_adv[rows], tolerance, "l2")
        if self.norm == "linf":
            x_adv[rows] = self._binary_search(problem, rows, x_adv[rows], theta, "linf")
        return x_adv, found

    # the phases --------------------------------------------------------------------------------
    def _gradient(
        self, problem: Problem, rows: np.ndarray, x: np.ndarray, n_evals: np.ndarray, delta: np.ndarray
    ) -> np.ndarray:
        """Monte-Carlo estimate of the boundary normal at `x` (unit L2 norm), `n_evals[k]` samples.

        Samples of all images are queried together in blocks; the baseline-subtracted estimate
        mean((m - mean m) u) is accumulated as sum(m u) - mean(m) sum(u), so no block keeps them all.
        """
        n, shape = rows.size, x.shape[1:]
        flat = x.reshape(n, -1)
        d = flat.shape[1]
        low, high = problem.bounds
        sum_mu = np.zeros((n, d))
        sum_u = np.zeros((n, d))
        sum_m = np.zeros(n)
        owners = np.repeat(np.arange(n), n_evals)
        for start in range(0, owners.size, _QUERY_BLOCK):
            pos = owners[start : start + _QUERY_BLOCK]
            if self.norm == "l2":
                noise = problem.rng.standard_normal((pos.size, d), dtype=np.float32)
            else:
                noise = problem.rng.uniform(-1.0, 1.0, size=(pos.size, d)).astype(np.float32)
            noise /= np.sqrt((noise.astype(np.float64) ** 2).sum(axis=1, keepdims=True)).astype(np.float32) + 1e-12
            perturbed = np.clip(flat[pos] + delta[pos, None].astype(np.float32) * noise, low, high)
            u = (perturbed - flat[pos]) / delta[pos, None]
            sign = np.where(problem.labels_of(perturbed.reshape(pos.size, *shape), rows[pos]), 1.0, -1.0)
            owner, first = np.unique(pos, return_index=True)
            sum_mu[owner] += np.add.reduceat(sign[:, None] * u, first, axis=0)
            sum_u[owner] += np.add.reduceat(u, first, axis=0)
            sum_m[owner] += np.add.reduceat(sign, first)
        mean_m = sum_m / n_evals
        # all samples on one side: no baseline (it would cancel the estimate)
        baseline = np.where(np.abs(mean_m) == 1.0, 0.0, mean_m)
        grad = (sum_mu - baseline[:, None] * sum_u) / n_evals[:, None]
        grad /= np.sqrt((grad**2).sum(axis=1, keepdims=True)) + 1e-12
        return grad.reshape(x.shape).astype(np.float32)

    def _step_size_search(
        self, problem: Problem, rows: np.ndarray, x: np.ndarray, update: np.ndarray, step: np.ndarray
    ) -> np.ndarray:
        """Geometric search: `x + step * update`, halving `step` until adversarial.

        An image whose search fails (budget, or `_MAX_HALVINGS`) keeps `x`.
        """
        out = x.copy()
        step = step.astype(np.float64).copy()
        todo = np.ones(rows.size, dtype=bool)
        for _ in range(_MAX_HALVINGS):
            idx = np.flatnonzero(todo & _live(problem, rows))
            if idx.size == 0:
                break
            candidate = problem.clip(x[idx] + step[idx].reshape(-1, 1, 1, 1).astype(np.float32) * update[idx])
            adv = problem.labels_of(candidate, rows[idx])
            out[idx[adv]] = candidate[adv]
            todo[idx[adv]] = False
            step[idx[~adv]] /= 2.0
        return out

    def _search_steps(self, x: np.ndarray, x0: np.ndarray, theta: float, bounds: tuple[float, float]) -> np.ndarray:
        """How many queries `_binary_search` of `x` towards `x0` takes (per image)."""
        high, threshold = self._search_interval(x, x0, theta, self.norm, bounds)
        return np.ceil(np.log2(np.maximum(high / threshold, 1.0))).astype(np.int64)

    @staticmethod
    def _search_interval(
        x: np.ndarray, x0: np.ndarray, theta: float, norm: str, bounds: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Initial upper end and stopping width of the binary search (the paper's choice).

        L2 searches the blend factor in [0, 1] to theta; L-inf the box radius in [0, dist] to
        min(dist * theta, theta), no finer than float32 can resolve.
        """
        if norm == "l2":
            return np.ones(x.shape[0]), np.full(x.shape[0], theta)
        high = distances(x - x0, "linf")
        resolution = float(np.finfo(np.float32).eps) * (bounds[1] - bounds[0])
        return high, np.maximum(np.minimum(high * theta, theta), resolution)

    def _binary_search(self, problem: Problem, rows: np.ndarray, x: np.ndarray, theta: float, norm: str) -> np.ndarray:
        """Binary search from adversarial `x` towards the originals; returns the adversarial end.

        Each round queries every image whose interval is still wider than its threshold and that
        can afford the query; an image out of budget returns its last adversarial point.
        """
        x0 = problem.x0[rows]
        high, threshold = self._search_interval(x, x0, theta, norm, problem.bounds)
        low = np.zeros_like(high)
        while True:
            idx = np.flatnonzero((high - low > threshold) & _live(problem, rows))
            if idx.size == 0:
                break
            mid = (low[idx] + high[idx]) / 2.0
            adv = problem.labels_of(self._project(x0[idx], x[idx], mid, norm), rows[idx])
            high[idx] = np.where(adv, mid, high[idx])
            low[idx] = np.where(adv, low[idx], mid)
        return self._project(x0, x, high, norm)

    @staticmethod
    def _project(x0: np.ndarray, x: np.ndarray, alpha: np.ndarray, norm: str) -> np.ndarray:
        """L2: the blend (1 - alpha) x0 + alpha x. L-inf: x clipped to the box of radius alpha around x0."""
        alpha = alpha.reshape(-1, *([1] * (x.ndim - 1)))
        if norm == "l2":
            out = (1.0 - alpha) * x0 + alpha * x
        else:
            out = np.clip(x, x0 - alpha, x0 + alpha)
        return out.astype(np.float32)


HSJ = HopSkipJump
