"""Integrity metrics with the exact DESIGN.md definitions ("Metric definitions"); numpy only.

- `clean_acc`, `adv_acc` (robust accuracy): top-1 accuracy on clean / adversarial images.
- `asr` (untargeted attack success rate): among the images the engine classifies correctly when
  clean, the fraction it misclassifies after the attack. The denominator is per engine.
- `fooling_rate`: fraction of images whose predicted label changes (the UAP convention; images the
  engine already got wrong count too).
- `targeted_success`: fraction reaching the target class, over images whose true label is not
  already the target.

Every function takes predicted labels `[N]` or logits `[N, classes]` (argmax is taken) and returns
a float, or None where the denominator is empty: a rate over no images is undefined, and results
are JSON without NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "METRIC_DEFINITIONS",
    "AccuracyMetrics",
    "NormSummary",
    "PerturbationNorms",
    "accuracy_metrics",
    "adv_acc",
    "asr",
    "clean_acc",
    "fooling_rate",
    "perturbation_norms",
    "targeted_success",
]

METRIC_DEFINITIONS: dict[str, str] = {
    "clean_acc": "top-1 accuracy on the clean images",
    "adv_acc": "top-1 accuracy on the adversarial images (robust accuracy)",
    "asr": (
        "untargeted attack success rate: among images this engine classifies correctly when clean, "
        "the fraction it misclassifies after the attack (denominator per engine; null when it is 0)"
    ),
    "fooling_rate": "fraction of images whose predicted label changes under the attack (UAP convention)",
    "targeted_success": "fraction of images predicted as the target class, over images whose label is not the target",
    "l2": "per-image L2 norm of (adversarial - clean) over all C*H*W values, in [0,1] pixel units",
    "linf": "per-image L-infinity norm of (adversarial - clean), in [0,1] pixel units",
}


def _labels(values: np.ndarray, what: str) -> np.ndarray:
    """Predicted labels from labels [N] or logits [N, classes]."""
    array = np.asarray(values)
    if array.ndim == 2:
        return array.argmax(axis=1).astype(np.int64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be labels [N] or logits [N, classes], got shape {array.shape}")
    return array.astype(np.int64)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs disagree in length: {lengths}")
    return next(iter(lengths.values()))


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def clean_acc(clean_pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy on clean images (None for no images)."""
    pred, lab = _labels(clean_pred, "clean_pred"), _labels(labels, "labels")
    _same_length(clean_pred=pred, labels=lab)
    return _rate(pred == lab)


