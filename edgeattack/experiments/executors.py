"""Executors: run cells in this process, in a pool of worker processes, or on a Ray cluster.

Every executor speaks the same small protocol, so the scheduler does not care where cells run:

    with make_executor("process", run_cell, workers=4) as executor:
        executor.submit(task)                 # queue a CellTask
        for task, outcome in executor.wait(): # block until at least one finished
            ...                               # a CellOutcome, or a CellFailure

A cell never breaks its executor: an exception in the cell function, a worker process that dies
(segfault, `os._exit`, the OOM killer) or a Ray task that cannot be placed comes back as that
cell's `CellFailure`, and the other cells go on. Leaving the `with` block, normally or through an
exception such as KeyboardInterrupt, drops the queued cells and stops the running ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from edgeattack.errors import ConfigError, did_you_mean
from edgeattack.experiments.task import CellFailure, CellFunction, CellOutcome, CellTask
from edgeattack.logs import captured_records

if TYPE_CHECKING:

    from typing_extensions import Self

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "process", "ray")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

Finished = tuple[CellTask, CellOutcome | CellFailure]


class Executor(ABC):
    """Runs cell tasks somewhere; a context manager that starts and stops its workers."""

    name: str = ""
    capacity: int = 1

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:  # noqa: B027 - a hook: most executors start lazily
        """Start the workers (called by `__enter__`)."""

    def stop(self) -> None:  # noqa: B027 - a hook: nothing to stop by default
        """Drop queued tasks, stop running ones, release the workers (called by `__exit__`)."""

    @abstractmethod
    def submit(self, task: CellTask) -> None:
        """Queue `task`; its outcome comes back from a later `wait`."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Block until a submitted task finished (or `timeout` s passed: then maybe []); every finished one not yet returned."""

    @property
    @abstractmethod
    def pending(self) -> int:
        """Submitted tasks whose outcome `wait` has not returned yet."""


# -- in every worker ----------------------------------------------------------------------------
@contextlib.contextmanager
def thread_budget(threads: int) -> Iterator[None]:
    """Give the code inside `threads` CPU threads: the OpenMP/MKL variables, and torch if already imported.

    Torch is never imported here; a cell that imports it later reads the variables. Everything is
    restored on the way out, so a long-lived worker does not keep one cell's budget for the next.
    """
    threads = max(1, int(threads))
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None and hasattr(torch, "set_num_threads") else None
    if previous is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if previous is not None:
            torch.set_num_threads(previous)


def run_guarded(fn: CellFunction, task: CellTask) -> CellOutcome | CellFailure:
    """`fn(task)` under the task's thread budget; an exception, or a result that is no CellOutcome, is a CellFailure.

    What the cell logs and warns travels back with the outcome (`log`), for the driver to log.
    """
    with captured_records() as records:
        try:
            with thread_budget(task.threads):
                outcome = fn(task)
            if not isinstance(outcome, CellOutcome):
                raise TypeError(f"{_fn_name(fn)} returned {type(outcome).__name__}, not a CellOutcome")
            finished: CellOutcome | CellFailure = outcome
        except (Exception, SystemExit) as exc:
            finished = CellFailure.from_exception(exc)
    return dataclasses.replace(finished, log=(*finished.log, *records))


def _fn_name(fn: CellFunction) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# -- local ----------------------------------------------------------------------------------------
class SequentialExecutor(Executor):
    """Runs tasks in this process, one per `wait`, in the order submitted."""

    name = "local"
    capacity = 1

    def __init__(self, fn: CellFunction) -> None:
        self._fn = fn
        self._queue: deque[CellTask] = deque()

    def submit(self, task: CellTask) -> None:
        self._queue.append(task)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if not self._queue:
            return []
        task = self._queue.popleft()
        return [(task, run_guarded(self._fn, task))]

    @property
    def pending(self) -> int:
        return len(self._queue)

    def stop(self) -> None:
        self._queue.clear()


# -- factory --------------------------------------------------------------------------------------
def make_executor(
    kind: str,
    fn: CellFunction,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    ship_files: bool | None = None,
    gpus_per_torch_cell: float | None = None,
) -> Executor:
    """The executor `kind` ("local", "process" or "ray") running `fn`; `ray_address`, `ship_files` and
    `gpus_per_torch_cell` are the Ray one's.

    `workers` is the process pool's size, or the CPUs of the Ray instance started when
    `ray_address` is None. `ship_files` (Ray) copies the input files to the node running a cell and
    its outputs back; None ships them to a cluster at `ray_address` and not to a local instance.
    `gpus_per_torch_cell` is what a torch-heavy cell (`CellTask.torch`) asks Ray for: None asks
    for one GPU when the cluster reports GPUs and none when it does not.
    """
    if kind not in EXECUTORS:
        raise ConfigError(
            f"unknown executor {kind!r}{did_you_mean(kind, EXECUTORS)}; choose one of: {', '.join(EXECUTORS)}"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, not {workers!r}")
    if kind == "local":
        return SequentialExecutor(fn)
    if kind == "process":
        from edgeattack.experiments.process_executor import ProcessExecutor

        return ProcessExecutor(fn, workers=workers)
    from edgeattack.experiments.ray_executor import RayExecutor

    return RayExecutor(
        fn, workers=workers, address=ray_address, ship_files=ship_files, gpus_per_torch_cell=gpus_per_torch_cell
    )
