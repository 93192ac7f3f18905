"""An experiment config expanded into a plan of cells (export, craft, replay, ...) with dependencies.

Every cell carries the parameters its function needs and the names of the outputs of other cells
it reads. Its *input hash* covers its kind, its parameters, the content of the local files it
names (checkpoints) and the input hashes of the cells it depends on, so changing one input
re-runs exactly the cells downstream of it.

Cells, per model M and engine E:
- `export/M/E`: the deployed engine (nothing to write for a torch engine: model facts only);
  a TensorRT engine also has `export/M/E.onnx`, the ONNX it is built from.
- `craft/A-EPS@M` (or `@M~E`, crafted on the int8 twin of M's engine E; `@M1+M2` an ensemble).
- `replay/M/E`: clean accuracy, latency, memory, and every transferable perturbation replayed.
- `blackbox/M/E/ATTACK`: one black-box attack on the engine, every query counted.
- `availability/M/E`: clean vs DeSparsify on a token-sparse model's engine.
- `depth/M`: token-depth maps of a token-sparse model, clean and under each DeSparsify artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError
from edgeattack.experiments.config import TOKEN_SPARSE_FAMILIES, EngineSpec, ExperimentConfig, WhiteboxSpec

CELL_SCHEMA = 1
"""Bumped when what a cell computes from the same parameters changes (every cell then re-runs)."""

KINDS = ("export", "craft", "replay", "blackbox", "availability", "depth")


@dataclass(frozen=True)
class Cell:
    """One unit of work: `kind` run with `params`, reading `inputs` (name -> "cell_id:output")."""

    id: str
    kind: str
    params: dict[str, Any]
    deps: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    timing: bool = False
    """The cell measures latency: with `metrics.exclusive_timing` it runs with no other cell beside it."""

    def input_refs(self) -> dict[str, tuple[str, str]]:
        return {name: tuple(ref.rsplit(":", 1)) for name, ref in self.inputs.items()}  # type: ignore[misc]


@dataclass
class Plan:
    """Cells in dependency order, and their input hashes."""

    config: ExperimentConfig
    cells: dict[str, Cell]
    hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cell in self.cells.values():
            digest = hashlib.sha256()
            doc = {"schema": CELL_SCHEMA, "kind": cell.kind, "params": cell.params, "files": _file_digests(cell.params)}
            digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
            for dep in cell.deps:
                digest.update(self.hashes[dep].encode())
            self.hashes[cell.id] = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.cells)

    def dependents(self, cell_id: str) -> list[str]:
        """Every cell that depends on `cell_id`, directly or not, in plan order."""
        found: set[str] = {cell_id}
        for cell in self.cells.values():
            if any(dep in found for dep in cell.deps):
                found.add(cell.id)
        return [c for c in self.cells if c in found and c != cell_id]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for cell in self.cells.values():
            out[cell.kind] = out.get(cell.kind, 0) + 1
        return out

    def select(self, patterns: list[str]) -> list[str]:
        """The cells matching any glob pattern, plus everything they depend on."""
        import fnmatch

        wanted = {c for c in self.cells if any(fnmatch.fnmatchcase(c, p) for p in patterns)}
        if not wanted:
            raise ConfigError(f"no cell matches {', '.join(patterns)}; cells look like {next(iter(self.cells))}")
        for cell_id in reversed(list(self.cells)):
            if cell_id in wanted:
                wanted.update(self.cells[cell_id].deps)
        return [c for c in self.cells if c in wanted]


def _file_digests(params: dict[str, Any]) -> dict[str, str]:
    """Content fingerprints of the local files a cell's parameters name (so an edited checkpoint re-runs)."""
    out = {}
    model = params.get("model")
    models = params.get("models") or ([model] if isinstance(model, dict) else [])
    for spec in models:
        if isinstance(spec, dict) and spec.get("checkpoint"):
            out[spec["checkpoint"]] = _sha256_file(spec["checkpoint"])
    data = params.get("data", {})
    if isinstance(data, dict) and data.get("dataset", "digits") != "digits":
        out[data["dataset"]] = _folder_fingerprint(data["dataset"])
    return out


