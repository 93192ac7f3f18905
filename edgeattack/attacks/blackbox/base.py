"""Black-box attacks, foolbox-3 style: the base class owns everything but the search. No torch.

`BlackBoxAttack.__call__(oracle, images, labels, target=...)` is final. It checks the inputs,
classifies the clean images (one query each), attacks only the images the engine gets right
(untargeted) or that are not already of the target class (targeted), in chunks of `chunk_size`
images, verifies each chunk's final images once (verification queries, outside the budget), and
returns a `BlackBoxOutcome`. A subclass implements only `run(problem)`, querying through the `Problem`,
which keeps the best adversarial of every image.

Modes: `eps=None` is the minimal-perturbation mode for attacks that minimise a norm (the best
adversarial found is returned; its norm is the result); with `eps` the attack is bounded: an image
stops being queried once it succeeds, and at the end every attacked image's best candidate is
clipped to the eps ball and verified again (foolbox's convention), so `success`, `adv_pred`, the
accuracy metrics, the per-image worst case and the saved adversarials all hold within eps only.

An engine that fails mid-attack (an `EngineError`, including NaN outputs) ends the attack: the
images of finished chunks keep their results, the others are marked not completed, and the
outcome carries the error, so a caller can save what was done and say what failed.
"""

from __future__ import annotations

import abc
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeattack.attacks.blackbox.oracle import EngineOracle, OracleStats
from edgeattack.attacks.blackbox.problem import NORMS, Problem, distances, project_to_ball
from edgeattack.errors import ConfigError, DataError, EngineError

