"""Square Attack: score-based random search with square-shaped updates. No torch.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (arXiv:1912.00049).

The attack keeps, per image, the best point found so far (lowest loss, by default the margin that
`Problem.margin` gives, negative exactly when adversarial) and proposes one candidate per
iteration, which changes the perturbation inside a random square whose side shrinks with the
iteration (the paper's piecewise-constant schedule of the fraction p of pixels, with the number of
iterations taken as the query budget as the reference implementation does):

- L-inf: vertical-stripe start (±eps per column and channel), then every square is set to ±eps
  per channel, redrawn when that would change nothing;
- L2: a start of 5 x 5 "meta pseudo-Gaussian" blocks of random sign rescaled to norm eps; then
  every update moves the perturbation's mass of a second random square into the first one, adds
  a fresh pseudo-Gaussian bump there, spends the budget left to eps on it and rescales the whole
  perturbation to norm eps.

Candidates are clipped to the engine's bounds, so they stay within the eps-ball and the bounds.
Every image pays one query per iteration, all images of a problem are queried together, and an
image stops once it is adversarial. With `n_restarts > 1` the budget left is shared out between
the restarts, and the images still not fooled start again from a fresh random start.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from edgeattack.attacks.blackbox.base import BlackBoxAttack
from edgeattack.attacks.blackbox.problem import Problem
from edgeattack.errors import ConfigError

__all__ = ["SquareAttack"]

LOSSES = ("margin", "ce")
_DEFAULT_P_INIT = {"linf": 0.05, "l2": 0.1}
_SCHEDULE_ITERS = 10000
"""The reference's schedule is written for 10,000 iterations; others are rescaled to it."""
_UNBUDGETED_ITERS = 10000
"""Queries per restart without a budget."""
_MAX_REDRAWS = 100


def p_selection(p_init: float, iteration: np.ndarray, n_iters: np.ndarray) -> np.ndarray:
    """The paper's piecewise-constant schedule of p (fraction of pixels changed), per image."""
    it = np.floor(np.asarray(iteration, dtype=np.float64) / np.asarray(n_iters, dtype=np.float64) * _SCHEDULE_ITERS)
    edges = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, 10000])
    # it in (edges[k], edges[k + 1]] -> p_init / 2^(k + 1); it <= 10 or > 10000 -> p_init
    k = np.searchsorted(edges, it, side="left")
    halvings = np.where((it > edges[0]) & (it <= edges[-1]), k, 0)
    return p_init / 2.0**halvings


