"""`edgeattack evaluate`: replay perturbation artifacts on a deployed engine and measure it.

Given an ONNX engine this imports no torch: it runs on a board with numpy and onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import (
    BatchOpt,
    DataOpt,
    LimitOpt,
    ProviderOpt,
    QuantizeInputsOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    handle_errors,
    progress_bar,
)


@handle_errors
def evaluate_command(
    engine: Annotated[
        str, typer.Option("--engine", "-e", help="Engine: an .onnx file, a TensorRT plan, or a zoo model name.")
    ],
    perturbations: Annotated[
        list[Path] | None,
        typer.Option("--perturbations", "-p", help="Perturbation artifact (.npz) to replay. Repeatable."),
    ] = None,
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
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory (or .json path) for the result; never overwritten.")
    ] = Path("results"),
) -> None:
    """Replay artifacts on ENGINE: clean_acc, adv_acc, asr, fooling_rate, norms, latency, memory, size."""
    from edgeattack.data import PreprocessConfig, load_dataset
    from edgeattack.engines import open_engine
    from edgeattack.evaluate import evaluate

    with open_engine(engine, providers=provider, intra_op_threads=threads) as opened:
        preprocess = PreprocessConfig(input_size=opened.input_size) if data != "digits" else None
        dataset = load_dataset(data, split=split, seed=seed, limit=limit, preprocess=preprocess)
        total_batches = -(-len(dataset) // batch_size) * (1 + len(perturbations or ()))
        with progress_bar(f"evaluating {opened.name}", total=total_batches + 1) as advance:
            result = evaluate(
                opened,
                dataset,
                [Path(p) for p in perturbations or ()],
                batch_size=batch_size,
                quantize_inputs=quantize_inputs,
                latency_runs=latency_runs,
                latency_seconds=latency_seconds,
                measure_latency=not no_latency,
                progress=lambda _total, steps: advance(steps),
            )
    target = out / f"eval-{Path(engine).stem}-{dataset.name}-{dataset.split}.json" if out.suffix != ".json" else out
    written = result.save(target)
    print_result(result)
    typer.echo(f"result: {written}")


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
        f"({result.dataset.n_images} images; providers: {', '.join(engine.get('providers') or [])})"
    )
    table = Table(title=escape(title))
    for column in ("perturbation", "kind", "eps", "images", "clean_acc", "adv_acc", "asr", "fooling_rate", "linf_med", "l2_med"):
        table.add_column(column, justify="right" if column not in ("perturbation", "kind") else "left")
    table.add_row("clean", "-", "-", str(result.clean.n_images), _fmt(result.clean.clean_acc), "", "", "", "", "")
    for item in result.perturbations:
        m = item.metrics
        table.add_row(
            item.label,
            item.kind,
            _fmt(item.eps),
            str(item.images_evaluated),
            _fmt(m.clean_acc),
            _fmt(m.adv_acc),
            _fmt(m.asr),
            _fmt(m.fooling_rate),
            _fmt(item.norms.linf_median),
            _fmt(item.norms.l2_median),
        )
    console = make_console()
    console.print(table)
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
        delta = "n/a" if mem.peak_rss_delta_mb is None else f"{mem.peak_rss_delta_mb:.1f} MB"
        console.print(f"peak RSS delta: {delta} ({mem.method}{'; ' + mem.reason if mem.reason else ''})")
    size = result.model_size.file_size_mb
    if size is not None:
        console.print(f"model file size: {size:.2f} MB")


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
