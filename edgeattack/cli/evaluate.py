"""`edgeattack evaluate`: replay perturbation artifacts on a deployed engine and measure it.

Given an ONNX engine this imports no torch: it runs on a board with numpy and onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack._io import dataset_file_label, file_label
from edgeattack.budget import format_eps, over_budget_note, selection_note
from edgeattack.cli.options import (
    AllowOverBudgetOpt,
    BatchOpt,
    CheckpointOpt,
    DataOpt,
    LimitOpt,
    ModelArgOpt,
    PretrainedOpt,
    ProviderOpt,
    QuantizeInputsOpt,
    RandomWeightsOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    handle_errors,
    parse_model_args,
    progress_bar,
)


@handle_errors
def evaluate_command(
    engine: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            "-e",
            help="Engine: an .onnx file, a TensorRT plan, or a zoo model name. Repeat it to evaluate several "
            "engines; with --blackbox, each engine's adversarial examples are then replayed on the others (transfer).",
        ),
    ] = None,
    perturbations: Annotated[
        list[Path] | None,
        typer.Option("--perturbations", "-p", help="Perturbation artifact (.npz) to replay. Repeatable."),
    ] = None,
    blackbox: Annotated[
        list[str] | None,
        typer.Option(
            "--blackbox",
            "-B",
            help="Black-box attack NAME[:key=value,...] run on the engine through a counting oracle, e.g. "
            "square:eps=8/255, hopskipjump:norm=l2, spatial, salt_and_pepper, blended_noise. Keys target=N|random, "
            "budget=N and label=TEXT apply to one attack. Repeatable; --list-blackbox shows every parameter.",
        ),
    ] = None,
    budget: Annotated[int, typer.Option("--budget", help="Per-image query budget of black-box attacks.")] = 1000,
    save_adversarials: Annotated[
        Path | None,
        typer.Option("--save-adversarials", help="Directory for the black-box adversarial examples (artifacts)."),
    ] = None,
    list_blackbox: Annotated[
        bool, typer.Option("--list-blackbox", help="List the black-box attacks and their parameters, then exit.")
    ] = False,
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    provider: ProviderOpt = None,
    threads: ThreadsOpt = None,
    batch_size: BatchOpt = 64,
    quantize_inputs: QuantizeInputsOpt = False,
    latency_runs: Annotated[int, typer.Option(help="Minimum timed runs of the latency measurement.", min=1)] = 10,
    latency_seconds: Annotated[float, typer.Option(help="Minimum seconds of timed runs.", min=0.0)] = 3.0,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the latency measurement.")] = False,
    allow_over_budget: AllowOverBudgetOpt = False,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    model_arg: ModelArgOpt = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory (or .json path) for the result; never overwritten.")
    ] = Path("results"),
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="Run an on-device bundle (edgeattack bundle): its engines, artifacts, data and settings, "
            "verified first; results go to --out.",
        ),
    ] = None,
) -> None:
    """Replay artifacts and run black-box attacks on ENGINE: clean_acc, adv_acc, asr, queries, norms, latency.

    An engine named by a zoo/timm model name runs in PyTorch (a reference); --checkpoint, --pretrained
    or --random-weights say which weights it takes (ONNX and TensorRT engines carry their own).
    """
    from edgeattack.attacks.blackbox.registry import parse_spec
    from edgeattack.errors import ConfigError

    if list_blackbox:
        print_blackbox_attacks()
        return
    engine = engine or []
    if bundle is not None:
        if engine or perturbations or blackbox:
            raise ConfigError("--bundle carries its own engines, artifacts and attacks: drop --engine, -p and -B")
        _run_bundle(bundle, provider, threads, save_adversarials, out if out.suffix != ".json" else out.parent)
        return
    if not engine:
        raise ConfigError("name an engine with --engine (or run a bundle with --bundle)")
    if budget < 1:
        raise ConfigError(f"the query budget must be at least 1 query per image, got {budget}")
    specs = [parse_spec(text) for text in blackbox or ()]
    weights = {
        "checkpoint": checkpoint,
        "pretrained": pretrained or None,
        "random_weights": random_weights,
        "model_args": parse_model_args(model_arg),
    }
    if len(engine) > 1 and specs:
        _transfer(engine, specs, data, split, seed, limit, provider, threads, budget, quantize_inputs,
                  save_adversarials, out, weights=weights)
        return
    failures = []
    for name in engine:
        result, written = _evaluate_one(
            name, perturbations or [], specs, data, split, seed, limit, provider, threads, batch_size,
            quantize_inputs, latency_runs, latency_seconds, no_latency, budget, save_adversarials,
            out if len(engine) == 1 else (out if out.suffix != ".json" else out.parent),
            allow_over_budget=allow_over_budget,
            weights=weights,
        )
        print_result(result)
        typer.echo(f"result: {written}")
        failures += [(b, written) for b in result.blackbox if b.error]
    _report_failures(failures)


def _run_bundle(
    bundle: Path, provider: list[str] | None, threads: int | None, save_adversarials: Path | None, out: Path
) -> None:
    """Verify and run an on-device bundle, printing each engine's result as it is written."""
    import tempfile

    from edgeattack.bundle import open_bundle, run_bundle

    with tempfile.TemporaryDirectory(prefix="edgeattack-bundle-") as workdir:
        opened = open_bundle(bundle, Path(workdir) / "bundle")
        typer.echo(f"bundle {bundle.name} verified (sha256 {opened.sha256})")
        written: list[Path] = []
        with progress_bar(f"bundle {bundle.name}", total=None) as advance:
            results = run_bundle(
                opened,
                out_dir=out,
                providers=provider,
                threads=threads,
                blackbox_dir=save_adversarials,
                progress=lambda name, total, steps: advance(steps, total=total, description=f"evaluating {name}"),
                paths=written,
            )
    for result, path in zip(results, written, strict=True):
        print_result(result)
        typer.echo(f"result: {path}")
    _report_failures([(b, path) for result, path in zip(results, written, strict=True) for b in result.blackbox if b.error])


