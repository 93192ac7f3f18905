"""DeiT distillation: a student with a distillation token learns from labels and from a teacher.

Touvron et al., "Training data-efficient image transformers & distillation through attention"
(arXiv:2012.12877). The student is timm's `VisionTransformerDistilled`: a class token read by
`head` and a distillation token read by `head_dist`. In training it returns both heads' logits:

- hard distillation: loss = ½ CE(class head, y) + ½ CE(distillation head, argmax of the teacher);
- soft distillation: loss = (1 - α) CE(class head, y) + α τ² KL(softmax(teacher / τ) ‖ softmax(dist / τ)).

In eval it returns the mean of the two heads: the logits a deployed engine returns. When the
teacher has the student's architecture this is a born-again network (Furlanello et al. 2018).

This module also holds the student training the other trained families share (`fit_student`, on
`edgeattack.training.loop`): a teacher run without gradients on the same augmented batch, AdamW
with warm-up and cosine decay, and a stop with `TrainingError` at the first non-finite loss or
gradient, the student keeping the weights of the last good step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, TrainingDivergedError
from edgeattack.training.loop import LoopConfig, LoopResult, StepDiverged, loss_progress, run_training
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.factory import ZooModel, count_parameters, state_dict_sha256
from edgeattack.zoo.train import TrainConfig, evaluate_accuracy

logger = logging.getLogger(__name__)

torch = require("torch", feature="distillation")
nn = torch.nn
F = torch.nn.functional

DIGITS_DISTILLED_NAME = "deit_tiny_digits_distilled"
DISTILL_TYPES = ("hard", "soft")
INITS = ("scratch", "teacher")


TrainingError = TrainingDivergedError
"""Training stopped (a non-finite loss or gradient); `model` holds the last good weights."""


# -- shared by the trained families ---------------------------------------------------------------
def check_teacher(teacher: Any, *datasets: ImageDataset | None) -> None:
    """ConfigError unless `teacher` is a zoo model whose input size and classes fit every dataset."""
    config = getattr(teacher, "config", None)
    if not isinstance(config, ModelConfig) or not isinstance(teacher, nn.Module):
        raise ConfigError(
            f"the teacher must be a zoo model (edgeattack.zoo.create_model), got {type(teacher).__name__}"
        )
    name = getattr(teacher, "model_name", "the teacher")
    for dataset in datasets:
        if dataset is None:
            continue
        if tuple(dataset.input_shape) != tuple(config.input_size):
            raise ConfigError(
                f"teacher {name} takes {_shape(config.input_size)} images but {dataset.spec} has "
                f"{_shape(dataset.input_shape)} images: use a teacher trained at that input size"
            )
        named = len(dataset.class_names)
        classes = named or int(dataset.labels.max(initial=-1)) + 1
        if (named and named != config.num_classes) or classes > config.num_classes:
            raise ConfigError(
                f"teacher {name} predicts {config.num_classes} classes but {dataset.spec} has {classes}: "
                "use a teacher trained on this dataset's classes"
            )


def _shape(size: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in size)


def parse_hyperparams(
    method: str, given: dict[str, Any], defaults: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any]]:
    """Split `given` into a TrainConfig and the method's own parameters; ConfigError on unknown names.

    `defaults` holds the method's defaults for TrainConfig fields and its own parameters; a value of
    None in `given` means "the default".
    """
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    known = train_fields | set(defaults) | {"max_steps"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"unknown {method} hyper-parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    max_steps = values.pop("max_steps", None)
    if max_steps is not None and int(max_steps) <= 0:
        raise ConfigError(f"max_steps must be positive, got {max_steps}")
    train_config = TrainConfig(**{k: values.pop(k) for k in list(values) if k in train_fields})
    values["max_steps"] = None if max_steps is None else int(max_steps)
    return train_config, values


def logits_of(output: Any) -> Any:
    """Logits of a model output: a tensor, or the mean of (class, distillation) heads."""
    if isinstance(output, (tuple, list)):
        return (output[0] + output[1]) / 2
    return output


def soft_kd_loss(student_logits: Any, teacher_logits: Any, tau: float) -> Any:
    """τ² KL(softmax(teacher/τ) ‖ softmax(student/τ)), averaged over the batch."""
    return (
        F.kl_div(
            F.log_softmax(student_logits / tau, dim=-1),
            F.log_softmax(teacher_logits / tau, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * tau
        * tau
    )


LossFn = Callable[[Any, Any, Any], tuple[Any, dict[str, Any]]]


@dataclass
class FitReport:
    """Per-epoch training figures of `fit_student`."""

    epochs: int
    steps: int = 0
    train_loss: list[float] = field(default_factory=list)
    loss_parts: dict[str, list[float]] = field(default_factory=dict)
    val_acc: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_student(
    student: Any,
    teacher: Any,
    train: ImageDataset,
    val: ImageDataset | None,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    max_steps: int | None = None,
    after_step: Callable[[], None] | None = None,
    grad_clip: float | None = 5.0,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> FitReport:
    """Train `student` in place on `loss_fn(student_out, teacher_logits, labels) -> (loss, parts)`.

    The teacher (in eval mode, without gradients) sees the same randomly shifted batch as the
    student. `after_step` runs after every optimizer step (2:4 masks re-apply there). `max_steps`
    stops early (tests). A non-finite loss or gradient norm raises TrainingError before the
    optimizer step, so the student keeps the weights of the last good step. The loop, device,
    precision and torchrun ranks are `edgeattack.training`'s.
    """

    def step(net: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        with torch.no_grad():
            teacher_out = logits_of(teacher(x))
        return loss_fn(net(x), teacher_out, y)

    loop = LoopConfig.of(
        config, clamp_warmup=True, grad_clip=grad_clip or float("inf"), check_finite=True, max_steps=max_steps
    )
    try:
        result = run_training(
            student,
            train,
            step,
            lambda: torch.optim.AdamW(_param_groups(student, config.weight_decay), lr=config.lr),
            loop,
            frozen=(teacher,),
            clip_params=[p for p in student.parameters() if p.requires_grad],
            validate=None if val is None else (lambda net: {"acc": evaluate_accuracy(net, val)}),
            after_step=after_step,
            on_epoch=loss_progress(config.epochs, on_epoch, logger),
        )
    except StepDiverged as stop:
        report = _fit_report(config.epochs, stop.result)
        if stop.kind == "loss":
            parts = {k: v for k, v in stop.terms.items() if k != "loss"}
            message = (
                f"training stopped at epoch {stop.epoch + 1} step {stop.step + 1}: the loss is {stop.value} "
                f"({_parts_text(parts)}); the model keeps the weights of the last good step "
                f"({report.steps} steps done) — lower the learning rate (lr={config.lr})"
            )
        else:
            message = (
                f"training stopped at epoch {stop.epoch + 1} step {stop.step + 1}: the gradient norm is "
                f"{stop.value}; the model keeps the weights of the last good step ({report.steps} steps done) "
                "— lower the learning rate"
            )
        raise TrainingError(message, student, report.to_dict()) from None
    return _fit_report(config.epochs, result)


def _fit_report(epochs: int, result: LoopResult) -> FitReport:
    report = FitReport(epochs=epochs, steps=result.steps, wall_s=result.wall_s)
    for means in result.epochs:
        means = dict(means)
        report.train_loss.append(means.pop("loss"))
        for key, value in means.items():
            report.loss_parts.setdefault(key, []).append(value)
    report.val_acc = [figures["acc"] for figures in result.val]
    return report


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, tokens, position embeddings, head mixers."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or leaf in {"cls_token", "dist_token", "pos_embed"} or "mix" in leaf:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _parts_text(parts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {float(v):.4g}" for k, v in parts.items()) or "no parts"


def finish_report(
    method: str,
    student: ZooModel,
    teacher: ZooModel,
    fit: FitReport | None,
    val: ImageDataset | None,
    hyperparams: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The report every compress_* function returns (JSON-serialisable)."""
    student.weights_sha256 = state_dict_sha256(student)
    report: dict[str, Any] = {
        "method": method,
        "model": student.model_name,
        "family": student.config.family,
        "teacher": teacher.model_name,
        "teacher_sha256": getattr(teacher, "weights_sha256", ""),
        "params": count_parameters(student),
        "teacher_params": count_parameters(teacher),
        "hyperparams": dict(hyperparams),
    }
    if fit is not None:
        report.update(fit.to_dict())
    if val is not None:
        report["val_dataset"] = val.spec
        report["val_acc_final"] = evaluate_accuracy(student, val)
        report["teacher_val_acc"] = evaluate_accuracy(teacher, val)
    report.update(extra)
    return report


