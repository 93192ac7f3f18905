"""The one training loop every edgeattack trainer runs; each mechanism passes in its loss.

`run_training(model, train, step, optimizer, config)` does what the trainers share: seeding, a
seeded permutation per epoch, batches read from the dataset (`ImageDataset.batches(positions=)`,
so image folders decode batch by batch), the random-shift augmentation, autocast and the fp16
gradient scaler, gradient clipping, the stop at the first non-finite loss or gradient (before the
optimizer step, so the model keeps its last good weights), the linear warm-up + cosine schedule,
per-epoch means of the loss terms, and validation. The mechanism supplies `step(model, x, y) ->
(loss, terms)`: the mean loss over the batch and named batch means to report.

Under torchrun (`edgeattack.training.runtime.training_session`) the model is wrapped in
DistributedDataParallel and every rank takes its contiguous slice of each global batch of
`batch_size` images of the same permutation, with the augmentation drawn for the whole global batch.
Each rank's loss is weighted by its share of the global batch, so DDP's gradient average is the
gradient of the global batch mean: the run equals one process with the same batch size up to float
rounding (for losses that are means over images; mechanisms with random decisions inside the
model draw different noise). A rank whose slice of the last, partial batch is empty runs one image
with weight 0. Validation and `on_epoch` run on rank 0; the epoch means are summed over ranks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeattack.data.base import ImageDataset
from edgeattack.distributed import Shard
from edgeattack.errors import ConfigError
from edgeattack.training.augment import apply_shift, shift_offsets
from edgeattack.training.runtime import TrainRuntime, current_runtime

logger = logging.getLogger(__name__)

StepFn = Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]
"""`step(model, images, labels) -> (mean loss, {name: batch mean})`; `model` may be DDP-wrapped."""


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs besides the loss: sizes, seed, augmentation, schedule, clipping, stops.

    `grad_clip` None computes no gradient norm (unless `check_finite`); `clamp_warmup` keeps the
    warm-up shorter than the whole run; `max_steps` stops early (tests, smoke runs).
    """

    epochs: int
    batch_size: int
    seed: int = 0
    max_shift: int = 0
    warmup_epochs: int = 0
    clamp_warmup: bool = False
    grad_clip: float | None = None
    check_finite: bool = False
    max_steps: int | None = None
    find_unused_parameters: bool = False

    @classmethod
    def of(cls, config: Any, **settings: Any) -> LoopConfig:
        """The loop of a trainer's config (its epochs, batch_size, seed, max_shift, warmup_epochs),
        with `settings` for the rest; a config's `max_grad_norm` (None: no clipping) becomes `grad_clip`."""
        if hasattr(config, "max_grad_norm") and "grad_clip" not in settings:
            settings["grad_clip"] = float("inf") if config.max_grad_norm is None else config.max_grad_norm
        return cls(
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            max_shift=config.max_shift,
            warmup_epochs=config.warmup_epochs,
            **settings,
        )

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError("epochs and batch_size must be positive")
        if self.max_shift < 0 or self.warmup_epochs < 0:
            raise ConfigError("max_shift and warmup_epochs must be non-negative")


@dataclass
class LoopResult:
    """Optimizer steps done, per-epoch means of "loss" and every term, per-epoch validation, wall time."""

    steps: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


class StepDiverged(Exception):
    """A non-finite loss (`kind` "loss") or gradient norm ("gradient"); nothing was applied."""

    def __init__(
        self,
        kind: str,
        value: float,
        *,
        epoch: int,
        step: int,
        steps_per_epoch: int,
        epochs: int,
        terms: dict[str, Any],
        result: LoopResult,
    ) -> None:
        super().__init__(f"{kind} is {value} at epoch {epoch + 1}/{epochs}, step {step + 1}/{steps_per_epoch}")
        self.kind, self.value, self.terms, self.result = kind, value, terms, result
        self.epoch, self.step, self.steps_per_epoch, self.epochs = epoch, step, steps_per_epoch, epochs

    @property
    def where(self) -> str:
        return f"epoch {self.epoch + 1}/{self.epochs}, step {self.step + 1}/{self.steps_per_epoch}"


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at optimizer step `step`: linear warm-up to 1, then cosine decay to 0."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return schedule


def _plan(order: np.ndarray, batch_size: int, rank: int, world: int) -> list[tuple[int, np.ndarray, bool]]:
    """Per global batch: its size, this rank's indices into it, and whether they are a weight-0 stand-in."""
    plan = []
    for start in range(0, len(order), batch_size):
        size = min(batch_size, len(order) - start)
        local = Shard(rank, world).positions(size) if world > 1 else np.arange(size)
        plan.append((size, local, False) if len(local) else (size, np.zeros(1, dtype=np.int64), True))
    return plan


