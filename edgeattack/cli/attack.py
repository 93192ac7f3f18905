"""`edgeattack attack`: craft white-box perturbations on PyTorch source models, save an artifact."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.budget import format_eps
from edgeattack.cli.options import (
    CheckpointOpt,
    DataOpt,
    DeviceOpt,
    LimitOpt,
    ModelArgOpt,
    PrecisionOpt,
    PretrainedOpt,
    RandomWeightsOpt,
    SeedOpt,
    ShardOpt,
    SplitOpt,
    handle_errors,
    parse_model_args,
    progress_bar,
)
from edgeattack.errors import ConfigError


def parse_number(text: str) -> float:
    """A float, or a fraction such as 8/255."""
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"not a number: {text!r}") from exc


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; values become bool, int, float (fractions allowed) or stay strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param takes key=value, got {pair!r}")
        key = key.strip().replace("-", "_")
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            params[key] = lowered == "true"
        else:
            try:
                params[key] = int(value)
            except ValueError:
                try:
                    params[key] = parse_number(value)
                except ConfigError:
                    params[key] = value
    return params


@handle_errors
def attack_command(
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help="fgsm, pgd, pgd-l2, mifgsm, uap (DeepFool), uap-sgd, desparsify; robustness of record: apgd, "
            "apgd-t, fab, fab-t, square, autoattack, cw-l2, deepfool (their other hyper-parameters with --param, "
            "e.g. --param version=plus).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Perturbation artifact to write (.npz).")],
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            help="Source: zoo name, or a static-QDQ int8 .onnx (attacked through its fake-quant twin). "
            "Repeat for an ensemble.",
        ),
    ] = ["vit_tiny_digits"],  # noqa: B006 - typer needs a list default; it is never mutated
    eps: Annotated[str | None, typer.Option(help="Budget, e.g. 8/255 (L-inf) or 0.5 (L2).")] = None,
    steps: Annotated[int | None, typer.Option(help="Iterations (iterative attacks).", min=1)] = None,
    step_size: Annotated[str | None, typer.Option(help="Step size, e.g. 2/255.")] = None,
    target: Annotated[int | None, typer.Option(help="Target class (targeted attack).", min=0)] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Other hyper-parameter as key=value. Repeatable.")
    ] = None,
    data: DataOpt = "digits",
    split: SplitOpt = "test",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    random_weights: RandomWeightsOpt = False,
    model_arg: ModelArgOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            help="Images per forward/backward pass (recorded). Default: chosen to fit memory: on the CPU 256 "
            "for inputs up to 64x64 pixels and 32 above; on CUDA "
            "as many as fit half the free GPU memory at an estimated 64 MiB per 224x224 image and source "
            "model (scaled with the pixels), at most 256.",
        ),
    ] = None,
    shard: ShardOpt = None,
    quantize_inputs: Annotated[bool, typer.Option("--quantize-inputs", help="Round to the 1/255 grid.")] = False,
    variant: Annotated[
        str | None,
        typer.Option(
            help="desparsify only: single, ensemble, class-universal, universal or patch "
            "(default: single for one --model, ensemble for several)."
        ),
    ] = None,
    patch_size: Annotated[int | None, typer.Option(help="desparsify patch: side in pixels (default 8).", min=1)] = None,
    patch_location: Annotated[
        str | None,
        typer.Option(help="desparsify patch: top-left (default), top-right, bottom-left, bottom-right, center or ROW,COL."),
    ] = None,
) -> None:
    """Craft METHOD on the source model(s) over a split and save the perturbation artifact.

    Per-image attacks (fgsm, pgd, pgd-l2, mifgsm, apgd, apgd-t, fab, fab-t, square, autoattack, cw-l2,
    deepfool) stream: a few batches of images at a time are
    decoded, attacked and written, so memory does not grow with the split; random starts are drawn
    per image from (--seed, dataset index), so the batch size, chunking and sharding do not change
    a delta. --shard I/N crafts one contiguous block of the split (under torchrun each rank takes
    its own and writes OUT.rankI-of-N.npz); `edgeattack merge-artifacts` joins the shards. UAPs are fitted
    on the split (fit on one split, e.g. val, and evaluate on another) in memory, as is DeSparsify.
    autoattack keeps which sub-attack broke each image (`broken_by` in the artifact) and prints the
    counts; `edgeattack evaluate` replays that breakdown on an engine.
    """
    from edgeattack.attacks.whitebox import UniversalAttack, make_attack
    from edgeattack.attacks.whitebox.streaming import craft_per_image
    from edgeattack.data import load_dataset, preprocess_for
    from edgeattack.devices import Precision, device_record, precision_record

    params = parse_params(param or [])
    if method == "desparsify":
        params["variant"] = variant or ("ensemble" if len(model) > 1 else "single")
        if patch_size is not None:
            params["patch_size"] = patch_size
        if patch_location is not None:
            params["patch_location"] = patch_location
    elif variant is not None or patch_size is not None or patch_location is not None:
        raise ConfigError("--variant, --patch-size and --patch-location apply to --method desparsify only")
    if eps is not None:
        params["eps"] = parse_number(eps)
    if steps is not None:
        params["steps"] = steps
    if step_size is not None:
        params["step_size"] = parse_number(step_size)
    if "precision" in params:
        raise ConfigError("set the precision with --precision, not --param precision=...")
    if batch_size is not None and "batch_size" in params:
        raise ConfigError("give the batch size once: --batch-size or --param batch_size=..., not both")
    params.setdefault("seed", seed)
    if quantize_inputs:
        params["quantize"] = True
    policy = Precision(precision)
    the_shard, out = _shard_and_out(shard, out)
    torch_device = _device_for(device)
    policy.check_device(torch_device)
    params["precision"] = policy.name
    probe = make_attack(method, **params)  # validates the parameters before any model is built
    universal = isinstance(probe, UniversalAttack)
    if the_shard is not None and universal:
        raise ConfigError(f"--shard applies to per-image attacks; {method} fits one perturbation on all images")
    sources = _load_sources(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        random_weights=random_weights,
        model_args=parse_model_args(model_arg),
    )
    sources = [source.to(torch_device) for source in sources]
    config = sources[0].config
    if batch_size is None and "batch_size" not in params:
        params["batch_size"] = auto_batch_size(tuple(config.input_size), torch_device, models=len(sources))
    elif batch_size is not None:
        params["batch_size"] = batch_size
    attack = make_attack(method, **params)
    preprocess = preprocess_for(config)
    dataset = load_dataset(
        data, split=split, seed=seed, limit=limit, preprocess=preprocess, class_names=config.label_names
    )
    if the_shard is not None:
        dataset = dataset.subset(the_shard.positions(len(dataset)))
    record: dict[str, Any] = {**device_record(torch_device), **precision_record(policy, torch_device)}
    if the_shard is not None:
        record["shard"] = the_shard.text
    victims = sources if len(sources) > 1 else sources[0]
    streamed = not universal and method != "desparsify"
    with progress_bar(f"{method} on {', '.join(model)}", total=len(dataset)) as advance:
        done = [0]

        def progress(count: int, total: int) -> None:
            advance(count - done[0])
            done[0] = count

        if streamed:
            written, summary = craft_per_image(attack, victims, dataset, out, target=target, progress=progress, params=record)
            kind = "per_image"
        else:
            output = attack(victims, dataset, target=target, progress=progress)
    if not streamed:
        artifact = output.to_artifact(dataset)
        artifact = dataclasses.replace(
            artifact, meta=dataclasses.replace(artifact.meta, params={**artifact.meta.params, **record})
        )
        written = artifact.save(out)
        summary = output.summary()
        kind = artifact.meta.kind
    where = f"{torch_device}, {policy.name}, batch {attack.batch_size}" + (
        f", shard {the_shard.text}" if the_shard is not None else ""
    )
    text = summary_text(summary, targeted=target is not None)
    typer.echo(f"wrote {written}: {kind} {method} on {dataset.spec} [{where}] ({text})")
    if method == "desparsify":
        echo_token_utilisation(artifact.meta.params)


def auto_batch_size(input_size: tuple[int, ...], device: str, *, models: int = 1) -> int:
    """The default crafting batch (see `--batch-size`): by input pixels on the CPU, by free memory on CUDA."""
    pixels = int(input_size[-1]) * int(input_size[-2])
    if not device.startswith("cuda"):
        return MAX_AUTO_BATCH if pixels <= 64 * 64 else CPU_LARGE_BATCH
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_image = CUDA_BYTES_PER_224_IMAGE * pixels / (224 * 224) * max(1, models)
    return int(max(1, min(MAX_AUTO_BATCH, free * 0.5 // per_image)))


MAX_AUTO_BATCH = 256
CPU_LARGE_BATCH = 32
CUDA_BYTES_PER_224_IMAGE = 64 * 2**20
"""Cost model of `auto_batch_size` on CUDA: activations kept for one input gradient, per image and
source model, at 224x224: an estimate with a margin for DeiT-B, not yet measured on a GPU."""


def _device_for(spec: str) -> str:
    """`resolve_device(spec)`; under torchrun, "auto" on a GPU machine is this rank's LOCAL_RANK GPU."""
    from edgeattack.devices import resolve_device
    from edgeattack.distributed import dist_env

    resolved = resolve_device(spec)
    env = dist_env()
    if env is not None and spec.strip().lower() == "auto" and resolved.startswith("cuda"):
        import torch

        return resolve_device(f"cuda:{env.local_rank % torch.cuda.device_count()}")
    return resolved


