"""Fine-tune an A-ViT from its teacher ViT with A-ViT's losses (Yin et al. 2022, Eq. 6-10; NVlabs/A-ViT).

    loss = CE(student logits, labels)
         + ponder_weight  · mean over images and patch tokens of the ACT ponder cost (blocks run + remainder)
         + prior_weight   · KL(target ‖ batch halting-depth distribution)
         + distill_weight · KL(teacher logits ‖ student logits)                          (optional)

The target of the distributional prior is a Gaussian (σ = 1 block) centred on block `target_depth`
(0-based: a token halting there ran target_depth + 1 blocks), normalised over the blocks; the batch
distribution is the mean over images of `AViTOutput.halting`, clamped to [0.01, 0.99] as in the
reference. The reference trains DeiT with ponder 5e-4 and prior 1e-3 for 100 epochs; the digits
model needs far stronger weights to halt within a few epochs (see `AViTTrainConfig`).

The student starts from a copy of the teacher's weights (the gate has no parameters). AdamW, linear
warm-up then cosine decay, random shifts as augmentation. A non-finite loss or gradient stops
training before the optimizer step and raises `TrainingDivergedError` carrying the model (last good
weights) and the report.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, DataError
from edgeattack.sparsity.avit import AViT, AViTOutput, gate_center_for
from edgeattack.sparsity.dynamicvit_train import check_teacher, train_and_report
from edgeattack.training.loop import LoopConfig
from edgeattack.zoo.factory import ZooModel
from edgeattack.zoo.train import evaluate_accuracy

logger = logging.getLogger(__name__)
torch = require("torch", feature="A-ViT training")
F = torch.nn.functional

LOSS_TERMS = ("loss", "ce", "ponder", "prior", "distill")


@dataclass(frozen=True)
class AViTTrainConfig:
    """Hyper-parameters of `train_avit` (defaults tuned on the digits ViT, 6 blocks)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    max_shift: int = 3
    ponder_weight: float = 0.05
    prior_weight: float = 0.1
    target_depth: float = 2.0
    distill_weight: float = 0.5
    max_grad_norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if self.warmup_epochs < 0 or self.max_shift < 0:
            raise ConfigError("warmup_epochs and max_shift must be non-negative")
        if min(self.ponder_weight, self.prior_weight, self.distill_weight) < 0:
            raise ConfigError("loss weights must be non-negative")
        if self.target_depth < 0:
            raise ConfigError(f"target_depth is a block index (>= 0), got {self.target_depth}")


@dataclass
class AViTTrainReport:
    """Per epoch: mean loss terms, training TUR (of the training masks), validation accuracy and mean TUR."""

    name: str
    gate_scale: float
    gate_center: float
    target_depth: float
    epochs: int
    losses: list[dict[str, float]] = field(default_factory=list)
    epoch_train_tur: list[float] = field(default_factory=list)
    epoch_val_acc: list[float] = field(default_factory=list)
    epoch_val_tur: list[float] = field(default_factory=list)
    teacher_val_acc: float | None = None
    wall_s: float = 0.0
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def distribution_target(depth: int, target_depth: float, scale: float = 1.0) -> Any:
    """The prior over halting blocks: a Gaussian at `target_depth` (σ = `scale` blocks), summing to 1."""
    blocks = torch.arange(depth, dtype=torch.float32)
    density = torch.exp(-0.5 * ((blocks - target_depth) / scale) ** 2)
    return density / density.sum()


