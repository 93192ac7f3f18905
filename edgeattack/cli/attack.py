"""`edgeattack attack`: craft white-box perturbations on PyTorch source models, save an artifact."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeattack.budget import format_eps
from edgeattack.cli.options import (
    CheckpointOpt,
    DataOpt,
    LimitOpt,
    SeedOpt,
    SplitOpt,
    handle_errors,
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
        typer.Option("--method", "-m", help="fgsm, pgd, pgd-l2, mifgsm, uap (DeepFool), uap-sgd, desparsify."),
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

    Per-image attacks perturb each image of the split; UAPs are fitted on the split (fit on one
    split, e.g. val, and evaluate on another).
    """
    from edgeattack.attacks.whitebox import make_attack
    from edgeattack.attacks.whitebox.sources import load_source_models
    from edgeattack.data import PreprocessConfig, load_dataset

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
    params.setdefault("seed", seed)
    if quantize_inputs:
        params["quantize"] = True
    attack = make_attack(method, **params)
    sources = load_source_models(model, checkpoint=checkpoint)
    config = sources[0].config
    preprocess = PreprocessConfig(input_size=config.input_size, crop_pct=config.crop_pct, interpolation=config.interpolation)
    dataset = load_dataset(
        data, split=split, seed=seed, limit=limit, preprocess=preprocess, class_names=config.label_names
    )
    with progress_bar(f"{method} on {', '.join(model)}", total=len(dataset)) as advance:
        done = [0]

        def progress(count: int, total: int) -> None:
            advance(count - done[0])
            done[0] = count

        output = attack(sources if len(sources) > 1 else sources[0], dataset, target=target, progress=progress)
    artifact = output.to_artifact(dataset)
    written = artifact.save(out)
    summary = summary_text(output.summary(), targeted=target is not None)
    typer.echo(f"wrote {written}: {artifact.meta.kind} {method} on {dataset.spec} ({summary})")
    if method == "desparsify":
        echo_token_utilisation(artifact.meta.params)


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
