"""Probe cells: tiny cell functions that exercise an executor, not an experiment.

They are top-level functions (picklable by reference), import nothing heavy, and read only their
`params`, so they run anywhere a worker runs: this process, a worker process, a Ray node. The
executors' tests and benchmark use them; `crash_cell` ends the process that runs it, so never
give it to the "local" executor.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edgeattack.experiments.task import CellOutcome, CellTask, host_id


def _outcome(result: dict[str, Any], outputs: dict[str, str], start: float) -> CellOutcome:
    host = host_id()
    return CellOutcome(result={**result, "host": host}, outputs=outputs, wall_s=time.perf_counter() - start, host=host)


def _ray_resources() -> dict[str, float] | None:
    """The resources Ray assigned to the running task, or None outside a Ray worker."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}
    except Exception:
        return None


def echo_cell(task: CellTask) -> CellOutcome:
    """Writes `params["text"]` to out.txt, and the inputs' contents (in order) then the text to joined.txt.

    Result: the text, the joined contents, the input names, the workdir it wrote to (a private
    one when files are shipped), the host, and the resources Ray assigned (None outside Ray),
    which shows where a cell was placed.
    """
    start = time.perf_counter()
    text = str(task.params.get("text", ""))
    joined = "".join(Path(path).read_text(encoding="utf-8") for path in task.inputs.values()) + text
    workdir = Path(task.workdir)
    out = workdir / "out.txt"
    out.write_text(text, encoding="utf-8")
    both = workdir / "joined.txt"
    both.write_text(joined, encoding="utf-8")
    result = {
        "text": text,
        "joined": joined,
        "inputs": list(task.inputs),
        "workdir": task.workdir,
        "ray_resources": _ray_resources(),
    }
    return _outcome(result, {"out": str(out), "joined": str(both)}, start)


def sleep_cell(task: CellTask) -> CellOutcome:
    """Waits `params["seconds"]` (default 0.1): idle, or spinning a CPU when `params["busy"]` is true."""
    start = time.perf_counter()
    seconds = float(task.params.get("seconds", 0.1))
    busy = bool(task.params.get("busy", False))
    spins = 0
    if busy:
        while time.perf_counter() - start < seconds:
            spins += 1
    else:
        time.sleep(seconds)
    return _outcome({"seconds": seconds, "busy": busy, "spins": spins}, {}, start)


def fail_cell(task: CellTask) -> CellOutcome:
    """Raises ValueError(`params["message"]`), as a cell with a bug does."""
    raise ValueError(str(task.params.get("message", "probe failure")))


def crash_cell(task: CellTask) -> CellOutcome:
    """Ends its process at once, as a segfault or the OOM killer does: with `params["signal"]` (a name
    such as "SIGSEGV") when given, else with exit code `params["code"]` (default 3)."""
    sys.stdout.flush()
    name = task.params.get("signal")
    if name:
        os.kill(os.getpid(), signal.Signals[str(name)])
        time.sleep(5)  # the signal ends the process before this returns
    os._exit(int(task.params.get("code", 3)))


def threads_cell(task: CellTask) -> CellOutcome:
    """Reports the thread budget the executor gave it: OMP/MKL variables, and torch's if torch is imported."""
    start = time.perf_counter()
    torch = sys.modules.get("torch")
    result = {
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "mkl": os.environ.get("MKL_NUM_THREADS"),
        "torch": torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None,
        "threads": task.threads,
    }
    return _outcome(result, {}, start)


PROBES = {
    "echo": echo_cell,
    "sleep": sleep_cell,
    "fail": fail_cell,
    "crash": crash_cell,
    "threads": threads_cell,
}


def run_probe(task: CellTask) -> CellOutcome:
    """Runs the probe named by `task.kind` ("echo", "sleep", "fail", "crash", "threads"): one function, many probes."""
    try:
        probe = PROBES[task.kind]
    except KeyError:
        raise ValueError(f"unknown probe {task.kind!r}; probes: {', '.join(PROBES)}") from None
    return probe(task)
