"""Fine-tune an A-ViT from its teacher ViT with A-ViT's losses (Yin et al. 2022; NVlabs/A-ViT's engine_act.py).

    loss = CE(student logits, labels)                                   (label smoothing `label_smoothing`)
         + ponder_weight  · mean over images and ALL tokens of rho      (the reference's ponder_token_scale)
         + prior_weight   · max(KL(target ‖ p), 0)                      (the reference's distr_prior_alpha)
         + distill_weight · KL(teacher logits ‖ student logits)         (edgeattack's addition; 0 turns it off)

As the reference computes them, on `AViT.forward_halting` (the masked computation):

- rho (`AViTOutput.ponder`, per token): 1 for every block the token ran, plus its remainder R at the
  block where it halted; its mean over images and tokens (class token included) is the ponder term.
- p: per block the mean halting score h over images 2..B of the batch (the reference slices
  `h[1:]` on the batch axis, so the first image is left out; a batch of one keeps its image) and over
  all tokens, halted ones included, with h as computed (the last block's before it is set to 1);
  then p / Σ p, clamped to [0.01, 0.99].
- KL(target ‖ p) = Σ target · (log target − log p) / depth (`nn.KLDivLoss(reduction="batchmean")`
  on the (depth,) vector); the reference adds it only when positive, so does this loss.
- target: `distribution_target`, the reference's Gaussian at `target_depth` (0-based; 8 of 12 for
  DeiT), scaled so that the blocks before it sum to 0.98, which is not a distribution (its sum is
  about 3.3).

The reference trains DeiT with ponder 5e-4 and prior 1e-3 for 100 epochs; the digits model (6
blocks) needs far stronger weights to halt within a few epochs (see `AViTTrainConfig`).

The student starts from a copy of the teacher's weights (the gate has no parameters). AdamW, linear
warm-up then cosine decay, random shifts as augmentation (`TokenSparseTrainer`). A non-finite loss
or gradient stops training before the optimizer step and raises `TrainingDivergedError` carrying the
model (last good weights) and the report.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError
from edgeattack.sparsity.avit import HALTING_MODES, AViT, AViTOutput, gate_center_for
from edgeattack.sparsity.token_trainer import EpochCallback, TokenSparseTrainer
from edgeattack.zoo.factory import ZooModel

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
    ponder_weight: float = 0.01
    prior_weight: float = 0.1
    target_depth: float = 2.0
    distill_weight: float = 0.5
    max_grad_norm: float | None = None
    seed: int = 0
    halting: str = "official"

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if self.warmup_epochs < 0 or self.max_shift < 0:
            raise ConfigError("warmup_epochs and max_shift must be non-negative")
        if min(self.ponder_weight, self.prior_weight, self.distill_weight) < 0:
            raise ConfigError("loss weights must be non-negative")
        if self.target_depth <= 0:
            raise ConfigError(f"target_depth is a block index after the first (> 0), got {self.target_depth}")
        if self.halting not in HALTING_MODES:
            raise ConfigError(f"halting must be one of {', '.join(HALTING_MODES)}, got {self.halting!r}")


@dataclass
class AViTTrainReport:
    """Per epoch: mean loss terms, training TUR (of the training masks), validation accuracy and mean TUR."""

    name: str
    gate_scale: float
    gate_center: float
    halting: str
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


def distribution_target(depth: int, target_depth: float, scale: float = 1.0, buffer: float = 0.02) -> Any:
    """The reference's distributional prior over the blocks (NVlabs' `utils.get_distribution_target`).

    A Gaussian density (σ = `scale` blocks) at `target_depth` (a 0-based block index), scaled so that
    the blocks before `target_depth` sum to 1 − `buffer`; the whole does not sum to 1 (about 3.3 for
    12 blocks at 8), exactly as the reference's target. float32 (depth,), computed in float64.
    """
    blocks = torch.arange(depth, dtype=torch.float64)
    density = torch.exp(-0.5 * ((blocks - target_depth) / scale) ** 2) / (scale * math.sqrt(2.0 * math.pi))
    before = density[blocks < target_depth].sum()
    if float(before) <= 0.0:
        raise ConfigError(f"target_depth {target_depth} leaves no block before it to scale the prior on")
    return (density * ((1.0 - buffer) / before)).to(torch.float32)


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
    """The terms of A-ViT's loss and their weighted sum under "loss" (scalar tensors); see the module docstring."""
    ce = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
    ponder = out.ponder.mean()
    scores = out.halting[1:] if out.halting.shape[0] > 1 else out.halting  # the reference drops image 0
    distribution = scores.mean(dim=0)
    distribution = (distribution / distribution.sum()).clamp(0.01, 0.99)
    prior = F.kl_div(distribution.log(), target.to(distribution), reduction="batchmean")
    if teacher_logits is not None and distill_weight > 0:
        distill = F.kl_div(
            F.log_softmax(out.logits, dim=-1),
            F.log_softmax(teacher_logits, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
    else:
        distill = ce.new_zeros(())
    total = ce + ponder_weight * ponder + prior_weight * prior.clamp_min(0.0) + distill_weight * distill
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


class AViTTrainer(TokenSparseTrainer):
    """A-ViT's loss on the shared token-sparse trainer; the student's gate is fixed (no new parameters)."""

    family = "avit"
    net_type = AViT
    loss_names = LOSS_TERMS

    def __init__(
        self,
        teacher: ZooModel,
        config: AViTTrainConfig,
        *,
        gate_center: float | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        super().__init__(teacher, config, on_epoch=on_epoch)
        self.gate_center = gate_center

    def build_net(self, name: str) -> AViT:
        center = gate_center_for(name) if self.gate_center is None else float(self.gate_center)
        return AViT.from_vit(self.teacher.net, gate_center=center, halting=self.config.halting)

    def new_report(self, student: ZooModel) -> AViTTrainReport:
        net: AViT = student.net
        self.target = distribution_target(net.depth, self.config.target_depth)
        self.tokens = net.depth * net.num_tokens
        return AViTTrainReport(
            name=student.model_name,
            gate_scale=net.gate_scale,
            gate_center=net.gate_center,
            halting=net.halting,
            target_depth=self.config.target_depth,
            epochs=self.config.epochs,
        )

    def step(self, model: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        config = self.config
        teacher_logits = None
        if config.distill_weight > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        out = model(x)
        terms = avit_loss(
            out,
            y,
            teacher_logits,
            self.target,
            ponder_weight=config.ponder_weight,
            prior_weight=config.prior_weight,
            distill_weight=config.distill_weight,
            label_smoothing=config.label_smoothing,
        )
        tur = float(out.counts.detach().sum()) / self.tokens / len(x)
        return terms.pop("loss"), {**terms, "tur": tur}

    def record(self, report: Any, means: dict[str, float], validation: dict[str, float] | None) -> None:
        super().record(report, means, validation)
        report.epoch_train_tur.append(means["tur"])
        if validation is not None:
            report.epoch_val_acc.append(validation["acc"])
            report.epoch_val_tur.append(validation["tur"])

    def validate(self, model: Any, val: ImageDataset) -> dict[str, float]:
        acc, turs = token_utilisation(model, val)
        return {"acc": acc, "tur": float(turs.mean())}


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
    on_epoch: EpochCallback | None = None,
) -> tuple[ZooModel, AViTTrainReport]:
    """Fine-tune an A-ViT from `teacher` (a timm-ViT ZooModel); returns the student in eval mode and the report.

    The student is `AViT.from_vit(teacher.net)` (a copy, halting `config.halting`) named `name` or
    `avit_<teacher>` with the "vit_" prefix dropped (vit_tiny_digits -> avit_tiny_digits), unless
    `student` (a ZooModel wrapping an AViT) is given. `gate_center` defaults to the zoo's value for
    that name.
    """
    config = config or AViTTrainConfig()
    overrides = {k: v for k, v in (("epochs", epochs), ("lr", lr)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    trainer = AViTTrainer(teacher, config, gate_center=gate_center, on_epoch=on_epoch)
    return trainer.fit(train, val, student=student, name=name)


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
        "halting",
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