def vit_arch(net: Any) -> dict[str, Any]:
    """The architecture arguments of a timm VisionTransformer (ConfigError for anything else)."""
    vision_transformer = require("timm.models.vision_transformer", feature="ViT students")
    if not isinstance(net, vision_transformer.VisionTransformer):
        raise ConfigError(f"expected a timm VisionTransformer teacher, got {type(net).__name__}")
    try:
        block = net.blocks[0]
        attn = block.attn
        patch = net.patch_embed.patch_size
        return {
            "patch_size": int(patch[0]) if isinstance(patch, (tuple, list)) else int(patch),
            "embed_dim": int(net.embed_dim),
            "depth": len(net.blocks),
            "num_heads": int(attn.num_heads),
            "mlp_ratio": block.mlp.fc1.out_features / net.embed_dim,
            "qkv_bias": attn.qkv.bias is not None,
        }
    except (AttributeError, IndexError, TypeError) as exc:
        raise ConfigError(f"cannot read the architecture of {type(net).__name__}: {exc}") from exc


# -- the distillation-token student --------------------------------------------------------------
def build_distilled_vit(config: ModelConfig, arch: dict[str, Any]) -> Any:
    """timm `VisionTransformerDistilled` with the ViT arguments `arch`, sized for `config`."""
    deit = require("timm.models.deit", feature="distilled ViTs")
    return deit.VisionTransformerDistilled(
        img_size=config.input_size[1],
        in_chans=config.input_size[0],
        num_classes=config.num_classes,
        global_pool="token",
        **arch,
    )


