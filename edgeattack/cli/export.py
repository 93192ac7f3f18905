"""`edgeattack export`: a zoo model -> an ONNX engine (fp32, fp16, int8 QDQ or dynamic), parity-checked,
or (`--target tensorrt`) a TensorRT plan built from that ONNX, with its `<plan>.json` sidecar.

Parity and calibration use images of the model's own input size: the data given, the model's own
dataset (digits for the digits models), or, for parity only, seeded synthetic images of its size.
Everything is written into a hidden folder beside the output and moved into place only when the
export, the parity check and (TensorRT) the build all succeeded: a failure leaves no file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.cli.options import (
    CheckpointOpt,
    ModelArgOpt,
    PretrainedOpt,
    RandomWeightsOpt,
    SeedOpt,
    handle_errors,
    parse_model_args,
)
from edgeattack.errors import ConfigError


@handle_errors
def export_command(
    model: Annotated[
        str, typer.Argument(help="Zoo model name (shipped weights, or --pretrained / --checkpoint / --random-weights).")
    ],
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
    calib_data: Annotated[
        str | None,
        typer.Option(
            help="Calibration images for static int8 (and an automatic --token-cap): 'digits' or an ImageFolder "
            "(default: the model's own dataset, digits for the digits models; needed for the others)."
        ),
    ] = None,
    calib_split: Annotated[str, typer.Option(help="Calibration split (not the one you evaluate on).")] = "train",
    calib_images: Annotated[int, typer.Option(help="Calibration images (a seeded random subset of the split).", min=1)] = 128,
    parity_data: Annotated[
        str | None,
        typer.Option(
            help="Images for the parity check: 'digits' or an ImageFolder, resized to the model's input "
            "(default: --calib-data, else the model's own dataset, else seeded synthetic images of its size)."
        ),
    ] = None,
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
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    model_arg: ModelArgOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Export MODEL to an ONNX engine with its metadata, then check parity against PyTorch on images of its size.

    With --target tensorrt, the ONNX (int8: explicit Q/DQ with the 'full' preset) is built into a TensorRT plan
    on this machine's GPU, with a <plan>.json sidecar, and the plan is compared with the ONNX on the same images.
    Nothing is left at --out when any step fails.
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

    from edgeattack.data import load_dataset, preprocess_for
    from edgeattack.export.pipeline import export_engine
    from edgeattack.zoo.factory import create_model

    net = create_model(
        model,
        checkpoint=checkpoint,
        pretrained=True if pretrained else None,
        random_weights=random_weights,
        **parse_model_args(model_arg),
    )
    typer.echo(f"{model}: weights {net.weights_source}")
    preprocess = preprocess_for(net.config)
    own_data = "digits" if net.config.dataset == "digits" else None

    def dataset(data: str, split: str, limit: int | None, *, what: str, shuffle: bool = False) -> Any:
        loaded = load_dataset(
            data, split=split, seed=seed, limit=limit, preprocess=preprocess, shuffle=shuffle,
            class_names=net.config.label_names,
        )
        return _fitting(loaded, net, data, what=what)

    def calibration_data(what: str, *, otherwise: str = "") -> str:
        data = calib_data or own_data
        if data is None:
            raise ConfigError(
                f"{what} of {model} needs calibration images of its kind ({_size(net)}): pass --calib-data DIR, "
                f"an ImageFolder (root/<class>/<image> or root/<split>/<class>/<image>){otherwise}"
            )
        return data

    if token_cap is not None:
        from edgeattack.sparsity.defence import parse_token_cap, token_cap_from_clean, with_token_cap

        mode, value = parse_token_cap(token_cap)
        caps = (
            token_cap_from_clean(
                net, dataset(calibration_data("an automatic --token-cap"), cap_split, None, what="--calib-data"),
                quantile=float(value),
            )
            if mode == "auto"
            else value
        )
        net = with_token_cap(net, caps)
        typer.echo(f"token cap per block: {list(net.net.token_cap)}")

    needs_calibration = precision == "int8" and quantization == "static"
    calibration = None
    if needs_calibration:
        data = calibration_data("static int8", otherwise=", or --quantization dynamic")
        # digits is small: the quantizer draws its seeded subset; a folder loads only that many
        calibration = dataset(
            data, calib_split, None if data == "digits" else calib_images, what="--calib-data", shuffle=True
        )
    parity_set = None
    if parity_images:
        source = "--parity-data" if parity_data else ("--calib-data" if calib_data else "the model's dataset")
        parity_set = _parity_images(
            net, parity_data or calib_data or own_data, dataset, split=parity_split, count=parity_images, seed=seed,
            what=source,
        )
    onnx_precision = onnx_precision_for(precision, build_env) if build_env is not None else precision
    with _staging(out) as stage:
        onnx_out = stage / (out.with_suffix(".onnx").name if build_env is not None else out.name)
        outcome = export_engine(
            net,
            onnx_out,
            precision=onnx_precision,
            quantization=quantization,
            preset=preset,
            per_channel=per_channel,
            calibration=calibration,
            calibration_images=calib_images,
            parity_data=parity_set,
            parity_images=parity_images,
        )
        size_mb = outcome.path.stat().st_size / 1e6
        recipe = outcome.metadata.quantization.get("method", "") if outcome.metadata.quantization else ""
        if outcome.parity is not None:
            typer.echo(outcome.parity.summary())
        if build_env is None:
            _publish(stage, out, [out.name])
            typer.echo(f"wrote {out} ({onnx_precision}{' ' + recipe if recipe else ''}, {size_mb:.2f} MB)")
            return
        typer.echo(f"exported the intermediate ONNX ({onnx_precision}{' ' + recipe if recipe else ''}, {size_mb:.2f} MB)")
        from edgeattack.export.metadata import sidecar_path

        _build_plan(
            outcome.path,
            stage / out.name,
            precision=precision,
            sparse=sparse,
            opt_batch=opt_batch,
            max_batch=max_batch,
            workspace_mib=workspace_mib,
            timing_cache=timing_cache,
            parity_images=parity_set.images if parity_set is not None else None,
        )
        names = ([onnx_out.name] if keep_onnx else []) + [sidecar_path(out).name, out.name]
        _publish(stage, out, names)
        kept = f", kept {out.with_suffix('.onnx')}" if keep_onnx else ""
        typer.echo(f"wrote {out} and {sidecar_path(out).name}{kept}")


def _size(net: Any) -> str:
    channels, height, width = net.config.input_size
    return f"{channels}x{height}x{width} images"


def _fitting(dataset: Any, net: Any, data: str, *, what: str) -> Any:
    """`dataset` when its images have the model's input size; a ConfigError saying what to pass otherwise."""
    if tuple(dataset.input_shape) != tuple(net.config.input_size):
        shape = "x".join(str(d) for d in dataset.input_shape)
        raise ConfigError(
            f"{what} {data} gives {shape} images but {net.model_name} takes {_size(net)}: "
            "pass an ImageFolder (it is resized to the model's input)"
        )
    return dataset


def _parity_images(
    net: Any, data: str | None, dataset: Any, *, split: str, count: int, seed: int, what: str
) -> Any:
    """Images of the model's size for the parity check: `data` (from `what`), or seeded synthetic ones (said so)."""
    if data is not None:
        return dataset(data, split, count, what=what)
    from edgeattack.export.parity import synthetic_images

    typer.echo(
        f"parity on {count} seeded synthetic {_size(net)} (noise and smooth patterns, seed {seed}): "
        "no images of the model's kind given (--parity-data DIR checks on real ones)"
    )
    return synthetic_images(net.config.input_size, count, seed=seed)


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to write the outputs in under their final names; removed in the end.

    Files published from it (`_publish`) are moved into place; whatever is left, after a failure
    or an interruption, goes with the folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path, names: list[str]) -> None:
    """Move the staged files `names` next to `out`, in order (the main file last), each atomically."""
    for name in names:
        os.replace(stage / name, out.parent / name)


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
        f"built {out.name} (TensorRT {build['version']} {precision}{' 2:4 sparse' if sparse else ''}, batch "
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
