"""What the attacks return: `RunResult` (from a `run`), `AttackOutput` (per-image) and `UniversalOutput`.

The two outputs are plain numpy records that turn into a `PerturbationArtifact` (`to_artifact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeattack.artifact_breakdown import breakdown_counts
from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact, quantize_to_grid
from edgeattack.attacks.whitebox.model import Tensor
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ArtifactError


@dataclass
class RunResult:
    """What `run` may return instead of bare adversarial images.

    `logits[i]` are the (ensemble) logits of `adversarial[i]` for rows where `evaluated[i]` holds,
    so the base class need not run those images again (unless clipping, projection or rounding
    changed them). `clean_logits`, when the attack computed them anyway (a first gradient step at
    the clean images), spare the base class its clean forward pass. `broken_by` (a worst case over
    several attacks) is the per-image index into `breakers` of the attack that broke it
    (`edgeattack.artifact_breakdown`).
    """

    adversarial: Tensor
    logits: Tensor | None = None
    evaluated: Tensor | None = None
    clean_logits: Tensor | None = None
    broken_by: Tensor | None = None
    breakers: tuple[str, ...] = ()



@dataclass(frozen=True)
class AttackOutput:
    """The result of a per-image white-box attack (numpy arrays on the CPU).

    `success[i]`: untargeted, the ensemble classifies image i correctly when clean and misclassifies
    `adversarial[i]`; targeted, image i is not of class `target[i]` and `adversarial[i]` is predicted
    as it. Images outside that denominator are never successes. `delta = adversarial - clean`.
    `broken_by` / `breakers`: the per-attack breakdown of a worst-case run (`artifact_breakdown`).
    """

    adversarial: np.ndarray
    delta: np.ndarray
    labels: np.ndarray
    clean_pred: np.ndarray
    adv_pred: np.ndarray
    success: np.ndarray
    method: str
    norm: str
    eps: float | None
    params: dict[str, Any]
    sources: tuple[dict[str, str], ...]
    bounds: tuple[float, float]
    target: np.ndarray | None = None
    dataset: str | None = None
    split: str | None = None
    data_seed: int | None = None
    indices: np.ndarray | None = None
    wall_s: float = 0.0
    broken_by: np.ndarray | None = None
    breakers: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.adversarial.shape[0])

    @property
    def clean(self) -> np.ndarray:
        return self.adversarial - self.delta

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def eligible(self) -> np.ndarray:
        """The images the attack can succeed on: correct when clean (untargeted), not of the target (targeted)."""
        if self.target is not None:
            return self.labels != self.target
        return self.clean_pred == self.labels

    @property
    def success_rate(self) -> float | None:
        """Successes over the eligible images (the asr, or the targeted success); None when none is eligible."""
        eligible = self.eligible
        return float(self.success[eligible].mean()) if eligible.any() else None

    def success_text(self) -> str:
        """`success_rate` for a summary line, or why it is undefined."""
        if self.success_rate is not None:
            return f"{self.success_rate:.4f}"
        if self.target is not None:
            return "undefined (every image is already of its target class)"
        return "undefined (no image is classified correctly when clean)"

    @property
    def clean_acc(self) -> float:
        return float((self.clean_pred == self.labels).mean()) if len(self) else 0.0

    @property
    def adv_acc(self) -> float:
        """Robust accuracy: top-1 on the adversarial images."""
        return float((self.adv_pred == self.labels).mean()) if len(self) else 0.0

    @property
    def asr(self) -> float | None:
        """Among images classified correctly when clean, the fraction misclassified after the attack."""
        correct = self.clean_pred == self.labels
        return float((self.adv_pred[correct] != self.labels[correct]).mean()) if correct.any() else None

    @property
    def targeted_success(self) -> float | None:
        """Fraction reaching the target, over images whose label is not already the target."""
        if self.target is None:
            return None
        eligible = self.labels != self.target
        return float((self.adv_pred[eligible] == self.target[eligible]).mean()) if eligible.any() else None

    def linf(self) -> np.ndarray:
        """Realised per-image L-inf norms of `delta`."""
        return np.abs(self.delta).reshape(len(self), -1).max(axis=1) if len(self) else np.zeros(0)

    def l2(self) -> np.ndarray:
        """Realised per-image L2 norms of `delta`."""
        return np.linalg.norm(self.delta.reshape(len(self), -1), axis=1) if len(self) else np.zeros(0)

    def summary(self) -> dict[str, Any]:
        """The headline numbers, JSON-ready."""
        return {
            "method": self.method,
            "n": len(self),
            "clean_acc": self.clean_acc,
            "adv_acc": self.adv_acc,
            "asr": self.asr,
            "success_rate": self.success_rate,
            "targeted_success": self.targeted_success,
            "linf_max": float(self.linf().max(initial=0.0)),
            "l2_median": float(np.median(self.l2())) if len(self) else 0.0,
            "wall_s": self.wall_s,
            **({"broken_count": breakdown_counts(self.broken_by, self.breakers)} if self.broken_by is not None else {}),
        }

    def to_artifact(
        self,
        dataset: ImageDataset | None = None,
        *,
        indices: np.ndarray | None = None,
        dataset_name: str | None = None,
        split: str | None = None,
        seed: int | None = None,
    ) -> PerturbationArtifact:
        """A per-image `PerturbationArtifact` whose `indices` are the images' dataset indices.

        `dataset` is the ImageDataset the images came from (not needed when the attack was called on
        one); it is checked to hold the attacked images. Without a dataset, pass `indices`,
        `dataset_name` and `split`.
        """
        name, the_split, data_seed, idx = self.dataset, self.split, self.data_seed, self.indices
        if dataset is not None:
            if len(dataset) != len(self):
                raise ArtifactError(f"{len(self)} adversarial images but the dataset {dataset.spec} holds {len(dataset)}")
            if not np.allclose(dataset.images, self.clean, atol=1e-5):
                raise ArtifactError(f"these adversarial images were not crafted from {dataset.spec}")
            name, the_split, data_seed, idx = dataset.name, dataset.split, dataset.seed, dataset.indices
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
        name = dataset_name or name
        the_split = split or the_split
        data_seed = data_seed if seed is None else seed
        if idx is None or name is None or the_split is None:
            raise ArtifactError(
                "a per-image artifact needs the dataset the images came from: pass the ImageDataset "
                "(or indices=, dataset_name= and split=)"
            )
        params = dict(self.params)
        params.update(
            bounds=list(self.bounds),
            targeted=self.targeted,
            success_rate=self.success_rate,
            clean_acc=self.clean_acc,
            adv_acc=self.adv_acc,
        )
        if self.target is not None:
            params["target"] = self.target.tolist()
        if self.broken_by is not None:
            params.update(breakers=list(self.breakers), broken_count=breakdown_counts(self.broken_by, self.breakers))
        meta = ArtifactMeta(
            kind="per_image",
            method=self.method,
            norm=self.norm,
            eps=self.eps,
            input_size=tuple(int(d) for d in self.adversarial.shape[1:]),  # type: ignore[arg-type]
            dataset=name,
            split=the_split,
            seed=int(data_seed or 0),
            params=params,
            sources=self.sources,
        )
        return PerturbationArtifact(delta=self.delta, meta=meta, indices=idx, broken_by=self.broken_by)


@dataclass(frozen=True)
class UniversalOutput:
    """A universal (K=1) or class-universal (K=#classes) perturbation and how well it fools its fit set.

    `fooling_rate`: fraction of fit images whose predicted label changes (the UAP convention);
    `history`: the fooling rate after each pass/epoch (per class, concatenated, for class-universal).
    """

    delta: np.ndarray
    kind: str
    method: str
    norm: str
    eps: float | None
    params: dict[str, Any]
    sources: tuple[dict[str, str], ...]
    bounds: tuple[float, float]
    fooling_rate: float
    clean_acc: float
    adv_acc: float
    n_images: int
    targeted_success: float | None = None
    target: int | None = None
    history: tuple[float, ...] = ()
    dataset: str | None = None
    split: str | None = None
    data_seed: int | None = None
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "n": self.n_images,
            "fooling_rate": self.fooling_rate,
            "clean_acc": self.clean_acc,
            "adv_acc": self.adv_acc,
            "targeted_success": self.targeted_success,
            "wall_s": self.wall_s,
        }

    def to_artifact(
        self,
        dataset: ImageDataset | None = None,
        *,
        dataset_name: str | None = None,
        split: str | None = None,
        seed: int | None = None,
    ) -> PerturbationArtifact:
        """A universal / class-universal artifact; meta records the fit split and fit-set fooling rate.

        It applies to any split of the same dataset and input size.
        """
        name, the_split, data_seed = self.dataset, self.split, self.data_seed
        if dataset is not None:
            name, the_split, data_seed = dataset.name, dataset.split, dataset.seed
        name = dataset_name or name
        the_split = split or the_split
        data_seed = data_seed if seed is None else seed
        if name is None or the_split is None:
            raise ArtifactError("name the dataset the perturbation was fitted on: pass the ImageDataset "
                                "(or dataset_name= and split=)")
        params = dict(self.params)
        params.update(
            bounds=list(self.bounds),
            fit_split=the_split,
            fit_images=self.n_images,
            fit_fooling_rate=self.fooling_rate,
            fit_clean_acc=self.clean_acc,
            fit_adv_acc=self.adv_acc,
            history=list(self.history),
        )
        if self.target is not None:
            params.update(target=self.target, fit_targeted_success=self.targeted_success)
        meta = ArtifactMeta(
            kind=self.kind,
            method=self.method,
            norm=self.norm,
            eps=self.eps,
            input_size=tuple(int(d) for d in self.delta.shape[1:]),  # type: ignore[arg-type]
            dataset=name,
            split=the_split,
            seed=int(data_seed or 0),
            params=params,
            sources=self.sources,
        )
        return PerturbationArtifact(delta=self.delta, meta=meta)

    def apply(self, images: np.ndarray, labels: np.ndarray | None = None, *, quantize: bool = False) -> np.ndarray:
        """`images` + the perturbation (the class's own for class-universal), clipped to the bounds."""
        if self.kind == "universal":
            delta = self.delta[0][None]
        elif labels is None:
            raise ArtifactError("a class-universal perturbation needs the images' labels")
        else:
            delta = self.delta[np.asarray(labels, dtype=np.int64)]
        out = np.clip(images + delta, self.bounds[0], self.bounds[1]).astype(np.float32)
        return quantize_to_grid(out) if quantize else out


__all__ = [
    "AttackOutput",
    "RunResult",
    "UniversalOutput",
]
