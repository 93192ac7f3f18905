"""The white-box attack machinery, foolbox-3 style: the base classes own everything but the attack.

`WhiteBoxAttack.__call__` (per-image attacks) and `UniversalAttack.__call__` (one perturbation for
many images) are final. They convert and check the inputs (numpy, torch or an `ImageDataset`;
finite; inside the bounds the model's config declares), put the source models in eval mode with
frozen parameters (restored afterwards), batch, clip to the bounds, enforce the eps-ball, round to
the 1/255 grid when asked, keep the success bookkeeping and return an output that turns into a
`PerturbationArtifact`. A subclass implements only the attack:

- `WhiteBoxAttack.run(model, x, y, *, target)` -> adversarial images (or a `RunResult`);
- `UniversalAttack.fit(model, x, y, *, clean_pred, target)` -> `(delta [1,C,H,W], history)`.

Ensembles: a list of models is attacked through the *mean of their logits* (not the mean of their
losses): the ensemble is one classifier whose logits are the average, and success is judged on it.
A model that returns a tuple (a distilled DeiT in training mode returns both heads) contributes the
mean of its heads, which is what the deployed engine returns; tuple members whose shape differs from
the first (extra outputs such as token counts) are ignored.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import logging
import math
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeattack._lazy import require
from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact, quantize_to_grid
from edgeattack.data.base import ImageDataset, check_images
from edgeattack.errors import ArtifactError, ConfigError, DataError, did_you_mean

torch = require("torch", feature="white-box attacks")

logger = logging.getLogger(__name__)

Tensor = Any  # torch.Tensor; kept as Any so the annotations need no torch at type-check time
ModelLike = Any  # a torch.nn.Module (or any callable) mapping images in `bounds` to logits
Progress = Callable[[int, int], None]

NORMS = ("linf", "l2")
GRID_LEVELS = 255


# --------------------------------------------------------------------------------------------------
# the model as an attack sees it
# --------------------------------------------------------------------------------------------------
def _logits_of(output: Any) -> Tensor:
    """Logits from a model's output: a tensor, or the mean of a tuple's same-shaped heads."""
    if isinstance(output, (tuple, list)):
        heads = [o for o in output if torch.is_tensor(o) and o.shape == output[0].shape]
        if not heads:
            raise ConfigError("the model returned a tuple without logits")
        return heads[0] if len(heads) == 1 else torch.stack(heads).mean(0)
    return output


class AttackModel:
    """The source model(s) as one classifier: `model(x)` -> logits averaged over the ensemble.

    `bounds` are the input bounds, `device` where the images must be. `predict` runs without
    gradients in batches.
    """

    def __init__(self, models: Sequence[ModelLike], bounds: tuple[float, float], device: Any) -> None:
        self.models = list(models)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.device = device

    def __call__(self, x: Tensor) -> Tensor:
        total = _logits_of(self.models[0](x))
        for model in self.models[1:]:
            total = total + _logits_of(model(x))
        return total / len(self.models) if len(self.models) > 1 else total

    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Logits of `x` (moved to the device batch by batch), without gradients, on the device."""
        with torch.no_grad():
            chunks = [self(x[i : i + batch_size].to(self.device)) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def clip(self, x: Tensor) -> Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])


@contextlib.contextmanager
def attack_mode(models: Sequence[ModelLike]) -> Iterator[None]:
    """Eval mode and `requires_grad=False` on every parameter for the duration; both restored after.

    Each submodule's own training flag is restored (a model with frozen BatchNorm stays so).
    """
    saved: list[tuple[list[tuple[Any, bool]], list[tuple[Any, bool]]]] = []
    seen: set[int] = set()
    for model in models:
        if not isinstance(model, torch.nn.Module) or id(model) in seen:
            continue
        seen.add(id(model))
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.requires_grad) for p in model.parameters()]
        saved.append((modes, grads))
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for modes, grads in saved:
            for m, training in modes:
                m.training = training
            for p, flag in grads:
                p.requires_grad_(flag)


