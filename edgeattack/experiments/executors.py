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

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from edgeattack.errors import ConfigError, did_you_mean
from edgeattack.experiments.task import CellFailure, CellFunction, CellOutcome, CellTask

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import SimpleQueue

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
    """`fn(task)` under the task's thread budget; an exception, or a result that is no CellOutcome, is a CellFailure."""
    try:
        with thread_budget(task.threads):
            outcome = fn(task)
        if not isinstance(outcome, CellOutcome):
            raise TypeError(f"{_fn_name(fn)} returned {type(outcome).__name__}, not a CellOutcome")
        return outcome
    except (Exception, SystemExit) as exc:
        return CellFailure.from_exception(exc)


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


# -- process pool ---------------------------------------------------------------------------------
_STARTED: SimpleQueue[tuple[str, int]] | None = None


def _init_worker(started: SimpleQueue[tuple[str, int]], threads: int) -> None:
    """Worker start-up: where to report which cell it runs, no Ctrl-C (the driver stops it), a thread default."""
    global _STARTED
    _STARTED = started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(max(1, threads))))


def _run_in_worker(fn: CellFunction, task: CellTask) -> CellOutcome | CellFailure:
    if _STARTED is not None:
        _STARTED.put((task.id, os.getpid()))
    return run_guarded(fn, task)


