"""DeSparsify as a universal patch: a square of free pixel values pasted at one place on every image."""

from __future__ import annotations

import dataclasses
import logging
import time
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack.artifacts import PerturbationArtifact, quantize_to_grid
from edgeattack.attacks.whitebox.base import Progress
from edgeattack.attacks.whitebox.common import _AttackBase, _Prepared
from edgeattack.attacks.whitebox.desparsify_base import _FittedMixin, fit_by_ascent
from edgeattack.attacks.whitebox.desparsify_objective import PATCH_LOCATIONS, SCHEDULES, token_utilization
from edgeattack.attacks.whitebox.model import AttackModel, ModelLike, Tensor, attack_mode, torch
from edgeattack.attacks.whitebox.outputs import UniversalOutput
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError

# the name the attack logged under before it was split out of `desparsify.py`
logger = logging.getLogger("edgeattack.attacks.whitebox.desparsify")


@dataclasses.dataclass(frozen=True)
class PatchOutput(UniversalOutput):
    """A universal patch: `mask` [1,1,H,W] (1 inside the square) and `patch` [1,C,H,W] (zeros outside).

    `delta` is zero; `apply` and the artifact paste the patch: `images * (1 - mask) + patch * mask`.
    """

    mask: np.ndarray | None = None
    patch: np.ndarray | None = None

    def to_artifact(
        self,
        dataset: ImageDataset | None = None,
        *,
        dataset_name: str | None = None,
        split: str | None = None,
        seed: int | None = None,
    ) -> PerturbationArtifact:
        artifact = super().to_artifact(dataset, dataset_name=dataset_name, split=split, seed=seed)
        return dataclasses.replace(artifact, mask=self.mask, patch=self.patch)

    def apply(self, images: np.ndarray, labels: np.ndarray | None = None, *, quantize: bool = False) -> np.ndarray:
        assert self.mask is not None and self.patch is not None
        out = np.clip(images * (1.0 - self.mask) + self.patch * self.mask, self.bounds[0], self.bounds[1])
        out = out.astype(np.float32)
        return quantize_to_grid(out) if quantize else out


