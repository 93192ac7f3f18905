"""What a command's libraries say goes to a log file; the terminal gets one summary line. No torch.

`CommandLog` is installed by the CLI's main callback for every command. While it is installed:

- every record of edgeattack (INFO and up; DEBUG with `--verbose`) and of third-party libraries
  (WARNING and up: ONNX Runtime's quantizer logs to the root logger, which would otherwise print
  `WARNING:root:...` lines) is appended to the log file, opened only when the first record comes;
- Python warnings are logged too: edgeattack's own under `edgeattack`, others under `py.warnings`;
- edgeattack's warnings are counted by kind; only the first of each kind is printed (`warning: ...`),
  and none of an experiment cell's, which its report and the log hold (ERROR records are always
  printed, and `--verbose` prints every edgeattack record);
- `summary()` is the one line the command prints at its end, e.g. `9 warnings (latency is unstable ×9)
  and 6 from other libraries; full log: runs/quickstart/run.log`.

The log file is `--log-file`, else `$EDGEATTACK_LOG_FILE`, else `edgeattack.log` in
`$XDG_STATE_HOME/edgeattack` (`~/.local/state/edgeattack`); `edgeattack run` and `demo` move it
into the experiment's store (`STORE/run.log`) with `use_file` before anything is logged there.

An experiment cell may run in another process (a process pool, a Ray node) whose stderr would
print every warning: `captured_records()` collects a cell's records and warnings wherever it runs,
they travel back with its outcome, and `replay_records` logs them in the driver, where the
command's log counts and files them like its own.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TextIO

__all__ = ["CapturedRecord", "CommandLog", "captured_records", "default_log_file", "replay_records"]

CapturedRecord = tuple[int, str, str, str]
"""(level, logger name, message, kind) of a record captured in a cell."""

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_KIND_WORDS = 10
_SHOWN_KINDS = 3


def default_log_file() -> Path:
    """`$EDGEATTACK_LOG_FILE`, else `edgeattack.log` in the XDG state directory."""
    if os.environ.get("EDGEATTACK_LOG_FILE"):
        return Path(os.environ["EDGEATTACK_LOG_FILE"])
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "edgeattack" / "edgeattack.log"


def _kind(record: logging.LogRecord) -> str:
    """A warning's kind, for counting alike warnings together: its format string with the values
    elided (`… holds perturbations for … of the … images`), or, for a finished text (Python warnings),
    the part before its first colon (`latency is unstable`)."""
    if getattr(record, "kind", None):
        return str(record.kind)
    if record.args:
        text = re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdifgrx]", "…", str(record.msg))
    else:
        message = record.getMessage()
        text = message.split(":", 1)[0] if ":" in message[:80] else message
    words = text.split()
    return " ".join(words[:_KIND_WORDS]) + (" …" if len(words) > _KIND_WORDS else "") if words else "warning"


def _warning_to_log(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any
) -> None:
    """`warnings.showwarning` replacement: edgeattack's warnings to `edgeattack.warnings`, others to `py.warnings`."""
    if str(Path(filename).resolve()).startswith(_PACKAGE_DIR):
        logging.getLogger("edgeattack.warnings").warning(str(message))  # no args: the text is its own kind
    else:
        logging.getLogger("py.warnings").warning("%s (%s, %s:%d)", message, category.__name__, filename, lineno)


class _ListHandler(logging.Handler):
    def __init__(self, level: int, into: list[CapturedRecord]) -> None:
        super().__init__(level)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append((record.levelno, record.name, record.getMessage(), _kind(record)))


@dataclass(frozen=True)
class _Routing:
    """Where log records and warnings go: edgeattack's logger, the root logger and `warnings.showwarning`."""

    package_handlers: list[logging.Handler]
    package_level: int
    root_handlers: list[logging.Handler]
    package_propagate: bool = False
    root_level: int = logging.WARNING
    showwarning: Any = _warning_to_log

    @classmethod
    def current(cls) -> _Routing:
        package, root = logging.getLogger("edgeattack"), logging.getLogger()
        return cls(package.handlers[:], package.level, root.handlers[:], package.propagate, root.level, warnings.showwarning)

    def apply(self) -> None:
        package, root = logging.getLogger("edgeattack"), logging.getLogger()
        package.handlers[:] = self.package_handlers
        package.setLevel(self.package_level)
        package.propagate = self.package_propagate
        root.handlers[:] = self.root_handlers
        root.setLevel(self.root_level)
        warnings.showwarning = self.showwarning


@contextmanager
def captured_records() -> Iterator[list[CapturedRecord]]:
    """Collect the records (edgeattack's from INFO, others' from WARNING) and warnings of a block.

    While it runs they reach no other handler: whoever owns the block hands them on (`replay_records`).
    """
    records: list[CapturedRecord] = []
    saved = _Routing.current()
    level = min(saved.package_level or logging.INFO, logging.INFO)
    _Routing([_ListHandler(logging.INFO, records)], level, [_ListHandler(logging.WARNING, records)]).apply()
    try:
        yield records
    finally:
        saved.apply()


