"""The SQLite experiment store: rows, outputs with sha256, locking, schema versions, bad stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgeattack.errors import ConfigError
from edgeattack.experiments.store import SCHEMA_VERSION, ExperimentStore, StoreError, open_store_for_report


def _finish(store: ExperimentStore, cell_id: str, text: str = "payload", input_hash: str = "h1") -> Path:
    store.mark_running(cell_id, "craft", input_hash, {"eps": 0.03})
    scratch = store.scratch_dir(cell_id)
    (scratch / "artifact.npz").write_text(text)
    store.mark_done(
        cell_id, result={"asr": 0.5}, outputs={"artifact": str(scratch / "artifact.npz")}, scratch=scratch, wall_s=1.5, host="h:1"
    )
    return store.output_path(cell_id, "artifact")


def test_done_cell_round_trip(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path / "s", create=True) as store:
        path = _finish(store, "craft/pgd@m")
        assert path.read_text() == "payload" and path.is_relative_to(store.directory / "cells")
        record = store.get("craft/pgd@m")
        assert record is not None and record.status == "done" and record.result == {"asr": 0.5}
        assert record.attempts == 1 and record.wall_s == 1.5 and record.host == "h:1"
        assert store.is_finished("craft/pgd@m", "h1")
        assert not store.is_finished("craft/pgd@m", "h2")  # changed inputs
        assert not store.is_finished("craft/other", "h1")
        assert not any((store.directory / "cells" / ".scratch").iterdir())
    with ExperimentStore(tmp_path / "s" / "store.sqlite") as again:  # the sqlite path works too
        assert [r.id for r in again.records()] == ["craft/pgd@m"]


def test_altered_or_missing_output_is_not_finished(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as store:
        path = _finish(store, "a")
        path.write_text("PAYLOAD")  # same size, other content
        assert not store.is_finished("a", "h1")
        path.unlink()
        assert not store.is_finished("a", "h1")


def test_rerun_replaces_the_row_and_files(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as store:
        _finish(store, "a", "one")
        path = _finish(store, "a", "second", input_hash="h2")
        assert path.read_text() == "second"
        record = store.get("a")
        assert record is not None and record.attempts == 2 and record.input_hash == "h2"
        assert len(store.records()) == 1
        cell_dirs = [p for p in (tmp_path / "cells").iterdir() if p.name != ".scratch"]
        assert len(cell_dirs) == 1


def test_failed_and_skipped_rows(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as store:
        store.mark_running("a", "export", "h", {})
        store.mark_failed("a", error="ValueError: boom", traceback="Traceback ...", host="x", wall_s=0.1)
        store.mark_skipped("b", "replay", "h", {}, "dependency a failed")
        a, b = store.get("a"), store.get("b")
        assert a is not None and a.status == "failed" and a.error == "ValueError: boom" and a.traceback
        assert b is not None and b.status == "skipped" and b.error == "dependency a failed"
        assert not store.is_finished("a", "h")


def test_outputs_must_stay_inside_the_cell_directory(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path / "s", create=True) as store:
        store.mark_running("a", "export", "h", {})
        scratch = store.scratch_dir("a")
        outside = tmp_path / "elsewhere.txt"
        outside.write_text("x")
        with pytest.raises(StoreError, match="outside its directory"):
            store.mark_done("a", result={}, outputs={"o": str(outside)}, scratch=scratch, wall_s=0, host="h")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as first, ExperimentStore(tmp_path) as second:
        first.lock()
        with pytest.raises(StoreError, match="another edgeattack run is writing"):
            second.lock()
        first.unlock()
        second.lock()


def test_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    ExperimentStore(tmp_path, create=True).close()
    db = sqlite3.connect(tmp_path / "store.sqlite")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"newer edgeattack \\(store schema {SCHEMA_VERSION + 1}"):
        ExperimentStore(tmp_path)


def test_corrupt_or_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no experiment store"):
        ExperimentStore(tmp_path / "none")
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable experiment store"):
        ExperimentStore(tmp_path)
    with pytest.raises(ConfigError, match="run `edgeattack run CONFIG"):
        open_store_for_report(tmp_path / "none")


def test_store_belongs_to_one_experiment(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as store:
        store.bind_experiment("quickstart", {"name": "quickstart"}, ["a"])
        store.bind_experiment("quickstart", {"name": "quickstart"}, ["a", "b"])
        assert store.get_meta("plan") == ["a", "b"]
        with pytest.raises(StoreError, match="holds experiment 'quickstart', not 'other'"):
            store.bind_experiment("other", {}, [])


def test_runs_are_recorded(tmp_path: Path) -> None:
    with ExperimentStore(tmp_path, create=True) as store:
        run = store.start_run("local", "abc", 3)
        store.finish_run(run, ran=2, cached=1, failed=0, skipped=0, interrupted=False)
        (row,) = store.runs()
        assert row["executor"] == "local" and row["ran"] == 2 and row["cached"] == 1 and row["finished"]
