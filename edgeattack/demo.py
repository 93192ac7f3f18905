"""The demo: the whole pipeline on the embedded default, in a few minutes on two CPU cores.

From the shipped `vit_tiny_digits`: export fp32, static QDQ int8 and dynamic int8 ONNX engines
(each parity-checked); build the differentiable int8 twin of the QDQ engine; craft PGD (L-inf
8/255, per image on the test split) and a UAP (fitted on the val split) on the fp32 PyTorch model
and on the int8 twin; replay every artifact on every engine (the transfer matrix both ways, as in
the paper); write one result JSON per engine and a Markdown summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes, atomic_write_json
from edgeattack.data import load_digits_dataset
from edgeattack.results import EvaluationResult

logger = logging.getLogger(__name__)

StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class DemoConfig:
    """What the demo crafts and measures (defaults: the issue's PGD L-inf 8/255 and a UAP)."""

    model: str = "vit_tiny_digits"
    eval_split: str = "test"
    fit_split: str = "val"
    calib_split: str = "train"
    calib_images: int = 128
    limit: int | None = None
    pgd_eps: float = 8 / 255
    pgd_steps: int = 10
    pgd_step_size: float = 2 / 255
    weak_pgd_eps: float = 2 / 255
    uap_eps: float = 12 / 255
    uap_epochs: int = 20
    latency_runs: int = 10
    latency_seconds: float = 1.0
    seed: int = 0

    def stages(self) -> list[str]:
        return [
            "export fp32",
            "export int8 (static QDQ)",
            "export int8 (dynamic)",
            "int8 twin",
            "PGD on fp32",
            "weak PGD on fp32",
            "UAP on fp32",
            "PGD on int8 twin",
            "weak PGD on int8 twin",
            "UAP on int8 twin",
            "evaluate torch fp32",
            "evaluate onnx fp32",
            "evaluate onnx int8 QDQ",
            "evaluate onnx int8 dynamic",
            "summary",
        ]


@dataclass
class DemoSummary:
    """Where everything went, and the transfer matrix (artifact x engine -> metrics)."""

    out_dir: Path
    engines: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    twin_agreement: dict[str, Any] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    matrix: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    clean: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    markdown_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "engines": self.engines,
            "artifacts": self.artifacts,
            "parity": self.parity,
            "twin_agreement": self.twin_agreement,
            "results": self.results,
            "clean": self.clean,
            "transfer_matrix": self.matrix,
            "stage_s": self.stage_s,
            "wall_s": self.wall_s,
        }


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, *, stage: StageCallback | None = None) -> DemoSummary:
    """Run the demo into `out_dir`; `stage(name)` is called as each stage finishes."""
    from edgeattack.attacks.whitebox import PGD, UAPSGD
    from edgeattack.compress.fakequant import FakeQuantTwin, twin_agreement
    from edgeattack.engines.torch_engine import TorchEngine
    from edgeattack.export.pipeline import export_engine
    from edgeattack.zoo.factory import create_model

    config = config or DemoConfig()
    start = time.perf_counter()
    summary = DemoSummary(out_dir=Path(out_dir))
    last = [start]

    def done(name: str) -> None:
        now = time.perf_counter()
        summary.stage_s[name] = round(now - last[0], 3)
        last[0] = now
        logger.info("demo: %s (%.1f s)", name, summary.stage_s[name])
        if stage is not None:
            stage(name)

    out = Path(out_dir)
    for sub in ("engines", "artifacts", "results"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    model = create_model(config.model)
    test = load_digits_dataset(config.eval_split, seed=config.seed).take(config.limit)
    fit = load_digits_dataset(config.fit_split, seed=config.seed)
    calib = load_digits_dataset(config.calib_split, seed=config.seed)

    exports = {
        "onnx-fp32": {"precision": "fp32"},
        "onnx-int8-qdq": {"precision": "int8", "quantization": "static", "calibration": calib},
        "onnx-int8-dynamic": {"precision": "int8", "quantization": "dynamic"},
    }
    for name, options in exports.items():
        outcome = export_engine(
            model,
            out / "engines" / f"{config.model}-{name.removeprefix('onnx-')}.onnx",
            calibration_images=config.calib_images,
            parity_data=test,
            parity_images=len(test),
            **options,
        )
        summary.engines[name] = str(outcome.path)
        summary.parity[name] = outcome.parity.to_dict() if outcome.parity else {}
        done(f"export {name}")

    twin = FakeQuantTwin(model, summary.engines["onnx-int8-qdq"])
    summary.twin_agreement = twin_agreement(twin, summary.engines["onnx-int8-qdq"], test)
    done("int8 twin")

    sources = {"fp32": model, "int8-twin": twin}
    for source_name, source in sources.items():
        for label, eps in (("pgd", config.pgd_eps), ("pgd-weak", config.weak_pgd_eps)):
            step = min(config.pgd_step_size, 2.5 * eps / config.pgd_steps)
            pgd = PGD(eps=eps, steps=config.pgd_steps, step_size=step, seed=config.seed)
            path = pgd(source, test).to_artifact(test).save(
                out / "artifacts" / f"{label}-linf{round(eps * 255)}-{source_name}.npz"
            )
            summary.artifacts[f"{label}@{source_name}"] = str(path)
            done(f"{label} on {source_name}")
        uap = UAPSGD(eps=config.uap_eps, epochs=config.uap_epochs, seed=config.seed)
        path = uap(source, fit).to_artifact(fit).save(out / "artifacts" / f"uap-sgd-{source_name}.npz")
        summary.artifacts[f"uap@{source_name}"] = str(path)
        done(f"UAP on {source_name}")

    engines: dict[str, Any] = {"torch-fp32": TorchEngine(model, source=config.model), **summary.engines}
    artifact_paths = [Path(p) for p in summary.artifacts.values()]
    for engine_name, engine in engines.items():
        result = _evaluate_one(engine, test, artifact_paths, config)
        path = result.save(out / "results" / f"{engine_name}.json")
        summary.results[engine_name] = str(path)
        summary.clean[engine_name] = {"clean_acc": result.clean.clean_acc, "n_images": result.clean.n_images}
        if result.latency is not None:
            summary.clean[engine_name].update(
                latency_median_ms=result.latency.median_ms,
                throughput_ips=result.latency.throughput_ips,
                latency_batch_size=result.latency.batch_size,
            )
        summary.clean[engine_name]["model_size_mb"] = result.model_size.file_size_mb
        for artifact_name, item in zip(summary.artifacts, result.perturbations, strict=True):
            summary.matrix.setdefault(artifact_name, {})[engine_name] = {
                "asr": item.metrics.asr,
                "adv_acc": item.metrics.adv_acc,
                "fooling_rate": item.metrics.fooling_rate,
            }
        done(f"evaluate {engine_name}")

    summary.wall_s = time.perf_counter() - start
    atomic_write_json(out / "summary.json", summary.to_dict())
    summary.markdown_path = atomic_write_bytes(out / "summary.md", render_markdown(summary, config).encode())
    done("summary")
    return summary


def _evaluate_one(engine: Any, dataset: Any, artifacts: list[Path], config: DemoConfig) -> EvaluationResult:
    from edgeattack.evaluate import evaluate

    return evaluate(
        engine,
        dataset,
        artifacts,
        latency_runs=config.latency_runs,
        latency_seconds=config.latency_seconds,
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def render_markdown(summary: DemoSummary, config: DemoConfig) -> str:
    """The demo's summary: engines, parity, twin agreement, and the transfer matrix of ASR."""
    engines = list(summary.clean)
    lines = [
        f"# edgeattack demo: {config.model} on digits:{config.eval_split}",
        "",
        f"Wall time {summary.wall_s:.0f} s ("
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary.stage_s.items())
        + f"). PGD: L-inf eps {config.pgd_eps * 255:.0f}/255, {config.pgd_steps} steps, "
        f"step {config.pgd_step_size * 255:.0f}/255, per image on {config.eval_split} "
        f"(pgd-weak: eps {config.weak_pgd_eps * 255:.0f}/255, where transfer differences show). UAP (SGD/Adam): L-inf eps "
        f"{config.uap_eps * 255:.0f}/255, fitted on {config.fit_split}, evaluated on {config.eval_split}.",
        "",
        "## Engines",
        "",
        "| engine | clean_acc % | size MB | median latency ms | throughput img/s | parity top-1 | parity max abs dlogit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in engines:
        clean = summary.clean[name]
        parity = summary.parity.get(name, {})
        size = clean.get("model_size_mb")
        size_text = "-" if size is None else f"{size:.2f}"
        top1 = f"{parity['top1_agreement']:.4f}" if parity else "-"
        dlogit = f"{parity['max_abs_logit_diff']:.3g}" if parity else "-"
        latency = clean.get("latency_median_ms")
        latency_text = "-" if latency is None else f"{latency:.2f} (batch {clean.get('latency_batch_size')})"
        throughput = clean.get("throughput_ips")
        throughput_text = "-" if throughput is None else f"{throughput:.0f}"
        lines.append(
            f"| {name} | {_pct(clean.get('clean_acc'))} | {size_text} | {latency_text} | {throughput_text} "
            f"| {top1} | {dlogit} |"
        )
    agreement = summary.twin_agreement
    if agreement:
        lines += [
            "",
            (f"int8 twin (fake-quant, straight-through) vs the QDQ int8 engine on {agreement.get('n_images')} images: "
            f"top-1 agreement {agreement.get('top1_agreement', float('nan')):.4f}, max abs dlogit "
            f"{agreement.get('max_abs_logit_diff', float('nan')):.3g} (the fp32 model: "
            f"{agreement.get('fp32_top1_agreement', float('nan')):.4f}, {agreement.get('fp32_max_abs_logit_diff', float('nan')):.3g})."),
        ]
    lines += [
        "",
        "## Transfer matrix: asr % (adv_acc %)",
        "",
        ("asr: among images the engine classifies correctly when clean, the share misclassified after the attack "
        "(the denominator is per engine). Rows: artifact@source model; columns: engine replayed on."),
        "",
        "| artifact \\ engine | " + " | ".join(engines) + " |",
        "|---|" + "---:|" * len(engines),
    ]
    for artifact, row in summary.matrix.items():
        cells = [f"{_pct(row[e]['asr'])} ({_pct(row[e]['adv_acc'])})" if e in row else "-" for e in engines]
        lines.append(f"| {artifact} | " + " | ".join(cells) + " |")
    lines += ["", "Results (one JSON per engine): " + ", ".join(f"`{Path(p).name}`" for p in summary.results.values()), ""]
    return "\n".join(lines)
