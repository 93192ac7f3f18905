"""Train a DynamicViT from its teacher ViT with DynamicViT's losses (Rao et al. 2021, Eq. 9-12).

    loss = CE(student logits, labels)
         + ratio_weight   · mean over stages of mean over images (mean keep mask − ρ^s)²   (2.0)
         + distill_weight · KL(teacher logits ‖ student logits)                             (0.5)
         + token_weight   · MSE(student tokens, teacher tokens) over the finally kept tokens (0.5)

The student starts from a copy of the teacher's weights; as in the reference the predictors learn
at `lr` and the backbone at `lr · backbone_lr_scale` (0.01 there). AdamW, linear warm-up then
cosine decay, random shifts as augmentation (`edgeattack.zoo.train.random_shift`). A non-finite
loss or gradient stops training before the optimizer step, so the model keeps its last good
weights, and raises `TrainingDivergedError` (an EdgeAttackError) carrying the model and the report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, DataError, TrainingDivergedError
from edgeattack.sparsity.dynamicvit import DynamicViT, DynamicViTOutput
from edgeattack.sparsity.schedule import check_keep_rate, dynamicvit_name
from edgeattack.training.loop import LoopConfig, LoopResult, StepDiverged, run_training
from edgeattack.zoo.factory import ZooModel, state_dict_sha256
from edgeattack.zoo.train import evaluate_accuracy

logger = logging.getLogger(__name__)
torch = require("torch", feature="DynamicViT training")
F = torch.nn.functional

LOSS_TERMS = ("loss", "ce", "ratio", "distill", "token")


@dataclass(frozen=True)
class DynamicViTTrainConfig:
    """Hyper-parameters of `train_dynamicvit`.

    The loss weights, the 30 epochs and the 0.01 backbone learning-rate scale are the reference's;
    `lr` (the predictors') was tuned on the digits: 5e-3 reached 97.0 % test accuracy at ρ = 0.7
    in 30 epochs (teacher 98.1 %), 1e-3 for 10 epochs only 94.1 %.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    backbone_lr_scale: float = 0.01
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    max_shift: int = 3
    ratio_weight: float = 2.0
    distill_weight: float = 0.5
    token_weight: float = 0.5
    max_grad_norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if self.backbone_lr_scale < 0 or self.warmup_epochs < 0 or self.max_shift < 0:
            raise ConfigError("backbone_lr_scale, warmup_epochs and max_shift must be non-negative")
        if min(self.ratio_weight, self.distill_weight, self.token_weight) < 0:
            raise ConfigError("loss weights must be non-negative")


@dataclass
class DynamicViTTrainReport:
    """Per-epoch mean loss terms, keep ratios per stage (of the sampled training masks), accuracies."""

    name: str
    rho: float
    keep_ratios: tuple[float, ...]
    prune_locations: tuple[int, ...]
    token_schedule: tuple[int, ...]
    epochs: int
    losses: list[dict[str, float]] = field(default_factory=list)
    train_keep_ratios: list[list[float]] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    teacher_val_acc: float | None = None
    wall_s: float = 0.0
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dynamicvit_loss(
    out: DynamicViTOutput,
    labels: Any,
    teacher_logits: Any,
    teacher_tokens: Any,
    keep_ratios: tuple[float, ...],
    *,
    ratio_weight: float = 2.0,
    distill_weight: float = 0.5,
    token_weight: float = 0.5,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """The terms of DynamicViT's loss and their weighted sum under "loss" (scalar tensors)."""
    if len(out.decisions) != len(keep_ratios):
        raise ConfigError(f"{len(out.decisions)} pruning stages but {len(keep_ratios)} keep ratios")
    ce = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
    ratio = sum(((d.mean(dim=1) - r) ** 2).mean() for d, r in zip(out.decisions, keep_ratios, strict=True)) / len(
        keep_ratios
    )
    distill = F.kl_div(
        F.log_softmax(out.logits, dim=-1), F.log_softmax(teacher_logits, dim=-1), reduction="batchmean", log_target=True
    )
    kept = out.keep_mask > 0.5
    if bool(kept.any()):
        token = ((out.tokens[kept] - teacher_tokens[kept]) ** 2).mean()
    else:
        token = out.tokens.sum() * 0.0
    total = ce + ratio_weight * ratio + distill_weight * distill + token_weight * token
    return {"loss": total, "ce": ce, "ratio": ratio, "distill": distill, "token": token}


def teacher_outputs(teacher: ZooModel, images: Any) -> tuple[Any, Any]:
    """(logits, patch tokens after the final norm) of a timm-ViT ZooModel for [0,1] images."""
    with torch.no_grad():
        features = teacher.net.forward_features((images - teacher.mean) / teacher.std)
        logits = teacher.net.forward_head(features)
    return logits, features[:, teacher.net.num_prefix_tokens :]


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


def train_dynamicvit(
    teacher: ZooModel,
    train: ImageDataset,
    val: ImageDataset | None = None,
    *,
    rho: float,
    epochs: int | None = None,
    lr: float | None = None,
    config: DynamicViTTrainConfig | None = None,
    name: str | None = None,
    student: ZooModel | None = None,
    prune_locations: tuple[int, ...] | None = None,
    on_epoch: Callable[[int, dict[str, float], float | None], None] | None = None,
) -> tuple[ZooModel, DynamicViTTrainReport]:
    """Train a DynamicViT with keep rate `rho` (0.7, 0.6 or 0.5) from `teacher` (a timm-ViT ZooModel).

    The student is `DynamicViT.from_vit(teacher.net, rho)` (a copy; the teacher is not modified)
    unless `student`, a ZooModel wrapping a DynamicViT, is given. `name` defaults to the zoo name
    (vit_tiny_digits -> dynamicvit_tiny_digits_r07). Returns the student in eval mode and the report.
    """
    rho = check_keep_rate(rho)
    config = config or DynamicViTTrainConfig()
    overrides = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    if student is None:
        net = DynamicViT.from_vit(teacher.net, rho, prune_locations)
        config_s = dataclasses.replace(teacher.config, family="dynamicvit")
        student = ZooModel(net, config_s, name or dynamicvit_name(teacher.model_name, rho))
    elif not isinstance(student.net, DynamicViT):
        raise ConfigError(f"student {student.model_name} does not wrap a DynamicViT")
    elif not math.isclose(student.net.rho, rho):
        raise ConfigError(f"student {student.model_name} has keep rate {student.net.rho}, asked for {rho}")
    check_teacher(teacher, student)
    for split in (train, val):
        if split is not None and split.input_shape != tuple(teacher.config.input_size):
            raise DataError(
                f"{split.name}:{split.split} has images of shape {split.input_shape}, "
                f"{teacher.model_name} takes {tuple(teacher.config.input_size)}"
            )
    net: DynamicViT = student.net
    report = DynamicViTTrainReport(
        name=student.model_name,
        rho=rho,
        keep_ratios=net.keep_ratios,
        prune_locations=net.prune_locations,
        token_schedule=net.token_schedule,
        epochs=config.epochs,
    )
    if val is not None:
        report.teacher_val_acc = evaluate_accuracy(teacher, val)

    predictor_params = list(net.score_predictor.parameters())
    predictor_ids = {id(p) for p in predictor_params}
    backbone_params = [p for p in student.parameters() if id(p) not in predictor_ids]
    groups = [{"params": predictor_params, "lr": config.lr}]
    if config.backbone_lr_scale > 0:
        groups.append({"params": backbone_params, "lr": config.lr * config.backbone_lr_scale})
    else:
        for p in backbone_params:
            p.requires_grad_(False)
    stages = range(len(net.keep_ratios))

    def step(model: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        t_logits, t_tokens = teacher_outputs(teacher, x)
        out = model(x)
        terms = dynamicvit_loss(
            out,
            y,
            t_logits,
            t_tokens,
            net.keep_ratios,
            ratio_weight=config.ratio_weight,
            distill_weight=config.distill_weight,
            token_weight=config.token_weight,
            label_smoothing=config.label_smoothing,
        )
        keeps = {f"keep{s}": decision.detach().mean() for s, decision in zip(stages, out.decisions, strict=True)}
        return terms.pop("loss"), {**terms, **keeps}

    def record(means: dict[str, float], figures: dict[str, float] | None) -> None:
        report.losses.append({k: means[k] for k in LOSS_TERMS})
        report.train_keep_ratios.append([means[f"keep{s}"] for s in stages])
        if figures is not None:
            report.val_acc.append(figures["acc"])

    def progress(epoch: int, means: dict[str, float], figures: dict[str, float] | None) -> None:
        losses, acc = {k: means[k] for k in LOSS_TERMS}, None if figures is None else figures["acc"]
        logger.info("%s epoch %d: %s val_acc=%s", student.model_name, epoch + 1, losses, acc)
        if on_epoch is not None:
            on_epoch(epoch, losses, acc)

    return train_and_report(
        student,
        train,
        step,
        lambda: torch.optim.AdamW(groups, weight_decay=config.weight_decay),
        LoopConfig.of(config, check_finite=True),
        report=report,
        record=record,
        names=LOSS_TERMS,
        frozen=(teacher,),
        validate=None if val is None else (lambda model: {"acc": evaluate_accuracy(model, val)}),
        on_epoch=progress,
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
    """What the token-sparse trainers (DynamicViT, A-ViT, AdaViT) share around `run_training`.

    Runs the loop (`hooks`: frozen, validate, before_epoch, on_epoch), copies its figures into
    `report` through `record`, and returns the student in eval mode with its weights' sha256; a
    diverged step fills the report so far and raises TrainingDivergedError naming the loss terms
    in `names` (`stop_diverged`).
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
    """Copy the loop's figures into a token-sparse trainer's report: steps, wall time, `record` per epoch.

    `record(means, validation)` gets each epoch's mean terms and its validation figures (None on the
    ranks other than 0, which do not validate).
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
    """Stop: the optimizer has not stepped on the bad loss, so `student` keeps its last good weights.

    Shared by the token-sparse trainers (DynamicViT, A-ViT, AdaViT); `report` is the trainer's report
    dataclass, `terms` the loss terms shown in the message.
    """
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
