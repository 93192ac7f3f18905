"""`edgeattack run`: a real (tiny) study end to end, resume, changed inputs, failures, a killed run,
the process pool and Ray executors, and the report over the store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.errors import ConfigError
from edgeattack.experiments.loading import validate_config
from edgeattack.experiments.plan import build_plan
from edgeattack.experiments.runner import run_experiment
from edgeattack.experiments.store import ExperimentStore

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"limit": 16, "fit_limit": 32, "calib_images": 32},
    "models": ["vit_tiny_digits", "ats_tiny_digits"],
    "engines": [{"name": "torch", "target": "torch"}, {"name": "fp32"}],
    "whitebox": [
        {"name": "pgd", "method": "pgd", "eps": ["4/255", "8/255"], "steps": 2, "models": ["vit_tiny_digits"]},
        {"name": "ds", "method": "desparsify", "eps": ["8/255"], "params": {"steps": 3}},
    ],
    "blackbox": [{"spec": "spatial", "budget": 20, "limit": 4, "models": ["vit_tiny_digits"], "engines": ["fp32"]}],
    "availability": {"latency_images": 4, "latency_rounds": 1},
    "metrics": {"latency_seconds": 0, "latency_runs": 1, "memory": False},
    "executor": {"threads": 1},
}


def tiny(**changes: Any) -> Any:
    return validate_config({**TINY, **changes})


def statuses(store_dir: Path) -> dict[str, str]:
    with ExperimentStore(store_dir) as store:
        return {r.id: r.status for r in store.records()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny study run once, sequentially, into a store."""
    out = tmp_path_factory.mktemp("tiny")
    summary = run_experiment(tiny(), out)
    assert summary.ok, summary.describe()
    return out


def test_every_cell_runs_and_is_stored(finished: Path) -> None:
    plan = build_plan(tiny())
    assert statuses(finished) == dict.fromkeys(plan.cells, "done")
    with ExperimentStore(finished) as store:
        replay = store.get("replay/vit_tiny_digits/fp32")
        assert replay is not None and replay.result is not None
        assert replay.result["artifact_cells"] == ["craft/pgd-4_255@vit_tiny_digits", "craft/pgd-8_255@vit_tiny_digits"]
        asr = [p["metrics"]["asr"] for p in replay.result["perturbations"]]
        assert asr[1] >= asr[0] and asr[1] > 0.3  # PGD at 8/255 fools the engine it was crafted for
        availability = store.get("availability/ats_tiny_digits/fp32")
        assert availability is not None and availability.result is not None
        clean, adversarial = availability.result["passes"]
        assert adversarial["tur"] > clean["tur"] and clean["latency_samples_ms"]
        depth = store.get("depth/ats_tiny_digits")
        assert depth is not None and [p["pass"] for p in depth.result["passes"]] == ["clean", "ds-8_255@ats_tiny_digits"]
        assert store.output_path("export/vit_tiny_digits/fp32", "engine").suffix == ".onnx"
        assert store.get("export/vit_tiny_digits/torch").outputs == {}


def test_rerun_skips_finished_cells(finished: Path) -> None:
    summary = run_experiment(tiny(), finished)
    assert summary.ran == [] and len(summary.cached) == len(build_plan(tiny()))


def test_changed_input_reruns_only_what_depends_on_it(tmp_path: Path, finished: Path) -> None:
    import shutil

    store = tmp_path / "copy"
    shutil.copytree(finished, store)
    changed = dict(TINY, whitebox=[dict(TINY["whitebox"][0], steps=3), TINY["whitebox"][1]])
    summary = run_experiment(validate_config(changed), store)
    assert sorted(summary.ran) == sorted(
        ["craft/pgd-4_255@vit_tiny_digits", "craft/pgd-8_255@vit_tiny_digits"]
        + [f"replay/{m}/{e}" for m in ("vit_tiny_digits", "ats_tiny_digits") for e in ("torch", "fp32")]
    )


