"""The experiment store: one SQLite file, one row per cell, and the cells' output files beside it.

Layout of a store directory:
    store.sqlite          cells (id, kind, input hash, status, result, outputs + sha256, error, ...)
    cells/<cell-id>/      the files a finished cell wrote (engines, artifacts, result JSON)
    .lock                 held by the one `edgeattack run` writing the store

Durability: a cell's files are written into a scratch directory, moved into place, and only then
is its row committed as `done` (WAL journal, synchronous=FULL). A run killed at any point (SIGKILL
included) leaves every committed cell intact; a cell that was running is simply run again, into
the same row. A row counts as finished only while its input hash matches the plan's and its
files still have the recorded sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError, EdgeAttackError

SCHEMA_VERSION = 1
DB_NAME = "store.sqlite"
STATUSES = ("running", "done", "failed", "skipped")


class StoreError(EdgeAttackError):
    """A store that cannot be opened, is locked by another run, or was written by a newer edgeattack."""


@dataclass(frozen=True)
class CellRecord:
    """One row of the store."""

    id: str
    kind: str
    input_hash: str
    status: str
    params: dict[str, Any]
    result: dict[str, Any] | None
    outputs: dict[str, dict[str, Any]]
    error: str | None
    traceback: str | None
    host: str | None
    started: str | None
    finished: str | None
    wall_s: float | None
    attempts: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cell_dirname(cell_id: str) -> str:
    """A file-system-safe, unique directory name for a cell id."""
    safe = "".join(c if c.isalnum() or c in "._-+@~" else "_" for c in cell_id)
    return f"{safe[:120]}-{hashlib.sha1(cell_id.encode()).hexdigest()[:8]}"


def resolve_store(path: str | Path) -> Path:
    """A store directory from its directory or its `store.sqlite` path."""
    path = Path(path)
    return path.parent if path.name == DB_NAME else path


class ExperimentStore:
    """Open (creating if asked) the store in `directory`; use as a context manager."""

    def __init__(self, directory: str | Path, *, create: bool = False) -> None:
        self.directory = resolve_store(directory)
        self.db_path = self.directory / DB_NAME
        if not self.db_path.is_file():
            if not create:
                raise StoreError(f"no experiment store at {self.directory} (expected {self.db_path})")
            self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path} is not a readable experiment store: {exc}") from None
        self._lock: Any = None

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.unlock()
        self._db.close()

    def lock(self) -> None:
        """Take the store for one writing run; StoreError if another process holds it."""
        import fcntl

        handle = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(f"another edgeattack run is writing {self.directory}; wait for it or use another store") from None
        handle.truncate(0)
        handle.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- schema -----------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.db_path} was written by a newer edgeattack (store schema {row[0]}, this version reads "
                f"up to {SCHEMA_VERSION}): upgrade edgeattack to read it"
            )
        db.execute(
            """CREATE TABLE IF NOT EXISTS cells (
                id TEXT PRIMARY KEY, kind TEXT NOT NULL, input_hash TEXT NOT NULL, status TEXT NOT NULL,
                params TEXT NOT NULL, result TEXT, outputs TEXT NOT NULL DEFAULT '{}', error TEXT, traceback TEXT,
                host TEXT, started TEXT, finished TEXT, wall_s REAL, attempts INTEGER NOT NULL DEFAULT 0)"""
        )
        db.execute(
            """CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, started TEXT NOT NULL, finished TEXT, executor TEXT,
                config_sha256 TEXT, planned INTEGER, ran INTEGER, cached INTEGER, failed INTEGER, skipped INTEGER,
                interrupted INTEGER NOT NULL DEFAULT 0)"""
        )
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (json.dumps(_now()),))

    # -- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0]) if key != "schema_version" else int(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def bind_experiment(self, name: str, config: dict[str, Any], plan_ids: list[str]) -> None:
        """Record the experiment this store holds; StoreError for a store of another experiment."""
        held = self.get_meta("experiment")
        if held is not None and held != name:
            raise StoreError(f"{self.directory} holds experiment {held!r}, not {name!r}: use another output directory")
        with self.transaction():
            self.set_meta("experiment", name)
            self.set_meta("config", config)
            self.set_meta("plan", plan_ids)

    # -- rows -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, cell_id: str) -> CellRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM cells WHERE id = ?", (cell_id,)).fetchone()
        return None if row is None else _record(row)

    def records(self, *, ids: list[str] | None = None) -> list[CellRecord]:
        rows = [_record(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM cells ORDER BY rowid")]
        if ids is None:
            return rows
        by_id = {r.id: r for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def is_finished(self, cell_id: str, input_hash: str) -> bool:
        """Done with this input hash, and every output file still there with its recorded sha256."""
        record = self.get(cell_id)
        if record is None or record.status != "done" or record.input_hash != input_hash:
            return False
        for output in record.outputs.values():
            path = self.directory / output["path"]
            if not path.is_file() or path.stat().st_size != output["bytes"] or sha256_file(path) != output["sha256"]:
                return False
        return True

    def output_path(self, cell_id: str, name: str) -> Path:
        record = self.get(cell_id)
        if record is None or record.status != "done" or name not in record.outputs:
            raise StoreError(f"cell {cell_id} has no finished output {name!r}")
        return self.directory / record.outputs[name]["path"]

    def mark_running(self, cell_id: str, kind: str, input_hash: str, params: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                """INSERT INTO cells (id, kind, input_hash, status, params, started, attempts, host)
                   VALUES (?, ?, ?, 'running', ?, ?, 1, NULL)
                   ON CONFLICT(id) DO UPDATE SET kind=excluded.kind, input_hash=excluded.input_hash, status='running',
                   params=excluded.params, result=NULL, error=NULL, traceback=NULL, started=excluded.started,
                   finished=NULL, wall_s=NULL, attempts=cells.attempts + 1""",
                (cell_id, kind, input_hash, json.dumps(params, default=str), _now()),
            )

    def scratch_dir(self, cell_id: str) -> Path:
        """An empty directory for a cell to write its outputs into (moved into place on success)."""
        path = self.directory / "cells" / ".scratch" / f"{cell_dirname(cell_id)}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def mark_done(
        self, cell_id: str, *, result: dict[str, Any], outputs: dict[str, str], scratch: Path, wall_s: float, host: str
    ) -> None:
        """Move the outputs from `scratch` into place, then commit the row as done."""
        final = self.directory / "cells" / cell_dirname(cell_id)
        scratch = Path(scratch)
        for name, path in outputs.items():
            if scratch.resolve() not in Path(path).resolve().parents:
                raise StoreError(f"cell {cell_id} wrote output {name} outside its directory: {path}")
        if final.exists():
            trash = final.with_name(final.name + f".old-{uuid.uuid4().hex[:8]}")
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(scratch, final)
        recorded = {}
        for name, path in outputs.items():
            moved = final / Path(path).resolve().relative_to(scratch.resolve())
            recorded[name] = {
                "path": str(moved.relative_to(self.directory)),
                "sha256": sha256_file(moved),
                "bytes": moved.stat().st_size,
            }
        _fsync_dir(final)
        with self.transaction() as db:
            db.execute(
                "UPDATE cells SET status='done', result=?, outputs=?, finished=?, wall_s=?, host=?, error=NULL, "
                "traceback=NULL WHERE id=?",
                (json.dumps(result, default=str, allow_nan=False), json.dumps(recorded), _now(), wall_s, host, cell_id),
            )

    def mark_failed(self, cell_id: str, *, error: str, traceback: str | None, host: str | None, wall_s: float | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE cells SET status='failed', error=?, traceback=?, host=?, finished=?, wall_s=? WHERE id=?",
                (error, traceback, host, _now(), wall_s, cell_id),
            )

    def mark_skipped(self, cell_id: str, kind: str, input_hash: str, params: dict[str, Any], reason: str) -> None:
        with self.transaction() as db:
            db.execute(
                """INSERT INTO cells (id, kind, input_hash, status, params, error, finished)
                   VALUES (?, ?, ?, 'skipped', ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET status='skipped', input_hash=excluded.input_hash, error=excluded.error,
                   result=NULL, finished=excluded.finished""",
                (cell_id, kind, input_hash, json.dumps(params, default=str), reason, _now()),
            )

    def clean_scratch(self) -> None:
        shutil.rmtree(self.directory / "cells" / ".scratch", ignore_errors=True)

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, executor: str, config_sha256: str, planned: int) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started, executor, config_sha256, planned) VALUES (?, ?, ?, ?)",
                (_now(), executor, config_sha256, planned),
            )
        return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, *, ran: int, cached: int, failed: int, skipped: int, interrupted: bool) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished=?, ran=?, cached=?, failed=?, skipped=?, interrupted=? WHERE id=?",
                (_now(), ran, cached, failed, skipped, int(interrupted), run_id),
            )

    def runs(self) -> list[dict[str, Any]]:
        cursor = self._db.execute("SELECT * FROM runs ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]


_COLUMNS = "id, kind, input_hash, status, params, result, outputs, error, traceback, host, started, finished, wall_s, attempts"


def _record(row: tuple[Any, ...]) -> CellRecord:
    return CellRecord(
        id=row[0],
        kind=row[1],
        input_hash=row[2],
        status=row[3],
        params=json.loads(row[4]),
        result=None if row[5] is None else json.loads(row[5]),
        outputs=json.loads(row[6] or "{}"),
        error=row[7],
        traceback=row[8],
        host=row[9],
        started=row[10],
        finished=row[11],
        wall_s=row[12],
        attempts=int(row[13]),
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_store_for_report(path: str | Path) -> ExperimentStore:
    """Open an existing store read-only in spirit (no lock); ConfigError when there is none."""
    directory = resolve_store(path)
    if not (directory / DB_NAME).is_file():
        raise ConfigError(f"no experiment store at {directory}: run `edgeattack run CONFIG -o {directory}` first")
    return ExperimentStore(directory)