def rank_out_path(out: Path, rank: int, world: int) -> Path:
    """OUT of one torchrun rank: `pgd.npz` -> `pgd.rank0-of-4.npz`."""
    name = out.name[: -len(".npz")] if out.name.endswith(".npz") else out.name
    return out.with_name(f"{name}.rank{rank}-of-{world}.npz")


def _shard_and_out(text: str | None, out: Path) -> tuple[Any, Path]:
    """The shard to craft (--shard, else torchrun's rank) and the file it goes to."""
    from edgeattack.distributed import Shard

    if text is not None:
        return Shard.parse(text), out
    shard = Shard.from_env()
    if shard is None:
        return None, out
    return shard, rank_out_path(out, shard.index, shard.count)


def _load_sources(
    specs: list[str], *, checkpoint: Path | None, pretrained: bool, random_weights: bool, model_args: dict[str, Any]
) -> list[Any]:
    """`load_source_models` with the weight flags and the --model-arg builder arguments."""
    from edgeattack.attacks.whitebox.sources import load_source_models

    return load_source_models(
        specs, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights, model_args=model_args
    )


UNDEFINED_BECAUSE = {
    "asr": "no image is classified correctly when clean",
    "success_rate": "no image the attack could succeed on (none correct when clean, or all of the target class)",
    "targeted_success": "every image is already of the target class",
}
"""Why a rate of a craft summary is undefined (its denominator is empty)."""


