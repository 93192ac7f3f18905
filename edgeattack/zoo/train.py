"""Train a zoo model on an ImageDataset and write safetensors + a manifest entry.

Deterministic for a seed on the CPU: seeded init, seeded shuffling and augmentation, one thread
setting left to the caller. Augmentation is random translation (pad + crop), which suits digits.
The loop itself (batches, device, precision, torchrun ranks) is `edgeattack.training.loop`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeattack._io import sha256_file
from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError
from edgeattack.training.augment import random_shift
from edgeattack.training.loop import LoopConfig, loss_progress, run_training
from edgeattack.zoo.factory import ZooModel, count_parameters
from edgeattack.zoo.manifest import ManifestEntry, write_entry

__all__ = ["TrainConfig", "TrainReport", "evaluate_accuracy", "random_shift", "save_weights", "train_model"]

logger = logging.getLogger(__name__)
torch = require("torch", feature="training")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of `train_model` (AdamW, linear warm-up then cosine decay)."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    max_shift: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if self.max_shift < 0:
            raise ConfigError("max_shift must be non-negative")


@dataclass
class TrainReport:
    """What training produced: per-epoch losses, final accuracies, wall time."""

    epochs: int
    train_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def evaluate_accuracy(model: ZooModel, dataset: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch model on a dataset (on the device the model's weights are on)."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in dataset.batches(batch_size):
            logits = model(torch.from_numpy(images).to(device))
            correct += int((logits.argmax(1).cpu().numpy() == labels).sum())
    return correct / max(len(dataset), 1)


def train_model(
    model: ZooModel,
    train: ImageDataset,
    val: ImageDataset | None = None,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> TrainReport:
    """Train `model` in place with cross-entropy; `on_epoch(epoch, loss, val_acc)` reports progress.

    Runs on the device, precision and torchrun ranks of the current training runtime
    (`edgeattack.training.runtime`); validation and `on_epoch` run on rank 0 only.
    """
    config = config or TrainConfig()
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def step(net: Any, x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
        return criterion(net(x), y), {}

    result = run_training(
        model,
        train,
        step,
        lambda: torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        LoopConfig.of(config),
        validate=None if val is None else (lambda net: {"acc": evaluate_accuracy(net, val)}),
        on_epoch=loss_progress(config.epochs, on_epoch, logger),
    )
    return TrainReport(
        epochs=config.epochs,
        train_loss=[means["loss"] for means in result.epochs],
        val_acc=[figures["acc"] for figures in result.val],
        wall_s=result.wall_s,
    )


def save_weights(
    model: ZooModel,
    out_dir: str | Path,
    *,
    name: str | None = None,
    metrics: dict[str, float] | None = None,
    dataset: str = "",
    seed: int = 0,
    command: str = "",
    architecture: str = "",
    extra: dict[str, Any] | None = None,
) -> ManifestEntry:
    """Write `<name>.safetensors` (the whole ZooModel state) and its manifest entry in `out_dir`."""
    safetensors_torch = require("safetensors.torch", feature="saving weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or model.model_name
    path = out / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors_torch.save_file(state, str(tmp), metadata={"model": model.model_name})
    tmp.replace(path)
    entry = ManifestEntry(
        name=name,
        file=path.name,
        sha256=sha256_file(path),
        family=model.config.family,
        architecture=architecture or model.model_name,
        params=count_parameters(model),
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        dataset=dataset,
        seed=seed,
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
    )
    write_entry(entry, out)
    model.weights_sha256 = entry.sha256
    return entry