def build_digits_deit_distilled(name: str, config: ModelConfig, **overrides: Any) -> Any:
    """Zoo builder: the digits ViT (patch 4, dim 96, depth 6, 3 heads) with a distillation token."""
    from edgeattack.zoo.vit import DIGITS_VIT_ARGS

    return build_distilled_vit(config, {**DIGITS_VIT_ARGS, **overrides})


def init_distilled_from(student_net: Any, teacher_net: Any) -> None:
    """Copy a same-architecture ViT teacher into a distilled student (dist token = class token)."""
    state = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    own = student_net.state_dict()
    prefix_t = int(getattr(teacher_net, "num_prefix_tokens", 1))
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1], pos[:, prefix_t:]], dim=1)
    state.setdefault("dist_token", state["cls_token"].clone())
    state.setdefault("head_dist.weight", state["head.weight"].clone())
    state.setdefault("head_dist.bias", state["head.bias"].clone())
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"init='teacher' needs the student's architecture; shapes differ for {mismatched[:4]}")
    result = student_net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"init='teacher' needs the student's architecture: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )


def distillation_loss(
    distill_type: str, *, alpha: float = 0.5, tau: float = 1.0, label_smoothing: float = 0.0
) -> LossFn:
    """The DeiT loss over the student's (class, distillation) logits, the teacher logits and labels."""

    def loss_fn(student_out: Any, teacher_logits: Any, labels: Any) -> tuple[Any, dict[str, Any]]:
        if isinstance(student_out, (tuple, list)):
            cls_logits, dist_logits = student_out[0], student_out[1]
        else:  # a student without a distillation token: both terms on its one head
            cls_logits = dist_logits = student_out
        base = F.cross_entropy(cls_logits, labels, label_smoothing=label_smoothing)
        if distill_type == "hard":
            kd = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=-1))
            loss = 0.5 * base + 0.5 * kd
        else:
            kd = soft_kd_loss(dist_logits, teacher_logits, tau)
            loss = (1.0 - alpha) * base + alpha * kd
        return loss, {"ce": base.detach(), "kd": kd.detach()}

    return loss_fn


DISTILL_DEFAULTS: dict[str, Any] = {
    "epochs": 60,
    "lr": None,  # 2e-3 from scratch, 5e-4 from the teacher's weights
    "batch_size": 64,
    "warmup_epochs": 3,
    "label_smoothing": 0.1,
    "distill_type": "hard",
    "alpha": 0.5,
    "tau": 1.0,
    "init": "scratch",
    "student": None,
    "name": None,
    "grad_clip": 5.0,
}


