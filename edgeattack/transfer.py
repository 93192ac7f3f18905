"""The paper's transfer protocol over families: craft on each model, replay on every model's engine.

Sources are PyTorch zoo models (the int8 family through the fake-quant twin of its static-QDQ
engine); targets are the deployed ONNX engines of the same models. The result is a matrix of
`asr` (per-engine denominator) and `adv_acc`, source by target, written as JSON and Markdown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json
from edgeattack.data import load_digits_dataset
from edgeattack.errors import ConfigError

logger = logging.getLogger(__name__)

INT8 = "int8-qdq"
"""Pseudo-name of the int8 family: the original model's static-QDQ engine, attacked via its twin."""


@dataclass(frozen=True)
class TransferConfig:
    """PGD settings of the matrix; 2/255 by default so that differences between families show."""

    base_model: str = "vit_tiny_digits"
    split: str = "test"
    calib_split: str = "train"
    limit: int | None = None
    eps: float = 2 / 255
    steps: int = 10
    step_size: float | None = None
    seed: int = 0


@dataclass
class TransferSummary:
    """Engines and artifacts per model, clean accuracy per engine, and the matrix source -> target."""

    models: list[str]
    engines: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    clean_acc: dict[str, float | None] = field(default_factory=dict)
    matrix: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    wall_s: float = 0.0
    markdown_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "engines": self.engines,
            "artifacts": self.artifacts,
            "clean_acc": self.clean_acc,
            "transfer_matrix": self.matrix,
            "wall_s": self.wall_s,
        }


def family_models(selection: str = "all", *, base_model: str = "vit_tiny_digits") -> list[str]:
    """`all`: the base model, its int8 engine and every shipped compressed digits model; else a comma list."""
    from edgeattack.zoo import get_entry, read_manifest

    if selection == "all":
        shipped = read_manifest()
        compressed = sorted(
            name for name, entry in shipped.items() if entry.family != "original" and entry.dataset == "digits"
        )
        return [base_model, INT8, *compressed]
    names = [part.strip() for part in selection.split(",") if part.strip()]
    if not names:
        raise ConfigError("--families takes 'all' or a comma-separated list of zoo names (and int8-qdq)")
    for name in names:
        if name != INT8:
            get_entry(name)
    return names


def run_transfer(
    out_dir: str | Path,
    models: Sequence[str],
    config: TransferConfig | None = None,
    *,
    stage: Callable[[str], None] | None = None,
) -> TransferSummary:
    """Export every model, craft PGD on each, replay every artifact on every engine; write the matrix."""
    from edgeattack.attacks.whitebox import PGD
    from edgeattack.compress.fakequant import FakeQuantTwin
    from edgeattack.evaluate import evaluate
    from edgeattack.export.pipeline import export_engine
    from edgeattack.zoo.factory import create_model

    config = config or TransferConfig()
    done = stage or (lambda _name: None)
    start = time.perf_counter()
    out = Path(out_dir)
    test = load_digits_dataset(config.split, seed=config.seed).take(config.limit)
    summary = TransferSummary(models=list(models))
    sources: dict[str, Any] = {}
    for name in models:
        engine_path = out / "engines" / f"{name}.onnx"
        if name == INT8:
            base = create_model(config.base_model)
            calib = load_digits_dataset(config.calib_split, seed=config.seed)
            export_engine(base, engine_path, precision="int8", quantization="static", calibration=calib)
            sources[name] = FakeQuantTwin(base, engine_path)
        else:
            sources[name] = create_model(name)
            export_engine(sources[name], engine_path)
        summary.engines[name] = str(engine_path)
        done(f"export {name}")
    step = config.step_size if config.step_size is not None else 2.5 * config.eps / config.steps
    for name, source in sources.items():
        attack = PGD(eps=config.eps, steps=config.steps, step_size=step, seed=config.seed)
        path = attack(source, test).to_artifact(test).save(out / "artifacts" / f"pgd-{name}.npz")
        summary.artifacts[name] = str(path)
        done(f"PGD on {name}")
    artifact_paths = [Path(summary.artifacts[name]) for name in models]
    for target in models:
        result = evaluate(summary.engines[target], test, artifact_paths, measure_latency=False)
        summary.clean_acc[target] = result.clean.clean_acc
        for source, item in zip(models, result.perturbations, strict=True):
            summary.matrix.setdefault(source, {})[target] = {
                "asr": item.metrics.asr,
                "adv_acc": item.metrics.adv_acc,
                "fooling_rate": item.metrics.fooling_rate,
            }
        done(f"replay on {target}")
    summary.wall_s = time.perf_counter() - start
    atomic_write_json(out / "transfer.json", summary.to_dict())
    summary.markdown_path = atomic_write_bytes(out / "transfer.md", render_transfer(summary, config).encode())
    return summary


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def render_transfer(summary: TransferSummary, config: TransferConfig) -> str:
    """The matrix as Markdown: rows = source model crafted on, columns = engine replayed on."""
    models = summary.models
    lines = [
        f"# Transfer across families: PGD L-inf {config.eps * 255:.0f}/255, {config.steps} steps, digits:{config.split}",
        "",
        "asr % (adv_acc %): among images the target engine classifies correctly when clean, the share "
        "misclassified after the attack (per-engine denominator). Rows: source model the PGD was crafted on "
        f"(`{INT8}`: the fake-quant twin of the int8 engine); columns: fp32 ONNX engine of each model "
        f"(`{INT8}`: the static-QDQ int8 engine). Wall time {summary.wall_s:.0f} s.",
        "",
        "| source \\ target | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
        "| clean_acc % | " + " | ".join(_pct(summary.clean_acc.get(m)) for m in models) + " |",
    ]
    for source in models:
        row = summary.matrix.get(source, {})
        cells = [f"{_pct(row[t]['asr'])} ({_pct(row[t]['adv_acc'])})" if t in row else "-" for t in models]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
