"""Executors: the same probe cells on every executor (local, process pool, Ray with and without file shipping)."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgeattack.errors import ConfigError
from edgeattack.experiments.executors import EXECUTORS, Executor, make_executor
from edgeattack.experiments.probe_cells import run_probe
from edgeattack.experiments.task import CellFailure, CellOutcome, CellTask

KINDS = ["local", "process", "ray", "ray-ship"]
POOLED = ["process", "ray", "ray-ship"]


def _task(
    tmp_path: Path,
    kind: str,
    cell_id: str,
    *,
    inputs: dict[str, str] | None = None,
    resources: dict[str, float] | None = None,
    threads: int = 1,
    **params: Any,
) -> CellTask:
    workdir = tmp_path / "cells" / cell_id
    workdir.mkdir(parents=True)
    return CellTask(
        id=cell_id,
        kind=kind,
        params=params,
        inputs=inputs or {},
        workdir=str(workdir),
        resources=resources or {"CPU": 1},
        threads=threads,
    )


def _drain(executor: Executor, deadline_s: float = 30) -> dict[str, CellOutcome | CellFailure]:
    """Wait for every submitted task; each comes back exactly once."""
    outcomes: dict[str, CellOutcome | CellFailure] = {}
    stop = time.monotonic() + deadline_s
    while executor.pending:
        assert time.monotonic() < stop, f"still {executor.pending} pending after {deadline_s} s"
        for task, outcome in executor.wait(timeout=5):
            assert task.id not in outcomes, f"{task.id} returned twice"
            outcomes[task.id] = outcome
    assert executor.wait(timeout=0) == []
    return outcomes


def _make(kind: str, request: pytest.FixtureRequest, fn: Any = run_probe, workers: int = 2) -> Executor:
    if kind.startswith("ray"):
        request.getfixturevalue("ray_cluster")
        return make_executor("ray", fn, workers=workers, ship_files=kind == "ray-ship")
    return make_executor(kind, fn, workers=workers)


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """One local Ray instance for the module, with a custom resource as a Jetson board would offer."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, resources={"jetson": 1}, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def executor(kind: str, request: pytest.FixtureRequest) -> Any:
    with _make(kind, request) as running:
        yield running