def patch_origin(location: Any, patch_size: int, height: int, width: int) -> tuple[int, int]:
    """(top, left) of a `patch_size` square at `location` (a name in PATCH_LOCATIONS or (row, col)) in an image."""
    if patch_size > height or patch_size > width:
        raise ConfigError(f"a {patch_size}x{patch_size} patch is larger than the {height}x{width} images")
    if isinstance(location, str):
        corners = {
            "top-left": (0, 0),
            "top-right": (0, width - patch_size),
            "bottom-left": (height - patch_size, 0),
            "bottom-right": (height - patch_size, width - patch_size),
            "center": ((height - patch_size) // 2, (width - patch_size) // 2),
        }
        return corners[location]
    top, left = (int(v) for v in location)
    if top + patch_size > height or left + patch_size > width:
        raise ConfigError(
            f"a {patch_size}x{patch_size} patch at row {top}, column {left} does not fit in {height}x{width} images"
        )
    return top, left


def _check_location(location: Any) -> str | tuple[int, int]:
    if isinstance(location, str) and "," in location:
        location = tuple(part.strip() for part in location.split(","))
    if isinstance(location, str):
        return choice("patch_location", location, PATCH_LOCATIONS)
    try:
        values = tuple(location)
        if len(values) != 2:
            raise ValueError
        top, left = (int(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(
            f"patch_location must be one of {', '.join(PATCH_LOCATIONS)} or 'ROW,COL', got {location!r}"
        ) from None
    if top < 0 or left < 0:
        raise ConfigError(f"patch_location must be non-negative, got {location!r}")
    return top, left


class DeSparsifyPatch(_FittedMixin, _AttackBase):
    """DeSparsify as a universal patch (`variant="patch"`): a square of free pixel values pasted on every image.

    Not an eps-ball attack, so it is no `UniversalAttack` (whose final `__call__` projects onto an
    eps-ball and adds a delta); its own final `__call__` uses the same input checks, eval mode,
    ensembling and bookkeeping, and returns a `PatchOutput` whose artifact carries `mask` and
    `patch` (kind "universal", norm "none", a zero delta).

    Args:
        patch_size: side of the square patch in pixels (8 for the 32x32 digits).
        patch_location: "top-left" (default), "top-right", "bottom-left", "bottom-right", "center",
            or (row, col) / "ROW,COL" of its top-left pixel.
        epochs: passes over the fit images.
        batch_size: minibatch size.
        step_size: the first signed step on the pixel values (in the units of the bounds; default
            1/16 of the bounds' range), decayed along `schedule` over all steps.
        schedule, momentum, lam, pred_loss, kappa: as for `DeSparsify`.
        seed: the random initial patch and the minibatch order.
    """

    _variants = ("patch",)
    norm = "none"
    eps = None

    def __init__(
        self,
        *,
        variant: str = "patch",
        patch_size: int = 8,
        patch_location: str | Sequence[int] = "top-left",
        epochs: int = 40,
        batch_size: int = 32,
        step_size: float | None = None,
        schedule: str = "cosine",
        momentum: float = 0.9,
        lam: float = 1.0,
        pred_loss: str = "margin",
        kappa: float = 2.0,
        **common: Any,
    ) -> None:
        self._init_loss(variant, lam, pred_loss, kappa)
        self.patch_size = positive_int("patch_size", patch_size)
        self.patch_location = _check_location(patch_location)
        self.epochs = positive_int("epochs", epochs)
        self.step_size = None if step_size is None else positive_float("step_size", step_size)
        self.schedule = choice("schedule", schedule, SCHEDULES)
        self.momentum = positive_float("momentum", momentum, allow_zero=True)
        self._tur_history: list[float] = []
        super().__init__(batch_size=batch_size, **common)

    def _prepare(self, *args: Any, **kwargs: Any) -> _Prepared:
        prep = super()._prepare(*args, **kwargs)
        height, width = prep.x.shape[2:]
        self._origin = patch_origin(self.patch_location, self.patch_size, int(height), int(width))
        return prep

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
    ) -> PatchOutput:
        """Fit the patch on `images` (numpy / torch NCHW, or an ImageDataset: the fit split)."""
        start_time = time.perf_counter()
        prep = self._prepare(models, images, labels, target, bounds)
        x_all = torch.from_numpy(prep.x)
        y_all = torch.from_numpy(prep.y)
        with attack_mode(prep.models):
            model = AttackModel(prep.models, prep.bounds, prep.device)
            clean_logits = model.predict(x_all, 256)
            self._check_classes(clean_logits, prep.y, prep.target)
            clean_pred = clean_logits.argmax(1).cpu()
            mask, patch, history = self._fit(model, x_all.to(prep.device), y_all, progress)
            adv_pred = torch.empty_like(y_all)
            with torch.no_grad():
                for begin in range(0, len(y_all), 256):
                    xb = x_all[begin : begin + 256].to(prep.device)
                    adv_pred[begin : begin + 256] = model(model.clip(xb * (1 - mask) + patch * mask)).argmax(1).cpu()
        n = len(y_all)
        ds = prep.dataset
        output = PatchOutput(
            delta=np.zeros((1, *prep.x.shape[1:]), dtype=np.float32),
            kind="universal",
            method=self.name,
            norm=self.norm,
            eps=None,
            params=self.params,
            sources=prep.sources,
            bounds=prep.bounds,
            fooling_rate=float((adv_pred != clean_pred).float().mean()) if n else 0.0,
            clean_acc=float((clean_pred == y_all).float().mean()) if n else 0.0,
            adv_acc=float((adv_pred == y_all).float().mean()) if n else 0.0,
            n_images=n,
            history=tuple(history),
            dataset=ds.name if ds is not None else None,
            split=ds.split if ds is not None else None,
            data_seed=ds.seed if ds is not None else None,
            wall_s=time.perf_counter() - start_time,
            mask=mask.cpu().numpy().astype(np.float32),
            patch=patch.cpu().numpy().astype(np.float32),
        )
        logger.info(
            "desparsify patch fitted on %d images: clean_acc %.3f, adv_acc %.3f (%.1f s)",
            n, output.clean_acc, output.adv_acc, output.wall_s,
        )
        return output

    def _fit(
        self, model: AttackModel, x: Tensor, y: Tensor, progress: Progress | None
    ) -> tuple[Tensor, Tensor, list[float]]:
        """(mask [1,1,H,W], patch [1,C,H,W] zero outside the square, fit fooling rate per epoch)."""
        members = model.models
        device = model.device
        _, channels, height, width = (int(s) for s in x.shape)
        low, high = model.bounds
        size = self.patch_size
        top, left = self._origin
        pad = (left, width - left - size, top, height - top - size)
        mask = torch.nn.functional.pad(torch.ones(1, 1, size, size, dtype=x.dtype), pad).to(device)
        generator = torch.Generator().manual_seed(self.seed)
        p = (low + (high - low) * torch.rand((1, channels, size, size), generator=generator)).to(device, x.dtype)
        step_size = (high - low) / 16 if self.step_size is None else self.step_size
        clean_tur, clean_preds, clean_logits = token_utilization(members, x, 256)
        ensemble_clean = clean_logits.argmax(1)

        def paste(images: Tensor, values: Tensor) -> Tensor:
            return images * (1 - mask) + torch.nn.functional.pad(values, pad) * mask

        def on_epoch(epoch: int, tur: float) -> None:
            self._tur_history.append(tur)
            if progress is not None:
                progress(epoch, self.epochs)

        p, history = fit_by_ascent(
            members,
            x,
            clean_preds,
            ensemble_clean,
            p,
            objective=self._objective,
            perturb=paste,
            constrain=lambda values: values.clamp(low, high),
            evaluate=lambda values: paste(x, self._final(values, model)),
            epochs=self.epochs,
            batch_size=self.batch_size,
            step_size=step_size,
            schedule=self.schedule,
            momentum=self.momentum,
            generator=generator,
            on_epoch=on_epoch,
        )
        p = self._final(p, model)
        adv_tur, adv_preds, _ = token_utilization(members, paste(x, p), 256)
        assert self._tally is not None
        self._tally.add(clean_tur, adv_tur, clean_preds, adv_preds, y)
        return mask, torch.nn.functional.pad(p, pad), history

    def _final(self, p: Tensor, model: AttackModel) -> Tensor:
        p = model.clip(p)
        if self.quantize:
            p = (torch.round(p * 255) / 255).clamp(*model.bounds)
        return p


__all__ = ["DeSparsifyPatch", "PatchOutput", "patch_origin"]
