"""`edgeattack doctor`: which runtimes, providers, GPUs and meters really work on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from edgeattack.cli.options import console, handle_errors

_STYLE = {"ok": "green", "fallback": "yellow", "missing": "red", "none": "dim"}


@handle_errors
def doctor_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    no_probe: Annotated[
        bool, typer.Option("--no-probe", help="List ONNX Runtime providers without creating a session on each.")
    ] = False,
) -> None:
    """Check Python, numpy, ONNX Runtime providers (by running a tiny model on each), torch, TensorRT,
    cuda-python/pycuda, GPUs, Jetson boards and energy meters."""
    from edgeattack.doctor import diagnose, summary_rows

    report = diagnose(probe_providers=not no_probe)
    if json_out:
        typer.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    from rich.table import Table

    table = Table(title=f"edgeattack {report['edgeattack']} doctor", show_lines=False)
    table.add_column("component", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("details")
    for name, status, detail in summary_rows(report):
        style = _STYLE.get(status, "")
        table.add_row(name, f"[{style}]{status}[/{style}]" if style else status, detail)
    console().print(table)