# -- first, before the module's Ray instance exists ---------------------------------------------
def test_ray_starts_and_stops_its_own_instance(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    with make_executor("ray", run_probe, workers=1) as executor:
        assert ray.is_initialized()
        assert executor.ship_files is False  # type: ignore[attr-defined]
        executor.submit(_task(tmp_path, "echo", "a", text="own"))
        (outcome,) = _drain(executor).values()
    assert isinstance(outcome, CellOutcome) and outcome.result["text"] == "own"
    assert not ray.is_initialized()


# -- every executor ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_echo_reads_inputs_and_lands_outputs_in_workdir(kind: str, executor: Executor, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello ")
    (tmp_path / "b.txt").write_text("world")
    inputs = {"a": str(tmp_path / "a.txt"), "b": str(tmp_path / "b.txt")}
    task = _task(tmp_path, "echo", "echo/1", inputs=inputs, text="!")
    executor.submit(task)
    outcome = _drain(executor)["echo/1"]
    assert isinstance(outcome, CellOutcome), outcome
    assert outcome.result["joined"] == "hello world!"
    assert outcome.result["inputs"] == ["a", "b"]
    assert set(outcome.outputs) == {"out", "joined"}
    for name, content in (("out", "!"), ("joined", "hello world!")):
        path = Path(outcome.outputs[name])
        assert path.parent == Path(task.workdir)
        assert path.read_text() == content
    assert outcome.host and outcome.wall_s >= 0
    if kind.startswith("ray"):
        assert outcome.result["ray_resources"] == {"CPU": 1.0}
    if kind == "ray-ship":  # the cell ran in a private copy, and its files came back
        assert outcome.result["workdir"] != task.workdir
        assert sorted(p.name for p in Path(task.workdir).iterdir()) == ["joined.txt", "out.txt"]
    else:
        assert outcome.result["workdir"] == task.workdir


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_cell_is_a_failure_and_the_others_finish(kind: str, executor: Executor, tmp_path: Path) -> None:
    executor.submit(_task(tmp_path, "echo", "ok-1", text="1"))
    executor.submit(_task(tmp_path, "fail", "bad", message="boom"))
    executor.submit(_task(tmp_path, "echo", "ok-2", text="2"))
    outcomes = _drain(executor)
    failure = outcomes["bad"]
    assert isinstance(failure, CellFailure)
    assert failure.error == "ValueError: boom"
    assert "fail_cell" in failure.traceback and failure.host
    assert all(isinstance(outcomes[i], CellOutcome) for i in ("ok-1", "ok-2"))


@pytest.mark.parametrize("kind", KINDS)
def test_pending_and_wait(kind: str, executor: Executor, tmp_path: Path) -> None:
    assert executor.pending == 0
    assert executor.wait() == []  # nothing submitted: returns at once
    assert executor.capacity >= 1
    for i in range(3):
        executor.submit(_task(tmp_path, "sleep", f"s{i}", seconds=0.05))
    assert executor.pending == 3
    seen: list[str] = []
    while executor.pending:
        before = executor.pending
        finished = executor.wait()
        assert finished, "wait() without a timeout returns at least one task"
        seen += [task.id for task, _ in finished]
        assert executor.pending == before - len(finished)
    assert sorted(seen) == ["s0", "s1", "s2"]
    assert executor.wait(timeout=0.01) == []


@pytest.mark.parametrize("kind", POOLED)
def test_wait_with_a_timeout_may_return_nothing(kind: str, executor: Executor, tmp_path: Path) -> None:
    executor.submit(_task(tmp_path, "sleep", "slow", seconds=0.6))
    start = time.monotonic()
    assert executor.wait(timeout=0.05) == []
    assert time.monotonic() - start < 0.5
    assert executor.pending == 1
    assert isinstance(_drain(executor)["slow"], CellOutcome)


@pytest.mark.parametrize("kind", KINDS)
def test_threads_are_passed(kind: str, executor: Executor, tmp_path: Path) -> None:
    before = os.environ.get("OMP_NUM_THREADS")
    executor.submit(_task(tmp_path, "threads", "t3", threads=3))
    executor.submit(_task(tmp_path, "threads", "t1", threads=1))
    outcomes = _drain(executor)
    for cell_id, n in (("t3", "3"), ("t1", "1")):
        outcome = outcomes[cell_id]
        assert isinstance(outcome, CellOutcome), outcome
        assert outcome.result["omp"] == n and outcome.result["mkl"] == n
    assert os.environ.get("OMP_NUM_THREADS") == before  # the local executor restores the driver's


# -- process pool --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["process"])
def test_process_pool_survives_a_crashing_worker(kind: str, executor: Executor, tmp_path: Path) -> None:
    executor.submit(_task(tmp_path, "sleep", "slow", seconds=0.3))
    executor.submit(_task(tmp_path, "crash", "crash", code=3))
    for i in range(3):
        executor.submit(_task(tmp_path, "echo", f"e{i}", text=str(i)))
    outcomes = _drain(executor)
    crash = outcomes.pop("crash")
    assert isinstance(crash, CellFailure)
    assert crash.error.startswith("BrokenProcessPool:") and "exit code 3" in crash.error and "crash" in crash.error
    assert all(isinstance(o, CellOutcome) for o in outcomes.values()), outcomes
    assert sorted(outcomes) == ["e0", "e1", "e2", "slow"]
    executor.submit(_task(tmp_path, "echo", "after", text="still here"))
    assert isinstance(_drain(executor)["after"], CellOutcome)


@pytest.mark.parametrize("kind", ["process"])
def test_process_pool_names_the_signal_and_isolates_suspects(kind: str, executor: Executor, tmp_path: Path) -> None:
    # SIGSEGV is told apart from the workers the broken pool terminates; SIGTERM is not, so both
    # cells then run again one at a time and only the crashing one fails.
    executor.submit(_task(tmp_path, "crash", "segv", signal="SIGSEGV"))
    executor.submit(_task(tmp_path, "sleep", "bystander-1", seconds=0.3))
    assert "killed by SIGSEGV" in _drain(executor)["segv"].error  # type: ignore[union-attr]
    executor.submit(_task(tmp_path, "crash", "term", signal="SIGTERM"))
    executor.submit(_task(tmp_path, "sleep", "bystander-2", seconds=0.3))
    outcomes = _drain(executor)
    assert isinstance(outcomes["term"], CellFailure) and "SIGTERM" in outcomes["term"].error
    assert isinstance(outcomes["bystander-2"], CellOutcome)


def test_process_executor_needs_a_picklable_function() -> None:
    with pytest.raises(ConfigError, match="top-level"):
        make_executor("process", lambda task: task, workers=1)


@pytest.mark.parametrize("kind", ["process", "ray"])
def test_interrupt_stops_the_workers(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), _make(kind, request) as executor:
        executor.submit(_task(tmp_path, "sleep", "long", seconds=60))
        executor.submit(_task(tmp_path, "sleep", "queued", seconds=60))
        assert executor.wait(timeout=0.5) == []
        raise KeyboardInterrupt
    assert time.monotonic() - start < 15
    if kind == "process":
        assert multiprocessing.active_children() == []
    else:  # the cancelled tasks gave their CPUs back
        with _make(kind, request) as executor:
            for i in range(2):
                executor.submit(_task(tmp_path, "echo", f"e{i}", text="x"))
            assert all(isinstance(o, CellOutcome) for o in _drain(executor, deadline_s=20).values())


# -- Ray -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ray"])
def test_ray_task_needing_a_resource_no_node_has_fails_at_once(kind: str, executor: Executor, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    start = time.monotonic()
    executor.submit(_task(tmp_path, "echo", "tpu", resources={"CPU": 1, "tpu_pod": 1}))
    executor.submit(_task(tmp_path, "echo", "big", resources={"CPU": 64}))
    executor.submit(_task(tmp_path, "echo", "fine", text="ok"))
    if "GPU" not in ray.cluster_resources():
        executor.submit(_task(tmp_path, "echo", "gpu", resources={"CPU": 1, "GPU": 1}))
    outcomes = _drain(executor)
    assert time.monotonic() - start < 10
    assert isinstance(outcomes.pop("fine"), CellOutcome)
    for cell_id, words in {"tpu": "'tpu_pod'", "big": "CPU=64", "gpu": "'GPU'"}.items():
        if cell_id in outcomes:
            failure = outcomes[cell_id]
            assert isinstance(failure, CellFailure)
            assert failure.error.startswith("InfeasibleResourcesError:") and words in failure.error, failure.error


@pytest.mark.parametrize("kind", ["ray", "ray-ship"])
def test_ray_custom_resource_places_the_task(kind: str, executor: Executor, tmp_path: Path) -> None:
    executor.submit(_task(tmp_path, "echo", "board", resources={"CPU": 1, "jetson": 1}, text="on the board"))
    outcome = _drain(executor)["board"]
    assert isinstance(outcome, CellOutcome), outcome
    assert outcome.result["ray_resources"] == {"CPU": 1.0, "jetson": 1.0}


@pytest.mark.parametrize("kind", ["ray"])
def test_ray_crashing_worker_is_a_failure(kind: str, executor: Executor, tmp_path: Path) -> None:
    executor.submit(_task(tmp_path, "crash", "crash"))
    executor.submit(_task(tmp_path, "echo", "ok", text="x"))
    outcomes = _drain(executor)
    assert isinstance(outcomes["crash"], CellFailure) and "died" in outcomes["crash"].error
    assert isinstance(outcomes["ok"], CellOutcome)


def test_shipping_round_trip_without_ray(tmp_path: Path) -> None:
    from edgeattack.experiments.ray_executor import _run_remote, land_outputs, pack_inputs

    folder = tmp_path / "engine"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (tmp_path / "a.txt").write_text("A")
    task = _task(tmp_path, "echo", "x", inputs={"a": str(tmp_path / "a.txt")}, text="B")
    outcome, files = _run_remote(run_probe, task, pack_inputs(task.inputs))
    assert isinstance(outcome, CellOutcome) and outcome.outputs == {"out": "out.txt", "joined": "joined.txt"}
    landed = land_outputs(task, outcome, files)
    assert Path(landed.outputs["joined"]).read_text() == "AB"
    assert pack_inputs({"e": str(folder)})["e"] == ("engine", {"engine/sub/w.bin": b"\x00\x01"})
    with pytest.raises(FileNotFoundError, match="input 'gone'"):
        pack_inputs({"gone": str(tmp_path / "missing")})
    outside, files = _run_remote(_points_outside, task, pack_inputs(task.inputs))
    assert isinstance(outside, CellFailure) and "not under the cell's workdir" in outside.error and files is None


def _points_outside(task: CellTask) -> CellOutcome:
    return CellOutcome(result={}, outputs={"a": task.inputs["a"]}, wall_s=0.0, host="here")


# -- factory -------------------------------------------------------------------------------------
def test_unknown_executor_kind_lists_the_kinds() -> None:
    with pytest.raises(ConfigError, match="local, process, ray") as info:
        make_executor("proces", run_probe)
    assert "did you mean: process" in str(info.value)
    assert EXECUTORS == ("local", "process", "ray")
    with pytest.raises(ConfigError, match="workers"):
        make_executor("process", run_probe, workers=0)


def test_ray_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r'pip install "edgeattack\[ray\]"'):
        make_executor("ray", run_probe)


def test_a_function_that_returns_no_outcome_is_a_failure(tmp_path: Path) -> None:
    with make_executor("local", _returns_nothing) as executor:
        executor.submit(_task(tmp_path, "echo", "x"))
        (outcome,) = _drain(executor).values()
    assert (
        isinstance(outcome, CellFailure)
        and outcome.error.startswith("TypeError:")
        and "not a CellOutcome" in outcome.error
    )


def _returns_nothing(task: CellTask) -> Any:
    return None


class _FakeRay:
    """Just enough of `ray` to see the options a task is submitted with; tasks run at once, here."""

    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources
        self.options: dict[str, dict[str, Any]] = {}
        self.results: dict[int, Any] = {}

    def is_initialized(self) -> bool:
        return False

    def init(self, **_kwargs: Any) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def nodes(self) -> list[dict[str, Any]]:
        return [{"Alive": True, "Resources": dict(self.resources)}]

    def put(self, value: Any) -> Any:
        return value

    def remote(self, fn: Any) -> Any:
        fake = self

        class _Options:
            def __init__(self, options: dict[str, Any]) -> None:
                self.recorded = options

            def remote(self, cell_fn: Any, task: CellTask, shipped: Any) -> int:
                fake.options[task.id] = self.recorded
                ref = len(fake.results)
                fake.results[ref] = fn(cell_fn, task, shipped)
                return ref

        class _Remote:
            def options(self, **options: Any) -> _Options:
                return _Options(options)

        return _Remote()

    def wait(self, refs: list[int], num_returns: int = 1, timeout: float | None = None) -> tuple[list[int], list[int]]:
        return list(refs), []

    def get(self, ref: int) -> Any:
        return self.results[ref]

    def cancel(self, ref: int, force: bool = False) -> None:
        return None


@pytest.mark.parametrize(
    ("cluster", "gpus_per_torch_cell", "craft_gpus"),
    [({"CPU": 8.0, "GPU": 2.0}, None, 1.0), ({"CPU": 8.0}, None, 0.0), ({"CPU": 8.0, "GPU": 2.0}, 0.0, 0.0)],
)
def test_ray_asks_a_gpu_for_torch_cells_only(
    cluster: dict[str, float], gpus_per_torch_cell: float | None, craft_gpus: float, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    fake = _FakeRay(cluster)
    monkeypatch.setitem(sys.modules, "ray", fake)
    craft = dataclasses.replace(_task(tmp_path, "echo", "craft/pgd@m", value=1), torch=True)
    replay = _task(tmp_path, "echo", "replay/m/e", value=2)
    own = dataclasses.replace(_task(tmp_path, "echo", "craft/own@m", resources={"CPU": 1, "GPU": 0.5}), torch=True)
    with make_executor("ray", run_probe, workers=2, gpus_per_torch_cell=gpus_per_torch_cell) as executor:
        for task in (craft, replay, own):
            executor.submit(task)
        outcomes = _drain(executor)
    assert isinstance(outcomes["craft/pgd@m"], CellOutcome) and isinstance(outcomes["replay/m/e"], CellOutcome)
    assert fake.options["craft/pgd@m"]["num_gpus"] == craft_gpus
    assert fake.options["replay/m/e"]["num_gpus"] == 0.0
    if "GPU" in cluster:
        assert fake.options["craft/own@m"]["num_gpus"] == 0.5  # a cell's own GPU request is kept
    else:  # and on a cluster without GPUs it fails at once, saying so
        failure = outcomes["craft/own@m"]
        assert isinstance(failure, CellFailure) and "'GPU'" in failure.error


def test_run_config_device_decides_the_gpus_of_torch_cells() -> None:
    from edgeattack.experiments.loading import validate_config
    from edgeattack.experiments.plan import build_plan
    from edgeattack.experiments.runner import torch_gpus

    doc = {"name": "x", "models": ["vit_tiny_digits"], "engines": [{"name": "fp32"}],
           "whitebox": [{"name": "pgd", "method": "pgd", "eps": [0.03]}]}
    assert torch_gpus(validate_config(doc)) is None  # auto: ask the cluster
    assert torch_gpus(validate_config(dict(doc, device="cuda"))) == 1.0
    assert torch_gpus(validate_config(dict(doc, device="cpu"))) == 0.0
    assert torch_gpus(validate_config(dict(doc, device="cpu", executor={"gpus_per_torch_cell": 2}))) == 2.0
    cells = build_plan(validate_config(doc)).cells
    assert [c for c, cell in cells.items() if cell.torch] == ["craft/pgd-0.03@vit_tiny_digits"]
