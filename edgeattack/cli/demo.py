"""`edgeattack demo`: the whole pipeline on the embedded default (shipped model, digits), no download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import handle_errors, progress_bar


@handle_errors
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for engines, artifacts, results, summary.")] = Path(
        "edgeattack-demo"
    ),
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Evaluate on the first N test images.", min=1)] = None,
    latency_seconds: Annotated[float, typer.Option(help="Minimum seconds of each latency measurement.", min=0.0)] = 1.0,
    pgd_steps: Annotated[int, typer.Option(help="PGD iterations.", min=1)] = 10,
    uap_epochs: Annotated[int, typer.Option(help="Epochs of the UAP (SGD/Adam) fit on the val split.", min=1)] = 20,
    families: Annotated[
        str | None,
        typer.Option(
            help="Also run the transfer matrix across families: 'all' (original, int8 and every shipped "
            "compressed model) or a comma list of zoo names (int8-qdq for the int8 engine)."
        ),
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.", min=1)] = None,
) -> None:
    """Export fp32/int8 engines, craft PGD and UAP on fp32 and on the int8 twin, replay all on all engines."""
    from edgeattack.demo import DemoConfig, run_demo

    if threads:
        import torch

        torch.set_num_threads(threads)
    config = DemoConfig(limit=limit, latency_seconds=latency_seconds, pgd_steps=pgd_steps, uap_epochs=uap_epochs)
    with progress_bar("demo", total=len(config.stages())) as advance:
        summary = run_demo(out, config, stage=lambda _name: advance(1))
    assert summary.markdown_path is not None
    from rich.markdown import Markdown

    from edgeattack.cli.options import console

    console().print(Markdown(summary.markdown_path.read_text()))
    typer.echo(f"summary: {summary.markdown_path}")
    if families:
        from edgeattack.transfer import TransferConfig, family_models, run_transfer

        names = family_models(families)
        with progress_bar("transfer across families", total=3 * len(names)) as advance:
            transfer = run_transfer(out / "families", names, TransferConfig(limit=limit), stage=lambda _n: advance(1))
        assert transfer.markdown_path is not None
        console().print(Markdown(transfer.markdown_path.read_text()))
        typer.echo(f"transfer matrix: {transfer.markdown_path}")
