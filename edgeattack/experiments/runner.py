"""Run a plan against its store: skip finished cells, run the rest on an executor, record everything.

A cell runs once all the cells it depends on are done. A cell that fails is recorded with its
error and traceback, the cells downstream of it are recorded as skipped (naming the failed
dependency), and every other cell still runs; the summary lists the failures at the end. A failed
craft skips nothing: the replay, availability and depth cells that would read its artifact run on
the artifacts that exist, and record the missing one ("not replayed: artifact X failed to craft:
reason") in their result, the store and the report.

Before any cell starts, every checkpoint and image folder the cells to run read must exist: a
run with missing files fails at once, naming all of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeattack.errors import ConfigError
from edgeattack.experiments.config import ExperimentConfig
from edgeattack.experiments.plan import NOT_SELECTED, Cell, Plan, build_plan
from edgeattack.experiments.store import ExperimentStore
from edgeattack.experiments.task import CellFailure, CellOutcome, CellTask
from edgeattack.logs import replay_records

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, str], None]
"""Called as `progress(event, cell_id)`, event one of cached, start, done, failed, skipped."""


@dataclass
class RunSummary:
    """What one `run` did."""

    store: Path
    planned: int
    executor: str
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    not_replayed: dict[str, dict[str, str]] = field(default_factory=dict)
    """Cell -> {craft cell: why its artifact is missing}, for crafts that failed or were skipped."""
    interrupted: bool = False
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped and not self.interrupted

    def describe(self) -> str:
        text = (
            f"{self.planned} cells: {len(self.ran)} ran, {len(self.cached)} already finished, "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped ({self.executor}, {self.wall_s:.1f} s)"
        )
        for cell_id, error in self.failed.items():
            text += f"\n  failed  {cell_id}: {error}"
        for cell_id, reason in self.skipped.items():
            text += f"\n  skipped {cell_id}: {reason}"
        for cell_id, missing in self.not_replayed.items():
            for craft, reason in missing.items():
                text += f"\n  partial {cell_id}: not replayed: artifact {craft} {reason}"
        return text


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def planned(plan: Plan, store_dir: str | Path, only: list[str] | None) -> Plan:
    """The plan a run into `store_dir` would run: all of it, or what `only` selects (with what the store holds)."""
    from edgeattack.experiments.store import DB_NAME

    if not only:
        return plan
    if not (Path(store_dir) / DB_NAME).is_file():
        return plan.restrict(only)
    with ExperimentStore(store_dir) as store:
        return plan.restrict(only, finished=lambda cell_id: store.is_finished(cell_id, plan.hashes[cell_id]))


def check_files(plan: Plan) -> None:
    """ConfigError naming every checkpoint and image folder the plan's cells read that does not exist."""
    missing = plan.missing_files()
    if missing:
        raise ConfigError(
            f"{len(missing)} input file(s) of {plan.config.name} are missing; nothing was run:\n  " + "\n  ".join(missing)
        )


def torch_gpus(config: ExperimentConfig) -> float | None:
    """Ray GPUs per torch-heavy cell: the config's, 0 on `device: cpu`, 1 on cuda, None (ask the cluster) on auto."""
    if config.executor.gpus_per_torch_cell is not None:
        return config.executor.gpus_per_torch_cell
    return {"cpu": 0.0, "cuda": 1.0}.get(config.device)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    only: list[str] | None = None,
    rerun: list[str] | None = None,
    progress: ProgressCallback | None = None,
) -> RunSummary:
    """Run `config`'s plan into the store at `out_dir` (created if new), resuming what is there.

    `executor`/`workers`/`ray_address` override the config's executor section; `only` restricts
    the run to cells matching glob patterns and the cells they cannot run without (a replay
    replays the crafts selected too, or already in the store: `Plan.restrict`); `rerun` forces
    the cells matching glob patterns (only those) to run again even if finished. ConfigError,
    before anything runs, when checkpoints or the image folder the cells read are missing.
    """
    plan = build_plan(config)
    check_files(plan.restrict(only) if only else plan)
    kind = executor or config.executor.kind
    n_workers = workers or config.executor.workers
    threads = config.executor.threads or default_threads(n_workers)
    start = time.perf_counter()
    with ExperimentStore(out_dir, create=True) as store:
        store.lock()
        store.bind_experiment(config.name, config.model_dump(mode="json"), list(plan.cells))
        store.clean_scratch()
        if only:
            full = plan
            plan = full.restrict(only, finished=lambda cell_id: store.is_finished(cell_id, full.hashes[cell_id]))
        selected = list(plan.cells)
        forced = set(plan.matching(rerun)) if rerun else set()
        summary = RunSummary(store=store.directory, planned=len(selected), executor=kind)
        run_id = store.start_run(kind, config.sha256(), len(selected))
        try:
            _Scheduler(plan, store, selected, forced, summary, progress, threads).run(
                kind, n_workers, ray_address or config.executor.ray_address, torch_gpus(config)
            )
        except BaseException:
            summary.interrupted = True
            raise
        finally:
            summary.wall_s = time.perf_counter() - start
            store.finish_run(
                run_id,
                ran=len(summary.ran),
                cached=len(summary.cached),
                failed=len(summary.failed),
                skipped=len(summary.skipped),
                interrupted=summary.interrupted,
            )
    return summary