def summary_text(summary: dict[str, Any], *, targeted: bool) -> str:
    """`key=value, ...` of a craft summary: rates to 4 decimals, an undefined rate with its reason."""
    parts = []
    for key, value in summary.items():
        if key == "method" or (key == "targeted_success" and not targeted):
            continue
        if value is None:
            if key in UNDEFINED_BECAUSE:
                parts.append(f"{key} undefined: {UNDEFINED_BECAUSE[key]}")
            continue
        if key == "linf_max":
            parts.append(f"{key}={format_eps(value)}")
        elif isinstance(value, dict):
            parts.append(f"{key}: " + " ".join(f"{name}={count}" for name, count in value.items()))
        else:
            parts.append(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def echo_token_utilisation(params: dict[str, Any]) -> None:
    """The TUR and predictions DeSparsify measured, per source model and (for ensembles) on average."""

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = params.get("per_model", [])
    for row in rows:
        typer.echo(
            f"  {row['model']} ({row['mechanism']}): tur {fmt(row['clean_tur'])} -> {fmt(row['adv_tur'])}, "
            f"accuracy {fmt(row['clean_acc'])} -> {fmt(row['adv_acc'])}, "
            f"correct predictions kept {fmt(row['prediction_kept'])}"
        )
    if len(rows) > 1:
        typer.echo(
            f"  mean over models: tur {fmt(params.get('clean_tur'))} -> {fmt(params.get('adv_tur'))}, "
            f"correct predictions kept {fmt(params.get('prediction_kept'))}"
        )