def run_training(
    model: Any,
    train: ImageDataset,
    step: StepFn,
    optimizer: Callable[[], Any],
    config: LoopConfig,
    *,
    frozen: Sequence[Any] = (),
    clip_params: Sequence[Any] | None = None,
    validate: Callable[[Any], dict[str, float]] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch: Callable[[int, dict[str, float], dict[str, float] | None], None] | None = None,
    runtime: TrainRuntime | None = None,
) -> LoopResult:
    """Train `model` in place; returns the per-epoch figures. Raises StepDiverged at a non-finite step.

    `optimizer()` builds the optimizer once the model is on the device; `frozen` modules (teachers)
    move to the device in eval mode; `clip_params` (default: the optimizer's, in group order) are
    the parameters whose norm is clipped; `validate(model)` runs after each epoch on rank 0;
    `before_epoch(epoch)` and `after_step()` (under no_grad) are the mechanisms' hooks.
    """
    import torch

    runtime = runtime or current_runtime()
    world, rank, device = runtime.world_size, runtime.rank, runtime.device
    if config.batch_size % world:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the global batch: it must be a multiple of the {world} ranks"
        )
    if len(train) == 0:
        raise ConfigError(f"{train.spec} has no images to train on")
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    if config.clamp_warmup:
        warmup = min(warmup, max(total - 1, 0))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    for module in frozen:
        module.to(device).eval()
    opt = optimizer()
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup))
    params = list(clip_params) if clip_params is not None else [p for g in opt.param_groups for p in g["params"]]
    scaler = runtime.precision.grad_scaler(device)
    net = _wrap(model, runtime, config.find_unused_parameters)
    result = LoopResult()
    start = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            if before_epoch is not None:
                before_epoch(epoch)
            model.train()
            order = torch.randperm(len(train), generator=generator).numpy()
            plan = _plan(order, config.batch_size, rank, world)
            flat = np.concatenate([order[i * config.batch_size :][local] for i, (_, local, _) in enumerate(plan)])
            sums: dict[str, float] = {}
            seen = done = 0
            batches = train.batches(config.batch_size // world, positions=flat)
            for index, ((size, local, stand_in), (images, labels)) in enumerate(zip(plan, batches, strict=True)):
                if config.max_steps is not None and result.steps >= config.max_steps:
                    break
                offsets = shift_offsets(size, config.max_shift, generator)
                if offsets is not None and world > 1:
                    offsets = (offsets[0][local], offsets[1][local])
                x = apply_shift(torch.from_numpy(np.ascontiguousarray(images)), offsets, config.max_shift)
                x, y = x.to(device), torch.from_numpy(labels).to(device)
                n = 0 if stand_in else len(local)
                with runtime.precision.autocast(device):
                    loss, terms = step(net, x, y)
                if config.check_finite and not _all_finite(loss, runtime):
                    raise StepDiverged(
                        "loss", float(loss.detach()), epoch=epoch, step=index, steps_per_epoch=steps_per_epoch,
                        epochs=config.epochs, terms={"loss": loss, **terms}, result=result,
                    )
                scaled = loss if world == 1 else loss * (n * world / size)
                opt.zero_grad(set_to_none=True)
                (scaled if scaler is None else scaler.scale(scaled)).backward()
                if scaler is not None:
                    scaler.unscale_(opt)
                if config.grad_clip is not None or config.check_finite:
                    limit = config.grad_clip if config.grad_clip is not None else float("inf")
                    norm = torch.nn.utils.clip_grad_norm_(params, limit)
                    if config.check_finite and scaler is None and not bool(torch.isfinite(norm)):
                        opt.zero_grad(set_to_none=True)
                        raise StepDiverged(
                            "gradient norm", float(norm), epoch=epoch, step=index, steps_per_epoch=steps_per_epoch,
                            epochs=config.epochs, terms={}, result=result,
                        )
                if scaler is None:
                    opt.step()
                else:
                    scaler.step(opt)
                    scaler.update()
                scheduler.step()
                if after_step is not None:
                    with torch.no_grad():
                        after_step()
                result.steps += 1
                done += 1
                seen += n
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * n
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + _scalar(value) * n
            if done == 0:
                break
            if world > 1:
                sums, seen = _sum_over_ranks(sums, seen, device)
            means = {key: value / seen for key, value in sums.items()}
            result.epochs.append(means)
            val = validate(model) if validate is not None and runtime.is_main else None
            if val is not None:
                result.val.append(val)
            if on_epoch is not None and runtime.is_main:
                on_epoch(epoch, means, val)
    finally:
        result.wall_s = time.perf_counter() - start
        model.eval()
    return result


def _scalar(value: Any) -> float:
    """A batch mean as a Python float (tensors are detached first)."""
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def _wrap(model: Any, runtime: TrainRuntime, find_unused: bool) -> Any:
    """`model` itself in one process; DistributedDataParallel around it under torchrun."""
    if not runtime.distributed:
        return model
    import torch

    ids = [torch.device(runtime.device).index] if runtime.device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def _all_finite(loss: Any, runtime: TrainRuntime) -> bool:
    """Whether the loss is finite on every rank (one collective under torchrun, so all ranks agree)."""
    import torch

    finite = bool(torch.isfinite(loss.detach()).all())
    if not runtime.distributed:
        return finite
    import torch.distributed as dist

    flag = torch.tensor([1.0 if finite else 0.0], device=runtime.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _sum_over_ranks(sums: dict[str, float], seen: int, device: str) -> tuple[dict[str, float], int]:
    """The epoch's sums and image count over all ranks (every rank runs the same keys)."""
    import torch
    import torch.distributed as dist

    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    values = totals.cpu().tolist()
    return dict(zip(keys, values[:-1], strict=True)), int(values[-1])


def loss_progress(
    epochs: int, on_epoch: Callable[[int, float, float | None], None] | None, log: logging.Logger = logger
) -> Callable[[int, dict[str, float], dict[str, float] | None], None]:
    """The `on_epoch` hook of a single-loss trainer: log the epoch's mean loss (and validation accuracy),
    then call `on_epoch(epoch, loss, val_acc)` when given."""

    def progress(epoch: int, means: dict[str, float], val_figures: dict[str, float] | None) -> None:
        acc = None if val_figures is None else val_figures["acc"]
        shown = "" if acc is None else f", val acc {acc:.4f}"
        log.info("epoch %d/%d: loss %.4f%s", epoch + 1, epochs, means["loss"], shown)
        if on_epoch is not None:
            on_epoch(epoch, means["loss"], acc)

    return progress
