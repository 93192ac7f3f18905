"""Per-image crafting streamed over a split: a chunk of images at a time, straight into the artifact.

    path, summary = craft_per_image(PGD(eps=4 / 255, batch_size=32), model, dataset, "pgd.npz")

`craft_per_image` takes `chunk` images of the dataset at a time (`dataset.subset(positions)`: a lazy
image folder decodes only that chunk), attacks them, hands their delta rows and dataset indices to
an `ArtifactWriter` and keeps only the counts of the summary. Memory therefore holds one chunk of
images and deltas (plus one shard of the writer), whatever the size of the split. The summary is
the one `AttackOutput.summary()` gives for the whole split at once, and so is the artifact:
per-image attacks draw their random starts per image from (seed, dataset index), so chunking does
not change a delta. Universal attacks fit one delta on all images and do not stream. A worst-case
attack's per-image breakdown (`AttackOutput.broken_by`, AutoAttack) goes into the artifact with the
rows, and its counts into the summary and `meta.params["broken_count"]`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack.artifact_breakdown import breakdown_counts
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.model import ModelLike
from edgeattack.attacks.whitebox.outputs import AttackOutput
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, DataError

__all__ = ["CraftSummary", "craft_per_image"]

logger = logging.getLogger(__name__)

CHUNK_BATCHES = 4
"""Default chunk: this many attack batches of images per `dataset.subset` / writer call."""


@dataclasses.dataclass
class CraftSummary:
    """Running counts of a per-image attack over chunks; `summary()` equals `AttackOutput.summary()`."""

    method: str = ""
    n: int = 0
    clean_correct: int = 0
    adv_correct: int = 0
    asr_hits: int = 0
    eligible: int = 0
    successes: int = 0
    targeted_eligible: int = 0
    targeted_hits: int = 0
    linf_max: float = 0.0
    l2: list[np.ndarray] = dataclasses.field(default_factory=list)
    targets: list[np.ndarray] = dataclasses.field(default_factory=list)
    targeted: bool = False
    wall_s: float = 0.0
    breakers: tuple[str, ...] = ()
    broken_count: dict[str, int] | None = None

    def add(self, output: AttackOutput) -> None:
        """Count one chunk's output."""
        self.method = output.method
        self.targeted = output.targeted
        correct = output.clean_pred == output.labels
        self.n += len(output)
        self.clean_correct += int(correct.sum())
        self.adv_correct += int((output.adv_pred == output.labels).sum())
        self.asr_hits += int((output.adv_pred[correct] != output.labels[correct]).sum())
        eligible = output.eligible
        self.eligible += int(eligible.sum())
        self.successes += int(output.success[eligible].sum())
        if output.target is not None:
            not_target = output.labels != output.target
            self.targeted_eligible += int(not_target.sum())
            self.targeted_hits += int((output.adv_pred[not_target] == output.target[not_target]).sum())
            self.targets.append(output.target)
        if len(output):
            self.linf_max = max(self.linf_max, float(output.linf().max()))
            self.l2.append(output.l2())
        if output.broken_by is not None:
            self.breakers = tuple(output.breakers)
            counts = breakdown_counts(output.broken_by, self.breakers)
            totals = self.broken_count or dict.fromkeys(counts, 0)
            self.broken_count = {name: totals.get(name, 0) + count for name, count in counts.items()}

    @staticmethod
    def _rate(hits: int, total: int) -> float | None:
        return hits / total if total else None

    @property
    def success_rate(self) -> float | None:
        return self._rate(self.successes, self.eligible)

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / self.n if self.n else 0.0

    @property
    def adv_acc(self) -> float:
        return self.adv_correct / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        """The keys and values of `AttackOutput.summary()` for all chunks together."""
        l2 = np.concatenate(self.l2) if self.l2 else np.zeros(0)
        return {
            "method": self.method,
            "n": self.n,
            "clean_acc": self.clean_acc,
            "adv_acc": self.adv_acc,
            "asr": self._rate(self.asr_hits, self.clean_correct),
            "success_rate": self.success_rate,
            "targeted_success": self._rate(self.targeted_hits, self.targeted_eligible) if self.targeted else None,
            "linf_max": float(self.linf_max),
            "l2_median": float(np.median(l2)) if len(l2) else 0.0,
            "wall_s": self.wall_s,
            **({"broken_count": dict(self.broken_count)} if self.broken_count is not None else {}),
        }

    def artifact_params(self) -> dict[str, Any]:
        """What `AttackOutput.to_artifact` records about the results in `meta.params`."""
        params: dict[str, Any] = {
            "targeted": self.targeted,
            "success_rate": self.success_rate,
            "clean_acc": self.clean_acc,
            "adv_acc": self.adv_acc,
        }
        if self.targets:
            params["target"] = np.concatenate(self.targets).tolist()
        if self.broken_count is not None:
            params.update(breakers=list(self.breakers), broken_count=dict(self.broken_count))
        return params


def _chunk_target(target: Any, positions: np.ndarray, total: int) -> Any:
    if target is None or np.ndim(target) == 0:
        return target
    values = np.asarray(target)
    if values.shape != (total,):
        raise ConfigError(f"target must be a class index or {total} class indices")
    return values[positions]


def craft_per_image(
    attack: WhiteBoxAttack,
    sources: ModelLike | Sequence[ModelLike],
    dataset: ImageDataset,
    out: str | Path,
    *,
    chunk: int | None = None,
    target: Any = None,
    progress: Callable[[int, int], None] | None = None,
    params: dict[str, Any] | None = None,
    shard_size: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Craft `attack` on every image of `dataset` chunk by chunk into the artifact `out`.

    `chunk`: images per step (default `CHUNK_BATCHES` batches of the attack). `target`: None, a
    class index, or one per image. `params` are added to the artifact's `meta.params` (device,
    precision, shard...). Returns the path written and the summary (`AttackOutput.summary()` keys).
    An exception leaves no file at `out`.
    """
    from edgeattack.artifacts import ArtifactWriter

    if not isinstance(attack, WhiteBoxAttack):
        raise ConfigError(f"{type(attack).__name__} is not a per-image attack: universal attacks fit in memory")
    total = len(dataset)
    if total == 0:
        raise DataError(f"{dataset.spec}: no images to attack")
    step = int(chunk or CHUNK_BATCHES * attack.batch_size)
    if step < 1:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    start = time.perf_counter()
    counts = CraftSummary()
    writer: ArtifactWriter | None = None
    try:
        for begin in range(0, total, step):
            positions = np.arange(begin, min(begin + step, total), dtype=np.int64)
            part = dataset.subset(positions)

            def advance(done: int, _: int, offset: int = begin) -> None:
                if progress is not None:
                    progress(offset + done, total)

            output = attack(sources, part, target=_chunk_target(target, positions, total), progress=advance)
            if writer is None:
                meta = output.to_artifact(
                    indices=part.indices, dataset_name=dataset.name, split=dataset.split, seed=dataset.seed
                ).meta
                writer = ArtifactWriter(out, meta, **({} if shard_size is None else {"shard_size": shard_size}))
            writer.add(output.delta, part.indices, broken_by=output.broken_by)
            counts.add(output)
        assert writer is not None
        counts.wall_s = time.perf_counter() - start
        path = writer.close(params={**counts.artifact_params(), **(params or {})})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    summary = counts.summary()
    logger.info(
        "%s on %d images (streamed, chunks of %d): clean_acc %.3f, adv_acc %.3f, success_rate %s (%.1f s)",
        summary["method"], total, step, summary["clean_acc"], summary["adv_acc"], summary["success_rate"],
        summary["wall_s"],
    )
    return path, summary