def _evaluate_one(
    engine: str,
    perturbations: list[Path],
    specs: list[object],
    data: str,
    split: str,
    seed: int,
    limit: int | None,
    provider: list[str] | None,
    threads: int | None,
    batch_size: int,
    quantize_inputs: bool,
    latency_runs: int,
    latency_seconds: float,
    no_latency: bool,
    budget: int,
    save_adversarials: Path | None,
    out: Path,
    *,
    allow_over_budget: bool = False,
    weights: dict[str, object] | None = None,
) -> tuple[object, Path]:
    from edgeattack.engines import open_engine
    from edgeattack.evaluate import evaluate

    with open_engine(engine, providers=provider, intra_op_threads=threads, **(weights or {})) as opened:
        dataset = _dataset(data, split, seed, limit, opened.metadata, opened.metadata.labels)
        with progress_bar(f"evaluating {opened.name}", total=None) as advance:
            result = evaluate(
                opened,
                dataset,
                [Path(p) for p in perturbations],
                batch_size=batch_size,
                quantize_inputs=quantize_inputs,
                latency_runs=latency_runs,
                latency_seconds=latency_seconds,
                measure_latency=not no_latency,
                blackbox=specs,  # type: ignore[arg-type]
                budget=budget,
                blackbox_dir=save_adversarials,
                seed=seed,
                progress=advance_with_total(advance),
                allow_over_budget=allow_over_budget,
            )
    target = out / f"eval-{file_label(Path(engine).stem)}-{dataset_file_label(dataset.name, dataset.split)}.json" if out.suffix != ".json" else out
    return result, result.save(target)


def _dataset(
    data: str, split: str, seed: int, limit: int | None, metadata: object, labels: tuple[str, ...] = ()
) -> object:
    """The evaluation split; a folder's classes are mapped to the engine's `labels` by name."""
    from edgeattack.data import load_dataset, preprocess_for

    preprocess = preprocess_for(metadata) if data != "digits" else None
    return load_dataset(data, split=split, seed=seed, limit=limit, preprocess=preprocess, class_names=labels)


def advance_with_total(advance: object) -> object:
    """Adapt a progress_bar `advance(steps, total=...)` to evaluate's `progress(total, steps)`."""
    return lambda total, steps: advance(steps, total=total)  # type: ignore[operator]


