"""Option types shared by every command, the error handler and the progress bar factory."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from edgeattack.errors import EdgeAttackError

F = TypeVar("F", bound=Callable[..., Any])

DataOpt = Annotated[
    str, typer.Option("--data", help="'digits' (embedded) or an ImageFolder directory (root/<class>/<image>).")
]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split: train, val, test (digits) or a sub-folder.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split and of every random choice.")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", "-n", help="Use only the first N images of the split.", min=1)
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
ProviderOpt = Annotated[
    list[str] | None,
    typer.Option("--provider", help="ONNX Runtime provider(s): cpu, cuda, tensorrt or a full name. Repeatable."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads (default: runtime's choice).", min=1)
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="Weights file (.safetensors, or .pth loaded with weights_only=True)."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="Images per engine call.", min=1)]
QuantizeInputsOpt = Annotated[
    bool,
    typer.Option("--quantize-inputs", help="Round adversarial images to the 1/255 grid, as a uint8 camera would."),
]


class CliState:
    """Global flags set by the main callback."""

    debug: bool = False


def handle_errors(command: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit (a traceback with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except EdgeAttackError as exc:
            if CliState.debug:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        except Exception as exc:  # anything else is a bug or an environment problem: still one line
            if CliState.debug:
                raise
            typer.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def console(*, stderr: bool = False) -> Any:
    """A rich Console: the terminal's width, or 160 columns when output goes to a file or pipe."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
    typer.echo(f"warning: {message}", err=True)


def configure_logging(verbose: bool) -> None:
    """INFO (or DEBUG) records of edgeattack to stderr, plain format; warnings as one line each."""
    warnings.showwarning = _show_warning
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("edgeattack")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields `advance(n, total=None, description=None)` (a new total or
    description replaces the old one). Quiet when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)

        stage = [description]

        def advance(n: int = 1, total: int | None = None, description: str | None = None) -> None:
            if description is not None and description != stage[0]:
                stage[0] = description
                progress.reset(task, total=total, description=description)
            elif total is not None:
                progress.update(task, total=total)
            progress.advance(task, n)

        yield advance
