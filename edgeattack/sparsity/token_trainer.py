"""One trainer for the token-sparse mechanisms (DynamicViT, A-ViT, AdaViT); each supplies only its loss.

`TokenSparseTrainer.fit(train, val)` does what the three share: build the student from the
teacher (a copy of its ViT under the mechanism) or check a given one, check that teacher, student
and data fit together, measure the teacher's validation accuracy, run the one training loop
(`edgeattack.training.loop.run_training`: seeding, batches, augmentation, schedule, the stop at a
non-finite step), validate and log each epoch, fill the mechanism's report, and on divergence raise
`TrainingDivergedError` carrying the student (its last good weights) and the report so far.

A mechanism subclasses it with its `family`, `net_type` and `loss_names`, and implements:

- `build_net(name)`: the student network made from `self.teacher.net`;
- `new_report(student)`: its report dataclass (with `losses`, `steps`, `wall_s`, `teacher_val_acc`);
- `step(model, x, y)`: `(loss, figures)`, the loss of one batch and the named batch means to report
  (the terms in `loss_names` among them);
- `record(report, means, validation)`: copy one epoch's means and validation figures into the report;

and may override `optimizer` (default AdamW over the trainable parameters at `config.lr` and
`config.weight_decay`), `validate` (default: accuracy), `before_epoch` (e.g. a noise schedule),
`finish` (undo it, also after a failure), `check_student` and `default_name`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, DataError, TrainingDivergedError
from edgeattack.training.loop import LoopConfig, LoopResult, StepDiverged, run_training
from edgeattack.zoo.factory import ZooModel, state_dict_sha256
from edgeattack.zoo.train import evaluate_accuracy

logger = logging.getLogger(__name__)
torch = require("torch", feature="token-sparse training")

EpochCallback = Callable[[int, dict[str, float], "float | None"], None]


class TokenSparseTrainer:
    """Fine-tunes a token-sparse student from a teacher ViT; subclasses give the mechanism's loss (see module)."""

    family: ClassVar[str] = ""
    net_type: ClassVar[type] = object
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)

    def __init__(self, teacher: ZooModel, config: Any, *, on_epoch: EpochCallback | None = None) -> None:
        self.teacher = teacher
        self.config = config
        self.on_epoch = on_epoch

    # -- what a mechanism provides -------------------------------------------------------------------
    def build_net(self, name: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_report(self, student: ZooModel) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, model: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def record(self, report: Any, means: dict[str, float], validation: dict[str, float] | None) -> None:
        """Copy one epoch's loss terms (and accuracy, when validated) into the report."""
        report.losses.append({k: means[k] for k in self.loss_names})
        if validation is not None and hasattr(report, "val_acc"):
            report.val_acc.append(validation["acc"])

    def default_name(self) -> str:
        """The student's zoo name: the mechanism's prefix on the teacher's name without "vit_"."""
        return f"{self.family}_" + self.teacher.model_name.removeprefix("vit_")

    def check_student(self, student: ZooModel) -> None:
        """ConfigError unless a given student wraps this mechanism's network."""
        if not isinstance(student.net, self.net_type):
            raise ConfigError(f"student {student.model_name} does not wrap a {self.net_type.__name__}")

    def optimizer(self, student: ZooModel) -> Callable[[], Any]:
        """AdamW over the trainable parameters at `config.lr` / `config.weight_decay`."""
        params = [p for p in student.parameters() if p.requires_grad]
        return lambda: torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def two_rate_optimizer(self, student: ZooModel, mechanism: Any) -> Callable[[], Any]:
        """AdamW with the `mechanism` module's parameters at `config.lr` and the backbone at
        `config.lr · config.backbone_lr_scale` (frozen when that is 0), as DynamicViT and AdaViT train."""
        fast = list(mechanism.parameters())
        fast_ids = {id(p) for p in fast}
        backbone = [p for p in student.parameters() if id(p) not in fast_ids]
        groups = [{"params": fast, "lr": self.config.lr}]
        if self.config.backbone_lr_scale > 0:
            groups.append({"params": backbone, "lr": self.config.lr * self.config.backbone_lr_scale})
        else:
            for p in backbone:
                p.requires_grad_(False)
        return lambda: torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def validate(self, model: Any, val: ImageDataset) -> dict[str, float]:
        """Validation figures of one epoch (rank 0): top-1 accuracy under "acc"."""
        return {"acc": evaluate_accuracy(model, val)}

    def before_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based): schedules that live in the model."""

    def finish(self, student: ZooModel) -> None:
        """Called when training ends, normally or not: undo what `before_epoch` set."""

    # -- the shared work -----------------------------------------------------------------------------
    def student(self, student: ZooModel | None = None, name: str | None = None) -> ZooModel:
        """`student` checked, or a new one built from the teacher (named `name` or `default_name()`)."""
        if student is not None:
            self.check_student(student)
            return student
        name = name or self.default_name()
        config = dataclasses.replace(self.teacher.config, family=self.family)
        return ZooModel(self.build_net(name), config, name)

    def fit(
        self,
        train: ImageDataset,
        val: ImageDataset | None = None,
        *,
        student: ZooModel | None = None,
        name: str | None = None,
    ) -> tuple[ZooModel, Any]:
        """Train and return (the student in eval mode, the report); see the module docstring."""
        model = self.student(student, name)
        check_teacher(self.teacher, model)
        check_splits(self.teacher, train, val)
        report = self.new_report(model)
        if val is not None:
            report.teacher_val_acc = evaluate_accuracy(self.teacher, val)
        try:
            return train_and_report(
                model,
                train,
                self.step,
                self.optimizer(model),
                LoopConfig.of(self.config, check_finite=True),
                report=report,
                record=lambda means, figures: self.record(report, means, figures),
                names=self.loss_names,
                frozen=(self.teacher,),
                validate=None if val is None else (lambda net: self.validate(net, val)),
                before_epoch=self.before_epoch,
                on_epoch=lambda epoch, means, figures: self._progress(model, epoch, means, figures),
            )
        finally:
            self.finish(model)

    def _progress(self, student: ZooModel, epoch: int, means: dict[str, float], figures: dict[str, float] | None) -> None:
        losses = {k: means[k] for k in self.loss_names}
        extra = {k: v for k, v in means.items() if k not in losses}
        logger.info("%s epoch %d: %s %s validation=%s", student.model_name, epoch + 1, losses, extra, figures)
        if self.on_epoch is not None:
            self.on_epoch(epoch, losses, None if figures is None else figures.get("acc"))


def check_teacher(teacher: ZooModel, student: ZooModel) -> None:
    """ConfigError unless teacher and student classify the same inputs into the same classes."""
    problems = []
    if tuple(teacher.config.input_size) != tuple(student.config.input_size):
        problems.append(f"input size {teacher.config.input_size} vs {student.config.input_size}")
    if teacher.config.num_classes != student.config.num_classes:
        problems.append(f"{teacher.config.num_classes} vs {student.config.num_classes} classes")
    if tuple(teacher.config.mean) != tuple(student.config.mean) or tuple(teacher.config.std) != tuple(
        student.config.std
    ):
        problems.append("different normalisation")
    t_dim, s_dim = getattr(teacher.net, "embed_dim", None), getattr(student.net, "embed_dim", None)
    if t_dim != s_dim:
        problems.append(f"token width {t_dim} vs {s_dim} (token distillation compares features)")
    if problems:
        raise ConfigError(
            f"teacher {teacher.model_name} does not fit student {student.model_name}: " + "; ".join(problems)
        )


def check_splits(teacher: ZooModel, *splits: ImageDataset | None) -> None:
    """DataError unless every given split has images of the teacher's input size."""
    for split in splits:
        if split is not None and split.input_shape != tuple(teacher.config.input_size):
            raise DataError(
                f"{split.name}:{split.split} has images of shape {split.input_shape}, "
                f"{teacher.model_name} takes {tuple(teacher.config.input_size)}"
            )


