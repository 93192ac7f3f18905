"""`_AttackBase`: what per-image and universal attacks share.

Keyword-only hyper-parameters (validated, recorded as `params`; `seed`, `batch_size`, `quantize`
and `precision` are common to all: `precision` is the autocast policy of the forward passes,
fp32/bf16/fp16, while perturbations, losses and input gradients stay float32), the guard that
keeps `__call__` final, and the input handling around an attack: converting and checking images, labels, target and
bounds (`_prepare` -> `_Prepared`), checking classes against the logits, and finishing adversarial
images (clip, eps-ball, 1/255 grid).
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeattack.attacks.whitebox.model import (
    AttackModel,
    ModelLike,
    Tensor,
    _as_model_list,
    model_bounds,
    model_device,
    model_sources,
)
from edgeattack.attacks.whitebox.norms import per_image_norm, project, quantize_within
from edgeattack.attacks.whitebox.validation import _jsonable, _positive_int, _to_numpy
from edgeattack.data.base import ImageDataset, check_images
from edgeattack.devices import Precision
from edgeattack.errors import ConfigError, DataError, did_you_mean


class _AttackBase(abc.ABC):  # noqa: B024 - abstract through its subclasses run/fit
    """Keyword-only hyper-parameters stored as attributes; unknown ones raise ConfigError."""

    #: registry name, also written as the artifact's `method`
    name: ClassVar[str] = ""
    #: whether `target=` is supported
    supports_targeted: ClassVar[bool] = True
    _final_methods: ClassVar[tuple[str, ...]] = ("__call__",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            for method in getattr(base, "_final_methods", ()):
                if base.__dict__.get(method) is not None and method in cls.__dict__:
                    raise TypeError(f"{cls.__name__} must not override the final {base.__name__}.{method}; implement run()")

    def __init__(
        self,
        *,
        seed: int = 0,
        batch_size: int = 256,
        quantize: bool = False,
        precision: str = "fp32",
        **unknown: Any,
    ) -> None:
        if unknown:
            valid = self.parameter_names()
            first = min(unknown)
            raise ConfigError(
                f"{type(self).__name__} got unknown parameter(s) {', '.join(sorted(unknown))}"
                f"{did_you_mean(first, valid)}; valid parameters: {', '.join(valid)}"
            )
        self.seed = int(seed)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.quantize = bool(quantize)
        self.precision = Precision(str(precision)).name

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """Names of the keyword-only hyper-parameters accepted by `__init__` (over the class hierarchy)."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return tuple(names)

    @property
    def params(self) -> dict[str, Any]:
        """The hyper-parameters as a JSON-ready dict (recorded in artifacts)."""
        return {name: _jsonable(getattr(self, name)) for name in self.parameter_names()}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({inner})"

    # -- shared input handling ---------------------------------------------------------------------
    def _prepare(
        self,
        models: ModelLike | Sequence[ModelLike],
        images: Any,
        labels: Any,
        target: Any,
        bounds: tuple[float, float] | None,
    ) -> _Prepared:
        model_list = _as_model_list(models)
        provenance: ImageDataset | None = None
        if isinstance(images, ImageDataset):
            provenance = images
            if labels is None:
                labels = images.labels
            images = images.images
        x = _to_numpy(images, "images").astype(np.float32, copy=False)
        if x.ndim != 4:
            raise DataError(f"images must be NCHW (4 dimensions), got shape {x.shape}")
        if labels is None:
            raise ConfigError("labels are required (or pass an ImageDataset)")
        y = _to_numpy(labels, "labels")
        if y.shape != (x.shape[0],) or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise DataError(f"labels must be {x.shape[0]} integers, got {y.dtype} of shape {y.shape}")
        y = y.astype(np.int64)
        if y.size and y.min() < 0:
            raise DataError("labels must be non-negative class indices")
        low, high = model_bounds(model_list, bounds)
        check_images(x, what="attack input", bounds=(low, high))
        for model in model_list:
            size = getattr(getattr(model, "config", None), "input_size", None)
            if size is not None and tuple(size) != tuple(x.shape[1:]):
                raise DataError(
                    f"{getattr(model, 'model_name', type(model).__name__)} takes inputs of size {tuple(size)}, "
                    f"the images are {tuple(x.shape[1:])}"
                )
        t: np.ndarray | None = None
        if target is not None:
            if not self.supports_targeted:
                raise ConfigError(f"{type(self).__name__} has no targeted mode")
            t = _to_numpy(target, "target")
            if t.ndim == 0:
                t = np.full(x.shape[0], int(t), dtype=np.int64)
            if t.shape != (x.shape[0],) or not np.issubdtype(t.dtype, np.integer) or (t.size and t.min() < 0):
                raise ConfigError(f"target must be a class index or {x.shape[0]} class indices")
            t = t.astype(np.int64)
        if provenance is not None and len(provenance) != x.shape[0]:
            provenance = None
        return _Prepared(
            models=model_list,
            x=x,
            y=y,
            target=t,
            bounds=(low, high),
            device=model_device(model_list),
            sources=model_sources(model_list),
            dataset=provenance,
        )

    def _check_classes(self, logits: Tensor, y: np.ndarray, target: np.ndarray | None) -> None:
        classes = int(logits.shape[1])
        if y.size and int(y.max()) >= classes:
            raise DataError(f"labels go up to {int(y.max())} but the model has {classes} classes")
        if target is not None and target.size and int(target.max()) >= classes:
            raise ConfigError(f"target class {int(target.max())} does not exist (the model has {classes} classes)")

    def _finish_images(self, adv: Tensor, clean: Tensor, model: AttackModel) -> Tensor:
        """Clip to the bounds, pull rows that left the eps-ball back in, round to the grid if asked."""
        eps: float | None = getattr(self, "eps", None)
        norm: str = getattr(self, "norm", "linf")
        adv = model.clip(adv)
        if eps is not None:
            delta = adv - clean
            outside = per_image_norm(delta, norm) > eps * (1 + 1e-5) + 1e-7
            if bool(outside.any()):
                fixed = model.clip(clean[outside] + project(delta[outside], norm, eps))
                adv = adv.clone()
                adv[outside] = fixed
        if self.quantize:
            adv = quantize_within(adv, clean, norm, eps, model.bounds)
        return adv


def row_seed(seed: int, index: int) -> int:
    """The seed of image `index`'s random draws under attack seed `seed` (independent streams)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(index) % 2**63]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass
class _Prepared:
    models: list[ModelLike]
    x: np.ndarray
    y: np.ndarray
    target: np.ndarray | None
    bounds: tuple[float, float]
    device: Any
    sources: tuple[dict[str, str], ...]
    dataset: ImageDataset | None

