"""Running a bundle (board side): evaluate each engine with numpy and a runtime only, one result per engine."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import platform
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgeattack._io import dataset_file_label, sha256_file
from edgeattack.errors import EngineError
from edgeattack.results import EvaluationResult

from .layout import Bundle, BundleEngine, PlanBuilder

logger = logging.getLogger("edgeattack.bundle")


def _default_plan_builder() -> PlanBuilder | None:
    """The TensorRT plan builder of this edgeattack (`edgeattack.export.tensorrt_build`); None without TensorRT."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    from edgeattack.export.tensorrt_build import build_tensorrt_engine

    def builder(onnx_path: Path, plan_path: Path, precision: str) -> Path:
        build_tensorrt_engine(onnx_path, plan_path, precision=precision)
        return plan_path

    return builder


def run_bundle(
    bundle: Bundle,
    *,
    out_dir: str | Path,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    build_plan: PlanBuilder | None = None,
    blackbox_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    paths: list[Path] | None = None,
) -> list[EvaluationResult]:
    """Evaluate every engine of `bundle` with its artifacts, black-box specs and settings; numpy + runtime only.

    Each result is written to `out_dir` as soon as it is done (never overwriting) and records in
    `settings["bundle"]` the bundle's sha256, the engine member and a run id shared by this call's
    results; the written paths are appended to `paths` when given. Entries with `build_on_board`
    get their TensorRT plan built first by `build_plan(onnx, plan, precision)` (default: this
    edgeattack's TensorRT builder; EngineError before anything runs when there is none).
    `progress(engine_name, total, advance)` follows each evaluation.
    """
    from edgeattack.engines import open_engine
    from edgeattack.evaluate import evaluate

    entries = bundle.engines
    builder = build_plan
    if any(e.build_on_board for e in entries) and builder is None:
        builder = _default_plan_builder()
        if builder is None:
            wanted = ", ".join(f"{e.member} ({e.precision})" for e in entries if e.build_on_board)
            raise EngineError(
                f"bundle {bundle.path.name} asks to build TensorRT plans on the board from {wanted}, but this "
                f"edgeattack has no TensorRT builder here (install JetPack's TensorRT Python bindings)"
            )
    dataset = bundle.dataset()
    settings = bundle.settings
    meter = settings.get("meter")
    extra: dict[str, Any] = {}
    if meter is not None:
        if "meter" in inspect.signature(evaluate).parameters:
            extra["meter"] = meter
        else:
            logger.warning("bundle asks for the %s energy meter; this edgeattack's evaluate measures no energy", meter)
    artifact_names = {str(bundle.member_path(a["member"])): a["member"] for a in bundle.spec["artifacts"]}
    run_id = uuid.uuid4().hex
    out = Path(out_dir)
    results = []
    for entry in entries:
        engine_path = bundle.member_path(entry.member)
        built = None
        if entry.build_on_board:
            assert builder is not None
            plan = bundle.root / "built" / f"{Path(entry.name).stem}-{entry.precision}.plan"
            plan.parent.mkdir(parents=True, exist_ok=True)
            engine_path = builder(engine_path, plan, str(entry.precision))
            built = {"from": entry.member, "precision": entry.precision, "plan_sha256": sha256_file(engine_path)}

        def advance(total: int, steps: int, name: str = entry.name) -> None:
            if progress is not None:
                progress(name, total, steps)

        with open_engine(engine_path, providers=providers, intra_op_threads=threads) as engine:
            result = evaluate(
                engine,
                dataset,
                list(bundle.artifacts),
                batch_size=int(settings["batch_size"]),
                quantize_inputs=bool(settings["quantize_inputs"]),
                latency_runs=int(settings["latency_runs"]),
                latency_seconds=float(settings["latency_seconds"]),
                measure_latency=bool(settings.get("measure_latency", True)),
                measure_memory=bool(settings.get("measure_memory", True)),
                blackbox=list(settings.get("blackbox", ())),
                budget=settings.get("budget"),
                blackbox_dir=blackbox_dir,
                seed=int(settings.get("seed", 0)),
                progress=advance,
                **extra,
            )
        result = _tag(result, bundle, entry, run_id, providers, threads, built, artifact_names)
        written = result.save(out / f"{Path(entry.name).stem}__{dataset_file_label(dataset.name, dataset.split)}.json")
        if paths is not None:
            paths.append(written)
        results.append(result)
    return results


def _tag(
    result: EvaluationResult,
    bundle: Bundle,
    entry: BundleEngine,
    run_id: str,
    providers: Sequence[str] | None,
    threads: int | None,
    built: dict[str, Any] | None,
    artifact_names: dict[str, str],
) -> EvaluationResult:
    """The result with bundle member names instead of work-directory paths, and the bundle recorded."""
    engine = dict(result.engine, source=entry.name, bundle_member=entry.member)
    perturbations = tuple(
        dataclasses.replace(p, artifact_path=artifact_names.get(str(p.artifact_path), p.artifact_path))
        for p in result.perturbations
    )
    origin = {
        **bundle.describe(),
        "run_id": run_id,
        "engine_member": entry.member,
        "engine_sha256": entry.sha256,
        "built_on_board": built,
        "host": platform.node(),
        "machine": platform.machine(),
        "providers_requested": list(providers) if providers else None,
        "threads": threads,
        "meter": bundle.settings.get("meter"),
    }
    settings = dict(result.settings, bundle=origin)
    return dataclasses.replace(result, engine=engine, perturbations=perturbations, settings=settings)