def train_and_report(
    student: ZooModel,
    train: ImageDataset,
    step: Callable[..., Any],
    optimizer: Callable[[], Any],
    loop: LoopConfig,
    *,
    report: Any,
    record: Callable[[dict[str, float], dict[str, float] | None], None],
    names: tuple[str, ...],
    **hooks: Any,
) -> tuple[ZooModel, Any]:
    """Run the loop (`hooks`: frozen, validate, before_epoch, on_epoch) and fill `report` through `record`.

    Returns the student in eval mode with its weights' sha256; a diverged step fills the report so
    far and raises TrainingDivergedError naming the loss terms in `names` (`stop_diverged`).
    """
    try:
        result = run_training(student, train, step, optimizer, loop, **hooks)
    except StepDiverged as stop:
        fill_report(report, stop.result, record)
        stop_diverged(student, report, f"{student.model_name}: {stop}", loss_terms(stop, names))
    fill_report(report, result, record)
    student.weights_sha256 = state_dict_sha256(student)
    return student.eval(), report


def fill_report(
    report: Any, result: LoopResult, record: Callable[[dict[str, float], dict[str, float] | None], None]
) -> None:
    """Copy the loop's figures into a report: steps, wall time, and `record(means, validation)` per epoch.

    Validation figures are None on the ranks other than 0, which do not validate.
    """
    report.steps = result.steps
    report.wall_s = result.wall_s
    figures: list[dict[str, float] | None] = list(result.val)
    if len(figures) != len(result.epochs):
        figures = [None] * len(result.epochs)
    for means, val in zip(result.epochs, figures, strict=True):
        record(means, val)


def loss_terms(stop: StepDiverged, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The named loss terms of a diverged step, for its message (None when it diverged in the gradient)."""
    return {k: stop.terms[k] for k in names if k in stop.terms} or None


def stop_diverged(student: ZooModel, report: Any, message: str, terms: dict[str, Any] | None = None) -> None:
    """Stop: the optimizer has not stepped on the bad loss, so `student` keeps its last good weights."""
    student.eval()
    student.weights_sha256 = state_dict_sha256(student)
    detail = ""
    if terms is not None:
        detail = " (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) + ")"
    raise TrainingDivergedError(
        f"{message}{detail}; training stopped, the model keeps the weights of the last good step "
        "(lower the learning rate or set max_grad_norm)",
        model=student,
        report=report,
    )
