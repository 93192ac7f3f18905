"""What each kind of cell does: thin wrappers over the library functions the CLI commands use.

`run_cell(task)` is the one function every executor runs (in this process, a worker process, or
a Ray node). It imports what the cell's kind needs and nothing else: replay, black-box and
availability cells of an ONNX or TensorRT engine never import torch, so they run on a board.
Each cell writes its files into `task.workdir` and returns a JSON-able result.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError
from edgeattack.experiments.task import CellOutcome, CellTask

CellImpl = Callable[[CellTask], tuple[dict[str, Any], dict[str, str]]]


def _preprocess(model_name: str) -> Any:
    from edgeattack.data import preprocess_for
    from edgeattack.zoo.registry import get_entry

    config = get_entry(model_name).config
    return preprocess_for(config)


def _dataset(params: dict[str, Any], model_name: str, split: str, limit: int | None, *, shuffle: bool = False) -> Any:
    from edgeattack.data import load_dataset
    from edgeattack.zoo.registry import get_entry

    data = params["data"]
    return load_dataset(
        data["dataset"], split=split, seed=params["seed"], limit=limit, preprocess=_preprocess(model_name), shuffle=shuffle,
        class_names=get_entry(model_name).config.label_names,
    )


def _weights(spec: dict[str, Any]) -> dict[str, Any]:
    """`create_model`'s weight arguments for a model spec of the config (checkpoint, pretrained, random_weights)."""
    return {
        "checkpoint": spec.get("checkpoint"),
        "pretrained": spec.get("pretrained"),
        "random_weights": bool(spec.get("random_weights")),
    }


def _torch_threads(task: CellTask) -> None:
    import torch

    torch.set_num_threads(max(1, task.threads))


def _write_json(path: Path, doc: dict[str, Any]) -> str:
    from edgeattack._io import atomic_write_json

    return str(atomic_write_json(path, doc))


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so results are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- export -----------------------------------------------------------------------------------------
def _model_facts(net: Any) -> dict[str, Any]:
    from edgeattack.metrics.flops import bytes_to_mb
    from edgeattack.zoo.factory import count_parameters
    from edgeattack.zoo.profile import flops_of, fp32_safetensors_bytes

    flops = flops_of(net)
    return {
        "family": net.config.family,
        "params_m": count_parameters(net) / 1e6,
        "gflops": flops.total / 1e9,
        "fp32_size_mb": bytes_to_mb(fp32_safetensors_bytes(net)),
    }