def adv_acc(adv_pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy on adversarial images, i.e. robust accuracy (None for no images)."""
    pred, lab = _labels(adv_pred, "adv_pred"), _labels(labels, "labels")
    _same_length(adv_pred=pred, labels=lab)
    return _rate(pred == lab)


def asr(clean_pred: np.ndarray, adv_pred: np.ndarray, labels: np.ndarray) -> float | None:
    """Untargeted attack success rate over the images this engine gets right when clean.

    None when the engine classifies no clean image correctly (the rate is undefined).
    """
    clean, adv, lab = (
        _labels(clean_pred, "clean_pred"),
        _labels(adv_pred, "adv_pred"),
        _labels(labels, "labels"),
    )
    _same_length(clean_pred=clean, adv_pred=adv, labels=lab)
    correct = clean == lab
    return _rate(adv[correct] != lab[correct])


def fooling_rate(clean_pred: np.ndarray, adv_pred: np.ndarray) -> float | None:
    """Fraction of images whose predicted label changes, wrong-when-clean images included."""
    clean, adv = _labels(clean_pred, "clean_pred"), _labels(adv_pred, "adv_pred")
    _same_length(clean_pred=clean, adv_pred=adv)
    return _rate(clean != adv)


def targeted_success(adv_pred: np.ndarray, target: int | np.ndarray, labels: np.ndarray) -> float | None:
    """Fraction of images predicted as `target` (one class, or one per image), over images whose
    true label is not already the target. None when every image is of the target class."""
    adv, lab = _labels(adv_pred, "adv_pred"), _labels(labels, "labels")
    _same_length(adv_pred=adv, labels=lab)
    tgt = np.broadcast_to(np.asarray(target, dtype=np.int64), lab.shape)
    eligible = lab != tgt
    return _rate(adv[eligible] == tgt[eligible])


@dataclass(frozen=True)
class NormSummary:
    """Median, mean and max of the per-image perturbation norms (None when no images)."""

    n_images: int
    l2_median: float | None
    l2_mean: float | None
    l2_max: float | None
    linf_median: float | None
    linf_mean: float | None
    linf_max: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NormSummary:
        return cls(**{name: doc[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PerturbationNorms:
    """Per-image L2 and L-infinity norms of `adv - clean` (float64 arrays [N]) and their summary."""

    l2: np.ndarray
    linf: np.ndarray

    @property
    def summary(self) -> NormSummary:
        def stat(values: np.ndarray, fn: Any) -> float | None:
            return float(fn(values)) if values.size else None

        return NormSummary(
            n_images=int(self.l2.size),
            l2_median=stat(self.l2, np.median),
            l2_mean=stat(self.l2, np.mean),
            l2_max=stat(self.l2, np.max),
            linf_median=stat(self.linf, np.median),
            linf_mean=stat(self.linf, np.mean),
            linf_max=stat(self.linf, np.max),
        )

    def to_dict(self) -> dict[str, Any]:
        """The summary (per-image arrays are not serialised)."""
        return self.summary.to_dict()

    @staticmethod
    def concatenate(parts: list[PerturbationNorms]) -> PerturbationNorms:
        """One object from norms computed batch by batch."""
        if not parts:
            return PerturbationNorms(l2=np.zeros(0), linf=np.zeros(0))
        return PerturbationNorms(
            l2=np.concatenate([p.l2 for p in parts]), linf=np.concatenate([p.linf for p in parts])
        )


def perturbation_norms(clean: np.ndarray, adv: np.ndarray) -> PerturbationNorms:
    """Per-image L2 and L-infinity norms of `adv - clean` over all of an image's values (float64)."""
    clean_arr, adv_arr = np.asarray(clean), np.asarray(adv)
    if clean_arr.shape != adv_arr.shape:
        raise ValueError(f"clean {clean_arr.shape} and adversarial {adv_arr.shape} images differ in shape")
    per_image = int(np.prod(clean_arr.shape[1:])) if clean_arr.ndim > 1 else 1
    diff = (adv_arr.astype(np.float64) - clean_arr.astype(np.float64)).reshape(len(clean_arr), per_image)
    if diff.shape[1] == 0:
        zeros = np.zeros(len(clean_arr))
        return PerturbationNorms(l2=zeros, linf=zeros.copy())
    return PerturbationNorms(l2=np.sqrt((diff * diff).sum(axis=1)), linf=np.abs(diff).max(axis=1))


@dataclass(frozen=True)
class AccuracyMetrics:
    """The integrity metrics of one engine on one perturbation, with their denominators."""

    n_images: int
    n_clean_correct: int
    n_adv_correct: int
    n_changed: int
    clean_acc: float | None
    adv_acc: float | None
    asr: float | None
    fooling_rate: float | None
    targeted_success: float | None = None
    target: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AccuracyMetrics:
        return cls(**{name: doc.get(name) for name in cls.__dataclass_fields__})


def accuracy_metrics(
    labels: np.ndarray,
    clean_pred: np.ndarray,
    adv_pred: np.ndarray,
    *,
    target: int | np.ndarray | None = None,
) -> AccuracyMetrics:
    """All integrity metrics at once; `targeted_success` only when `target` is given.

    `target` is one class for every image or one per image; `AccuracyMetrics.target` records the
    class when it is a single one.
    """
    lab = _labels(labels, "labels")
    clean, adv = _labels(clean_pred, "clean_pred"), _labels(adv_pred, "adv_pred")
    _same_length(labels=lab, clean_pred=clean, adv_pred=adv)
    return AccuracyMetrics(
        n_images=int(lab.size),
        n_clean_correct=int((clean == lab).sum()),
        n_adv_correct=int((adv == lab).sum()),
        n_changed=int((clean != adv).sum()),
        clean_acc=clean_acc(clean, lab),
        adv_acc=adv_acc(adv, lab),
        asr=asr(clean, adv, lab),
        fooling_rate=fooling_rate(clean, adv),
        targeted_success=None if target is None else targeted_success(adv, target, lab),
        target=None if target is None or np.ndim(target) else int(target),
    )
