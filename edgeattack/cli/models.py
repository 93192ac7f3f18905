"""`edgeattack models`: the zoo, with family, shipped weights and accuracy (no torch needed).

`--details` builds each model (torch) to add parameters, fp32 size and GFLOPs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeattack.cli.options import handle_errors


@handle_errors
def models_command(
    pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*",
    family: Annotated[str | None, typer.Option(help="Only this family (original, distill, dynamicvit, ...).")] = None,
    details: Annotated[
        bool, typer.Option("--details", help="Build each model (needs torch) for parameters, fp32 size and GFLOPs.")
    ] = False,
) -> None:
    """List the zoo: family, input, weights, parameters, size, GFLOPs and recorded test accuracy."""
    from rich.table import Table

    from edgeattack.cli.options import console
    from edgeattack.zoo import list_models, read_manifest

    manifest = read_manifest()
    table = Table(title="edgeattack zoo" + ("" if details else " (--details adds size and GFLOPs)"))
    table.add_column("name", no_wrap=True)
    for column in ("family", "input", "classes", "weights", "params"):
        table.add_column(column)
    if details:
        table.add_column("fp32 MB")
        table.add_column("GFLOPs")
    table.add_column("test_acc")
    table.add_column("description", overflow="fold")
    for entry in list_models(pattern, family=family):
        shipped = manifest.get(entry.name)
        borrowed = manifest.get(entry.weights_of) if entry.weights_of else None
        weights = "shipped" if shipped else ("missing" if entry.shipped else "timm/--checkpoint")
        if borrowed is not None:
            weights = f"shipped ({entry.weights_of})"
        params = f"{shipped.params:,}" if shipped else (f"{borrowed.params:,}" if borrowed else "")
        extra: list[str] = []
        if details:
            from edgeattack.zoo.profile import profile_model

            profile = profile_model(entry.name, measure_throughput=False, onnx=False, int8=False, warn=False)
            params = f"{profile.params:,}"
            extra = [f"{profile.size_fp32_mb:.2f}", "" if profile.gflops is None else f"{profile.gflops:.3f}"]
        table.add_row(
            entry.name,
            entry.family,
            "x".join(str(d) for d in entry.config.input_size),
            str(entry.config.num_classes),
            weights,
            params,
            *extra,
            f"{shipped.metrics['test_acc']:.4f}" if shipped and "test_acc" in shipped.metrics else "",
            entry.description,
        )
    console().print(table)