class _Scheduler:
    def __init__(
        self,
        plan: Plan,
        store: ExperimentStore,
        selected: list[str],
        forced: set[str],
        summary: RunSummary,
        progress: ProgressCallback | None,
        threads: int,
    ) -> None:
        self.plan, self.store, self.summary = plan, store, summary
        self.progress = progress or (lambda _event, _cell: None)
        self.threads = threads
        self.done: set[str] = set()
        self.forced = forced
        self.broken: dict[str, str] = {}
        self.waiting: list[str] = []
        self.scratch: dict[str, tuple[Path, float]] = {}
        self.timing_in_flight: set[str] = set()
        self.exclusive_threads = threads
        for cell_id in selected:
            if cell_id not in forced and store.is_finished(cell_id, plan.hashes[cell_id]):
                self.done.add(cell_id)
                summary.cached.append(cell_id)
                self.progress("cached", cell_id)
            else:
                self.waiting.append(cell_id)

    def run(self, kind: str, workers: int, ray_address: str | None, gpus: float | None = None) -> None:
        if not self.waiting:
            return
        from edgeattack.experiments.cells import run_cell
        from edgeattack.experiments.executors import make_executor

        options = {"gpus_per_torch_cell": gpus} if kind == "ray" else {}
        with make_executor(kind, run_cell, workers=workers, ray_address=ray_address, **options) as executor:
            exclusive = self.plan.config.metrics.exclusive_timing and executor.capacity > 1
            here = kind != "ray" or not ray_address  # a remote node's cores are not known here
            self.exclusive_threads = (os.cpu_count() or 1) if exclusive and here else self.threads
            while self.waiting or executor.pending:
                self._skip_broken()
                for cell_id in self._ready(executor.capacity - executor.pending, exclusive, executor.pending):
                    executor.submit(self._task(self.plan.cells[cell_id]))
                    self.progress("start", cell_id)
                if executor.pending == 0:
                    if self.waiting:  # pragma: no cover - a plan is acyclic and ordered
                        raise RuntimeError(f"cells cannot start: {self.waiting[:3]}")
                    break
                for task, outcome in executor.wait():
                    self.timing_in_flight.discard(task.id)
                    self._record(task, outcome)

    def _skip_broken(self) -> None:
        for cell_id in list(self.waiting):
            cell = self.plan.cells[cell_id]
            broken = [d for d in cell.deps if d in self.broken]
            if not broken:
                continue
            bad = next((d for d in broken if d not in cell.optional), None)
            if bad is None:  # only artifacts are missing: run on the others
                missing = {d: self._why_missing(d) for d in broken}
                self.plan.replace_cell(cell.without(missing))
                self.summary.not_replayed.setdefault(cell_id, {}).update(missing)
                continue
            reason = f"dependency {bad} {'failed' if bad in self.summary.failed else 'was skipped'}"
            self.waiting.remove(cell_id)
            self.broken[cell_id] = reason
            self.summary.skipped[cell_id] = reason
            self.store.mark_skipped(cell_id, cell.kind, self.plan.hashes[cell_id], cell.params, reason)
            self.progress("skipped", cell_id)

    def _why_missing(self, craft: str) -> str:
        if craft in self.summary.failed:
            return f"failed to craft: {self.summary.failed[craft]}"
        return f"was not crafted: {self.broken[craft]}"

    def _cached_now(self, cell_id: str) -> bool:
        """A cell that lost artifacts during this run and is already stored with what is left."""
        if cell_id not in self.summary.not_replayed or cell_id in self.forced:
            return False
        if not self.store.is_finished(cell_id, self.plan.hashes[cell_id]):
            return False
        self.waiting.remove(cell_id)
        self.done.add(cell_id)
        self.summary.cached.append(cell_id)
        self.progress("cached", cell_id)
        return True

    def _ready(self, room: int, exclusive: bool, pending: int) -> list[str]:
        """Cells to start now: their dependencies are done, and (with `exclusive`) a cell that times
        latency starts only on an idle executor and keeps every other cell from starting beside it."""
        ready: list[str] = []
        if exclusive and self.timing_in_flight:
            return ready
        for cell_id in list(self.waiting):
            if len(ready) >= room:
                break
            cell = self.plan.cells[cell_id]
            if not all(d in self.done for d in cell.deps) or self._cached_now(cell_id):
                continue
            if exclusive and cell.timing:
                if ready or pending:
                    continue
                ready.append(cell_id)
                self.timing_in_flight.add(cell_id)
                break
            ready.append(cell_id)
        for cell_id in ready:
            self.waiting.remove(cell_id)
        return ready

    def _task(self, cell: Cell) -> CellTask:
        inputs: dict[str, str] = {}
        for name, (dep, output) in cell.input_refs().items():
            inputs[name] = str(self.store.output_path(dep, output))
            if output == "engine":
                record = self.store.get(dep)
                if record is not None and "engine_sidecar" in record.outputs:
                    inputs[f"{name}_sidecar"] = str(self.store.output_path(dep, "engine_sidecar"))
        self.store.mark_running(cell.id, cell.kind, self.plan.hashes[cell.id], cell.params)
        scratch = self.store.scratch_dir(cell.id)
        self.scratch[cell.id] = (scratch, time.perf_counter())
        return CellTask(
            id=cell.id,
            kind=cell.kind,
            params=cell.params,
            inputs=inputs,
            workdir=str(scratch.resolve()),
            resources=dict(cell.resources),
            threads=self.exclusive_threads if cell.timing else self.threads,
            device=self.plan.config.device,
            torch=cell.torch,
        )

    def _record(self, task: CellTask, outcome: CellOutcome | CellFailure) -> None:
        replay_records(outcome.log, task.id)
        scratch, started = self.scratch.pop(task.id)
        if isinstance(outcome, CellFailure):
            self.broken[task.id] = outcome.error
            self.summary.failed[task.id] = outcome.error
            self.store.mark_failed(
                task.id, error=outcome.error, traceback=outcome.traceback, host=outcome.host,
                wall_s=time.perf_counter() - started,
            )
            logger.warning("cell %s failed: %s", task.id, outcome.error)
            self.progress("failed", task.id)
            return
        try:
            self.store.mark_done(
                task.id, result=outcome.result, outputs=outcome.outputs, scratch=scratch, wall_s=outcome.wall_s, host=outcome.host
            )
        except Exception as exc:  # a result that cannot be stored is that cell's failure, not the run's
            error = f"{type(exc).__name__}: {exc}"
            self.broken[task.id] = error
            self.summary.failed[task.id] = error
            self.store.mark_failed(task.id, error=error, traceback=None, host=outcome.host, wall_s=outcome.wall_s)
            self.progress("failed", task.id)
            return
        unreplayable = {
            craft: reason
            for craft, reason in (outcome.result.get("missing_artifacts") or {}).items()
            if reason != NOT_SELECTED
        }
        if unreplayable:  # found by the cell itself (an artifact for another dataset or input size)
            self.summary.not_replayed.setdefault(task.id, {}).update(unreplayable)
        self.done.add(task.id)
        self.summary.ran.append(task.id)
        self.progress("done", task.id)
