"""`edgeattack train`: train a zoo model on a dataset, write safetensors + a manifest entry."""

from __future__ import annotations

import json
import shlex
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.cli.options import (
    DataOpt,
    DeviceOpt,
    LimitOpt,
    PrecisionOpt,
    PretrainedOpt,
    RandomWeightsOpt,
    SeedOpt,
    handle_errors,
    progress_bar,
)


@handle_errors
def train_command(
    model: Annotated[str, typer.Argument(help="Zoo model name, e.g. vit_tiny_digits.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <model>.safetensors and manifest.json.")],
    data: DataOpt = "digits",
    seed: SeedOpt = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.", min=1)] = 60,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per step (the global batch under torchrun).", min=1)
    ] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).", min=0.0)] = 2e-3,
    name: Annotated[str | None, typer.Option(help="Name of the written weights (default: the model's).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.", min=1)] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    limit: LimitOpt = None,
) -> None:
    """Train MODEL on the train split (validated on val, tested on test) and save its weights.

    Under `torchrun --nproc_per_node N -m edgeattack train ...` the N ranks share each global batch
    (DistributedDataParallel); rank 0 validates and writes.
    """
    import torch

    from edgeattack.data import load_dataset
    from edgeattack.training.runtime import training_session
    from edgeattack.zoo.factory import create_model
    from edgeattack.zoo.train import TrainConfig, evaluate_accuracy, save_weights, train_model

    if threads:
        torch.set_num_threads(threads)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    with training_session(device, precision) as runtime:
        train = load_dataset(data, split="train", seed=seed, limit=limit)
        val = load_dataset(data, split="val", seed=seed, limit=limit)
        torch.manual_seed(seed)  # the initial weights: the same for a seed, and on every rank
        net = create_model(model, **weights_kwargs(pretrained, random_weights, fresh=True))
        with progress_bar(f"training {model}", total=epochs) if runtime.is_main else nullcontext(_no_progress) as advance:

            def on_epoch(epoch: int, loss: float, acc: float | None) -> None:
                advance(1)

            report = train_model(net, train, val, config, on_epoch=on_epoch)
        if not runtime.is_main:
            return
        test = load_dataset(data, split="test", seed=seed, limit=limit)
        test_acc = evaluate_accuracy(net, test)
        command = " ".join(
            shlex.quote(part)
            for part in (
                "edgeattack", "train", model, "--out", str(out), "--data", data, "--seed", str(seed),
                "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(lr),
                *(("--name", name) if name else ()),
                *(("--limit", str(limit)) if limit else ()),
                *(("--precision", precision) if precision != "fp32" else ()),
                *(("--pretrained",) if pretrained else ()),
                *(("--random-weights",) if random_weights else ()),
            )
        )
        record = runtime.record()
        entry = save_weights(
            net,
            out,
            name=name,
            metrics={"test_acc": test_acc, "val_acc": report.val_acc[-1], "train_loss": report.train_loss[-1]},
            dataset=train.name,
            seed=seed,
            command=command,
            extra={"training": record},
        )
        sidecar = {
            "model": entry.name,
            "dataset": train.spec,
            "test_acc": test_acc,
            "train_loss": report.train_loss,
            "val_acc": report.val_acc,
            "wall_s": report.wall_s,
            "batch_size": batch_size,
            **record,
        }
        (Path(out) / f"{entry.name}.train.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    typer.echo(
        f"{entry.name}: test_acc={test_acc:.4f} val_acc={report.val_acc[-1]:.4f} "
        f"({report.wall_s:.0f} s, {record['device']}, {record['precision']}, {record['world_size']} process(es)) "
        f"-> {Path(out) / entry.file}"
    )


def weights_kwargs(pretrained: bool, random_weights: bool, *, fresh: bool = False) -> dict[str, Any]:
    """create_model's weight arguments for --pretrained / --random-weights.

    `fresh` (training from scratch) asks for no shipped weights unless --pretrained is given.
    """
    kwargs: dict[str, Any] = {}
    if pretrained:
        kwargs["pretrained"] = True
    elif fresh:
        kwargs["pretrained"] = False
    if random_weights:
        kwargs["random_weights"] = True
    return kwargs


def _no_progress(*args: Any, **kwargs: Any) -> None:
    """The progress callback of ranks other than 0, which show none."""