def _export(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    p = task.params
    engine, model_spec = p["engine"], p["model"]
    workdir = Path(task.workdir)
    result: dict[str, Any] = {"model": model_spec["name"], "engine": engine["name"], "target": engine["target"]}
    if p.get("stage") == "plan":
        from edgeattack.export.tensorrt_build import build_tensorrt_engine

        plan = workdir / "engine.plan"
        metadata = build_tensorrt_engine(task.inputs["onnx"], plan, precision=engine["precision"], sparse=engine["sparse"])
        result.update(precision=engine["precision"], backend="tensorrt", size_mb=plan.stat().st_size / 1e6)
        result["metadata"] = metadata.to_dict()
        return result, {"engine": str(plan), "engine_sidecar": str(plan) + ".json"}

    _torch_threads(task)
    from edgeattack.zoo.factory import create_model

    net = create_model(model_spec["name"], **_weights(model_spec))
    result.update(_model_facts(net))
    if engine["target"] == "torch":
        result.update(precision="fp32", backend="torch", size_mb=result["fp32_size_mb"])
        return result, {}
    data = p["data"]
    if engine.get("token_cap"):
        from edgeattack.sparsity.defence import parse_token_cap, token_cap_from_clean, with_token_cap

        mode, value = parse_token_cap(engine["token_cap"])
        caps = (
            token_cap_from_clean(net, _dataset(p, model_spec["name"], data["fit_split"], None), quantile=float(value))  # type: ignore[arg-type]
            if mode == "auto"
            else value
        )
        net = with_token_cap(net, caps)
        result["token_cap"] = list(net.net.token_cap)
    from edgeattack.export.pipeline import export_engine

    for_tensorrt = engine["target"] == "tensorrt"
    precision = engine["precision"]
    static = precision == "int8" and engine["quantization"] == "static"
    out = workdir / "engine.onnx"
    outcome = export_engine(
        net,
        out,
        precision="fp32" if for_tensorrt and precision == "fp16" else precision,
        quantization=engine["quantization"],
        calibration=_dataset(p, model_spec["name"], data["calib_split"], None, shuffle=True) if static else None,
        calibration_images=data["calib_images"],
        preset="full" if for_tensorrt else engine["preset"],
        parity_data=_dataset(p, model_spec["name"], data["eval_split"], min(data.get("limit") or 256, 256)),
        parity_images=256,
    )
    result.update(
        precision=precision,
        backend="onnxruntime",
        size_mb=out.stat().st_size / 1e6,
        parity=outcome.parity.to_dict() if outcome.parity else None,
    )
    return result, {"engine": str(out)}


# -- craft ------------------------------------------------------------------------------------------
def _craft(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    p = task.params
    _torch_threads(task)
    from edgeattack.attacks.whitebox import make_attack
    from edgeattack.attacks.whitebox.sources import int8_twin
    from edgeattack.devices import device_record, resolve_device
    from edgeattack.zoo.factory import create_model

    device = resolve_device(task.device)
    sources = []
    for spec in p["models"]:
        weights = _weights(spec)
        if p.get("twin_of"):
            weights["pretrained"] = bool(weights["pretrained"])
            source = int8_twin(task.inputs[f"twin:{spec['name']}"], **weights)
        else:
            source = create_model(spec["name"], **weights)
        sources.append(source.to(device))
    params = dict(p.get("attack_params") or {})
    if p["eps"] is not None:
        params["eps"] = p["eps"]
    if p.get("steps") is not None:
        params["steps"] = p["steps"]
    if p.get("step_size") is not None:
        params["step_size"] = p["step_size"]
    params.setdefault("seed", p["seed"])
    attack = make_attack(p["method"], **params)
    dataset = _dataset(p, p["models"][0]["name"], p["split"], p.get("limit"))
    output = attack(sources if len(sources) > 1 else sources[0], dataset)
    artifact = output.to_artifact(dataset)
    path = artifact.save(Path(task.workdir) / "artifact.npz")
    result = {
        "attack": p["attack"],
        "method": p["method"],
        "eps": p["eps"],
        "kind": artifact.meta.kind,
        "variant": (p.get("attack_params") or {}).get("variant"),
        "source": "+".join(s["name"] for s in p["models"]) + (f"~{p['twin_of']}" if p.get("twin_of") else ""),
        "split": p["split"],
        "summary": output.summary(),
        "token_utilisation": artifact.meta.params.get("token_utilisation"),
        **device_record(device),
    }
    return result, {"artifact": str(path)}


# -- evaluation on an engine -------------------------------------------------------------------------
def _open(task: CellTask) -> Any:
    from edgeattack.engines import open_engine

    engine, model = task.params["engine"], task.params["model"]
    if engine["target"] == "torch":
        _torch_threads(task)
        from edgeattack.engines.torch_engine import TorchEngine
        from edgeattack.zoo.factory import create_model

        return TorchEngine(create_model(model["name"], **_weights(model)), source=model["name"])
    path = task.inputs["engine"]
    sidecar = task.inputs.get("engine_sidecar")
    if sidecar and not os.path.exists(path + ".json"):
        shutil.copyfile(sidecar, path + ".json")
    if engine["target"] == "tensorrt":
        return open_engine(path)
    return open_engine(path, providers=engine.get("providers"), intra_op_threads=task.threads)


def _artifacts(task: CellTask) -> list[tuple[str, str]]:
    """(craft cell id, artifact path), in the plan's order."""
    return [(cell_id, task.inputs[f"artifact:{cell_id}"]) for cell_id in task.params.get("artifacts", [])]


def _replayable(artifacts: list[tuple[str, str]], dataset: Any, engine: Any, missing: dict[str, str]) -> list[tuple[str, str]]:
    """The artifacts that pass the replay checks on `dataset` and `engine`; each other one goes into `missing` with why.

    One artifact that cannot be replayed here (another input size, another dataset) does not cost
    the cell the others.
    """
    from edgeattack.artifacts import PerturbationArtifact, check_replay
    from edgeattack.errors import ArtifactError

    kept = []
    for cell_id, path in artifacts:
        try:
            check_replay(
                PerturbationArtifact.load(path), dataset, label=cell_id, input_size=engine.input_size, engine=engine.name
            )
        except ArtifactError as exc:
            missing[cell_id] = f"cannot be replayed: {exc}"
            continue
        kept.append((cell_id, path))
    return kept


EngineRun = Callable[[Any, Any, list[str]], Any]
"""`run(engine, dataset, artifact_paths)` -> a result with `to_dict()`."""


def _on_engine(task: CellTask, run: EngineRun, *, limit: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """What every engine cell does: open the engine, load the eval split, run, save `result.json`."""
    p = task.params
    dataset = _dataset(p, p["model"]["name"], p["data"]["eval_split"], limit)
    missing = dict(p.get("missing_artifacts") or {})
    with _open(task) as engine:
        artifacts = _replayable(_artifacts(task), dataset, engine, missing)
        result = run(engine, dataset, [path for _, path in artifacts])
    doc = result.to_dict()
    if "artifacts" in p:
        doc["artifact_cells"] = [cell_id for cell_id, _ in artifacts]
        doc["missing_artifacts"] = missing
    return doc, {"result": _write_json(Path(task.workdir) / "result.json", doc)}


def _replay(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    from edgeattack.evaluate import evaluate

    p = task.params
    metrics = p["metrics"]
    return _on_engine(
        task,
        lambda engine, dataset, artifacts: evaluate(
            engine,
            dataset,
            artifacts,
            batch_size=metrics["batch_size"],
            quantize_inputs=metrics["quantize_inputs"],
            latency_runs=metrics["latency_runs"],
            latency_seconds=metrics["latency_seconds"],
            measure_memory=metrics["memory"],
            seed=p["seed"],
        ),
        limit=p["data"].get("limit"),
    )


def _blackbox(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    from edgeattack.evaluate import evaluate

    p = task.params
    return _on_engine(
        task,
        lambda engine, dataset, _artifacts: evaluate(
            engine,
            dataset,
            blackbox=[p["spec"]],
            budget=p["budget"],
            quantize_inputs=p["quantize_inputs"],
            measure_latency=False,
            measure_memory=False,
            seed=p["seed"],
        ),
        limit=p.get("limit"),
    )


def _availability(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    from edgeattack.availability import evaluate_availability

    p = task.params
    settings = p["availability"]
    return _on_engine(
        task,
        lambda engine, dataset, artifacts: evaluate_availability(
            engine,
            dataset,
            artifacts,
            latency_images=settings["latency_images"],
            latency_rounds=settings["latency_rounds"],
            meter=settings.get("meter"),  # chosen for the device the engine's providers really use
        ),
        limit=p["data"].get("limit"),
    )


def _depth(task: CellTask) -> tuple[dict[str, Any], dict[str, str]]:
    from edgeattack.artifacts import PerturbationArtifact
    from edgeattack.sparsity.depth import token_depth_summary
    from edgeattack.zoo.factory import create_model

    _torch_threads(task)
    p = task.params
    model_spec = p["model"]
    net = create_model(model_spec["name"], **_weights(model_spec))
    dataset = _dataset(p, model_spec["name"], p["data"]["eval_split"], p["data"].get("limit"))
    images, labels, indices = dataset.images[:], dataset.labels, dataset.indices  # [:] decodes lazy images
    passes = [dict(token_depth_summary(net, images), **{"pass": "clean", "artifact": None})]
    for cell_id, path in _artifacts(task):
        artifact = PerturbationArtifact.load(path)
        keep = artifact.covers(indices)
        adversarial = artifact.apply(images[keep], labels=labels[keep], indices=indices[keep])
        summary = token_depth_summary(net, adversarial)
        passes.append(dict(summary, **{"pass": cell_id.removeprefix("craft/"), "artifact": cell_id}))
    doc = {"model": model_spec["name"], "passes": passes, "missing_artifacts": dict(p.get("missing_artifacts") or {})}
    path = _write_json(Path(task.workdir) / "result.json", doc)
    return doc, {"result": path}


CELL_KINDS: dict[str, CellImpl] = {
    "export": _export,
    "craft": _craft,
    "replay": _replay,
    "blackbox": _blackbox,
    "availability": _availability,
    "depth": _depth,
}


def run_cell(task: CellTask) -> CellOutcome:
    """Run one cell; exceptions propagate (the executor records them as the cell's failure)."""
    try:
        impl = CELL_KINDS[task.kind]
    except KeyError:
        raise ConfigError(f"unknown cell kind {task.kind!r}; known: {', '.join(CELL_KINDS)}") from None
    start = time.perf_counter()
    result, outputs = impl(task)
    result = _finite(json.loads(json.dumps(result, default=str)))
    return CellOutcome(
        result=result,
        outputs=outputs,
        wall_s=time.perf_counter() - start,
        host=f"{socket.gethostname()}:{os.getpid()}",
    )
