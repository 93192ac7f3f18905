"""An experiment config expanded into a plan of cells (export, craft, replay, ...) with dependencies.

Every cell carries the parameters its function needs and the names of the outputs of other cells
it reads. Its *input hash* covers its kind, its parameters, the content of the local files it
names (a checkpoint by its sha256, not its path) and the input hashes of the cells it depends
on, so changing one input re-runs exactly the cells downstream of it, and moving a file re-runs
nothing. A cell that replays artifacts depends on their crafts *optionally*: it runs on the
artifacts that exist and records the others as missing.

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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from edgeattack.errors import ConfigError
from edgeattack.experiments.config import TOKEN_SPARSE_FAMILIES, EngineSpec, ExperimentConfig, WhiteboxSpec
from edgeattack.experiments.fingerprint import by_content

CELL_SCHEMA = 1
"""Bumped when what a cell computes from the same parameters changes (every cell then re-runs)."""

KINDS = ("export", "craft", "replay", "blackbox", "availability", "depth")


TORCH_KINDS = ("craft",)
"""Cells whose work is gradients through the model (crafting): the ones a GPU speeds up."""

NOT_SELECTED = "not selected by --only and not in the store"


@dataclass(frozen=True)
class Cell:
    """One unit of work: `kind` run with `params`, reading `inputs` (name -> "cell_id:output").

    `optional` are the dependencies whose artifacts the cell replays: when one fails, is skipped
    or is left out by `--only`, the cell still runs on the others and records the missing ones.
    """

    id: str
    kind: str
    params: dict[str, Any]
    deps: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    timing: bool = False
    """The cell measures latency: with `metrics.exclusive_timing` it runs with no other cell beside it."""
    optional: tuple[str, ...] = ()

    @property
    def torch(self) -> bool:
        """Torch-heavy: a craft (a Ray GPU is asked for it where the cluster has one, and it computes there)."""
        return self.kind in TORCH_KINDS

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(d for d in self.deps if d not in self.optional)

    def input_refs(self) -> dict[str, tuple[str, str]]:
        return {name: tuple(ref.rsplit(":", 1)) for name, ref in self.inputs.items()}  # type: ignore[misc]

    def without(self, missing: dict[str, str]) -> Cell:
        """This cell without the optional dependencies in `missing` (cell id -> why its artifact is missing)."""
        if not set(missing) <= set(self.optional):
            raise ValueError(f"cell {self.id}: {sorted(set(missing) - set(self.optional))} are not optional dependencies")
        params = dict(self.params, artifacts=[a for a in self.params.get("artifacts", []) if a not in missing])
        params["missing_artifacts"] = {**self.params.get("missing_artifacts", {}), **missing}
        return replace(
            self,
            params=params,
            deps=tuple(d for d in self.deps if d not in missing),
            optional=tuple(d for d in self.optional if d not in missing),
            inputs={k: v for k, v in self.inputs.items() if v.rsplit(":", 1)[0] not in missing},
        )


@dataclass
class Plan:
    """Cells in dependency order, and their input hashes."""

    config: ExperimentConfig
    cells: dict[str, Cell]
    hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for cell in self.cells.values():
            self.hashes[cell.id] = self.hash_of(cell)

    def hash_of(self, cell: Cell) -> str:
        """The input hash of `cell`: its kind, its parameters with local files by content, its dependencies' hashes.

        A checkpoint counts by its sha256 and an image folder by its file listing, not by their
        paths, so moving them keeps finished cells; why an artifact is missing is not an input.
        """
        params = {k: v for k, v in cell.params.items() if k != "missing_artifacts"}
        digest = hashlib.sha256()
        doc = {"schema": CELL_SCHEMA, "kind": cell.kind, "params": by_content(params)}
        digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
        for dep in cell.deps:
            digest.update(self.hashes[dep].encode())
        return digest.hexdigest()

    def replace_cell(self, cell: Cell) -> str:
        """Put `cell` in place of the cell with its id (nothing depends on a cell with optional deps); its new hash."""
        if any(cell.id in other.deps for other in self.cells.values()):
            raise ValueError(f"cell {cell.id} has dependents: its hash cannot change alone")
        self.cells[cell.id] = cell
        self.hashes[cell.id] = self.hash_of(cell)
        return self.hashes[cell.id]

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

    def matching(self, patterns: list[str]) -> list[str]:
        """The cells whose id matches any glob pattern (ConfigError when none does)."""
        import fnmatch

        wanted = [c for c in self.cells if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
        if not wanted:
            raise ConfigError(f"no cell matches {', '.join(patterns)}; cells look like {next(iter(self.cells))}")
        return wanted

    def select(self, patterns: list[str], *, finished: Callable[[str], bool] | None = None) -> list[str]:
        """The cells matching any glob pattern, plus the cells they cannot run without, in plan order.

        A matching replay, availability or depth cell brings its export, not every craft whose
        artifact it would replay: it replays the crafts that are selected too, or that
        `finished(cell_id)` says the store already holds. Use `restrict` for the plan to run.
        """
        wanted: set[str] = set()
        todo = self.matching(patterns)
        while todo:
            cell_id = todo.pop()
            if cell_id in wanted:
                continue
            wanted.add(cell_id)
            todo.extend(self.cells[cell_id].required)
        for cell_id in reversed(list(self.cells)):  # finished optional deps come with what they need
            if cell_id not in wanted:
                continue
            for dep in self.cells[cell_id].optional:
                if dep not in wanted and finished is not None and finished(dep):
                    todo.append(dep)
            while todo:
                dep = todo.pop()
                if dep not in wanted:
                    wanted.add(dep)
                    todo.extend(self.cells[dep].required)
        return [c for c in self.cells if c in wanted]

    def restrict(self, patterns: list[str], *, finished: Callable[[str], bool] | None = None) -> Plan:
        """The plan of `select(patterns)`: each cell without the optional dependencies left out (recorded as missing)."""
        ids = self.select(patterns, finished=finished)
        keep = set(ids)
        cells = {}
        for cell_id in ids:
            cell = self.cells[cell_id]
            dropped = {d: NOT_SELECTED for d in cell.optional if d not in keep}
            cells[cell_id] = cell.without(dropped) if dropped else cell
        return Plan(config=self.config, cells=cells)

    def missing_files(self) -> list[str]:
        """The checkpoints and image folder the cells of this plan read that do not exist, one line each."""
        from edgeattack.experiments.config import missing_files

        used: set[str] = set()
        for cell in self.cells.values():
            used.update(_model_names(cell.params))
        return missing_files(self.config.data, [m for m in self.config.models if m.name in used])


def _model_names(params: dict[str, Any]) -> list[str]:
    model = params.get("model")
    specs = params.get("models") or ([model] if isinstance(model, dict) else [])
    return [s["name"] for s in specs if isinstance(s, dict)]


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
                optional=tuple(c.id for c in replays),
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
                    optional=tuple(c.id for c in desparsify),
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
                optional=tuple(c.id for c in desparsify),
            )
        )


def _craft_models(cell: Cell) -> list[str]:
    return [m["name"] for m in cell.params["models"]]
