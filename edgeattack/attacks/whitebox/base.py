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
import logging
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeattack.artifact_breakdown import NOT_BROKEN, reconcile
from edgeattack.attacks.whitebox.common import _AttackBase, row_seed
from edgeattack.attacks.whitebox.model import AttackModel, ModelLike, Tensor, attack_mode, torch
from edgeattack.attacks.whitebox.norms import project, quantize_within
from edgeattack.attacks.whitebox.outputs import AttackOutput, RunResult, UniversalOutput
from edgeattack.attacks.whitebox.validation import _to_numpy
from edgeattack.devices import Precision
from edgeattack.errors import ConfigError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------------
# per-image attacks
# --------------------------------------------------------------------------------------------------
class WhiteBoxAttack(_AttackBase):
    """Base class of per-image white-box attacks. Subclasses implement `run` only.

    Common keyword-only hyper-parameters: `seed` (random starts, drawn per image from the seed and
    the image's dataset index, so results do not depend on the batching), `batch_size` (images per forward/backward), `quantize` (round the
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
        row_ids = prep.dataset.indices if prep.dataset is not None else np.arange(n, dtype=np.int64)
        broken_by: np.ndarray | None = None
        breakers: tuple[str, ...] = ()
        self._generator = torch.Generator().manual_seed(self.seed)
        with attack_mode(prep.models):
            model = AttackModel(prep.models, prep.bounds, prep.device, Precision(self.precision))
            for begin in range(0, n, self.batch_size):
                end = min(begin + self.batch_size, n)
                x = torch.from_numpy(prep.x[begin:end]).to(prep.device)
                y = torch.from_numpy(prep.y[begin:end]).to(prep.device)
                t = None if prep.target is None else torch.from_numpy(prep.target[begin:end]).to(prep.device)
                if begin == 0:  # labels and target against the number of classes, on one image
                    with torch.no_grad():
                        self._check_classes(model(x[:1]), prep.y, prep.target)
                self._row_ids = row_ids[begin:end]
                result = self.run(model, x, y, target=t)
                if not isinstance(result, RunResult):
                    result = RunResult(adversarial=result)
                clean_logits = result.clean_logits
                if clean_logits is None:
                    with torch.no_grad():
                        clean_logits = model(x)
                raw = result.adversarial.detach()
                adv = self._finish_images(raw, x, model)
                adv_logits = self._adversarial_logits(model, result, raw, adv)
                adv_all[begin:end] = adv.cpu().numpy()
                clean_pred[begin:end] = clean_logits.argmax(1).cpu().numpy()
                adv_pred[begin:end] = adv_logits.argmax(1).cpu().numpy()
                if result.broken_by is not None:
                    broken_by = np.full(n, NOT_BROKEN, dtype=np.int64) if broken_by is None else broken_by
                    broken_by[begin:end], breakers = result.broken_by.cpu().numpy(), result.breakers
                if progress is not None:
                    progress(end, n)
        # an image wrong before the attack (or already of the target class) is no success of the attack
        if prep.target is not None:
            success = (prep.y != prep.target) & (adv_pred == prep.target)
        else:
            success = (clean_pred == prep.y) & (adv_pred != prep.y)
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
            broken_by=None if broken_by is None else reconcile(broken_by, prep.y, clean_pred, adv_pred),
            breakers=breakers,
        )
        logger.info(
            "%s on %d images: clean_acc %.3f, adv_acc %.3f, success_rate %s (%.1f s)",
            output.method, n, output.clean_acc, output.adv_acc, output.success_text(), output.wall_s,
        )
        return output

    @staticmethod
    def _adversarial_logits(model: AttackModel, result: RunResult, raw: Tensor, adv: Tensor) -> Tensor:
        """Logits of the finished images: those `run` evaluated and finishing left unchanged are reused."""
        n = adv.shape[0]
        if result.evaluated is None or result.logits is None:
            with torch.no_grad():
                return model(adv)
        known = result.evaluated & ~(adv != raw).flatten(1).any(1)
        if bool(known.all()):
            return result.logits
        logits = torch.empty((n, result.logits.shape[1]), dtype=torch.float32, device=adv.device)
        if bool(known.any()):
            logits[known] = result.logits[known].float()
        with torch.no_grad():
            logits[~known] = model(adv[~known])
        return logits

    def per_row(self, draw: Callable[[Any], Tensor]) -> Tensor:
        """Random draws for the current batch, one per image: `draw(generator)` on a CPU generator
        seeded from (`seed`, the image's dataset index), stacked. A result therefore does not
        depend on how the images are batched, chunked or sharded."""
        ids = getattr(self, "_row_ids", None)
        if ids is None:
            raise RuntimeError("per_row is only available inside run()")
        return torch.stack([draw(torch.Generator().manual_seed(row_seed(self.seed, int(i)))) for i in ids])

    def is_success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        """The success criterion on logits: misclassified (untargeted) or the target reached."""
        pred = logits.argmax(1)
        return pred != y if target is None else pred == target

    @property
    def generator(self) -> Any:
        """The CPU `torch.Generator` of the current call (seeded with `seed`), consumed across batches.

        Per-image random starts use `per_row` instead, so they do not depend on the batching.
        """
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
            model = AttackModel(prep.models, prep.bounds, prep.device, Precision(self.precision))
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


__all__ = [
    "UniversalAttack",
    "WhiteBoxAttack",
]
