"""What an executor is handed and hands back: one cell's task, its outcome, or its failure.

A `CellTask` is self-contained and JSON-able apart from being a dataclass: it names its input
files and the directory its outputs must end up in, both as absolute paths on the driver. An
executor runs a `CellFunction` on it (here, in a worker process, or on a Ray node) and returns a
`CellOutcome` whose `outputs` lie under `task.workdir` on the driver, or a `CellFailure`.
"""

from __future__ import annotations

import os
import socket
import traceback as _traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeattack.logs import CapturedRecord


@dataclass(frozen=True)
class CellTask:
    """One cell to run: what it is, what it reads, where it writes, what it needs."""

    id: str
    kind: str
    params: dict[str, Any]
    inputs: dict[str, str]
    workdir: str
    resources: dict[str, float]
    threads: int = 1
    device: str = "cpu"
    """Where a torch-heavy cell (a craft) computes: auto, cpu or cuda (`edgeattack.devices.resolve_device`)."""
    torch: bool = False
    """Torch-heavy (a craft): the Ray executor asks a GPU for it where the cluster has one."""


@dataclass(frozen=True)
class CellOutcome:
    """A cell that finished: its JSON-able result and its output files (name -> absolute path)."""

    result: dict[str, Any]
    outputs: dict[str, str]
    wall_s: float
    host: str
    log: tuple[CapturedRecord, ...] = ()
    """What the cell logged and warned where it ran (`edgeattack.logs.captured_records`)."""


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised, or whose worker died: `error` is one line, "ExceptionType: message"."""

    error: str
    traceback: str
    host: str
    log: tuple[CapturedRecord, ...] = ()

    @classmethod
    def from_exception(cls, exc: BaseException, host: str | None = None) -> CellFailure:
        """The failure an exception stands for, with its formatted traceback."""
        return cls(
            error=describe_exception(exc),
            traceback="".join(_traceback.format_exception(type(exc), exc, exc.__traceback__)),
            host=host or host_id(),
        )


CellFunction = Callable[[CellTask], CellOutcome]


def host_id() -> str:
    """`hostname:pid` of this process, as recorded in outcomes and failures."""
    return f"{socket.gethostname()}:{os.getpid()}"


def describe_exception(exc: BaseException) -> str:
    """ "ExceptionType: message" on one line (the type alone when the message is empty)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