__all__ = ["BlackBoxAttack", "BlackBoxOutcome", "Progress"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as `progress(images_done, images_total)` after every chunk."""


@dataclass(frozen=True)
class BlackBoxOutcome:
    """Everything one black-box attack produced on one engine (arrays are per image)."""

    attack: str
    params: dict[str, Any]
    norm: str
    eps: float | None
    budget: int | None
    clean: np.ndarray
    adversarial: np.ndarray
    labels: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    target: np.ndarray | None
    queries: np.ndarray
    queries_to_success: np.ndarray
    success: np.ndarray
    completed: np.ndarray
    wall_s: float
    oracle: OracleStats
    error: str | None = None

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def failed_positions(self) -> np.ndarray:
        """Positions of images not completed because the engine failed."""
        return np.flatnonzero(~self.completed)

    @property
    def l2(self) -> np.ndarray:
        return distances(self.adversarial - self.clean, "l2")

    @property
    def linf(self) -> np.ndarray:
        return distances(self.adversarial - self.clean, "linf")


class BlackBoxAttack(abc.ABC):
    """Base class: subclasses set the class attributes and implement `run` only.

    `name`: registry name. `kind`: "decision" (top-1 only) or "score" (needs logits).
    `norms`: the distances it can minimise or bound, first is the default. `minimal`: True when it
    minimises the perturbation (then eps is optional), False when it needs eps (or, for "none",
    when the threat model bounds the search itself, as Spatial's angles and shifts do).
    """

    name: ClassVar[str] = "abstract"
    kind: ClassVar[str] = "decision"
    norms: ClassVar[tuple[str, ...]] = ("l2",)
    minimal: ClassVar[bool] = True

    def __init__(
        self, *, eps: float | None = None, norm: str | None = None, seed: int = 0, chunk_size: int = 64
    ) -> None:
        norm = self.norms[0] if norm is None else norm
        if norm not in self.norms:
            raise ConfigError(f"{self.name} supports norm {' or '.join(self.norms)}, not {norm!r}")
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
        if eps is not None and not (np.isfinite(eps) and eps > 0):
            raise ConfigError(f"eps must be a positive number, got {eps}")
        if eps is None and not self.minimal and norm != "none":
            raise ConfigError(f"{self.name} is a bounded attack: give eps (e.g. eps=0.03 for L-inf)")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
        self.eps = None if norm == "none" else eps
        self.norm = norm
        self.seed = seed
        self.chunk_size = chunk_size

    # hyper-parameters ------------------------------------------------------------------------
    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Every keyword-only hyper-parameter with its default (the base's ones included)."""
        found: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    found[p.name] = p.default
        return found

    def params(self) -> dict[str, Any]:
        """The values this instance runs with (JSON-ready)."""
        return {name: getattr(self, name) for name in self.parameters()}

    # the final call --------------------------------------------------------------------------
    def __call__(
        self,
        oracle: EngineOracle,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        target: int | np.ndarray | None = None,
        progress: Progress | None = None,
    ) -> BlackBoxOutcome:
        """Attack `images` (float32 NCHW in the engine's bounds) with true `labels` through `oracle`."""
        x0, y, tgt = self._check(oracle, images, labels, target)
        n = x0.shape[0]
        t0 = time.perf_counter()
        clean_pred = np.full(n, -1, dtype=np.int64)
        adversarial = x0.copy()
        queries_to_success = np.full(n, -1, dtype=np.int64)
        completed = np.zeros(n, dtype=bool)
        adv_pred = np.full(n, -1, dtype=np.int64)
        within = np.ones(n, dtype=bool)
        error: str | None = None
        rng = np.random.default_rng(self.seed)
        done = 0
        for start in range(0, n, self.chunk_size):
            rows = np.arange(start, min(start + self.chunk_size, n))
            try:
                clean_pred[rows] = oracle.labels(x0[rows], rows)
                if tgt is None:
                    attack_rows = rows[clean_pred[rows] == y[rows]]
                else:
                    attack_rows = rows[clean_pred[rows] != tgt[rows]]
                if attack_rows.size:
                    problem = Problem(
                        oracle=oracle,
                        x0=x0[attack_rows],
                        labels=y[attack_rows],
                        ids=attack_rows,
                        norm=self.norm,
                        eps=self.eps,
                        target=None if tgt is None else tgt[attack_rows],
                        rng=rng,
                    )
                    self.run(problem)
                    final = project_to_ball(problem.x0, problem.best, self.eps, self.norm)
                    within[attack_rows] = self._within_eps(problem.x0, final)
                    adv_pred[attack_rows] = oracle.verify(final).argmax(axis=1)
                    adversarial[attack_rows] = oracle.clip(final)
                    # an adversarial that only the clip to the ball revealed counts every query it used
                    queries_to_success[attack_rows] = np.where(
                        problem.queries_to_success >= 0, problem.queries_to_success, oracle.queries[attack_rows]
                    )
                skipped = np.setdiff1d(rows, attack_rows)
                adv_pred[skipped] = clean_pred[skipped]
            except EngineError as exc:
                error = str(exc)
                logger.error("%s stopped: %s", self.name, error)
                break
            completed[rows] = True
            done += rows.size
            if progress is not None:
                progress(done, n)
        if tgt is None:
            hit = (clean_pred == y) & (adv_pred != y)
        else:
            hit = (clean_pred != tgt) & (adv_pred == tgt)
        success = hit & within & completed
        return BlackBoxOutcome(
            attack=self.name,
            params=self.params(),
            norm=self.norm,
            eps=self.eps,
            budget=oracle.budget,
            clean=x0,
            adversarial=adversarial,
            labels=y,
            clean_pred=clean_pred,
            adv_pred=adv_pred,
            target=tgt,
            queries=oracle.queries.copy(),
            queries_to_success=np.where(success, queries_to_success, -1),
            success=success,
            completed=completed,
            wall_s=time.perf_counter() - t0,
            oracle=oracle.stats(),
            error=error,
        )

    def _within_eps(self, x0: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
        """The bounded mode's norm check, on the images the attack designed (before any 1/255 rounding,
        which the oracle applies to every query, the verification and a replay alike)."""
        if self.eps is None:
            return np.ones(x0.shape[0], dtype=bool)
        return distances(adversarial - x0, self.norm) <= self.eps * (1 + 1e-6) + 1e-7

    def _check(
        self, oracle: EngineOracle, images: np.ndarray, labels: np.ndarray, target: int | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x0 = np.asarray(images, dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if x0.ndim != 4 or x0.shape[0] != y.size:
            raise DataError(f"{y.size} labels for images of shape {x0.shape}; expected [N, C, H, W] and N labels")
        if x0.shape[0] != oracle.n_images:
            raise ConfigError(f"the oracle was made for {oracle.n_images} images, not {x0.shape[0]}")
        if not np.isfinite(x0).all():
            raise DataError("images hold NaN or infinite values")
        low, high = oracle.low, oracle.high
        if x0.min(initial=low) < low - 1e-6 or x0.max(initial=high) > high + 1e-6:
            raise DataError(f"images leave the engine's bounds [{low}, {high}]")
        if self.kind == "score" and not oracle.engine.metadata.output_names:
            raise ConfigError(f"{self.name} is score-based and needs an engine that returns logits")
        tgt = None
        if target is not None:
            tgt = np.broadcast_to(np.asarray(target, dtype=np.int64), y.shape).copy()
        return x0, y, tgt

    @abc.abstractmethod
    def run(self, problem: Problem) -> None:
        """Search adversarials for `problem`'s images, querying only through `problem.query`."""
