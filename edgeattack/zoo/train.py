"""Train a zoo model on an ImageDataset and write safetensors + a manifest entry.

Deterministic for a seed on the CPU: seeded init, seeded shuffling and augmentation, one thread
setting left to the caller. Augmentation is random translation (pad + crop), which suits digits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgeattack._io import sha256_file
from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError
from edgeattack.zoo.factory import ZooModel, count_parameters
from edgeattack.zoo.manifest import ManifestEntry, write_entry

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


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero padding), independently per image."""
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.arange(c).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def evaluate_accuracy(model: ZooModel, dataset: ImageDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch model on a dataset."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in dataset.batches(batch_size):
            logits = model(torch.from_numpy(images))
            correct += int((logits.argmax(1).numpy() == labels).sum())
    return correct / max(len(dataset), 1)


def train_model(
    model: ZooModel,
    train: ImageDataset,
    val: ImageDataset | None = None,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> TrainReport:
    """Train `model` in place with cross-entropy; `on_epoch(epoch, loss, val_acc)` reports progress."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.from_numpy(train.images)
    labels = torch.from_numpy(train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    report = TrainReport(epochs=config.epochs)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = random_shift(images[batch], config.max_shift, generator)
            loss = criterion(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(batch)
        report.train_loss.append(running / len(train))
        acc = evaluate_accuracy(model, val) if val is not None else None
        if acc is not None:
            report.val_acc.append(acc)
        if on_epoch is not None:
            on_epoch(epoch, report.train_loss[-1], acc)
    report.wall_s = time.perf_counter() - start
    model.eval()
    return report


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
) -> ManifestEntry:
    """Write `<name>.safetensors` (the whole ZooModel state) and its manifest entry in `out_dir`."""
    safetensors_torch = require("safetensors.torch", feature="saving weights")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or model.model_name
    path = out / f"{name}.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
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
    )
    write_entry(entry, out)
    model.weights_sha256 = entry.sha256
    return entry