def _pseudo_gaussian_rectangle(x: int, y: int) -> np.ndarray:
    """Concentric rectangles with weights 1/(k+1)^2 around the centre, unit L2 norm."""
    delta = np.zeros((x, y))
    cx, cy = x // 2, y // 2
    for k in range(max(x // 2 + 1, y // 2 + 1)):
        delta[max(cx - k, 0) : min(cx - k + 2 * k + 1, x), max(cy - k, 0) : min(cy - k + 2 * k + 1, y)] += (
            1.0 / (k + 1) ** 2
        )
    norm = np.sqrt((delta**2).sum())
    return delta / norm if norm > 0 else delta


def meta_pseudo_gaussian(s: int) -> np.ndarray:
    """An s x s bump: a pseudo-Gaussian rectangle on top, its negative below, unit L2 norm."""
    if s < 2:
        return np.ones((s, s))
    delta = np.zeros((s, s))
    delta[: s // 2] = _pseudo_gaussian_rectangle(s // 2, s)
    delta[s // 2 :] = -_pseudo_gaussian_rectangle(s - s // 2, s)
    return delta / np.sqrt((delta**2).sum())


def _bumps(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """[n, s, s] meta pseudo-Gaussian bumps, each transposed with probability 1/2."""
    bump = meta_pseudo_gaussian(s)
    flip = rng.random(n) < 0.5
    return np.where(flip[:, None, None], bump.T[None], bump[None])


class SquareAttack(BlackBoxAttack):
    """Square Attack (L-inf or L2), bounded by eps."""

    name: ClassVar[str] = "square"
    kind: ClassVar[str] = "score"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    minimal: ClassVar[bool] = False

    def __init__(self, *, p_init: float | None = None, n_restarts: int = 1, loss: str = "margin", **common) -> None:
        super().__init__(**common)
        if p_init is not None and not (0.0 < p_init <= 1.0):
            raise ConfigError(f"p_init must be in (0, 1], got {p_init}")
        if n_restarts < 1:
            raise ConfigError(f"n_restarts must be >= 1, got {n_restarts}")
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
        self.p_init = p_init
        self.n_restarts = n_restarts
        self.loss = loss

    # the search --------------------------------------------------------------------------------
    def run(self, problem: Problem) -> None:
        for restart in range(self.n_restarts):
            rows = problem.active(1)
            if rows.size == 0:
                return
            if problem.oracle.budget is None:
                share = np.minimum(problem.remaining(rows), _UNBUDGETED_ITERS)
            else:
                share = problem.remaining(rows) // (self.n_restarts - restart)
            rows, share = rows[share >= 1], share[share >= 1]
            if rows.size:
                self._attack(problem, rows, share)

    def _attack(self, problem: Problem, rows: np.ndarray, share: np.ndarray) -> None:
        """One run of the random search on `rows`, each spending at most `share[k]` queries.

        The schedule of p runs over `share` iterations (the reference sets n_iters to the budget).
        """
        p_init = _DEFAULT_P_INIT[self.norm] if self.p_init is None else self.p_init
        floor = problem.remaining(rows) - share  # a row stops when its remaining budget reaches this

        x0 = problem.x0[rows]
        x_best = self._init(problem, x0)
        logits, _ = problem.query(x_best, rows)
        loss_best = self._loss(problem, logits, rows)
        iteration = np.zeros(rows.size, dtype=np.int64)

        while True:
            idx = np.flatnonzero((problem.remaining(rows) > floor) & np.isin(rows, problem.active(1)))
            if idx.size == 0:
                return
            p = p_selection(p_init, iteration[idx], share[idx])
            x_new = np.empty_like(x_best[idx])
            for group in self._groups(p, x0.shape):
                sub, s = idx[group[0]], group[1]
                update = self._linf_update if self.norm == "linf" else self._l2_update
                x_new[group[0]] = update(problem, x0[sub], x_best[sub], s)
            logits, _ = problem.query(x_new, rows[idx])
            loss = self._loss(problem, logits, rows[idx])
            better = loss < loss_best[idx]
            x_best[idx[better]] = x_new[better]
            loss_best[idx[better]] = loss[better]
            iteration[idx] += 1

    def _groups(self, p: np.ndarray, shape: tuple[int, ...]) -> list[tuple[np.ndarray, int]]:
        """Images grouped by square side (all equal unless their iteration counters differ)."""
        h, w = shape[2:]
        side = np.round(np.sqrt(p * h * w)).astype(np.int64)
        largest = max(min(h, w) - 1, 1)
        if self.norm == "linf":
            side = np.clip(side, 1, largest)
        else:
            side = np.maximum(side, 3)
            side = np.where(side % 2 == 0, side + 1, side)
            side = np.minimum(side, largest)
        return [(np.flatnonzero(side == s), int(s)) for s in np.unique(side)]

    def _loss(self, problem: Problem, logits: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The loss to minimise: the margin (negative iff adversarial) or the cross-entropy form."""
        if self.loss == "margin":
            return problem.margin(logits, rows)
        z = logits.astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        if problem.target is not None:
            return -log_p[np.arange(rows.size), problem.target[rows]]
        return log_p[np.arange(rows.size), problem.labels[rows]]

    # starts ------------------------------------------------------------------------------------
    def _init(self, problem: Problem, x0: np.ndarray) -> np.ndarray:
        n, c, h, w = x0.shape
        eps = float(problem.eps)
        rng = problem.rng
        if self.norm == "linf":
            stripes = rng.choice(np.array([-eps, eps]), size=(n, c, 1, w))
            return problem.clip(x0 + stripes)
        s = max(min(h, w) // 5, 1)
        rows_h, rows_w = h // s, w // s
        top, left = (h - rows_h * s) // 2, (w - rows_w * s) // 2
        delta = np.zeros(x0.shape)
        for i in range(rows_h):
            for j in range(rows_w):
                signs = rng.choice(np.array([-1.0, 1.0]), size=(n, c, 1, 1))
                bump = _bumps(rng, n, s)[:, None]
                delta[:, :, top + i * s : top + (i + 1) * s, left + j * s : left + (j + 1) * s] += bump * signs
        return problem.clip(x0 + self._to_sphere(delta, eps))

    # updates -----------------------------------------------------------------------------------
    @staticmethod
    def _to_sphere(delta: np.ndarray, eps: float) -> np.ndarray:
        norm = np.sqrt((delta.reshape(delta.shape[0], -1) ** 2).sum(axis=1))
        return delta * (eps / np.maximum(norm, 1e-12)).reshape(-1, 1, 1, 1)

    @staticmethod
    def _windows(rng: np.random.Generator, shape: tuple[int, ...], s: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Random s x s windows, one per image of `shape` [n, c, h, w]: an index giving the [n, c, s, s]
        windows and a [n, 1, h, w] mask of them."""
        n, c, h, w = shape
        top = rng.integers(0, h - s + 1, size=n)
        left = rng.integers(0, w - s + 1, size=n)
        hh = top[:, None] + np.arange(s)
        ww = left[:, None] + np.arange(s)
        index = (
            np.arange(n)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            hh[:, None, :, None],
            ww[:, None, None, :],
        )
        mask = np.zeros((n, 1, h, w), dtype=bool)
        mask[np.arange(n)[:, None, None], 0, hh[:, :, None], ww[:, None, :]] = True
        return index, mask

    def _linf_update(self, problem: Problem, x0: np.ndarray, x_best: np.ndarray, s: int) -> np.ndarray:
        n, c = x0.shape[:2]
        eps = float(problem.eps)
        low, high = problem.bounds
        rng = problem.rng
        delta = x_best.astype(np.float64) - x0
        index, _ = self._windows(rng, x0.shape, s)
        window0, window_best = x0[index], x_best[index]
        signs = np.zeros((n, c, 1, 1))
        todo = np.ones(n, dtype=bool)
        for _ in range(_MAX_REDRAWS):  # redraw a square that would change nothing
            k = np.flatnonzero(todo)
            if k.size == 0:
                break
            signs[k] = rng.choice(np.array([-eps, eps]), size=(k.size, c, 1, 1))
            changed = np.abs(np.clip(window0[k] + signs[k], low, high) - window_best[k]) >= 1e-7
            todo[k[changed.reshape(k.size, -1).any(axis=1)]] = False
        delta[index] = signs
        return problem.clip(x0 + delta)

    def _l2_update(self, problem: Problem, x0: np.ndarray, x_best: np.ndarray, s: int) -> np.ndarray:
        n, c = x0.shape[:2]
        eps = float(problem.eps)
        rng = problem.rng
        delta = x_best.astype(np.float64) - x0
        first, mask1 = self._windows(rng, x0.shape, s)
        second, mask2 = self._windows(rng, x0.shape, s)

        def channels(a: np.ndarray) -> np.ndarray:
            return np.sqrt((a**2).sum(axis=(2, 3), keepdims=True))

        old = delta[first]  # [n, c, s, s]
        norm_window = channels(old)
        norm_image = np.sqrt((delta.reshape(n, -1) ** 2).sum(axis=1)).reshape(n, 1, 1, 1)
        norm_union = channels(delta * (mask1 | mask2))
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n, c, 1, 1))
        new = _bumps(rng, n, s)[:, None] * signs + old / (1e-10 + norm_window)
        mass = np.sqrt(np.maximum(eps**2 - norm_image**2, 0.0) / c + norm_union**2)
        new = new / np.maximum(channels(new), 1e-12) * mass
        delta[second] = 0.0
        delta[first] = new
        return problem.clip(x0 + self._to_sphere(delta, eps))


Square = SquareAttack