def compress_distill(
    teacher: ZooModel, train_ds: ImageDataset, val_ds: ImageDataset | None = None, **hyperparams: Any
) -> tuple[ZooModel, dict[str, Any]]:
    """Train a DeiT student with a distillation token from `teacher`; (student, report).

    Hyper-parameters (all keyword): TrainConfig's (`epochs`, `lr`, `batch_size`, `weight_decay`,
    `warmup_epochs`, `label_smoothing`, `max_shift`, `seed`), `distill_type` ("hard" | "soft"),
    `alpha` and `tau` (soft), `init` ("scratch": born-again/DeiT from random weights; "teacher":
    start from the teacher's weights, same architecture only; the default lr is 2e-3 from scratch
    and 5e-4 from the teacher), `student` (a zoo name of the distill family; default: the teacher's
    own ViT architecture with a distillation token), `name` (of the result), `grad_clip`, `max_steps`.
    """
    defaults = {**DISTILL_DEFAULTS, "lr": 5e-4 if hyperparams.get("init") == "teacher" else 2e-3}
    config, params = parse_hyperparams("distill", hyperparams, defaults)
    check_teacher(teacher, train_ds, val_ds)
    if params["distill_type"] not in DISTILL_TYPES:
        raise ConfigError(f"distill_type must be one of {', '.join(DISTILL_TYPES)}, got {params['distill_type']!r}")
    if not 0.0 <= float(params["alpha"]) <= 1.0 or float(params["tau"]) <= 0:
        raise ConfigError("alpha must be in [0, 1] and tau positive")
    if params["init"] not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}, got {params['init']!r}")
    student = _make_distilled_student(teacher, params, config.seed)
    if params["init"] == "teacher":
        init_distilled_from(student.net, teacher.net)
    loss_fn = distillation_loss(
        params["distill_type"],
        alpha=float(params["alpha"]),
        tau=float(params["tau"]),
        label_smoothing=config.label_smoothing,
    )
    net = student.net
    if hasattr(net, "set_distilled_training"):
        net.set_distilled_training(True)
    try:
        fit = fit_student(
            student,
            teacher,
            train_ds,
            val_ds,
            loss_fn,
            config,
            max_steps=params["max_steps"],
            grad_clip=params["grad_clip"],
        )
    finally:
        if hasattr(net, "set_distilled_training"):
            net.set_distilled_training(False)
    born_again = _same_vit(student.net, teacher.net)
    report = finish_report(
        "distill",
        student,
        teacher,
        fit,
        val_ds,
        {**dataclasses.asdict(config), **params},
        born_again=born_again,
    )
    return student, report


def _make_distilled_student(teacher: ZooModel, params: dict[str, Any], seed: int) -> ZooModel:
    from edgeattack.zoo.catalog import DIGITS_CONFIG
    from edgeattack.zoo.factory import create_model
    from edgeattack.zoo.vit import DIGITS_VIT_ARGS

    config = dataclasses.replace(teacher.config, family="distill")
    torch.manual_seed(seed)
    if params["student"]:
        student = create_model(params["student"], pretrained=False)
        if (student.config.input_size, student.config.num_classes) != (config.input_size, config.num_classes):
            raise ConfigError(
                f"student {params['student']} takes {_shape(student.config.input_size)} images and "
                f"{student.config.num_classes} classes; teacher {teacher.model_name} "
                f"{_shape(config.input_size)} and {config.num_classes}"
            )
        if params["name"]:
            student.model_name = params["name"]
        return student.train()
    try:
        arch = vit_arch(teacher.net)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; pass student=<a distill-family zoo name> for this teacher") from None
    digits = arch == DIGITS_VIT_ARGS and (config.input_size, config.num_classes, config.dataset) == (
        DIGITS_CONFIG.input_size,
        DIGITS_CONFIG.num_classes,
        DIGITS_CONFIG.dataset,
    )
    name = params["name"] or (DIGITS_DISTILLED_NAME if digits else f"{teacher.model_name}_distilled")
    return ZooModel(build_distilled_vit(config, arch), config, name)


def _same_vit(student_net: Any, teacher_net: Any) -> bool:
    try:
        return vit_arch(student_net) == vit_arch(teacher_net)
    except ConfigError:
        return False
