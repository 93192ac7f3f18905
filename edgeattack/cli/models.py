"""`edgeattack models`: the zoo, with family, shipped weights and accuracy (no torch needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeattack.cli.options import handle_errors


@handle_errors
def models_command(
    pattern: Annotated[str, typer.Argument(help="Glob over model names.")] = "*",
) -> None:
    """List the zoo's models: family, input size, shipped weights and their recorded accuracy."""
    from rich.table import Table

    from edgeattack.cli.options import console
    from edgeattack.zoo import list_models, read_manifest

    manifest = read_manifest()
    table = Table(title="edgeattack zoo")
    table.add_column("name", no_wrap=True)
    for column in ("family", "input", "classes", "weights", "params", "test_acc"):
        table.add_column(column)
    table.add_column("description", overflow="fold")
    for entry in list_models(pattern):
        shipped = manifest.get(entry.name)
        table.add_row(
            entry.name,
            entry.family,
            "x".join(str(d) for d in entry.config.input_size),
            str(entry.config.num_classes),
            "shipped" if shipped else ("timm/--checkpoint" if not entry.shipped else "missing"),
            f"{shipped.params:,}" if shipped else "",
            f"{shipped.metrics.get('test_acc', float('nan')):.4f}" if shipped else "",
            entry.description,
        )
    console().print(table)