def _sha256_file(path: str) -> str:
    stat = os.stat(path)
    return _sha256_cached(path, stat.st_size, stat.st_mtime_ns)


@cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@cache
def _folder_fingerprint(path: str) -> str:
    """Files, sizes and modification times under an image folder (hashing every image would be slow)."""
    digest = hashlib.sha256()
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"dataset folder {path} does not exist")
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(directory, name))
            digest.update(f"{os.path.relpath(os.path.join(directory, name), root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def eps_label(eps: float) -> str:
    """8/255 -> "8_255"; 0.5 -> "0.5"."""
    scaled = eps * 255
    return f"{round(scaled)}_255" if abs(scaled - round(scaled)) < 1e-6 else f"{eps:g}"


def _family(model: str) -> str:
    from edgeattack.zoo.registry import get_entry

    return get_entry(model).family


def _input_size(model: str) -> tuple[int, ...]:
    from edgeattack.zoo.registry import get_entry

    return tuple(get_entry(model).config.input_size)


def is_token_sparse(model: str) -> bool:
    return _family(model) in TOKEN_SPARSE_FAMILIES


def build_plan(config: ExperimentConfig) -> Plan:
    """Expand `config` into cells in dependency order."""
    builder = _PlanBuilder(config)
    return Plan(config=config, cells=builder.build())


class _PlanBuilder:
    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.cells: dict[str, Cell] = {}
        self.data = config.data.model_dump(mode="json")
        self.models = {m.name: m.model_dump(mode="json") for m in config.models}
        self.engines = {e.name: e for e in config.engines}

    def add(self, cell: Cell) -> Cell:
        for dep in cell.deps:
            if dep not in self.cells:
                raise AssertionError(f"cell {cell.id} depends on {dep}, which is not planned before it")
        self.cells[cell.id] = cell
        return cell

    def build(self) -> dict[str, Cell]:
        for model in self.models:
            for engine in self.engines.values():
                self._export(model, engine)
        crafts = [c for attack in self.config.whitebox for c in self._crafts(attack)]
        for model in self.models:
            for engine in self.engines.values():
                self._evaluate(model, engine, crafts)
        if self.config.availability.token_depth:
            for model in self.models:
                desparsify = self._desparsify_for(model, crafts)
                if is_token_sparse(model):
                    self._depth(model, desparsify)
        return self.cells

    def _engine_resources(self, engine: EngineSpec) -> dict[str, float]:
        return {"CPU": 1.0, **engine.resources}

    def _export(self, model: str, engine: EngineSpec) -> None:
        spec = engine.model_dump(mode="json")
        base = {"model": self.models[model], "engine": spec, "data": self.data, "seed": self.config.seed}
        if engine.target != "tensorrt":
            self.add(Cell(f"export/{model}/{engine.name}", "export", base))
            return
        onnx = self.add(Cell(f"export/{model}/{engine.name}.onnx", "export", dict(base, stage="onnx")))
        self.add(
            Cell(
                f"export/{model}/{engine.name}",
                "export",
                dict(base, stage="plan"),
                deps=(onnx.id,),
                inputs={"onnx": f"{onnx.id}:engine"},
                resources=self._engine_resources(engine),
            )
        )

    def _crafts(self, attack: WhiteboxSpec) -> list[Cell]:
        models = list(attack.models or self.models)
        if attack.method == "desparsify":
            models = [m for m in models if is_token_sparse(m)]
            if not models:
                raise ConfigError(f"white-box attack {attack.name}: desparsify needs a token-sparse model ({', '.join(TOKEN_SPARSE_FAMILIES)})")
        groups = [models] if attack.variant == "ensemble" else [[m] for m in models]
        split = self.config.data.fit_split if attack.universal else self.config.data.eval_split
        limit = self.config.data.fit_limit if attack.universal else self.config.data.limit
        cells = []
        for group in groups:
            for source in attack.sources:
                engine = source.removeprefix("twin:") if source != "model" else None
                for eps in attack.budgets:
                    at = "+".join(group) + (f"~{engine}" if engine else "")
                    params = {
                        "attack": attack.name,
                        "method": attack.method,
                        "eps": eps,
                        "steps": attack.steps,
                        "step_size": attack.step_size,
                        "attack_params": attack.params,
                        "models": [self.models[m] for m in group],
                        "twin_of": engine,
                        "data": self.data,
                        "split": split,
                        "limit": limit,
                        "seed": self.config.seed,
                        "universal": attack.universal,
                    }
                    deps = tuple(f"export/{m}/{engine}" for m in group) if engine else ()
                    inputs = {f"twin:{m}": f"export/{m}/{engine}:engine" for m in group} if engine else {}
                    label = attack.name if eps is None else f"{attack.name}-{eps_label(eps)}"
                    cells.append(self.add(Cell(f"craft/{label}@{at}", "craft", params, deps, inputs)))
        return cells

    def _desparsify_for(self, model: str, crafts: list[Cell]) -> list[Cell]:
        return [c for c in crafts if c.params["method"] == "desparsify" and model in _craft_models(c)]

    def _transferable(self, model: str, crafts: list[Cell]) -> list[Cell]:
        size = _input_size(model)
        out = []
        for craft in crafts:
            if craft.params["method"] == "desparsify":
                continue
            models = _craft_models(craft)
            if any(_input_size(m) != size for m in models):
                continue
            if self.config.transfer == "within-model" and model not in models:
                continue
            out.append(craft)
        return out

    def _evaluate(self, model: str, engine: EngineSpec, crafts: list[Cell]) -> None:
        export = f"export/{model}/{engine.name}"
        engine_input = {} if engine.target == "torch" else {"engine": f"{export}:engine"}
        resources = self._engine_resources(engine)
        common = {
            "model": self.models[model],
            "engine": engine.model_dump(mode="json"),
            "data": self.data,
            "seed": self.config.seed,
        }
        replays = self._transferable(model, crafts)
        self.add(
            Cell(
                f"replay/{model}/{engine.name}",
                "replay",
                dict(common, metrics=self.config.metrics.model_dump(mode="json"), artifacts=[c.id for c in replays]),
                deps=(export, *(c.id for c in replays)),
                inputs={**engine_input, **{f"artifact:{c.id}": f"{c.id}:artifact" for c in replays}},
                resources=resources,
                timing=True,
            )
        )
        for attack in self.config.blackbox:
            if attack.engines is not None and engine.name not in attack.engines:
                continue
            if attack.models is not None and model not in attack.models:
                continue
            params = dict(common, spec=attack.spec, budget=attack.budget, limit=attack.limit or self.config.data.limit)
            params["quantize_inputs"] = self.config.metrics.quantize_inputs
            self.add(
                Cell(f"blackbox/{model}/{engine.name}/{attack.label}", "blackbox", params, (export,), engine_input, resources)
            )
        desparsify = self._desparsify_for(model, crafts)
        if self.config.availability.enabled and is_token_sparse(model) and engine.target != "torch":
            self.add(
                Cell(
                    f"availability/{model}/{engine.name}",
                    "availability",
                    dict(common, availability=self.config.availability.model_dump(mode="json"), artifacts=[c.id for c in desparsify]),
                    deps=(export, *(c.id for c in desparsify)),
                    inputs={**engine_input, **{f"artifact:{c.id}": f"{c.id}:artifact" for c in desparsify}},
                    resources=resources,
                    timing=True,
                )
            )

    def _depth(self, model: str, desparsify: list[Cell]) -> None:
        params = {"model": self.models[model], "data": self.data, "seed": self.config.seed, "artifacts": [c.id for c in desparsify]}
        self.add(
            Cell(
                f"depth/{model}",
                "depth",
                params,
                deps=tuple(c.id for c in desparsify),
                inputs={f"artifact:{c.id}": f"{c.id}:artifact" for c in desparsify},
            )
        )


def _craft_models(cell: Cell) -> list[str]:
    return [m["name"] for m in cell.params["models"]]