def model_bounds(models: Sequence[ModelLike], bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """The input bounds: `bounds` if given, else what every model's `config.bounds` (or `.bounds`) says."""
    found: set[tuple[float, float]] = set()
    for model in models:
        b = getattr(getattr(model, "config", None), "bounds", None) or getattr(model, "bounds", None)
        if b is not None:
            found.add((float(b[0]), float(b[1])))
    if bounds is not None:
        low, high = float(bounds[0]), float(bounds[1])
        if found and found != {(low, high)}:
            raise ConfigError(f"bounds={[low, high]} disagree with the model config bounds {sorted(found)}")
    elif len(found) == 1:
        low, high = found.pop()
    elif not found:
        raise ConfigError("the model does not declare its input bounds (config.bounds); pass bounds=(low, high)")
    else:
        raise ConfigError(f"the ensemble's models declare different input bounds: {sorted(found)}")
    if not high > low:
        raise ConfigError(f"bounds must satisfy low < high, got {[low, high]}")
    return low, high


def model_sources(models: Sequence[ModelLike]) -> tuple[dict[str, str], ...]:
    """`{"model": name, "sha256": weights}` per source model, as artifacts and results record them."""
    sources = []
    for model in models:
        name = str(getattr(model, "model_name", "") or type(model).__name__)
        digest = str(getattr(model, "weights_sha256", "") or "")
        if not digest and isinstance(model, torch.nn.Module):
            from edgeattack.zoo.factory import state_dict_sha256

            digest = state_dict_sha256(model)
        sources.append({"model": name, "sha256": digest})
    return tuple(sources)


def model_device(models: Sequence[ModelLike]) -> Any:
    """The device of the models' parameters (all must agree); the CPU for parameter-free callables."""
    devices = set()
    for model in models:
        if isinstance(model, torch.nn.Module):
            for tensor in list(model.parameters())[:1] or list(model.buffers())[:1]:
                devices.add(tensor.device)
    if len(devices) > 1:
        raise ConfigError(f"the ensemble's models are on different devices: {sorted(map(str, devices))}")
    return devices.pop() if devices else torch.device("cpu")


def _as_model_list(models: ModelLike | Sequence[ModelLike]) -> list[ModelLike]:
    listed = list(models) if isinstance(models, (list, tuple)) else [models]
    if not listed:
        raise ConfigError("no source model given (an empty ensemble)")
    for model in listed:
        if not callable(model):
            raise ConfigError(f"a source model must be callable (a torch module), got {type(model).__name__}")
    return listed


# --------------------------------------------------------------------------------------------------
# norms and projections (shared by the attacks)
# --------------------------------------------------------------------------------------------------
def per_image_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-image L-inf or L2 norm of a [N,...] tensor."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """`delta` projected onto the `norm` ball of radius `eps` (per image)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = per_image_norm(delta, "l2").clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def quantize_within(adv: Tensor, clean: Tensor, norm: str, eps: float | None, bounds: tuple[float, float]) -> Tensor:
    """Round `adv` to the 1/255 grid; for L-inf, round to the neighbour that stays in the eps-ball.

    Nearest rounding can leave the L-inf ball by half a grid step when the clean image is off the
    grid; choosing the other neighbour there keeps the guarantee whenever 2*eps >= 1/255. For L2 the
    nearest neighbour is taken (the realised norms are reported in the output).
    """
    scaled = adv * GRID_LEVELS
    q = torch.round(scaled) / GRID_LEVELS
    if norm == "linf" and eps is not None:
        low = torch.maximum(clean - eps, torch.full_like(clean, bounds[0]))
        high = torch.minimum(clean + eps, torch.full_like(clean, bounds[1]))
        tol = 1e-6
        q = torch.where(q < low - tol, torch.ceil(scaled) / GRID_LEVELS, q)
        q = torch.where(q > high + tol, torch.floor(scaled) / GRID_LEVELS, q)
    return q.clamp(bounds[0], bounds[1])


# --------------------------------------------------------------------------------------------------
# hyper-parameters
# --------------------------------------------------------------------------------------------------
class _AttackBase(abc.ABC):
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

    def __init__(self, *, seed: int = 0, batch_size: int = 256, quantize: bool = False, **unknown: Any) -> None:
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


@dataclass
class RunResult:
    """What `run` may return instead of bare adversarial images.

    `logits[i]` are the (ensemble) logits of `adversarial[i]` for rows where `evaluated[i]` holds,
    so the base class need not run those images again (unless clipping, projection or rounding
    changed them).
    """

    adversarial: Tensor
    logits: Tensor | None = None
    evaluated: Tensor | None = None


# --------------------------------------------------------------------------------------------------
# per-image attacks
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackOutput:
    """The result of a per-image white-box attack (numpy arrays on the CPU).

    `success[i]`: untargeted, the ensemble misclassifies `adversarial[i]` (`adv_pred != labels`);
    targeted, it predicts `target[i]`. `delta = adversarial - clean`.
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

    def __len__(self) -> int:
        return int(self.adversarial.shape[0])

    @property
    def clean(self) -> np.ndarray:
        return self.adversarial - self.delta

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def success_rate(self) -> float:
        """Fraction of all images on which the attack succeeded."""
        return float(self.success.mean()) if len(self) else 0.0

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
        return PerturbationArtifact(delta=self.delta, meta=meta, indices=idx)


class WhiteBoxAttack(_AttackBase):
    """Base class of per-image white-box attacks. Subclasses implement `run` only.

    Common keyword-only hyper-parameters: `seed` (random starts; results are deterministic for a
    seed and batch size), `batch_size` (images per forward/backward), `quantize` (round the
    adversarial images to the 1/255 grid, as a uint8 camera pipeline would; L-inf stays in the ball).
    """

    #: the threat model's norm ("linf" or "l2"); an instance may override it
    norm: str = "linf"
    eps: float | None = None

    @typing.final
    def __call__(
        self,
        models: ModelLike | Sequence[ModelLike],
        images: Any,
        labels: Any = None,
        *,
        target: Any = None,
        bounds: tuple[float, float] | None = None,
        progress: Progress | None = None,
    ) -> AttackOutput:
        """Attack `images` (numpy / torch NCHW in the model's bounds, or an ImageDataset).

        `models`: one model or a list (an ensemble attacked through its mean logits). `target`: a
        class index or one per image for a targeted attack. `progress(done, total)` is called after
        each batch.
        """
        start_time = time.perf_counter()
        prep = self._prepare(models, images, labels, target, bounds)
        n = prep.x.shape[0]
        adv_all = np.empty_like(prep.x)
        clean_pred = np.empty(n, dtype=np.int64)
        adv_pred = np.empty(n, dtype=np.int64)
        self._generator = torch.Generator().manual_seed(self.seed)
        with attack_mode(prep.models):
            model = AttackModel(prep.models, prep.bounds, prep.device)
            for begin in range(0, n, self.batch_size):
                end = min(begin + self.batch_size, n)
                x = torch.from_numpy(prep.x[begin:end]).to(prep.device)
                y = torch.from_numpy(prep.y[begin:end]).to(prep.device)
                t = None if prep.target is None else torch.from_numpy(prep.target[begin:end]).to(prep.device)
                with torch.no_grad():
                    clean_logits = model(x)
                if begin == 0:
                    self._check_classes(clean_logits, prep.y, prep.target)
                result = self.run(model, x, y, target=t)
                if not isinstance(result, RunResult):
                    result = RunResult(adversarial=result)
                raw = result.adversarial.detach()
                adv = self._finish_images(raw, x, model)
                known = (
                    result.evaluated.clone()
                    if result.evaluated is not None and result.logits is not None
                    else torch.zeros(end - begin, dtype=torch.bool, device=x.device)
                )
                known &= ~(adv != raw).flatten(1).any(1)
                logits = torch.empty_like(clean_logits)
                if bool(known.any()):
                    logits[known] = result.logits[known].to(logits.dtype)
                if not bool(known.all()):
                    with torch.no_grad():
                        logits[~known] = model(adv[~known])
                adv_all[begin:end] = adv.cpu().numpy()
                clean_pred[begin:end] = clean_logits.argmax(1).cpu().numpy()
                adv_pred[begin:end] = logits.argmax(1).cpu().numpy()
                if progress is not None:
                    progress(end, n)
        if prep.target is not None:
            success = adv_pred == prep.target
        else:
            success = adv_pred != prep.y
        ds = prep.dataset
        output = AttackOutput(
            adversarial=adv_all,
            delta=adv_all - prep.x,
            labels=prep.y,
            clean_pred=clean_pred,
            adv_pred=adv_pred,
            success=success,
            method=self.name or type(self).__name__.lower(),
            norm=self.norm,
            eps=None if self.eps is None else float(self.eps),
            params=self.params,
            sources=prep.sources,
            bounds=prep.bounds,
            target=prep.target,
            dataset=ds.name if ds is not None else None,
            split=ds.split if ds is not None else None,
            data_seed=ds.seed if ds is not None else None,
            indices=ds.indices.copy() if ds is not None else None,
            wall_s=time.perf_counter() - start_time,
        )
        logger.info(
            "%s on %d images: clean_acc %.3f, adv_acc %.3f, success %.3f (%.1f s)",
            output.method, n, output.clean_acc, output.adv_acc, output.success_rate, output.wall_s,
        )
        return output

    def is_success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """The success criterion on logits: misclassified (untargeted) or the target reached."""
        pred = logits.argmax(1)
        return pred != y if target is None else pred == target

    @property
    def generator(self) -> Any:
        """The CPU `torch.Generator` of the current call (seeded with `seed`)."""
        return self._generator

    @abc.abstractmethod
    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> Tensor | RunResult:
        """Adversarial images for one batch `x` (in `model.bounds`) with labels `y`.

        `target` is None (untargeted) or the target class per image. The base class clips to the
        bounds and the eps-ball afterwards, so a run need not be exact about either.
        """


# --------------------------------------------------------------------------------------------------
# universal attacks
# --------------------------------------------------------------------------------------------------
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


class UniversalAttack(_AttackBase):
    """Base class of universal perturbations. Subclasses implement `fit` (one delta for a set of images).

    With `class_universal=True` the base class fits one delta per class, each on that class's images
    (by true label, which is also how `PerturbationArtifact.apply` picks them).
    """

    norm: str = "linf"
    eps: float | None = None

    def __init__(self, *, class_universal: bool = False, **common: Any) -> None:
        self.class_universal = bool(class_universal)
        super().__init__(**common)

    @typing.final
    def __call__(
        self,
        models: ModelLike | Sequence[ModelLike],
        images: Any,
        labels: Any = None,
        *,
        target: Any = None,
        bounds: tuple[float, float] | None = None,
        progress: Progress | None = None,
    ) -> UniversalOutput:
        """Fit the perturbation on `images` (numpy / torch NCHW, or an ImageDataset: the fit split).

        `target`: one class index for a targeted universal perturbation. `progress(done, total)` is
        called after each pass / epoch.
        """
        start_time = time.perf_counter()
        if target is not None and np.ndim(_to_numpy(target, "target")) != 0:
            raise ConfigError("a universal perturbation takes one target class (an int)")
        prep = self._prepare(models, images, labels, target, bounds)
        target_class = None if prep.target is None else int(prep.target[0])
        x_all = torch.from_numpy(prep.x)
        y_all = torch.from_numpy(prep.y)
        with attack_mode(prep.models):
            model = AttackModel(prep.models, prep.bounds, prep.device)
            clean_logits = model.predict(x_all, self.batch_size)
            self._check_classes(clean_logits, prep.y, prep.target)
            num_classes = int(clean_logits.shape[1])
            clean_pred = clean_logits.argmax(1).cpu()
            groups = (
                [torch.nonzero(y_all == k).flatten() for k in range(num_classes)]
                if self.class_universal
                else [torch.arange(len(y_all))]
            )
            total = self.progress_units * len(groups)
            deltas: list[Tensor] = []
            history: list[float] = []
            for g, members in enumerate(groups):
                shape = (1, *prep.x.shape[1:])
                if members.numel() == 0:
                    logger.warning("class %d has no images in the fit set: its delta stays zero", g)
                    deltas.append(torch.zeros(shape))
                    continue

                def tick(done: int, offset: int = g * self.progress_units) -> None:
                    if progress is not None:
                        progress(min(offset + done, total), total)

                self._tick = tick
                t = None if target_class is None else torch.full((members.numel(),), target_class)
                delta, hist = self.fit(model, x_all[members], y_all[members], clean_pred=clean_pred[members], target=t)
                delta = project(delta.detach().to("cpu", torch.float32).reshape(shape), self.norm, self._eps_value())
                deltas.append(delta)
                history.extend(float(h) for h in hist)
            if progress is not None:
                progress(total, total)
            delta_all = torch.cat(deltas)
            index = torch.zeros_like(y_all) if not self.class_universal else y_all
            adv_pred = torch.empty_like(y_all)
            for begin in range(0, len(y_all), self.batch_size):
                sl = slice(begin, begin + self.batch_size)
                adv = model.clip(x_all[sl] + delta_all[index[sl]])
                if self.quantize:
                    adv = quantize_within(adv, x_all[sl], self.norm, self._eps_value(), model.bounds)
                adv_pred[sl] = model.predict(adv, self.batch_size).argmax(1).cpu()
        fooled = adv_pred != clean_pred
        targeted_success = None
        if target_class is not None:
            eligible = y_all != target_class
            targeted_success = float((adv_pred[eligible] == target_class).float().mean()) if eligible.any() else None
        ds = prep.dataset
        output = UniversalOutput(
            delta=delta_all.numpy().astype(np.float32),
            kind="class_universal" if self.class_universal else "universal",
            method=self.name or type(self).__name__.lower(),
            norm=self.norm,
            eps=self._eps_value(),
            params=self.params,
            sources=prep.sources,
            bounds=prep.bounds,
            fooling_rate=float(fooled.float().mean()) if len(y_all) else 0.0,
            clean_acc=float((clean_pred == y_all).float().mean()) if len(y_all) else 0.0,
            adv_acc=float((adv_pred == y_all).float().mean()) if len(y_all) else 0.0,
            n_images=len(y_all),
            targeted_success=targeted_success,
            target=target_class,
            history=tuple(history),
            dataset=ds.name if ds is not None else None,
            split=ds.split if ds is not None else None,
            data_seed=ds.seed if ds is not None else None,
            wall_s=time.perf_counter() - start_time,
        )
        logger.info(
            "%s (%s) fitted on %d images: fooling rate %.3f, adv_acc %.3f (%.1f s)",
            output.method, output.kind, output.n_images, output.fooling_rate, output.adv_acc, output.wall_s,
        )
        return output

    def _eps_value(self) -> float:
        if self.eps is None:
            raise ConfigError(f"{type(self).__name__} needs eps")
        return float(self.eps)

    def tick(self, done: int) -> None:
        """Report `done` of `progress_units` passes/epochs of the current fit."""
        callback = getattr(self, "_tick", None)
        if callback is not None:
            callback(done)

    @property
    def progress_units(self) -> int:
        """How many `tick`s one `fit` makes at most (its passes or epochs)."""
        return 1

    @abc.abstractmethod
    def fit(
        self, model: AttackModel, x: Tensor, y: Tensor, *, clean_pred: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Sequence[float]]:
        """One perturbation [1,C,H,W] for the fit images `x` (a CPU tensor: move batches to `model.device`).

        `clean_pred` are the model's predictions on the clean images; `target` None or the target
        class per image. Returns the delta and the fooling rate after each pass/epoch.
        """


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _to_numpy(value: Any, what: str) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    if isinstance(value, (int, np.integer)):
        return np.asarray(value)
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numpy array or torch tensor, got {type(value).__name__}") from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1, or ConfigError."""
    return _positive_int(name, value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """`value` as a finite float > 0 (or >= 0), or ConfigError."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}")
    return number


def choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, or ConfigError naming them."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}{did_you_mean(str(value), choices)}")
    return str(value)


__all__ = [
    "NORMS",
    "AttackModel",
    "AttackOutput",
    "RunResult",
    "UniversalAttack",
    "UniversalOutput",
    "WhiteBoxAttack",
    "attack_mode",
    "choice",
    "model_bounds",
    "model_sources",
    "per_image_norm",
    "positive_float",
    "positive_int",
    "project",
    "quantize_within",
]