def _transfer(
    engines: list[str],
    specs: list[object],
    data: str,
    split: str,
    seed: int,
    limit: int | None,
    provider: list[str] | None,
    threads: int | None,
    budget: int,
    quantize_inputs: bool,
    save_adversarials: Path | None,
    out: Path,
    *,
    weights: dict[str, object] | None = None,
) -> None:
    from edgeattack.blackbox_transfer import blackbox_transfer
    from edgeattack.engines import open_engine

    opened = [open_engine(name, providers=provider, intra_op_threads=threads, **(weights or {})) for name in engines]
    sizes = {tuple(e.input_size) for e in opened}
    if len(sizes) != 1:
        from edgeattack.errors import ConfigError

        raise ConfigError(f"transfer needs engines of one input size, got {sorted(sizes)}")
    dataset = _dataset(data, split, seed, limit, opened[0].metadata, opened[0].metadata.labels)
    with progress_bar("black-box transfer", total=None) as advance:
        report = blackbox_transfer(
            opened,
            dataset,  # type: ignore[arg-type]
            specs,  # type: ignore[arg-type]
            budget=budget,
            quantize_inputs=quantize_inputs,
            seed=seed,
            artifact_dir=save_adversarials,
            progress=lambda stage, total, steps: advance(steps, total=total, description=stage),
        )
    directory = out if out.suffix != ".json" else out.parent
    for result in report.results[: len(engines)]:
        print_result(result)
    written = report.save(directory / f"transfer-blackbox-{dataset_file_label(dataset.name, dataset.split)}.json")
    print_transfer(report)
    typer.echo(f"result: {written}")
    _report_failures([(b, written) for r in report.results for b in r.blackbox if b.error])


def _report_failures(failures: list[tuple[object, Path]]) -> None:
    from edgeattack.errors import EngineError

    if not failures:
        return
    lines = []
    for item, path in failures:
        failed = item.failed_indices  # type: ignore[attr-defined]
        shown = ", ".join(str(i) for i in failed[:20]) + (" ..." if len(failed) > 20 else "")
        lines.append(
            f"{item.label}: the engine failed after {item.images_completed} of {item.images} images "  # type: ignore[attr-defined]
            f"({item.error}); the finished images' results are saved in {path}; not completed: dataset indices {shown}"  # type: ignore[attr-defined]
        )
    raise EngineError("; ".join(lines))


def print_result(result: object) -> None:
    """A rich table of one EvaluationResult (metrics named as in DESIGN.md)."""
    from rich.markup import escape
    from rich.table import Table

    from edgeattack.cli.options import console as make_console
    from edgeattack.results import EvaluationResult

    assert isinstance(result, EvaluationResult)
    engine = result.engine
    title = (
        f"{Path(str(engine.get('source'))).name} [{engine.get('precision')}] on {result.dataset.spec} "
        f"({result.dataset.n_images} images{selection_note(result.dataset.selection)}; "
        f"providers: {', '.join(engine.get('providers') or [])})"
    )
    table = Table(title=escape(title))
    for column in ("perturbation", "kind", "eps", "images", "clean_acc", "adv_acc", "asr", "fooling_rate", "linf_med", "l2_med"):
        table.add_column(column, justify="right" if column not in ("perturbation", "kind") else "left")
    table.add_row("clean", "-", "-", str(result.clean.n_images), _fmt(result.clean.clean_acc), "", "", "", "", "")
    for item in result.perturbations:
        m = item.metrics
        table.add_row(
            escape(item.label),
            item.kind,
            format_eps(item.eps, item.norm),
            str(item.images_evaluated),
            _fmt(m.clean_acc),
            _fmt(m.adv_acc),
            _asr(m),
            _fmt(m.fooling_rate),
            _fmt(item.norms.linf_median),
            _fmt(item.norms.l2_median),
        )
    console = make_console()
    console.print(table)
    for item in result.perturbations:
        if item.over_budget:
            console.print(escape(over_budget_note(item.label, item.norm, item.eps, item.delta_max_norm)))
        if item.breakdown is not None:
            console.print(escape(f"{item.label} per-attack breakdown:\n  " + "\n  ".join(item.breakdown.lines())))
    if result.blackbox:
        console.print(_blackbox_table(result))
    worst = result.blackbox_worst_case
    if worst is not None:
        console.print(
            escape(
                f"black-box worst case over {', '.join(worst.attacks)}: adv_acc {_fmt(worst.metrics.adv_acc)}, "
                f"asr {_asr(worst.metrics)} ({worst.images_completed} images)"
            )
        )
    lat = result.latency
    if lat is not None:
        console.print(
            f"latency (batch {lat.batch_size}, {lat.runs} runs): mean {lat.mean_ms:.2f} ms, median {lat.median_ms:.2f}, "
            f"p90 {lat.p90_ms:.2f}, p99 {lat.p99_ms:.2f}, cv {lat.cv:.1%}, throughput {lat.throughput_ips:.1f} img/s"
            + (" [unstable]" if lat.unstable else "")
        )
    for item in result.perturbations:
        if item.metrics.targeted_success is not None:
            console.print(
                f"{item.label}: targeted_success {item.metrics.targeted_success:.4f}"
                + (f" (target class {item.metrics.target})" if item.metrics.target is not None else " (per-image targets)")
            )
    mem = result.memory
    if mem is not None:
        delta = "n/a" if mem.peak_rss_delta_mib is None else f"{mem.peak_rss_delta_mib:.1f} MiB"
        console.print(f"peak RSS delta: {delta} ({mem.method}{'; ' + mem.reason if mem.reason else ''})")
    size = result.model_size.file_size_mb
    if size is not None:
        console.print(f"model file size: {size:.2f} MB (10^6 B)")


