"""`edgeattack bundle` and `edgeattack merge`: carry an evaluation onto a board without torch, and back.

The board runs the bundle with `edgeattack evaluate --bundle run.tar` (numpy and a runtime only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import (
    BatchOpt,
    DataOpt,
    LimitOpt,
    QuantizeInputsOpt,
    SeedOpt,
    SplitOpt,
    handle_errors,
)


@handle_errors
def bundle_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle: a .tar or .tar.gz file.")],
    engine: Annotated[
        list[Path] | None,
        typer.Option(
            "--engine",
            "-e",
            help="Engine to run on the board as it is (.onnx, or a TensorRT plan built for that board). Repeatable.",
        ),
    ] = None,
    onnx_for_board: Annotated[
        list[Path] | None,
        typer.Option(
            "--onnx-for-board",
            help="ONNX file from which the board builds a TensorRT plan (--board-precision). Repeatable.",
        ),
    ] = None,
    board_precision: Annotated[
        str,
        typer.Option("--board-precision", help="Precision of the plans built on the board: fp32, fp16, int8, best."),
    ] = "fp16",
    perturbations: Annotated[
        list[Path] | None,
        typer.Option("--perturbations", "-p", help="Perturbation artifact (.npz) to replay. Repeatable."),
    ] = None,
    blackbox: Annotated[
        list[str] | None,
        typer.Option("--blackbox", "-B", help="Black-box attack NAME[:key=value,...] to run on the board. Repeatable."),
    ] = None,
    budget: Annotated[int, typer.Option("--budget", help="Per-image query budget of black-box attacks.", min=1)] = 1000,
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 64,
    quantize_inputs: QuantizeInputsOpt = False,
    latency_runs: Annotated[int, typer.Option(help="Minimum timed runs of the latency measurement.", min=1)] = 10,
    latency_seconds: Annotated[float, typer.Option(help="Minimum seconds of timed runs.", min=0.0)] = 3.0,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the latency measurement.")] = False,
    meter: Annotated[
        str | None, typer.Option("--meter", help="Energy meter the board should use (recorded in the spec).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle file.")] = False,
) -> None:
    """Pack engines, artifacts, the dataset slice and the evaluate settings into one tar for a board.

    On the board (numpy + onnxruntime, no torch): `edgeattack evaluate --bundle run.tar -o results/`;
    back here: `edgeattack merge results/ -o merged.json`.
    """
    from edgeattack.bundle import create_bundle
    from edgeattack.data import load_dataset, preprocess_for

    preprocess, labels = None, None
    if data != "digits":
        metadata = _first_metadata([*(engine or []), *(onnx_for_board or [])])
        if metadata is not None:
            preprocess = preprocess_for(metadata)
            labels = tuple(metadata.labels) or None  # type: ignore[attr-defined]
    dataset = load_dataset(data, split=split, seed=seed, limit=limit, preprocess=preprocess, class_names=labels)
    written = create_bundle(
        out,
        dataset=dataset,
        engines=engine or [],
        onnx_for_board=onnx_for_board or [],
        board_precision=board_precision,
        perturbations=perturbations or [],
        blackbox=blackbox or [],
        budget=budget,
        batch_size=batch_size,
        quantize_inputs=quantize_inputs,
        latency_runs=latency_runs,
        latency_seconds=latency_seconds,
        measure_latency=not no_latency,
        seed=seed,
        meter=meter,
        dataset_source=data,
        overwrite=force,
    )
    from edgeattack._io import sha256_file

    n_engines = len(engine or []) + len(onnx_for_board or [])
    typer.echo(
        f"bundle: {written} ({written.stat().st_size / 1e6:.2f} MB; {n_engines} engine(s), "
        f"{len(perturbations or [])} artifact(s), {len(blackbox or [])} black-box attack(s), {len(dataset)} images "
        f"of {dataset.spec})"
    )
    typer.echo(f"sha256: {sha256_file(written)}")
    typer.echo(f"on the board: edgeattack evaluate --bundle {written.name} -o results/")


def _first_metadata(engines: list[Path]) -> object:
    """The metadata of the first engine that has readable metadata here (its input size and labels)."""
    from edgeattack.bundle import engine_metadata

    for path in engines:
        if path.is_file():
            metadata = engine_metadata(path)
            if metadata is not None:
                return metadata
    return None


@handle_errors
def merge_command(
    sources: Annotated[list[Path], typer.Argument(help="Result files or directories written by evaluate --bundle.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Merged .json document, or a directory for copies plus the document.")
    ] = Path("bundle-results.json"),
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="The bundle file: every result must come from it (by sha256).")
    ] = None,
) -> None:
    """Collect a board's bundle results into one document, refusing duplicates and other bundles' results."""
    from edgeattack.bundle import load_merged_results, merge_results

    written = merge_results(sources, out, bundle=bundle)
    results = load_merged_results(written)
    typer.echo(f"merged {len(results)} result(s): {written}")
