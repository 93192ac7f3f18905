"""Spatial attack (Engstrom et al. 2019): rotations and translations, grid or random search. numpy.

foolbox's SpatialAttack only runs on torch/TensorFlow tensors; this one warps numpy images with an
inverse-mapped affine transform and bilinear interpolation, filling what comes from outside the
image with the lower bound (black), so every candidate stays inside the bounds.

Grid search tries every combination of `num_rotations` angles in [−max_rotation, max_rotation]
degrees and `num_translations` shifts per axis in [−max_translation, max_translation] pixels,
smallest transformations first (the identity is skipped: the clean image is already known), and an
image stops at its first adversarial. Random search draws `random_steps` transformations uniformly
from the same ranges. The threat model is the transformation range, not a norm (`norm="none"`);
the result's L2/L∞ are still reported. `candidates_per_query` candidates of every image go to the
engine in one call (more throughput, a few queries past the first success).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeattack.attacks.blackbox.base import BlackBoxAttack
from edgeattack.attacks.blackbox.problem import Problem
from edgeattack.errors import ConfigError

__all__ = ["Spatial", "affine_warp", "spatial_candidates"]


def affine_warp(
    images: np.ndarray, angle_deg: np.ndarray, shift_x: np.ndarray, shift_y: np.ndarray, fill: float = 0.0
) -> np.ndarray:
    """Rotate images [N, C, H, W] by `angle_deg` (counter-clockwise, about the centre) and shift
    them by (`shift_x`, `shift_y`) pixels; one transform per image; bilinear; outside → `fill`."""
    n, c, h, w = images.shape
    theta = np.deg2rad(np.asarray(angle_deg, dtype=np.float64)).reshape(n, 1, 1)
    tx = np.asarray(shift_x, dtype=np.float64).reshape(n, 1, 1)
    ty = np.asarray(shift_y, dtype=np.float64).reshape(n, 1, 1)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    # Output pixel p comes from source R^-1 (p - centre - shift) + centre.
    dx, dy = xx[None] - cx - tx, yy[None] - cy - ty
    cos, sin = np.cos(theta), np.sin(theta)
    src_x = cos * dx - sin * dy + cx
    src_y = sin * dx + cos * dy + cy
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    wx, wy = (src_x - x0)[:, None], (src_y - y0)[:, None]
    batch = np.arange(n).reshape(n, 1, 1)
    out = np.zeros((n, c, h, w), dtype=np.float64)
    for oy, ox, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        px, py = x0 + ox, y0 + oy
        inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
        values = images[batch, :, np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]  # [N, H, W, C]
        values = np.where(inside[..., None], values, fill).transpose(0, 3, 1, 2)
        out += weight * values
    return out.astype(images.dtype)


def spatial_candidates(
    max_rotation: float, max_translation: float, num_rotations: int, num_translations: int
) -> np.ndarray:
    """The grid [K, 3] of (angle, shift_x, shift_y), smallest first, identity excluded."""
    angles = np.linspace(-max_rotation, max_rotation, num_rotations) if num_rotations > 1 else np.zeros(1)
    shifts = np.linspace(-max_translation, max_translation, num_translations) if num_translations > 1 else np.zeros(1)
    grid = np.array(np.meshgrid(angles, shifts, shifts, indexing="ij")).reshape(3, -1).T
    size = np.abs(grid[:, 0]) / max(max_rotation, 1e-12) + (np.abs(grid[:, 1]) + np.abs(grid[:, 2])) / max(
        max_translation, 1e-12
    )
    grid, size = grid[size > 0], size[size > 0]
    return grid[np.argsort(size, kind="stable")]


class Spatial(BlackBoxAttack):
    """Rotations and translations, grid or random search; success at the first adversarial."""

    name = "spatial"
    kind = "decision"
    norms = ("none",)
    minimal = False

    def __init__(
        self,
        *,
        max_rotation: float = 30.0,
        max_translation: float = 3.0,
        num_rotations: int = 5,
        num_translations: int = 5,
        grid_search: bool = True,
        random_steps: int = 100,
        candidates_per_query: int = 8,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if max_rotation < 0 or max_translation < 0 or (max_rotation == 0 and max_translation == 0):
            raise ConfigError("spatial needs max_rotation >= 0, max_translation >= 0, not both 0")
        if num_rotations < 1 or num_translations < 1 or random_steps < 1 or candidates_per_query < 1:
            raise ConfigError("spatial needs num_rotations, num_translations, random_steps, candidates_per_query >= 1")
        self.max_rotation = float(max_rotation)
        self.max_translation = float(max_translation)
        self.num_rotations = num_rotations
        self.num_translations = num_translations
        self.grid_search = grid_search
        self.random_steps = random_steps
        self.candidates_per_query = candidates_per_query

    def _plan(self, problem: Problem) -> np.ndarray:
        """Transformations [n, K, 3] to try per row, in order."""
        if self.grid_search:
            grid = spatial_candidates(self.max_rotation, self.max_translation, self.num_rotations, self.num_translations)
            return np.broadcast_to(grid, (problem.n, *grid.shape))
        scale = np.array([self.max_rotation, self.max_translation, self.max_translation])
        return problem.rng.uniform(-1, 1, (problem.n, self.random_steps, 3)) * scale

    def run(self, problem: Problem) -> None:
        plan = self._plan(problem)
        total = plan.shape[1]
        position = np.zeros(problem.n, dtype=np.int64)
        low = problem.bounds[0]
        while True:
            rows = problem.active()
            rows = rows[position[rows] < total]
            if rows.size == 0:
                return
            per = np.minimum(np.minimum(self.candidates_per_query, total - position[rows]), problem.remaining(rows))
            rep = np.repeat(rows, per)
            step = np.concatenate([position[r] + np.arange(k) for r, k in zip(rows, per, strict=True)])
            transform = plan[rep, step]
            warped = affine_warp(problem.x0[rep], transform[:, 0], transform[:, 1], transform[:, 2], fill=low)
            problem.query(warped, rep)
            position[rows] += per
