"""The paper's two noise attacks, decision-based and minimal (L2): numpy, one query per row per step.

- `SaltAndPepper`: sets a growing fraction p of the pixels to the lower or upper bound (the same
  pixels in every channel with `across_channels`), keeps the closest adversarial, and after each
  improvement narrows p to [p/2, 1.2·p] and spreads the remaining steps over that range (the
  schedule of foolbox's SaltAndPepperNoiseAttack, per image instead of per batch).
- `BlendedUniformNoise` (Linear-Search Blended Uniform Noise): draws uniform noise images until one
  is adversarial (at most `directions` draws), then walks the blend (1−ε)·x + ε·noise for
  ε = 1/steps, 2/steps, ... and stops at the first adversarial ε, optionally refined by a binary
  search between the last clean and the first adversarial ε.

Unlike foolbox's versions, every image stops as soon as it is done (foolbox's linear search and
noise draws go on for the whole batch until the last image is done; its salt-and-pepper always runs
every step), a bounded mode (`eps`) stops an image once its adversarial is within eps, and the
per-image query budget is never exceeded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeattack.attacks.blackbox.base import BlackBoxAttack
from edgeattack.attacks.blackbox.problem import Problem
from edgeattack.errors import ConfigError

__all__ = ["BlendedUniformNoise", "SaltAndPepper"]


class SaltAndPepper(BlackBoxAttack):
    """Salt-and-pepper noise of increasing density, minimal L2 (eps optional)."""

    name = "salt_and_pepper"
    kind = "decision"
    norms = ("l2",)
    minimal = True

    def __init__(self, *, steps: int = 1000, across_channels: bool = True, **common: Any) -> None:
        super().__init__(**common)
        if steps < 1:
            raise ConfigError(f"salt_and_pepper needs steps >= 1, got {steps}")
        self.steps = steps
        self.across_channels = across_channels

    def run(self, problem: Problem) -> None:
        n = problem.n
        low, high = problem.bounds
        span = high - low
        min_p = np.zeros(n)
        max_p = np.ones(n)
        stepsize = max_p / self.steps
        p = stepsize.copy()
        shape = list(problem.x0.shape)
        if self.across_channels:
            shape[1] = 1
        for step in range(self.steps):
            rows = problem.active()
            if rows.size == 0:
                break
            u = problem.rng.random((rows.size, *shape[1:]))
            p_ = p[rows].reshape(-1, 1, 1, 1)
            salt = (u >= 1 - p_ / 2) * span
            pepper = (u < p_ / 2) * span
            candidate = problem.x0[rows] + salt - pepper
            before = problem.best_dist[rows].copy()
            problem.query(candidate.astype(np.float32), rows)
            improved = problem.best_dist[rows] < before
            r_imp = rows[improved]
            if r_imp.size:
                min_p[r_imp] = 0.5 * p[r_imp]
                max_p[r_imp] = np.minimum(1.2 * p[r_imp], 1.0)
                stepsize[r_imp] = (max_p[r_imp] - min_p[r_imp]) / (self.steps - step)
            reset = improved | (p[rows] >= max_p[rows])
            p[rows] = np.where(reset, min_p[rows], p[rows])
            p[rows] = np.minimum(p[rows] + stepsize[rows], max_p[rows])


class BlendedUniformNoise(BlackBoxAttack):
    """Linear search along the blend of the image with adversarial uniform noise, minimal L2."""

    name = "blended_noise"
    kind = "decision"
    norms = ("l2", "linf")
    minimal = True

    def __init__(
        self,
        *,
        directions: int = 1000,
        steps: int = 1000,
        binary_search_steps: int = 0,
        candidates_per_query: int = 1,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if directions < 1 or steps < 1:
            raise ConfigError(f"blended_noise needs directions >= 1 and steps >= 1, got {directions}, {steps}")
        if binary_search_steps < 0 or candidates_per_query < 1:
            raise ConfigError("blended_noise needs binary_search_steps >= 0 and candidates_per_query >= 1")
        self.directions = directions
        self.steps = steps
        self.binary_search_steps = binary_search_steps
        self.candidates_per_query = candidates_per_query

    def run(self, problem: Problem) -> None:
        noise, has = self._draw(problem)
        rows = np.flatnonzero(has)
        if rows.size == 0:
            return
        lo, hi = self._linear_search(problem, rows, noise)
        self._binary_search(problem, rows, noise, lo, hi)

    def _blend(self, problem: Problem, rows: np.ndarray, noise: np.ndarray, eps: np.ndarray) -> np.ndarray:
        e = eps.reshape(-1, 1, 1, 1).astype(np.float32)
        return (1 - e) * problem.x0[rows] + e * noise[rows]

    def _draw(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """A uniform-noise image per row that is adversarial, where `directions` draws find one."""
        low, high = problem.bounds
        noise = np.zeros_like(problem.x0)
        has = np.zeros(problem.n, dtype=bool)
        tries = np.zeros(problem.n, dtype=np.int64)
        k = self.candidates_per_query
        while True:
            rows = np.flatnonzero(~has & (tries < self.directions) & (problem.remaining() >= 1))
            if rows.size == 0:
                break
            per = np.minimum(np.minimum(k, self.directions - tries[rows]), problem.remaining(rows))
            rep = np.repeat(rows, per)
            draws = problem.rng.uniform(low, high, (rep.size, *problem.x0.shape[1:])).astype(np.float32)
            _, adv = problem.query(draws, rep)
            tries[rows] += per
            for row in np.unique(rep[adv]):
                noise[row] = draws[np.flatnonzero((rep == row) & adv)[0]]
                has[row] = True
        return noise, has

    def _linear_search(
        self, problem: Problem, rows: np.ndarray, noise: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row the last non-adversarial and the first adversarial blend factor (1 = the noise)."""
        lo = np.zeros(problem.n)
        hi = np.ones(problem.n)
        level = np.zeros(problem.n, dtype=np.int64)
        done = np.zeros(problem.n, dtype=bool)
        done[np.setdiff1d(np.arange(problem.n), rows)] = True
        k = self.candidates_per_query
        while True:
            live = np.flatnonzero(~done & (level < self.steps) & (problem.remaining() >= 1))
            if live.size == 0:
                break
            per = np.minimum(np.minimum(k, self.steps - level[live]), problem.remaining(live))
            rep = np.repeat(live, per)
            offsets = np.concatenate([np.arange(1, c + 1) for c in per])
            eps = (level[rep] + offsets) / self.steps
            _, adv = problem.query(self._blend(problem, rep, noise, eps), rep)
            for row in live:
                mine = rep == row
                hits = np.flatnonzero(adv[mine])
                row_eps = eps[mine]
                if hits.size:
                    hi[row] = row_eps[hits[0]]
                    lo[row] = row_eps[hits[0] - 1] if hits[0] > 0 else level[row] / self.steps
                    done[row] = True
                else:
                    lo[row] = row_eps[-1]
                level[row] += mine.sum()
        return lo, hi

    def _binary_search(
        self, problem: Problem, rows: np.ndarray, noise: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> None:
        for _ in range(self.binary_search_steps):
            live = rows[(problem.remaining(rows) >= 1)]
            if problem.eps is not None:
                live = live[~problem.success[live]]
            if live.size == 0:
                return
            mid = (lo[live] + hi[live]) / 2
            _, adv = problem.query(self._blend(problem, live, noise, mid), live)
            hi[live] = np.where(adv, mid, hi[live])
            lo[live] = np.where(adv, lo[live], mid)
