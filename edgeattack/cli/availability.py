"""`edgeattack availability`: clean vs perturbed inputs on a token-sparse engine (DeSparsify's tables).

Needs only numpy and a runtime: an ONNX export of an ATS / A-ViT / AdaViT model carries a
`token_counts` output and its architecture in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack._io import dataset_file_label, file_label
from edgeattack.budget import over_budget_note, selection_note
from edgeattack.cli.options import (
    AllowOverBudgetOpt,
    DataOpt,
    LimitOpt,
    ProviderOpt,
    SeedOpt,
    SplitOpt,
    ThreadsOpt,
    handle_errors,
    progress_bar,
)


@handle_errors
def availability_command(
    engine: Annotated[str, typer.Option("--engine", "-e", help="A token-sparse engine (.onnx with token_counts).")],
    perturbations: Annotated[
        list[Path] | None,
        typer.Option("--perturbations", "-p", help="Perturbation artifact (.npz), e.g. from DeSparsify. Repeatable."),
    ] = None,
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    provider: ProviderOpt = None,
    threads: ThreadsOpt = 1,
    latency_images: Annotated[int, typer.Option(help="Images timed one by one (interleaved passes).", min=0)] = 64,
    latency_batch: Annotated[int, typer.Option(help="Batch size of the latency measurement.", min=1)] = 1,
    latency_rounds: Annotated[int, typer.Option(help="Timed runs per image (their median counts).", min=1)] = 5,
    meter: Annotated[
        str | None,
        typer.Option(help="Energy meter: auto, nvml, jetson, rapl or none (the labelled estimate is always given)."),
    ] = "auto",
    device: Annotated[
        str | None,
        typer.Option(
            help="Where the engine runs, for --meter auto: cpu, cuda, cuda:N or jetson. Default: the device of the "
            "providers the engine really uses (CUDA/TensorRT -> the GPU's meter, CPU -> RAPL)."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory (or .json path) for the result; never overwritten.")
    ] = Path("results"),
    allow_over_budget: AllowOverBudgetOpt = False,
) -> None:
    """Accuracy, TUR, GFLOPs, latency, memory and energy, clean vs each perturbation, with ratios."""
    from edgeattack.availability import evaluate_availability
    from edgeattack.data import load_dataset, preprocess_for
    from edgeattack.engines import open_engine

    with open_engine(engine, providers=provider, intra_op_threads=threads) as opened:
        preprocess = preprocess_for(opened.metadata) if data != "digits" else None
        dataset = load_dataset(
            data, split=split, seed=seed, limit=limit, preprocess=preprocess, class_names=opened.metadata.labels
        )
        with progress_bar(f"availability of {opened.name}") as advance:
            result = evaluate_availability(
                opened,
                dataset,
                [Path(p) for p in perturbations or ()],
                latency_images=latency_images,
                latency_batch=latency_batch,
                latency_rounds=latency_rounds,
                meter=None if meter in (None, "none") else meter,
                device=device,
                progress=lambda total, steps: advance(steps, total=total),
                allow_over_budget=allow_over_budget,
            )
    name = f"availability-{file_label(Path(engine).stem)}-{dataset_file_label(dataset.name, dataset.split)}.json"
    target = out if out.suffix == ".json" else out / name
    written = result.save(target)
    print_availability(result)
    typer.echo(f"result: {written}")


def print_availability(result: object) -> None:
    """The DeSparsify-style table of an AvailabilityResult: measured and estimated energy in separate columns."""
    from rich.markup import escape
    from rich.table import Table

    from edgeattack.availability import AvailabilityResult
    from edgeattack.cli.options import console as make_console

    assert isinstance(result, AvailabilityResult)
    info = result.token_sparsity or {}
    title = (
        f"{Path(str(result.engine.get('source'))).name} ({info.get('mechanism', 'not token-sparse')}) on "
        f"{result.dataset['spec']}{selection_note(str(result.dataset.get('selection') or ''))}"
    )
    table = Table(title=escape(title))
    columns = ("pass", "images", "accuracy", "kept", "tur", "gflops", "lat_med_ms", "lat_mean_ms", "measured_mJ",
               "estimate_mJ*", "x latency", "x gflops", "tur gap closed")
    for column in columns:
        table.add_column(column, justify="left" if column == "pass" else "right")
    for p in result.passes:
        table.add_row(
            escape(p.label),
            str(p.images) + (f" (-{p.skipped})" if p.skipped else ""),
            _fmt(p.accuracy),
            _fmt(p.prediction_kept),
            _fmt(p.tur),
            _fmt(p.gflops, 5),
            _fmt(None if p.latency is None else p.latency.median_ms, 3),
            _fmt(None if p.latency is None else p.latency.mean_ms, 3),
            _fmt(p.energy.get("measured_mj"), 4),
            _fmt(p.energy.get("estimate_mj"), 4),
            _fmt(p.ratios.get("latency_median"), 3),
            _fmt(p.ratios.get("gflops"), 3),
            _fmt(p.gap_closed.get("tur"), 3),
        )
    console = make_console()
    console.print(table)
    if result.tur_reason:
        console.print(f"tur: null ({result.tur_reason})")
    for line in energy_lines(result):
        console.print(escape(line))
    lat = result.settings
    console.print(
        f"latency: batch {lat['latency_batch']}, {lat['latency_images']} images x {lat['latency_rounds']} rounds, "
        "passes interleaved; ratios are adversarial / clean on the same images"
    )
    for p in result.passes:
        if p.over_budget:
            console.print(escape(over_budget_note(p.label, p.norm, p.eps, p.delta_max_norm)))
    if any(p.skipped for p in result.passes):
        console.print("images (-n): a per-image artifact covering part of the split; its ratios use the clean pass "
                      "over its own images (clean_reference in the JSON)")


def energy_lines(result: object) -> list[str]:
    """What the energy columns are: the measurement (value, meter and basis, or null with the reason) and the estimate."""
    from edgeattack.availability import AvailabilityResult

    assert isinstance(result, AvailabilityResult)
    lines = []
    device = (result.settings.get("energy_device") or {}).get("device")
    where = f" on {device}" if device else ""
    reasons = {p.energy.get("reason") for p in result.passes}
    if all(p.energy.get("measured_mj") is None for p in result.passes) and len(reasons) == 1:
        lines.append(f"measured energy: null ({reasons.pop() or 'not measured'})")
    else:
        for p in result.passes:
            energy = p.energy
            if energy.get("measured_mj") is not None:
                lines.append(
                    f"measured energy ({p.label}): {energy['measured_mj']:.4g} mJ/image by the {energy.get('meter')} "
                    f"meter{where} ({energy.get('measured_basis')})"
                )
            else:
                lines.append(f"measured energy ({p.label}): null ({energy.get('reason') or 'not measured'})")
    method = next((p.energy.get("estimate_method") for p in result.passes if p.energy.get("estimate_method")), None)
    lines.append(f"* estimate_mJ: {method or 'n/a (no GFLOPs: the engine reports no token counts)'}")
    return lines


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
