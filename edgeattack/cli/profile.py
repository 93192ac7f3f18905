"""`edgeattack profile`: parameters, stored sizes, analytic GFLOPs and throughput of a zoo model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.cli.options import (
    BatchOpt,
    CheckpointOpt,
    DeviceOpt,
    ModelArgOpt,
    PretrainedOpt,
    RandomWeightsOpt,
    handle_errors,
    parse_model_args,
)


@handle_errors
def profile_command(
    model: Annotated[str, typer.Argument(help="Zoo model name (timm names are built with random weights).")],
    batch_size: BatchOpt = 64,
    throughput: Annotated[
        bool, typer.Option("--throughput/--no-throughput", help="Time PyTorch and ONNX Runtime.")
    ] = True,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Export to ONNX and time ONNX Runtime.")] = True,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch and ONNX Runtime (default: torch's).", min=1)
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="At least this many timed calls per engine.", min=1)] = 3,
    seconds: Annotated[
        float, typer.Option("--seconds", help="At least this many seconds of timed calls.", min=0)
    ] = 1.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the profile as JSON to this file.")] = None,
    checkpoint: CheckpointOpt = None,
    device: DeviceOpt = "cpu",
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    model_arg: ModelArgOpt = None,
) -> None:
    """Parameters, model size (fp32 and dynamic int8, in MB = 10^6 B and MiB = 2^20 B), GFLOPs and throughput.

    --device times the PyTorch throughput there (default cpu; ONNX Runtime always runs on the CPU).
    """
    from edgeattack._io import atomic_write_json
    from edgeattack.zoo.profile import profile_model

    profile = profile_model(
        model,
        checkpoint=checkpoint,
        batch_size=batch_size,
        measure_throughput=throughput,
        onnx=onnx,
        threads=threads,
        min_runs=runs,
        min_seconds=seconds,
        device=device,
        model_args=parse_model_args(model_arg),
        **_weight_flags(pretrained=pretrained, random_weights=random_weights),
    )
    _print_profile(profile)
    if json_path is not None:
        atomic_write_json(json_path, profile.to_dict())
        typer.echo(f"wrote {json_path}")


def _weight_flags(*, pretrained: bool, random_weights: bool) -> dict[str, Any]:
    """The weight flags for `profile_model` (a timm name without them is built with random weights)."""
    import inspect

    from edgeattack.errors import ConfigError
    from edgeattack.zoo.profile import profile_model

    if pretrained and random_weights:
        raise ConfigError("--pretrained and --random-weights exclude each other")
    flags: dict[str, Any] = {"pretrained": pretrained or None}
    if "random_weights" in inspect.signature(profile_model).parameters:
        flags["random_weights"] = random_weights
    return flags


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _print_profile(profile: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgeattack.cli.options import console

    table = Table(title=escape(f"profile of {profile.name}"))
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("unit / how", overflow="fold")
    rows = [
        ("family", profile.family, f"weights: {profile.weights}"),
        ("params", f"{profile.params:,}", f"{profile.params / 1e6:.2f} M"),
        (
            "size fp32",
            _fmt(profile.size_fp32_mb, ".2f"),
            f"MB (10^6 B); {profile.size_fp32_mib:.2f} MiB; {profile.fp32_format}",
        ),
        (
            "size int8",
            _fmt(profile.size_int8_mb, ".2f"),
            f"MB (10^6 B); {_fmt(profile.size_int8_mib, '.2f')} MiB; {profile.int8_scheme}",
        ),
        ("GFLOPs", _fmt(profile.gflops, ".3f"), f"per image; {profile.flops_convention}"),
        (
            "throughput torch",
            _fmt(profile.throughput_torch_ips, ".1f"),
            f"images/s, batch {profile.batch_size}, "
            + (f"{profile.device} ({profile.device_name})" if profile.device_name else f"{profile.threads} thread(s), CPU"),
        ),
        (
            "throughput onnxruntime",
            _fmt(profile.throughput_ort_ips, ".1f"),
            f"images/s, batch {profile.batch_size}, {profile.threads} thread(s), fp32 ONNX, CPUExecutionProvider",
        ),
    ]
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out = console()
    out.print(table)
    for note in profile.notes:
        out.print(escape(f"note: {note}"))