def test_report_over_the_store(finished: Path, tmp_path: Path) -> None:
    html = tmp_path / "r" / "report.html"
    result = CliRunner().invoke(app, ["report", str(finished), "-o", str(html)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert "data:image/png;base64," in text and "vit_tiny_digits/fp32" in text
    tables = {p.name for p in (tmp_path / "r" / "tables").iterdir()}
    assert {"engines.csv", "engines.json", "transfer.csv", "availability.json", "token_depth.json"} <= tables
    assert (tmp_path / "r" / "report.md").is_file()


def test_report_over_an_empty_store_is_an_error(tmp_path: Path) -> None:
    ExperimentStore(tmp_path, create=True).close()
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "nothing to report" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no experiment store" in result.output


def test_a_crashing_cell_is_recorded_and_the_others_continue(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    config = tiny(
        models=["vit_tiny_digits", {"name": "ats_tiny_digits", "checkpoint": str(broken)}],
        whitebox=[TINY["whitebox"][0]],
        blackbox=[],
    )
    summary = run_experiment(config, tmp_path / "store")
    assert set(summary.failed) == {"export/ats_tiny_digits/torch", "export/ats_tiny_digits/fp32", "depth/ats_tiny_digits"}
    assert set(summary.skipped) == {
        "replay/ats_tiny_digits/torch", "replay/ats_tiny_digits/fp32", "availability/ats_tiny_digits/fp32",
    }
    assert "dependency export/ats_tiny_digits/fp32 failed" in summary.skipped["availability/ats_tiny_digits/fp32"]
    assert not summary.ok and "failed  export/ats_tiny_digits/fp32" in summary.describe()
    state = statuses(tmp_path / "store")
    assert state["replay/vit_tiny_digits/fp32"] == "done" and state["depth/ats_tiny_digits"] == "failed"
    with ExperimentStore(tmp_path / "store") as store:
        record = store.get("export/ats_tiny_digits/fp32")
        assert record is not None and record.error and "Traceback" in (record.traceback or "")


def test_a_failed_craft_leaves_the_other_artifacts_replayed(tmp_path: Path) -> None:
    bad = {"name": "bad", "method": "pgd", "eps": ["8/255"], "steps": 1, "params": {"nonsense": 1}, "models": ["vit_tiny_digits"]}
    config = tiny(models=["vit_tiny_digits"], engines=[{"name": "fp32"}], whitebox=[TINY["whitebox"][0], bad], blackbox=[])
    out = tmp_path / "store"
    summary = run_experiment(config, out)
    craft, replay = "craft/bad-8_255@vit_tiny_digits", "replay/vit_tiny_digits/fp32"
    assert set(summary.failed) == {craft} and summary.skipped == {} and not summary.ok
    assert replay in summary.ran
    reason = summary.not_replayed[replay][craft]
    assert reason.startswith("failed to craft: ConfigError: LinfPGD got unknown parameter(s) nonsense")
    assert f"partial {replay}: not replayed: artifact {craft} failed to craft: ConfigError" in summary.describe()
    with ExperimentStore(out) as store:
        record = store.get(replay)
        assert record is not None and record.status == "done" and record.result is not None
        assert record.result["artifact_cells"] == ["craft/pgd-4_255@vit_tiny_digits", "craft/pgd-8_255@vit_tiny_digits"]
        assert len(record.result["perturbations"]) == 2 and record.result["missing_artifacts"] == {craft: reason}
        assert record.params["missing_artifacts"] == {craft: reason}
    from edgeattack.experiments.report_data import report_data

    rows = [r for r in report_data(out).failures if r["status"] == "not replayed"]
    assert rows == [{"cell": replay, "kind": "replay", "status": "not replayed", "error": f"not replayed: artifact {craft} {reason}"}]
    again = run_experiment(config, out)  # the craft fails again; the replay with what exists is already stored
    assert again.ran == [] and set(again.failed) == {craft} and replay in again.cached
    fixed = tiny(models=["vit_tiny_digits"], engines=[{"name": "fp32"}], whitebox=[TINY["whitebox"][0], dict(bad, params={})], blackbox=[])
    third = run_experiment(fixed, out)
    assert third.ok and sorted(third.ran) == ["craft/bad-8_255@vit_tiny_digits", replay]
    with ExperimentStore(out) as store:
        assert len(store.get(replay).result["perturbations"]) == 3


def test_missing_checkpoints_are_all_named_before_anything_runs(tmp_path: Path) -> None:
    config_path = tmp_path / "exp.yaml"
    models = [{"name": "vit_tiny_digits", "checkpoint": str(tmp_path / "one.safetensors")},
              {"name": "ats_tiny_digits", "checkpoint": str(tmp_path / "two.pth")}]
    config_path.write_text(yaml.safe_dump(dict(TINY, models=models)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config_path), "-o", str(out), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "to run" in result.output and "missing (2)" in result.output
    assert "one.safetensors does not exist" in result.output and "two.pth does not exist" in result.output
    result = CliRunner().invoke(app, ["run", str(config_path), "-o", str(out)])
    assert result.exit_code == 2 and "2 input file(s) of tiny are missing; nothing was run" in result.output
    assert "one.safetensors" in result.output and "two.pth" in result.output and not out.exists()
    with pytest.raises(ConfigError, match="1 input file"):  # --only: the files of what it selects
        run_experiment(validate_config(dict(TINY, models=models)), out, only=["export/vit_tiny_digits/*"])


def test_cli_run_writes_report_and_exits_1_on_failures(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    doc = dict(TINY, models=["vit_tiny_digits"], whitebox=[TINY["whitebox"][0]], blackbox=[])
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0 and "to run" in result.output and not (out / "store.sqlite").exists()
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output and (out / "report.html").is_file() and (out / "tables" / "transfer.csv").is_file()
    bad = dict(doc, engines=[{"name": "fp32", "token_cap": "4"}])  # a cap on a model that is not token-sparse
    config.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(tmp_path / "bad")], catch_exceptions=False)
    assert result.exit_code == 1 and "failed  export/vit_tiny_digits/fp32" in result.output
    other = dict(doc, name="other")
    config.write_text(yaml.safe_dump(other))
    result = CliRunner().invoke(app, ["run", str(config), "-o", str(out)])
    assert result.exit_code == 2 and "holds experiment 'tiny', not 'other'" in result.output
    config.write_text("name: x\nmodels: [vit_tiny_digits]\nengines: [{name: a, precision: int4}]\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and "engines[0].precision" in result.output


def test_overrides_on_the_command_line() -> None:
    from edgeattack.cli.run import parse_overrides

    assert parse_overrides(["data.limit=8", "executor.kind=ray", "whitebox=[]"]) == {
        "data.limit": 8, "executor.kind": "ray", "whitebox": [],
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["data.limit"])


def test_a_killed_run_resumes_without_losing_or_repeating_cells(tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeattack", "run", str(config), "-o", str(out), "--no-report"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        done: dict[str, str] = {}
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "store.sqlite").exists():
                db = sqlite3.connect(out / "store.sqlite", timeout=5)
                try:
                    rows = db.execute("SELECT id, finished FROM cells WHERE status = 'done'").fetchall()
                except sqlite3.OperationalError:  # the store exists but its tables are not created yet
                    rows = []
                finally:
                    db.close()
                if len(rows) >= 5:
                    done = dict(rows)
                    break
            time.sleep(0.2)
        assert process.poll() is None, "the run finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    before = statuses(out)
    assert all(before[c] == "done" for c in done)
    summary = run_experiment(validate_config(TINY), out)
    assert summary.ok, summary.describe()
    assert set(done) <= set(summary.cached) and not set(done) & set(summary.ran)
    with ExperimentStore(out) as store:
        records = store.records()
        assert len(records) == len({r.id for r in records}) == len(build_plan(tiny()))
        for record in records:
            assert record.status == "done"
            if record.id in done:  # finished before the kill: untouched
                assert record.finished == done[record.id] and record.attempts == 1
        assert store.runs()[0]["finished"] is None  # the killed run never closed its row
        assert not any((out / "cells" / ".scratch").glob("*"))


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_pool_executors_give_the_same_results(executor: str, tmp_path: Path, finished: Path) -> None:
    if executor == "ray":
        pytest.importorskip("ray")
    only = ["replay/vit_tiny_digits/fp32", "availability/ats_tiny_digits/fp32", "craft/pgd-*"]
    summary = run_experiment(tiny(), tmp_path, executor=executor, workers=2, only=only)
    assert summary.ok, summary.describe()
    assert not any(c.startswith(("craft/ds", "replay/ats", "depth/")) for c in summary.ran)  # --only runs no more
    with ExperimentStore(tmp_path) as here, ExperimentStore(finished) as local:
        for cell_id in ("replay/vit_tiny_digits/fp32", "craft/pgd-8_255@vit_tiny_digits"):
            a, b = here.get(cell_id), local.get(cell_id)
            assert a is not None and b is not None and a.input_hash == b.input_hash
        for cell_id in ("replay/vit_tiny_digits/fp32",):
            a, b = here.get(cell_id), local.get(cell_id)
            assert a is not None and b is not None and a.input_hash == b.input_hash
            assert a.result["clean"]["clean_acc"] == b.result["clean"]["clean_acc"]
            assert [p["metrics"]["adv_acc"] for p in a.result["perturbations"]] == [
                p["metrics"]["adv_acc"] for p in b.result["perturbations"]
            ]
        hosts = {r.host.split(":")[1] for r in here.records() if r.host}
        assert str(os.getpid()) not in hosts  # the cells ran in worker processes


class _RecordingExecutor:
    """Capacity 3; finishes everything in flight on each wait, recording what ran side by side."""

    name, capacity = "fake", 3

    def __init__(self) -> None:
        self.in_flight: list[Any] = []
        self.together: list[set[str]] = []

    def __enter__(self) -> _RecordingExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @property
    def pending(self) -> int:
        return len(self.in_flight)

    def submit(self, task: Any) -> None:
        self.in_flight.append(task)

    def wait(self, timeout: float | None = None) -> list[Any]:
        from edgeattack.experiments.task import CellOutcome

        self.together.append({t.id for t in self.in_flight})
        done = []
        for task in self.in_flight:
            path = Path(task.workdir) / "out.bin"
            path.write_bytes(task.id.encode())
            outputs = {name: str(path) for name in ("engine", "artifact", "result")}
            done.append((task, CellOutcome(result={"id": task.id}, outputs=outputs, wall_s=0.0, host="fake:1")))
        self.in_flight = []
        return done


@pytest.mark.parametrize("exclusive", [True, False])
def test_cells_that_time_latency_run_alone(exclusive: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeattack.experiments import executors

    fake = _RecordingExecutor()
    monkeypatch.setattr(executors, "make_executor", lambda *a, **k: fake)
    config = tiny(metrics=dict(TINY["metrics"], exclusive_timing=exclusive))
    plan = build_plan(config)
    summary = run_experiment(config, tmp_path, executor="process", workers=3)
    assert summary.ok and len(summary.ran) == len(plan)
    timing = {c for c, cell in plan.cells.items() if cell.timing}
    assert timing == {c for c in plan.cells if c.startswith(("replay/", "availability/"))}
    shared = [group for group in fake.together if group & timing and len(group) > 1]
    assert (not shared) if exclusive else shared
    assert max(len(g) for g in fake.together) > 1  # the other cells still run side by side