def avit_loss(
    out: AViTOutput,
    labels: Any,
    teacher_logits: Any | None,
    target: Any,
    *,
    ponder_weight: float,
    prior_weight: float,
    distill_weight: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """The terms of A-ViT's loss and their weighted sum under "loss" (scalar tensors)."""
    ce = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
    ponder = out.ponder.mean()
    observed = out.halting.mean(dim=0).clamp(0.01, 0.99)
    target = target.to(observed)
    prior = (target * (target.clamp_min(1e-12).log() - observed.log())).sum()
    if teacher_logits is not None and distill_weight > 0:
        distill = F.kl_div(
            F.log_softmax(out.logits, dim=-1),
            F.log_softmax(teacher_logits, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
    else:
        distill = ce.new_zeros(())
    total = ce + ponder_weight * ponder + prior_weight * prior + distill_weight * distill
    return {"loss": total, "ce": ce, "ponder": ponder, "prior": prior, "distill": distill}


def token_utilisation(model: Any, dataset: ImageDataset, batch_size: int = 256) -> tuple[float, Any]:
    """(accuracy, per-image TUR as a numpy array) of a ZooModel wrapping an A-ViT, in eval mode."""
    net: AViT = model.net
    model.eval()
    correct, turs = 0, []
    with torch.no_grad():
        for images, labels in dataset.batches(batch_size):
            x = (torch.from_numpy(images).to(model.mean.device) - model.mean) / model.std
            logits, counts = net.forward_counts(x)
            correct += int((logits.argmax(1).cpu().numpy() == labels).sum())
            turs.append(counts.cpu().sum(dim=1).double() / (net.depth * net.num_tokens))
    return correct / max(len(dataset), 1), torch.cat(turs).numpy()


def train_avit(
    teacher: ZooModel,
    train: ImageDataset,
    val: ImageDataset | None = None,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    config: AViTTrainConfig | None = None,
    name: str | None = None,
    student: ZooModel | None = None,
    gate_center: float | None = None,
    on_epoch: Callable[[int, dict[str, float], float | None], None] | None = None,
) -> tuple[ZooModel, AViTTrainReport]:
    """Fine-tune an A-ViT from `teacher` (a timm-ViT ZooModel); returns the student in eval mode and the report.

    The student is `AViT.from_vit(teacher.net)` (a copy) named `name` or `avit_<teacher>` with the
    "vit_" prefix dropped (vit_tiny_digits -> avit_tiny_digits), unless `student` (a ZooModel
    wrapping an AViT) is given. `gate_center` defaults to the zoo's value for that name.
    """
    config = config or AViTTrainConfig()
    overrides = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    if student is None:
        name = name or "avit_" + teacher.model_name.removeprefix("vit_")
        center = gate_center_for(name) if gate_center is None else float(gate_center)
        net = AViT.from_vit(teacher.net, gate_center=center)
        student = ZooModel(net, dataclasses.replace(teacher.config, family="avit"), name)
    elif not isinstance(student.net, AViT):
        raise ConfigError(f"student {student.model_name} does not wrap an A-ViT")
    check_teacher(teacher, student)
    for split in (train, val):
        if split is not None and split.input_shape != tuple(teacher.config.input_size):
            raise DataError(
                f"{split.name}:{split.split} has images of shape {split.input_shape}, "
                f"{teacher.model_name} takes {tuple(teacher.config.input_size)}"
            )
    net: AViT = student.net
    report = AViTTrainReport(
        name=student.model_name,
        gate_scale=net.gate_scale,
        gate_center=net.gate_center,
        target_depth=config.target_depth,
        epochs=config.epochs,
    )
    if val is not None:
        report.teacher_val_acc = evaluate_accuracy(teacher, val)
    target = distribution_target(net.depth, config.target_depth)

    tokens = net.depth * net.num_tokens

    def step(model: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        teacher_logits = None
        if config.distill_weight > 0:
            with torch.no_grad():
                teacher_logits = teacher(x)
        out = model(x)
        terms = avit_loss(
            out,
            y,
            teacher_logits,
            target,
            ponder_weight=config.ponder_weight,
            prior_weight=config.prior_weight,
            distill_weight=config.distill_weight,
            label_smoothing=config.label_smoothing,
        )
        tur = float(out.counts.detach().sum()) / tokens / len(x)
        return terms.pop("loss"), {**terms, "tur": tur}

    def record(means: dict[str, float], figures: dict[str, float] | None) -> None:
        report.losses.append({k: means[k] for k in LOSS_TERMS})
        report.epoch_train_tur.append(means["tur"])
        if figures is not None:
            report.epoch_val_acc.append(figures["acc"])
            report.epoch_val_tur.append(figures["tur"])

    def validate(model: Any) -> dict[str, float]:
        acc, turs = token_utilisation(model, val)
        return {"acc": acc, "tur": float(turs.mean())}

    def progress(epoch: int, means: dict[str, float], figures: dict[str, float] | None) -> None:
        losses = {k: means[k] for k in LOSS_TERMS}
        acc, tur = (None, None) if figures is None else (figures["acc"], figures["tur"])
        logger.info(
            "%s epoch %d: %s train_tur=%.3f val_acc=%s val_tur=%s",
            student.model_name, epoch + 1, losses, means["tur"], acc, tur,
        )
        if on_epoch is not None:
            on_epoch(epoch, losses, acc)

    params = [p for p in student.parameters() if p.requires_grad]
    return train_and_report(
        student,
        train,
        step,
        lambda: torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay),
        LoopConfig.of(config, check_finite=True),
        report=report,
        record=record,
        names=LOSS_TERMS,
        frozen=(teacher,),
        validate=None if val is None else validate,
        on_epoch=progress,
    )


COMPRESS_PARAMS = frozenset(
    {
        "epochs",
        "lr",
        "name",
        "seed",
        "batch_size",
        "ponder_weight",
        "prior_weight",
        "target_depth",
        "distill_weight",
        "max_grad_norm",
        "warmup_epochs",
        "label_smoothing",
        "max_shift",
    }
)


def compress_avit(
    teacher: ZooModel, train: ImageDataset, val: ImageDataset | None = None, **params: Any
) -> tuple[ZooModel, dict[str, Any]]:
    """`edgeattack compress --method avit`: train_avit with `params`; the report adds accuracy and TUR.

    Valid params: see COMPRESS_PARAMS (unknown ones raise ConfigError). For the digits data the test
    split (same seed) is evaluated too: test_acc, test_tur_mean/min/max.
    """
    unknown = sorted(set(params) - COMPRESS_PARAMS)
    if unknown:
        raise ConfigError(f"unknown avit parameter(s) {unknown}; valid: {', '.join(sorted(COMPRESS_PARAMS))}")
    params = dict(params)
    name = params.pop("name", None)
    fields = {f.name: f.type for f in dataclasses.fields(AViTTrainConfig)}
    try:
        config = AViTTrainConfig(**{k: (None if v is None else _as(fields[k], v)) for k, v in params.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad avit parameter: {exc}") from exc
    torch.manual_seed(config.seed)
    model, report = train_avit(teacher, train, val, config=config, name=name)
    result = report.to_dict()
    splits = [("val", val)]
    if train.name == "digits":
        from edgeattack.data import load_dataset

        splits.append(("test", load_dataset("digits", split="test", seed=train.seed)))
    for label, split in splits:
        if split is None:
            continue
        acc, turs = token_utilisation(model, split)
        result.update(
            {
                f"{label}_acc": acc,
                f"{label}_tur_mean": float(turs.mean()),
                f"{label}_tur_min": float(turs.min()),
                f"{label}_tur_max": float(turs.max()),
            }
        )
        logger.info(
            "%s %s: acc=%.4f TUR mean %.3f [%.3f, %.3f]",
            model.model_name,
            label,
            acc,
            turs.mean(),
            turs.min(),
            turs.max(),
        )
    return model, result


def _as(kind: Any, value: Any) -> Any:
    """Coerce a CLI value to the config field's type ("int", "float", "float | None")."""
    kind = str(kind)
    if kind.startswith("int"):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return value
