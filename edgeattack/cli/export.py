"""`edgeattack export`: a zoo model -> an ONNX engine (fp32, fp16, int8 QDQ or dynamic), parity-checked,
or (`--target tensorrt`) a TensorRT plan built from that ONNX, with its `<plan>.json` sidecar."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgeattack.cli.options import CheckpointOpt, SeedOpt, handle_errors
from edgeattack.errors import ConfigError


@handle_errors
def export_command(
    model: Annotated[str, typer.Argument(help="Zoo model name (shipped weights, or --checkpoint).")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Engine file to write (.onnx; .plan/.engine/.trt for --target tensorrt)."),
    ],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp32",
    quantization: Annotated[
        str, typer.Option(help="int8 only: 'static' (QDQ, calibrated) or 'dynamic' (batch-dependent).")
    ] = "static",
    preset: Annotated[
        str | None,
        typer.Option(
            help="Static QDQ preset: 'cpu' (MatMul/Gemm only; default for ONNX) or 'full' (every op, symmetric int8; "
            "what TensorRT needs, the default for --target tensorrt)."
        ),
    ] = None,
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
    target: Annotated[
        str, typer.Option(help="'onnx' (ONNX Runtime) or 'tensorrt' (a plan; needs TensorRT and a GPU).")
    ] = "onnx",
    sparse: Annotated[
        bool, typer.Option("--sparse", help="TensorRT: 2:4 sparse kernels (SPARSE_WEIGHTS) for 2:4 models.")
    ] = False,
    opt_batch: Annotated[
        int | None, typer.Option("--opt-batch", help="TensorRT: batch size to tune for (default: --max-batch).", min=1)
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="TensorRT: largest batch the plan accepts (default 64).", min=1)
    ] = None,
    workspace_mib: Annotated[
        int, typer.Option("--workspace-mib", help="TensorRT: builder scratch memory limit in MiB (2^20 B).", min=1)
    ] = 1024,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            "--timing-cache", help="TensorRT: timing cache file, read if present and updated after the build."
        ),
    ] = None,
    keep_onnx: Annotated[
        bool, typer.Option("--keep-onnx", help="TensorRT: keep the intermediate ONNX next to the plan (OUT.onnx).")
    ] = False,
    checkpoint: CheckpointOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Export MODEL to an ONNX engine with its metadata, then check parity against PyTorch on real images.

    With --target tensorrt, the ONNX (int8: explicit Q/DQ with the 'full' preset) is built into a TensorRT plan
    on this machine's GPU, with a <plan>.json sidecar, and the plan is compared with the ONNX on real images.
    """
    if target not in ("onnx", "tensorrt"):
        raise ConfigError(f"unknown export target {target!r}; choose onnx or tensorrt")
    trt_only = {
        "--sparse": sparse,
        "--opt-batch": opt_batch is not None,
        "--max-batch": max_batch is not None,
        "--timing-cache": timing_cache is not None,
        "--keep-onnx": keep_onnx,
    }
    if target == "onnx" and any(trt_only.values()):
        raise ConfigError(f"{', '.join(k for k, v in trt_only.items() if v)} only apply with --target tensorrt")
    build_env = None
    if target == "tensorrt":
        from edgeattack.export.tensorrt_build import PLAN_SUFFIXES, check_build_environment, onnx_precision_for

        if out.suffix.lower() not in PLAN_SUFFIXES:
            raise ConfigError(f"a TensorRT plan path must end in {'/'.join(PLAN_SUFFIXES)}, got {out}")
        if precision == "int8" and quantization != "static":
            raise ConfigError("TensorRT int8 needs explicit Q/DQ: --quantization static (dynamic int8 cannot be built)")
        if precision == "int8" and preset not in (None, "full"):
            raise ConfigError(f"TensorRT int8 needs the 'full' Q/DQ preset (symmetric int8), not {preset!r}")
        preset = "full"
        build_env = check_build_environment()  # no TensorRT/GPU: fail before the export, naming what is missing
        typer.echo(
            f"TensorRT {build_env['version']} on {build_env['device']['name']} "
            f"(compute {build_env['device']['compute_capability']})"
        )
    preset = preset or "cpu"

    from edgeattack.data import PreprocessConfig, load_dataset
    from edgeattack.export.pipeline import export_engine
    from edgeattack.zoo.factory import create_model

    net = create_model(model, checkpoint=checkpoint)
    preprocess = PreprocessConfig(
        input_size=net.config.input_size, crop_pct=net.config.crop_pct, interpolation=net.config.interpolation
    )

    def dataset(data: str, split: str, limit: int | None, shuffle: bool = False) -> object:
        return load_dataset(
            data, split=split, seed=seed, limit=limit, preprocess=preprocess, shuffle=shuffle,
            class_names=net.config.label_names,
        )

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
    onnx_out = out
    workdir = None
    if build_env is not None:
        if keep_onnx:
            onnx_out = out.with_suffix(".onnx")
        else:
            workdir = tempfile.TemporaryDirectory(prefix="edgeattack-trt-")
            onnx_out = Path(workdir.name) / f"{out.stem}.onnx"
    onnx_precision = onnx_precision_for(precision, build_env) if build_env is not None else precision
    outcome = export_engine(
        net,
        onnx_out,
        precision=onnx_precision,
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
    size_mb = outcome.path.stat().st_size / 1e6
    recipe = outcome.metadata.quantization.get("method", "") if outcome.metadata.quantization else ""
    what = "exported the intermediate ONNX" if workdir is not None else "wrote"
    typer.echo(f"{what} {outcome.path} ({onnx_precision}{' ' + recipe if recipe else ''}, {size_mb:.2f} MB)")
    if outcome.parity is not None:
        typer.echo(outcome.parity.summary())
    if build_env is None:
        return
    parity_set = dataset(calib_data, parity_split, parity_images) if parity_images else None
    try:
        _build_plan(
            outcome.path,
            out,
            precision=precision,
            sparse=sparse,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mib=workspace_mib,
            timing_cache=timing_cache,
            parity_images=parity_set.images if parity_set is not None else None,  # type: ignore[attr-defined]
        )
    finally:
        if workdir is not None:
            workdir.cleanup()


def _build_plan(
    onnx_path: Path,
    out: Path,
    *,
    precision: str,
    sparse: bool,
    opt_batch: int | None,
    max_batch: int | None,
    workspace_mib: int,
    timing_cache: Path | None,
    parity_images: object | None,
) -> None:
    """Build the plan from the exported ONNX, report it, and compare it with the ONNX on real images."""
    from edgeattack.engines.tensorrt_engine import read_sidecar
    from edgeattack.export.tensorrt_build import (
        DEFAULT_MAX_BATCH,
        build_tensorrt_engine,
        compare_plan_with_onnx,
        record_plan_parity,
    )

    build_tensorrt_engine(
        onnx_path,
        out,
        precision=precision,
        sparse=sparse,
        opt_batch=opt_batch,
        max_batch=max_batch or DEFAULT_MAX_BATCH,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    _, build = read_sidecar(out)
    profile = build["profile"]
    typer.echo(
        f"wrote {out} (TensorRT {build['version']} {precision}{' 2:4 sparse' if sparse else ''}, batch "
        f"{profile['min_batch']}..{profile['max_batch']} opt {profile['opt_batch']}, "
        f"{build['plan_bytes'] / 1e6:.2f} MB) and {out.name}.json"
    )
    report = build.get("sparse_report")
    if report is not None:
        typer.echo(
            f"sparse kernels: {len(report['picked'])} of {len(report['eligible'])} eligible layers "
            f"({report.get('onnx_2to4_weights')} 2:4 weights in the ONNX)"
        )
    if parity_images is not None:
        parity = compare_plan_with_onnx(out, onnx_path, parity_images)
        record_plan_parity(out, parity)
        typer.echo(
            f"plan vs ONNX on {parity['images']} images: top-1 agreement {parity['top1_agreement']:.2%}, "
            f"max |logit diff| {parity['max_abs_logit_diff']:.4g}"
        )