def _asr(metrics: object) -> str:
    """The asr cell: its value, or why it is undefined (no image correct when clean)."""
    value = metrics.asr  # type: ignore[attr-defined]
    if value is None and metrics.n_clean_correct == 0:  # type: ignore[attr-defined]
        return "undefined: 0 clean-correct"
    return _fmt(value)


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _blackbox_table(result: object) -> object:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title="black-box attacks (attacked: clean-correct, or not of the target, / images given; queries per "
        "attacked image; norms of successful adversarials)"
    )
    columns = ("attack", "attacked", "adv_acc", "asr", "success", "budget", "q_median", "q_mean", "q_max",
               "l2_med", "linf_med", "wall_s", "ms/query")
    for column in columns:
        table.add_column(column, justify="left" if column == "attack" else "right")
    for b in result.blackbox:  # type: ignore[attr-defined]
        per_query = b.oracle.get("per_query_ms")
        table.add_row(
            escape(b.label) + (" [targeted]" if b.targeted else ""),
            f"{b.images_attacked}/{b.images}"
            + (f" ({b.images_completed} completed)" if b.images_completed < b.images else ""),
            _fmt(b.metrics.adv_acc),
            _asr(b.metrics),
            _fmt(b.success_within_budget),
            str(b.budget),
            _fmt(b.queries.median),
            _fmt(b.queries.mean),
            _fmt(b.queries.max),
            _fmt(b.norms.l2_median),
            _fmt(b.norms.linf_median),
            f"{b.wall_s:.1f}",
            "n/a" if per_query is None else f"{per_query:.3f}",
        )
    return table


def print_transfer(report: object) -> None:
    """The asr transfer matrices of a black-box transfer run."""
    from rich.markup import escape
    from rich.table import Table

    from edgeattack.cli.options import console as make_console

    console = make_console()
    for matrix in report.matrices:  # type: ignore[attr-defined]
        table = Table(title=escape(f"transfer of {matrix.attack}: asr (rows: found on, columns: replayed on)"))
        table.add_column("found on \\ replayed on")
        for name in matrix.engines:
            table.add_column(escape(name), justify="right")
        for name, row in zip(matrix.engines, matrix.asr, strict=True):
            table.add_row(escape(name), *[_fmt(v) for v in row])
        console.print(table)


def print_blackbox_attacks() -> None:
    """Every black-box attack with its kind, norms and parameters (defaults)."""
    from rich.table import Table

    from edgeattack.attacks.blackbox.registry import RUN_KEYS, describe_attacks
    from edgeattack.cli.options import console as make_console

    table = Table(title=f"black-box attacks (--blackbox NAME[:key=value,...]; also {', '.join(RUN_KEYS)})")
    for column in ("name", "kind", "norms", "mode", "parameters (defaults)"):
        table.add_column(column)
    for name, info in describe_attacks().items():
        params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
        mode = "minimal (eps optional)" if info["minimal"] else "bounded"
        table.add_row(name, info["kind"], "/".join(info["norms"]), mode, params)
    make_console().print(table)
