"""The Ray executor: each cell a Ray task, on a local instance or on a cluster.

A cell asks for Ray resources: `{"CPU": 1}` by default, `{"GPU": 1}` for a CUDA box, or a custom
resource such as `{"jetson": 1}` offered by boards joined as Ray nodes
(`ray start --address=HEAD:6379 --resources='{"jetson": 1}'`), so that each cell lands on a node
that can run it. A cell no node of the cluster can ever run fails at once instead of waiting.
A torch-heavy cell (a craft: `CellTask.torch`) also asks for `gpus_per_torch_cell`
GPUs, by default one when the cluster reports GPUs (`num_gpus=1`: Ray gives it its own GPU) and
none on a CPU-only cluster; a cell whose resources already name a GPU keeps its own amount.

Nodes of a cluster need not share a filesystem: with `ship_files` the driver sends the input
files along with the task, the node runs the cell in a private temporary directory, and the
files the cell wrote come back and are written atomically into `task.workdir` on the driver.

Ray is imported only when a RayExecutor is made (`pip install "edgeattack[ray]"`). Every node
needs edgeattack installed (the same version): the cell function travels by reference. Tasks are
not retried by Ray: a cell whose worker dies fails, like in the process executor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.experiments.executors import Executor, Finished, run_guarded
from edgeattack.experiments.task import CellFailure, CellFunction, CellOutcome, CellTask, host_id

logger = logging.getLogger(__name__)

RAY_HINT = 'pip install "edgeattack[ray]"'
# Ray's own bookkeeping entries of a node's resources, never asked for by a cell.
_BOOKKEEPING = ("memory", "object_store_memory")
_BOOKKEEPING_PREFIXES = ("node:", "accelerator_type:")

Packed = tuple[str, dict[str, bytes]]  # (name of the file or folder, relative path -> bytes)


class InfeasibleResourcesError(EdgeAttackError):
    """A cell asks for resources that no node of the Ray cluster offers."""


class OutputShippingError(EdgeAttackError):
    """A cell's outputs cannot be sent back to the driver (missing, or outside its workdir)."""


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"the ray executor needs Ray, which cannot be imported ({exc}); {RAY_HINT}") from None
    return ray


