"""`edgeattack compress`: build a compressed family member from a trained teacher and save it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import (
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    LimitOpt,
    PrecisionOpt,
    PretrainedOpt,
    RandomWeightsOpt,
    SeedOpt,
    handle_errors,
)
from edgeattack.errors import TrainingDivergedError


@handle_errors
def compress_command(
    method: Annotated[str, typer.Option("--method", "-m", help="int8-dynamic, distill, minivit, dynamicvit, sparse24.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <name>.safetensors and manifest.json.")],
    teacher: Annotated[str, typer.Option("--teacher", "--model", help="Trained zoo model to compress.")] = "vit_tiny_digits",
    rho: Annotated[float | None, typer.Option(help="dynamicvit keep rate: 0.7, 0.6 or 0.5.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (method default when omitted).", min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (method default when omitted).")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the result (default: its zoo name).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="Other hyper-parameter as key=value.")] = None,
    data: DataOpt = "digits",
    seed: SeedOpt = 0,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    limit: LimitOpt = None,
) -> None:
    """Compress TEACHER with METHOD (training where the method trains), report accuracy, save weights.

    Under `torchrun --nproc_per_node N -m edgeattack compress ...` the trained methods share each
    global batch over the N ranks (DistributedDataParallel); rank 0 validates and writes.
    """
    import torch

    from edgeattack.cli.attack import parse_params
    from edgeattack.cli.train import weights_kwargs
    from edgeattack.compress.methods import compress
    from edgeattack.data import load_dataset
    from edgeattack.training.runtime import training_session
    from edgeattack.zoo.factory import create_model
    from edgeattack.zoo.train import evaluate_accuracy, save_weights

    with training_session(device, precision) as runtime:
        params = parse_params(param or [])
        for key, value in (("rho", rho), ("epochs", epochs), ("lr", lr), ("name", name)):
            if value is not None:
                params[key] = value
        if method != "int8-dynamic":
            params.setdefault("seed", seed)
        torch.manual_seed(seed)
        source = create_model(teacher, checkpoint=checkpoint, **weights_kwargs(pretrained, random_weights))
        train = load_dataset(data, split="train", seed=seed, limit=limit)
        val = load_dataset(data, split="val", seed=seed, limit=limit)
        try:
            model, report = compress(method, source, train, val, **params)
        except TrainingDivergedError as exc:
            if exc.model is None or not runtime.is_main:
                raise
            kept = save_weights(exc.model, Path(out) / "diverged", name=f"{exc.model.model_name}.last-good", command="")
            raise TrainingDivergedError(
                f"{exc} — the last good weights are in {Path(out) / 'diverged' / kept.file}", exc.model, exc.report
            ) from exc
        if not runtime.is_main:
            return
        test = load_dataset(data, split="test", seed=seed, limit=limit)
        teacher_acc = evaluate_accuracy(source, test)
        test_acc = evaluate_accuracy(model, test)
        command = " ".join(
            shlex.quote(part)
            for part in (
                "edgeattack", "compress", "--method", method, "--teacher", teacher,
                *(("--checkpoint", str(checkpoint)) if checkpoint else ()),
                *(("--pretrained",) if pretrained else ()),
                *(("--random-weights",) if random_weights else ()),
                *(("--precision", precision) if precision != "fp32" else ()),
                "--out", str(out),
                "--data", data, "--seed", str(seed),
                *(("--limit", str(limit)) if limit else ()),
                *(("--rho", str(rho)) if rho is not None else ()),
                *(("--epochs", str(epochs)) if epochs is not None else ()),
                *(("--lr", str(lr)) if lr is not None else ()),
                *(("--name", name) if name else ()),
                *(part for pair in (param or []) for part in ("--param", pair)),
            )
        )
        metrics = {"test_acc": test_acc, "teacher_test_acc": teacher_acc}
        record = runtime.record()
        if method == "int8-dynamic":
            from edgeattack.compress.int8_torch import save_int8_dynamic

            path = save_int8_dynamic(model, Path(out) / f"{model.model_name}.pt")
            typer.echo(f"{model.model_name}: test_acc={test_acc:.4f} (teacher {teacher_acc:.4f}) -> {path}")
            return
        entry = save_weights(
            model, out, metrics=metrics, dataset=train.name, seed=seed, command=command, extra={"training": record}
        )
        report_path = Path(out) / f"{entry.name}.report.json"
        report_path.write_text(json.dumps({**report, "training": record}, indent=2, default=str) + "\n")
        typer.echo(
            f"{entry.name}: test_acc={test_acc:.4f} (teacher {teacher_acc:.4f}), {entry.params:,} params "
            f"-> {Path(out) / entry.file}"
        )