class ProcessExecutor(Executor):
    """A `ProcessPoolExecutor` (spawn) of `workers` processes that survives the death of a worker.

    At most `workers` tasks are handed to the pool at once, so every task in the pool is running.
    When a worker dies the pool breaks and takes every running task with it: the cell whose
    worker died (known from the worker's pid and exit code) fails, the pool is re-created, and the
    other cells run again. When the culprit cannot be told apart, the suspects run again one at a
    time; a cell caught in `MAX_BREAKS` breaks fails.
    """

    name = "process"
    MAX_BREAKS = 3

    def __init__(self, fn: CellFunction, *, workers: int = 1) -> None:
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise ConfigError(
                f"the process executor needs a top-level (picklable) cell function, not {_fn_name(fn)}: {exc}"
            ) from None
        self._fn = fn
        self.workers = workers
        self.capacity = workers
        self._context = multiprocessing.get_context("spawn")
        self._pool: cf.ProcessPoolExecutor | None = None
        self._started: SimpleQueue[tuple[str, int]] | None = None
        self._processes: dict[int, BaseProcess] = {}
        self._queue: deque[CellTask] = deque()
        self._running: dict[cf.Future[Any], CellTask] = {}
        self._finished: list[Finished] = []
        self._pids: dict[str, int] = {}
        self._isolate: set[str] = set()
        self._breaks: Counter[str] = Counter()

    def submit(self, task: CellTask) -> None:
        self._queue.append(task)
        self._fill()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._running) + len(self._finished)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished and self._running:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = cf.wait(list(self._running), timeout=remaining, return_when=cf.FIRST_COMPLETED)
            self._drain_started()
            if not done:
                break
            self._collect(done)
            self._fill()
        finished, self._finished = self._finished, []
        return finished

    def stop(self) -> None:
        self._queue.clear()
        self._finished.clear()
        pool, self._pool = self._pool, None
        running = bool(self._running)
        self._running.clear()
        if pool is not None:
            pool.shutdown(wait=not running, cancel_futures=True)
            if running:
                self._kill_workers()
        self._close_started()

    # -- internals --
    def _new_pool(self) -> cf.ProcessPoolExecutor:
        self._close_started()
        self._started = self._context.SimpleQueue()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        self._processes = {}
        return cf.ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self._started, threads),
        )

    def _fill(self) -> None:
        while self._queue and len(self._running) < self.workers:
            alone = any(t.id in self._isolate for t in self._running.values())
            if alone or (self._running and self._queue[0].id in self._isolate):
                return
            task = self._queue.popleft()
            if self._pool is None:
                self._pool = self._new_pool()
            try:
                future = self._pool.submit(_run_in_worker, self._fn, task)
            except BrokenProcessPool:
                self._queue.appendleft(task)
                if self._running:  # `wait` sees the break through their futures
                    return
                self._pool.shutdown(wait=True)
                self._pool = None
                continue
            self._running[future] = task
            self._processes.update(getattr(self._pool, "_processes", None) or {})

    def _drain_started(self) -> None:
        started = self._started
        with contextlib.suppress(OSError, EOFError):
            while started is not None and not started.empty():
                task_id, pid = started.get()
                self._pids[task_id] = pid

    def _collect(self, done: set[cf.Future[Any]]) -> None:
        broken: list[CellTask] = []
        for future in done:
            task = self._running.pop(future)
            try:
                outcome = future.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            except BaseException as exc:  # raised in the worker: the task or its outcome could not be pickled...
                outcome = CellFailure.from_exception(exc, host=f"{socket.gethostname()}:?")
            self._finish(task, outcome)
        if broken:
            self._recover(broken)

    def _finish(self, task: CellTask, outcome: CellOutcome | CellFailure) -> None:
        self._isolate.discard(task.id)
        self._pids.pop(task.id, None)
        self._breaks.pop(task.id, None)
        self._finished.append((task, outcome))

    def _recover(self, broken: list[CellTask]) -> None:
        """The pool broke: fail the cell whose worker died, queue the others again on a new pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # joins the pool's manager: every worker has exited and been reaped
        for future, task in list(self._running.items()):
            del self._running[future]
            error = future.exception() if future.done() and not future.cancelled() else BrokenProcessPool()
            if error is None:
                self._finish(task, future.result())
            elif isinstance(error, BrokenProcessPool):
                broken.append(task)
            else:
                self._finish(task, CellFailure.from_exception(error))
        self._drain_started()
        exit_codes = {pid: process.exitcode for pid, process in self._processes.items()}
        crashed = {pid for pid, code in exit_codes.items() if code not in (None, 0, -signal.SIGTERM)}
        culprits = [t for t in broken if self._pids.get(t.id) in crashed]
        if not culprits:
            suspects = [t for t in broken if t.id in self._pids] or broken
            if len(suspects) == 1:
                culprits = suspects
            else:
                self._isolate.update(t.id for t in suspects)
                logger.warning("a worker died running one of %d cells; running them again one at a time", len(suspects))
        culprit_ids = {t.id for t in culprits}
        for task in culprits:
            pid = self._pids.get(task.id)
            self._finish(task, _worker_died(task, pid, exit_codes.get(pid) if pid is not None else None))
        again = []
        for task in broken:
            if task.id in culprit_ids:
                continue
            if self._pids.pop(task.id, None) is not None:
                _empty_dir(task.workdir)  # it runs again from an empty workdir, as promised
            self._breaks[task.id] += 1
            if self._breaks[task.id] >= self.MAX_BREAKS:
                self._finish(task, _worker_died(task, None, None, breaks=self._breaks[task.id]))
            else:
                again.append(task)
        self._queue.extendleft(reversed(again))

    def _kill_workers(self) -> None:
        for process in self._processes.values():
            with contextlib.suppress(Exception):
                if process.is_alive():
                    process.terminate()
        for process in self._processes.values():
            with contextlib.suppress(Exception):
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
        self._processes = {}

    def _close_started(self) -> None:
        if self._started is not None:
            with contextlib.suppress(Exception):
                self._started.close()
            self._started = None


def _empty_dir(path: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _worker_died(task: CellTask, pid: int | None, exit_code: int | None, *, breaks: int = 0) -> CellFailure:
    if breaks:
        what = f"worker processes died {breaks} times while cell {task.id} was running; it is given up"
    else:
        how = "with an unknown exit status"
        if exit_code is not None and exit_code < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-exit_code).name}"
                if exit_code == -signal.SIGKILL:
                    how += " (out of memory?)"
        elif exit_code is not None:
            how = f"with exit code {exit_code}"
        what = f"the worker process{f' {pid}' if pid else ''} died {how} while running cell {task.id}"
    error = f"{BrokenProcessPool.__name__}: {what}"
    host = f"{socket.gethostname()}:{pid}" if pid else f"{socket.gethostname()}:?"
    return CellFailure(error=error, traceback=error + "\n", host=host)


# -- factory --------------------------------------------------------------------------------------
def make_executor(
    kind: str,
    fn: CellFunction,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    ship_files: bool | None = None,
) -> Executor:
    """The executor `kind` ("local", "process" or "ray") running `fn`; `ray_address`/`ship_files` are the Ray one's.

    `workers` is the process pool's size, or the CPUs of the Ray instance started when
    `ray_address` is None. `ship_files` (Ray) copies the input files to the node running a cell and
    its outputs back; None ships them to a cluster at `ray_address` and not to a local instance.
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
        return ProcessExecutor(fn, workers=workers)
    from edgeattack.experiments.ray_executor import RayExecutor

    return RayExecutor(fn, workers=workers, address=ray_address, ship_files=ship_files)
