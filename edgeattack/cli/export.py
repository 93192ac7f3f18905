"""`edgeattack export`: a zoo model -> an ONNX engine (fp32, fp16, int8 QDQ or dynamic), parity-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import CheckpointOpt, SeedOpt, handle_errors


@handle_errors
def export_command(
    model: Annotated[str, typer.Argument(help="Zoo model name (shipped weights, or --checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Engine file to write (.onnx).")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp32",
    quantization: Annotated[
        str, typer.Option(help="int8 only: 'static' (QDQ, calibrated) or 'dynamic' (batch-dependent).")
    ] = "static",
    preset: Annotated[str, typer.Option(help="Static QDQ preset: 'cpu' (MatMul/Gemm only) or 'full'.")] = "cpu",
    per_channel: Annotated[bool, typer.Option(help="Per-channel weight scales (static int8).")] = True,
    calib_data: Annotated[str, typer.Option(help="Calibration dataset: 'digits' or a folder.")] = "digits",
    calib_split: Annotated[str, typer.Option(help="Calibration split (not the one you evaluate on).")] = "train",
    calib_images: Annotated[int, typer.Option(help="Calibration images (a seeded random subset of the split).", min=1)] = 128,
    parity_split: Annotated[str, typer.Option(help="Split of the real images used for the parity check.")] = "test",
    parity_images: Annotated[int, typer.Option(help="Images for the parity check (0 skips it).", min=0)] = 256,
    token_cap: Annotated[
        str | None,
        typer.Option(
            "--token-cap",
            help="Token-sparse models: the availability defence, at most N tokens per block. 'auto' or 'auto:Q' "
            "sets it per block to the Q quantile (default 0.95) of clean counts on --cap-split; or N / N,N,...",
        ),
    ] = None,
    cap_split: Annotated[str, typer.Option(help="Clean split that sets an automatic token cap.")] = "val",
    checkpoint: CheckpointOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Export MODEL to an ONNX engine with its metadata, then check parity against PyTorch on real images."""
    from edgeattack.data import PreprocessConfig, load_dataset
    from edgeattack.export.pipeline import export_engine
    from edgeattack.zoo.factory import create_model

    net = create_model(model, checkpoint=checkpoint)
    preprocess = PreprocessConfig(
        input_size=net.config.input_size, crop_pct=net.config.crop_pct, interpolation=net.config.interpolation
    )

    def dataset(data: str, split: str, limit: int | None, shuffle: bool = False) -> object:
        return load_dataset(data, split=split, seed=seed, limit=limit, preprocess=preprocess, shuffle=shuffle)

    if token_cap is not None:
        from edgeattack.sparsity.defence import parse_token_cap, token_cap_from_clean, with_token_cap

        mode, value = parse_token_cap(token_cap)
        caps = (
            token_cap_from_clean(net, dataset(calib_data, cap_split, None), quantile=float(value))  # type: ignore[arg-type]
            if mode == "auto"
            else value
        )
        net = with_token_cap(net, caps)
        typer.echo(f"token cap per block: {list(net.net.token_cap)}")

    needs_calibration = precision == "int8" and quantization == "static"
    outcome = export_engine(
        net,
        out,
        precision=precision,
        quantization=quantization,
        preset=preset,
        per_channel=per_channel,
        calibration=(
            # digits is small: the quantizer draws its seeded subset; a folder loads only that many
            dataset(calib_data, calib_split, None if calib_data == "digits" else calib_images, shuffle=True)
            if needs_calibration
            else None
        ),  # type: ignore[arg-type]
        calibration_images=calib_images,
        parity_data=dataset(calib_data, parity_split, parity_images) if parity_images else None,  # type: ignore[arg-type]
        parity_images=parity_images,
    )
    size_mb = outcome.path.stat().st_size / 2**20
    recipe = outcome.metadata.quantization.get("method", "") if outcome.metadata.quantization else ""
    typer.echo(f"wrote {outcome.path} ({precision}{' ' + recipe if recipe else ''}, {size_mb:.2f} MB)")
    if outcome.parity is not None:
        typer.echo(outcome.parity.summary())
