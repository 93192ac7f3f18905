"""The process-pool executor: cells in spawned worker processes, surviving the death of a worker."""

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
import time
from collections import Counter, deque
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeattack.errors import ConfigError
from edgeattack.experiments.executors import THREAD_VARIABLES, Executor, Finished, _fn_name, run_guarded
from edgeattack.experiments.task import CellFailure, CellFunction, CellOutcome, CellTask

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import SimpleQueue

logger = logging.getLogger(__name__)

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
    JOIN_S = 10.0

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
            if running:
                self._processes.update(getattr(pool, "_processes", None) or {})
                self._kill_workers()
            self._close_pool(pool)
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
                self._close_pool(self._pool)
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
        killed = self._close_pool(pool) if pool is not None else set()
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
        exit_codes = {pid: None if pid in killed else process.exitcode for pid, process in self._processes.items()}
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

    def _close_pool(self, pool: cf.ProcessPoolExecutor) -> set[int]:
        """Shut `pool` down and wait for its manager to reap every worker; the pids it had to SIGKILL.

        A broken pool's manager SIGTERMs the surviving workers and joins them without a timeout, and
        a closing pool's manager joins them too: one worker that does not exit (seen under load: a
        worker left blocked on its pipe) would block that join, and the interpreter's exit, for ever.
        After `JOIN_S` the workers not reaped yet are SIGKILLed; their exit codes then say nothing
        about a crash.
        """
        # Workers the pool started since the last look (it starts them on demand): shutdown drops its list.
        self._processes.update(getattr(pool, "_processes", None) or {})
        manager = getattr(pool, "_executor_manager_thread", None)  # shutdown forgets it
        pool.shutdown(wait=False, cancel_futures=True)
        killed: set[int] = set()
        if manager is None:
            return killed
        manager.join(self.JOIN_S)
        if manager.is_alive():
            for pid, process in self._processes.items():
                popen = getattr(process, "_popen", None)
                if popen is not None and popen.returncode is None:  # not reaped: read, not polled
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            logger.warning("worker processes did not exit when their pool closed: killed %s", sorted(killed))
            manager.join(self.JOIN_S)
        return killed

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


