"""The `edgeattack` command. Commands are thin: they parse options and call library functions.

Heavy modules (torch, onnxruntime) are imported inside the commands, so `edgeattack --help` and the
evaluation commands work on a board without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack import __version__
from edgeattack.cli import (
    attack,
    availability,
    bundle,
    compress,
    demo,
    doctor,
    evaluate,
    export,
    merge,
    models,
    profile,
    run,
    train,
)
from edgeattack.cli.options import CliState
from edgeattack.logs import CommandLog

app = typer.Typer(
    name="edgeattack",
    help="Evaluate compressed Vision Transformers as deployed: export, attack, replay, measure.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeattack {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print every log record of each step.")] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="Where warnings and log records go (default: $EDGEATTACK_LOG_FILE, else "
            "~/.local/state/edgeattack/edgeattack.log; `run` and `demo` log into their store).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """edgeattack: compressed ViTs under attack, measured on the engines you deploy.

    Warnings and library messages go to a log file; a command ends with one line that counts them.
    """
    CliState.debug = debug
    log = CommandLog(log_file, verbose=verbose, command=ctx.invoked_subcommand or "").install()

    def finish() -> None:
        summary = log.summary()
        log.uninstall()
        if summary:
            typer.echo(f"note: {summary}", err=True)

    ctx.call_on_close(finish)


app.command("models")(models.models_command)
app.command("train")(train.train_command)
app.command("compress")(compress.compress_command)
app.command("export")(export.export_command)
app.command("attack")(attack.attack_command)
app.command("evaluate")(evaluate.evaluate_command)
app.command("availability")(availability.availability_command)
app.command("bundle")(bundle.bundle_command)
app.command("merge")(bundle.merge_command)
app.command("merge-artifacts")(merge.merge_command)
app.command("run")(run.run_command)
app.command("report")(run.report_command)
app.command("demo")(demo.demo_command)
app.command("profile")(profile.profile_command)
app.command("doctor")(doctor.doctor_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