def replay_records(records: list[CapturedRecord] | tuple[CapturedRecord, ...], where: str) -> None:
    """Log records captured elsewhere (a cell, another process) here, each tagged with `where`."""
    for level, name, message, kind in records:
        logging.getLogger(name).log(level, f"{message} [{where}]", extra={"cell": where, "kind": kind})


class _LazyFile(logging.FileHandler):
    """A FileHandler that creates its directory and writes a header when it first opens."""

    def __init__(self, path: Path, header: str) -> None:
        self._header = header
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def _open(self) -> TextIO:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        stream = super()._open()
        stream.write(self._header)
        return stream


class _Counter(logging.Handler):
    """Counts WARNING records by kind; with `echo`, prints the first of each kind (not a cell's) to stderr."""

    def __init__(self, *, echo: bool = False) -> None:
        super().__init__(logging.WARNING)
        self.kinds: Counter[str] = Counter()
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING:
            return
        kind = _kind(record)
        self.kinds[kind] += 1
        if self.echo and self.kinds[kind] == 1 and not getattr(record, "cell", None):
            sys.stderr.write(f"warning: {record.getMessage()}\n")


class CommandLog:
    """Route a command's log records and warnings (see the module docstring); a context manager."""

    current: ClassVar[CommandLog | None] = None

    def __init__(self, path: Path | None = None, *, verbose: bool = False, command: str = "") -> None:
        self.path = Path(path) if path is not None else default_log_file()
        self.verbose = verbose
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._header = f"\n=== edgeattack {command} (pid {os.getpid()}, {stamp}) ===\n"
        self._file: _LazyFile | None = None
        self._ours = _Counter(echo=not verbose)
        self._theirs = _Counter()
        self._saved: _Routing | None = None

    # lifecycle ---------------------------------------------------------------------------------
    def install(self) -> CommandLog:
        self._saved = _Routing.current()
        self._file = self._new_file(self.path)
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("%(message)s"))
        stderr.setLevel(logging.DEBUG if self.verbose else logging.ERROR)
        _Routing(
            [self._file, self._ours, stderr],
            logging.DEBUG if self.verbose else logging.INFO,
            [_Shared(self, logging.WARNING), self._theirs],
        ).apply()
        CommandLog.current = self
        return self

    def uninstall(self) -> None:
        if self._saved is None:
            return
        self._saved.apply()
        self._saved = None
        if self._file is not None:
            self._file.close()
        if CommandLog.current is self:
            CommandLog.current = None

    def __enter__(self) -> CommandLog:
        return self.install()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()

    # the file ----------------------------------------------------------------------------------
    def _new_file(self, path: Path) -> _LazyFile:
        handler = _LazyFile(path, self._header)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return handler

    def use_file(self, path: Path) -> None:
        """Log into `path` from now on (the command's own output directory, e.g. an experiment store)."""
        if self._file is None or Path(self._file.baseFilename) == Path(path).resolve():
            self.path = Path(path)
            return
        old = self._file
        self.path = Path(path)
        self._file = self._new_file(self.path)
        package = logging.getLogger("edgeattack")
        package.handlers[:] = [self._file if h is old else h for h in package.handlers]
        old.close()

    def emit_to_file(self, record: logging.LogRecord) -> None:
        if self._file is not None:
            self._file.handle(record)

    # the summary -------------------------------------------------------------------------------
    @property
    def warning_count(self) -> int:
        return sum(self._ours.kinds.values())

    @property
    def third_party_count(self) -> int:
        return sum(self._theirs.kinds.values())

    def summary(self) -> str | None:
        """The one line a command prints about what it logged, or None when there is nothing to say."""
        ours, theirs = self.warning_count, self.third_party_count
        if not ours and not theirs:
            return None
        parts = []
        if ours:
            kinds = ", ".join(f"{kind} ×{n}" for kind, n in self._ours.kinds.most_common(_SHOWN_KINDS))
            more = len(self._ours.kinds) - _SHOWN_KINDS
            kinds += f", {more} more kind(s)" if more > 0 else ""
            parts.append(f"{ours} warning{'s' if ours != 1 else ''} ({kinds})")
        if theirs:
            parts.append(f"{theirs} from other libraries" if ours else f"{theirs} warning(s) from other libraries")
        return f"{' and '.join(parts)}; full log: {self.path}"


class _Shared(logging.Handler):
    """Third-party records into the command log's current file (which `use_file` may replace)."""

    def __init__(self, log: CommandLog, level: int) -> None:
        super().__init__(level)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        self._log.emit_to_file(record)