class RayExecutor(Executor):
    """Cells as Ray tasks: on a Ray instance started here (`address=None`), or on the cluster at `address`."""

    name = "ray"

    def __init__(
        self,
        fn: CellFunction,
        *,
        workers: int = 1,
        address: str | None = None,
        ship_files: bool | None = None,
        gpus_per_torch_cell: float | None = None,
    ) -> None:
        self._ray = import_ray()
        self._fn = fn
        self.workers = workers
        self.address = address
        self.ship_files = address is not None if ship_files is None else bool(ship_files)
        self.capacity = workers
        self.gpus_per_torch_cell = gpus_per_torch_cell
        self._owns_instance = False
        self._remote: Any = None
        self._nodes: list[dict[str, float]] = []
        self._running: dict[Any, CellTask] = {}
        self._finished: list[Finished] = []

    def start(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            logger.info("ray executor: using the Ray instance this process is already connected to")
        elif self.address is None:
            ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._owns_instance = True
        else:
            try:
                ray.init(address=self.address)
            except Exception as exc:
                raise ConfigError(f"cannot connect to the Ray cluster at {self.address!r}: {exc}") from exc
        self._remote = ray.remote(_run_remote)
        self._nodes = self._node_resources()
        self.capacity = max(self.workers, _slots(self._nodes))
        if self.gpus_per_torch_cell is None:
            self.gpus_per_torch_cell = 1.0 if any(node.get("GPU", 0.0) > 0 for node in self._nodes) else 0.0
        logger.info(
            "ray executor: %d node(s), %d task slots, files %s, %g GPU(s) per torch cell",
            len(self._nodes),
            self.capacity,
            "shipped" if self.ship_files else "shared",
            self.gpus_per_torch_cell,
        )

    def stop(self) -> None:
        ray = self._ray
        for ref in self._running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._running.clear()
        self._finished.clear()
        if self._owns_instance:
            ray.shutdown()
            self._owns_instance = False

    def submit(self, task: CellTask) -> None:
        if self._remote is None:
            raise RuntimeError("the ray executor is not started: use it as a context manager")
        try:
            options = ray_options(self.task_resources(task))
            reason = unmet_resources(_demand(options), self._nodes)
            if reason is not None:  # nodes may have joined since
                self._nodes = self._node_resources()
                reason = unmet_resources(_demand(options), self._nodes)
            if reason is not None:
                raise InfeasibleResourcesError(f"cell {task.id}: {reason}")
            shipped = self._ray.put(pack_inputs(task.inputs)) if self.ship_files else None
            ref = self._remote.options(**options).remote(self._fn, task, shipped)
        except Exception as exc:
            self._finished.append((task, CellFailure.from_exception(exc)))
            return
        self._running[ref] = task

    def wait(self, timeout: float | None = None) -> list[Finished]:
        ray = self._ray
        if self._running and not self._finished:
            ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if self._running:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
            for ref in ready:
                task = self._running.pop(ref)
                self._finished.append((task, self._fetch(task, ref)))
        finished, self._finished = self._finished, []
        return finished

    @property
    def pending(self) -> int:
        return len(self._running) + len(self._finished)

    def _fetch(self, task: CellTask, ref: Any) -> CellOutcome | CellFailure:
        try:
            outcome, files = self._ray.get(ref)
        except Exception as exc:  # the worker died, the task was cancelled, a node was lost...
            return CellFailure.from_exception(getattr(exc, "cause", None) or exc, host="ray")
        if files is None or not isinstance(outcome, CellOutcome):
            return outcome
        try:
            return land_outputs(task, outcome, files)
        except OSError as exc:
            return CellFailure.from_exception(exc)

    def task_resources(self, task: CellTask) -> dict[str, float]:
        """What `task` asks Ray for: its own resources, and a GPU for a torch-heavy cell (see the module doc)."""
        resources = dict(task.resources)
        gpus = self.gpus_per_torch_cell or 0.0
        if task.torch and gpus > 0 and "GPU" not in resources:
            resources["GPU"] = gpus
        return resources

    def _node_resources(self) -> list[dict[str, float]]:
        return [dict(node.get("Resources") or {}) for node in self._ray.nodes() if node.get("Alive")]


# -- resources ------------------------------------------------------------------------------------
def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray task options for a cell's resources: CPU (default 1) and GPU as such, `memory` in bytes, the rest custom."""
    options: dict[str, Any] = {
        "num_cpus": float(resources.get("CPU", 1)),
        "num_gpus": float(resources.get("GPU", 0)),
        "max_retries": 0,
    }
    if "memory" in resources:
        options["memory"] = float(resources["memory"])
    custom = {k: float(v) for k, v in resources.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        options["resources"] = custom
    return options


def _demand(options: dict[str, Any]) -> dict[str, float]:
    demand = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options.get("resources", {})}
    if "memory" in options:
        demand["memory"] = options["memory"]
    return {k: v for k, v in demand.items() if v > 0}


def unmet_resources(demand: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why no node can ever run a task that needs `demand`, or None when one can."""
    if any(all(node.get(k, 0.0) >= v for k, v in demand.items()) for node in nodes):
        return None
    if not nodes:
        return "the Ray cluster has no live node"
    offered = sorted({k for node in nodes for k in node if _public(k)})
    missing = [k for k in demand if not any(k in node for node in nodes)]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        return f"no node of the Ray cluster offers resource {names} (the nodes offer: {', '.join(offered)})"
    for k, v in demand.items():
        most = max(node.get(k, 0.0) for node in nodes)
        if most < v:
            return f"it needs {k}={v:g} but no node of the Ray cluster has more than {k}={most:g}"
    return f"no single node of the Ray cluster offers all of {demand} together"


def _public(resource: str) -> bool:
    return resource not in _BOOKKEEPING and not resource.startswith(_BOOKKEEPING_PREFIXES)


def _slots(nodes: list[dict[str, float]]) -> int:
    """How many one-unit tasks the cluster runs at once: its CPUs, GPUs and custom resources."""
    return int(sum(v for node in nodes for k, v in node.items() if _public(k)))


# -- files ----------------------------------------------------------------------------------------
def pack_path(path: str | Path) -> Packed:
    """A file or a folder as (its name, relative path -> bytes), relative paths starting with the name."""
    root = Path(path)
    if root.is_file():
        return root.name, {root.name: root.read_bytes()}
    if root.is_dir():
        files = {
            f"{root.name}/{p.relative_to(root).as_posix()}": p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        return root.name, files
    raise FileNotFoundError(f"no such file or folder: {root}")


def pack_inputs(inputs: dict[str, str]) -> dict[str, Packed]:
    """Every input file (or folder) read into memory, to be sent to the node that runs the cell."""
    packed = {}
    for name, path in inputs.items():
        try:
            packed[name] = pack_path(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"input {name!r} of the cell does not exist: {path}") from None
    return packed


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    base = root.resolve()
    for relative, data in files.items():
        target = (root / relative).resolve()
        if target != base and base not in target.parents:
            raise OSError(f"refusing to write {relative!r} outside {root}")
        atomic_write_bytes(target, data)


def _run_remote(fn: CellFunction, task: CellTask, shipped: dict[str, Packed] | None) -> tuple[Any, Any]:
    """The Ray task: `fn(task)` here; with `shipped` inputs, in a private directory whose files go back."""
    if shipped is None:
        return run_guarded(fn, task), None
    try:
        with tempfile.TemporaryDirectory(prefix="edgeattack-cell-") as tmp:
            root = Path(tmp)
            inputs = {}
            for i, (name, (top, files)) in enumerate(shipped.items()):
                _write_files(root / "inputs" / str(i), files)
                inputs[name] = str(root / "inputs" / str(i) / top)
            workdir = root / "work"
            workdir.mkdir()
            outcome = run_guarded(fn, dataclasses.replace(task, inputs=inputs, workdir=str(workdir)))
            if isinstance(outcome, CellFailure):
                return outcome, None
            outputs = _relative_outputs(workdir, outcome.outputs)
            _, files = pack_path(workdir)
            files = {name.split("/", 1)[1]: data for name, data in files.items()}
            return dataclasses.replace(outcome, outputs=outputs), files
    except Exception as exc:
        return CellFailure.from_exception(exc, host=host_id()), None


def _relative_outputs(workdir: Path, outputs: dict[str, str]) -> dict[str, str]:
    base = workdir.resolve()
    relative = {}
    for name, path in outputs.items():
        target = (workdir / path).resolve()
        if target != base and base not in target.parents:
            raise OutputShippingError(f"output {name!r} is not under the cell's workdir: {path}")
        if not target.exists():
            raise OutputShippingError(f"output {name!r} was not written: {path}")
        relative[name] = target.relative_to(base).as_posix()
    return relative


def land_outputs(task: CellTask, outcome: CellOutcome, files: dict[str, bytes]) -> CellOutcome:
    """Write the files a node sent back into `task.workdir`; the outcome's outputs become paths there."""
    root = Path(task.workdir)
    _write_files(root, files)
    outputs = {
        name: str(root / relative) if relative != "." else str(root) for name, relative in outcome.outputs.items()
    }
    return dataclasses.replace(outcome, outputs=outputs)
