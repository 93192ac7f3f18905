"""`edgeattack run CONFIG` and `edgeattack report STORE`: a whole study from one config, and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.cli.options import console, handle_errors, progress_bar
from edgeattack.errors import ConfigError
from edgeattack.logs import CommandLog


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key.path=value` pairs; values are YAML (numbers, lists, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE (e.g. data.limit=32), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: {value!r} is not a YAML value: {exc}") from None
    return out


@handle_errors
def run_command(
    config: Annotated[str, typer.Argument(help="Experiment YAML file, or a shipped config: quickstart, desparsify, paper-imagenet.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Store directory (default runs/<name>).")] = None,
    executor: Annotated[str | None, typer.Option(help="local, process or ray (default: the config's).")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel cells (process pool / Ray CPUs).", min=1)] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (auto, host:6379, ray://host:10001).")] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only cells matching this glob and the exports they need; a replay replays the crafts selected "
            "too or already stored. Repeatable.",
        ),
    ] = None,
    rerun: Annotated[list[str] | None, typer.Option("--rerun", help="Run cells matching this glob again even if finished.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: data.limit=32. Repeatable.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, what would run and every missing checkpoint; run nothing.")
    ] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html, report.md and tables/ at the end.")] = True,
) -> None:
    """Run an experiment: every cell of its plan, resuming a store that already holds finished ones."""
    execute_run(
        config, out=out, executor=executor, workers=workers, ray_address=ray_address, only=only, rerun=rerun,
        overrides=overrides, dry_run=dry_run, report=report,
    )


def execute_run(
    config: str,
    *,
    out: Path | None = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    only: list[str] | None = None,
    rerun: list[str] | None = None,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    report: bool = True,
) -> None:
    """What `edgeattack run` does (and `edgeattack demo` on the quickstart config); typer.Exit(1) on failed cells."""
    from edgeattack.experiments.loading import load_config
    from edgeattack.experiments.plan import build_plan
    from edgeattack.experiments.runner import check_files, planned

    cfg = load_config(config, overrides=parse_overrides(overrides or []))
    store_dir = out or Path("runs") / cfg.name
    plan = planned(build_plan(cfg), store_dir, only)
    if dry_run:
        _print_plan(plan, store_dir)
        return
    from edgeattack.experiments.runner import run_experiment

    check_files(plan)
    selected = len(plan)
    if CommandLog.current is not None:
        CommandLog.current.use_file(store_dir / "run.log")
    with progress_bar(f"{cfg.name}", total=selected, every_step=True) as advance:

        def progress(event: str, cell_id: str) -> None:
            if event == "start":
                advance(0, description=f"{cfg.name}: {cell_id}")
            else:
                advance(1, description=f"{cfg.name}: {event} {cell_id}", quiet=event == "cached")

        summary = run_experiment(
            cfg, store_dir, executor=executor, workers=workers, ray_address=ray_address, only=only, rerun=rerun,
            progress=progress,
        )
    typer.echo(summary.describe())
    if report:
        files = _write_report(store_dir)
        if files is not None:
            typer.echo(f"report: {files.html}")
    if not summary.ok:
        raise typer.Exit(code=1)


def _print_plan(plan: Any, store_dir: Path) -> None:
    """The plan's cells and their state, then every missing input file at once (a run would refuse them)."""
    from edgeattack.experiments.store import DB_NAME, ExperimentStore

    store = ExperimentStore(store_dir) if (store_dir / DB_NAME).is_file() else None
    from rich.table import Table

    table = Table(title=f"{plan.config.name}: {len(plan)} cells -> {store_dir}")
    for column in ("cell", "kind", "depends on", "state"):
        table.add_column(column)
    for cell_id, cell in plan.cells.items():
        finished = store is not None and store.is_finished(cell_id, plan.hashes[cell_id])
        state = "finished" if finished else "to run"
        left_out = len(cell.params.get("missing_artifacts") or {})
        if left_out:
            state += f" ({left_out} artifact(s) left out)"
        table.add_row(cell_id, cell.kind, str(len(cell.deps)), state)
    console().print(table)
    if store is not None:
        store.close()
    missing = plan.missing_files()
    if missing:
        typer.echo(f"missing ({len(missing)}): a run needs these first:\n  " + "\n  ".join(missing))
    else:
        typer.echo("every checkpoint and image folder the plan reads is there")


def _write_report(store_dir: Path) -> Any:
    from edgeattack.experiments.report_data import write_store_report

    try:
        return write_store_report(store_dir, markdown_path=store_dir / "report.md", tables_dir=store_dir / "tables")
    except ConfigError as exc:
        typer.echo(f"no report: {exc}", err=True)
        return None


@handle_errors
def report_command(
    store: Annotated[Path, typer.Argument(help="Experiment store directory (or its store.sqlite).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML report (default STORE/report.html).")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Markdown report (default: beside the HTML, .md).")] = None,
    tables: Annotated[Path | None, typer.Option(help="Directory for CSV/JSON of every table (default: beside the HTML, tables/).")] = None,
) -> None:
    """Write the HTML and Markdown report of an experiment store, with CSV/JSON of every table."""
    from edgeattack.experiments.report_data import write_store_report
    from edgeattack.experiments.store import resolve_store

    html = out or resolve_store(store) / "report.html"
    files = write_store_report(
        store, html, markdown_path=markdown or html.with_suffix(".md"), tables_dir=tables or html.parent / "tables"
    )
    typer.echo(f"report: {files.html}")
    if getattr(files, "markdown", None):
        typer.echo(f"markdown: {files.markdown}")
