"""`edgeattack demo`: `edgeattack run` on the embedded quickstart config, ending with the report.

Everything comes from the package (scikit-learn's digits, the shipped tiny zoo); nothing is
downloaded. Re-running resumes the store: finished cells are not run again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import handle_errors


@handle_errors
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Store directory: engines, artifacts, results, report.")] = Path(
        "edgeattack-demo"
    ),
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Evaluate on the first N test images.", min=1)] = None,
    executor: Annotated[str | None, typer.Option(help="local (default), process or ray.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel cells (process pool / Ray).", min=1)] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a quickstart key: metrics.latency_seconds=0.1.")] = None,
) -> None:
    """Run the quickstart study (families x int8/ONNX engines x PGD/UAP/black-box/DeSparsify) and write its report."""
    from edgeattack.cli.run import execute_run

    settings = list(overrides or [])
    if limit is not None:
        settings.append(f"data.limit={limit}")
    execute_run("quickstart", out=out, executor=executor, workers=workers, overrides=settings)
