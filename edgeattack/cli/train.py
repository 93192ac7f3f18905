"""`edgeattack train`: train a zoo model on a dataset, write safetensors + a manifest entry."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import DataOpt, SeedOpt, handle_errors, progress_bar


@handle_errors
def train_command(
    model: Annotated[str, typer.Argument(help="Zoo model name, e.g. vit_tiny_digits.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <model>.safetensors and manifest.json.")],
    data: DataOpt = "digits",
    seed: SeedOpt = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.", min=1)] = 60,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per step.", min=1)] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).", min=0.0)] = 2e-3,
    name: Annotated[str | None, typer.Option(help="Name of the written weights (default: the model's).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.", min=1)] = None,
) -> None:
    """Train MODEL on the train split (validated on val, tested on test) and save its weights."""
    from edgeattack.data import load_dataset
    from edgeattack.zoo.factory import create_model
    from edgeattack.zoo.train import TrainConfig, evaluate_accuracy, save_weights, train_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    train = load_dataset(data, split="train", seed=seed)
    val = load_dataset(data, split="val", seed=seed)
    test = load_dataset(data, split="test", seed=seed)
    net = create_model(model, pretrained=False)
    with progress_bar(f"training {model}", total=epochs) as advance:

        def on_epoch(epoch: int, loss: float, acc: float | None) -> None:
            advance(1)

        report = train_model(net, train, val, config, on_epoch=on_epoch)
    test_acc = evaluate_accuracy(net, test)
    command = " ".join(
        shlex.quote(part)
        for part in (
            "edgeattack", "train", model, "--out", str(out), "--data", data, "--seed", str(seed),
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(lr),
            *(("--name", name) if name else ()),
        )
    )
    entry = save_weights(
        net,
        out,
        name=name,
        metrics={"test_acc": test_acc, "val_acc": report.val_acc[-1], "train_loss": report.train_loss[-1]},
        dataset=train.name,
        seed=seed,
        command=command,
    )
    typer.echo(
        f"{entry.name}: test_acc={test_acc:.4f} val_acc={report.val_acc[-1]:.4f} "
        f"({report.wall_s:.0f} s) -> {Path(out) / entry.file}"
    )
