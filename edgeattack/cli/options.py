"""Option types shared by every command, the error handler and the progress bar factory."""

from __future__ import annotations

import functools
import time
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
SplitOpt = Annotated[
    str,
    typer.Option(
        "--split",
        help="Dataset split: train, val, test (digits); for a folder, one of its split sub-folders "
        "(root/<split>/<class>/...), or 'all' for a plain class folder (an unknown split is an error).",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the split and of every random choice.")]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        "-n",
        help="Use only N images of the split: the first N for digits; for a folder, a seeded class-stratified "
        "subset (the same for the same --seed).",
        min=1,
    ),
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
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where PyTorch computes: auto (the first GPU if any, else the CPU), cpu, cuda or cuda:N. "
        "Recorded in the artifact/result.",
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Autocast policy: fp32 (none), bf16 (CPU or CUDA) or fp16 (CUDA; training adds a gradient "
        "scaler). Attack perturbations and gradients stay float32; TF32 stays off.",
    ),
]
PretrainedOpt = Annotated[
    bool,
    typer.Option(
        "--pretrained",
        help="For a timm name: ask timm for its pretrained weights (online, or from a local Hugging Face cache).",
    ),
]
RandomWeightsOpt = Annotated[
    bool,
    typer.Option(
        "--random-weights",
        help="For a timm name: use random weights on purpose (without this, --pretrained or --checkpoint is needed).",
    ),
]
ModelArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-arg",
        metavar="KEY=VALUE",
        help="A builder argument of the model (repeatable), e.g. --model-arg gate_scale=10 (A-ViT's gate) or "
        "--model-arg embed_dim=48; values are read as int, float, true/false, none or text.",
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="Craft only shard I of N (I/N, 0-based) of the images; `edgeattack merge-artifacts` joins the shards. "
        "Under torchrun the rank and world size choose the shard.",
    ),
]
AllowOverBudgetOpt = Annotated[
    bool,
    typer.Option(
        "--allow-over-budget",
        help="Replay artifacts whose deltas exceed their own declared eps (refused otherwise); the result "
        "records the measured norm.",
    ),
]
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


@contextmanager
def progress_bar(
    description: str, total: int | None = None, *, every_step: bool = False
) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields `advance(n, total=None, description=None)`.

    A new `description` with a new `total` starts a new stage (the count restarts); a description
    alone relabels the bar and keeps counting; `quiet=True` counts without a line of its own. Without a terminal (a log file, CI) it prints plain
    lines instead: one per tenth of the work (every step with `every_step`, e.g. one line per finished
    experiment cell) and one when a stage ends, so a long command shows it is alive.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        lines = _ProgressLines(description, total, every_step=every_step)
        yield lines.advance
        lines.finish()
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        stage = [description]

        def advance(n: int = 1, total: int | None = None, description: str | None = None, quiet: bool = False) -> None:
            if description is not None and description != stage[0]:
                stage[0] = description
                if total is not None:
                    progress.reset(task, total=total, description=description)
                else:
                    progress.update(task, description=description)
            elif total is not None:
                progress.update(task, total=total)
            progress.advance(task, n)

        yield advance


class _ProgressLines:
    """`progress_bar` without a terminal: `stage: done/total (elapsed)` lines on stderr."""

    def __init__(self, description: str, total: int | None, *, every_step: bool = False) -> None:
        self.description, self.total, self.every_step = description, total, every_step
        self.done = self.shown = 0
        self.stage_start = time.perf_counter()

    def _echo(self) -> None:
        of = f"/{self.total}" if self.total else ""
        typer.echo(f"{self.description}: {self.done}{of} ({time.perf_counter() - self.stage_start:.0f} s)", err=True)
        self.shown = self.done

    def advance(self, n: int = 1, total: int | None = None, description: str | None = None, quiet: bool = False) -> None:
        if description is not None and description != self.description:
            if total is not None:  # a new stage
                self.finish()
                self.done = self.shown = 0
                self.stage_start = time.perf_counter()
            self.description = description
        if total is not None:
            self.total = total
        self.done += n
        if quiet:
            self.shown = self.done  # counted on purpose without a line
        elif n and (self.every_step or (self.total and self.done * 10 // self.total > self.shown * 10 // self.total)):
            self._echo()

    def finish(self) -> None:
        """The stage's last line, unless it was just shown."""
        if self.done != self.shown:
            self._echo()


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """`--model-arg KEY=VALUE` items as create_model keyword arguments (ConfigError on a malformed item)."""
    from edgeattack.errors import ConfigError

    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-arg takes KEY=VALUE with KEY a Python name, got {item!r}")
        if key in result:
            raise ConfigError(f"--model-arg {key} is given twice")
        result[key] = _model_arg_value(text.strip())
    return result


def _model_arg_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
