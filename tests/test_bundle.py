"""On-device bundles: create on this machine, verify and run where torch cannot be imported, merge back.

The bundle run happens in a child process in which importing torch, timm, onnx or TensorRT fails
(as on a board with `pip install edgeattack[cpu]`), through `edgeattack evaluate --bundle`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::edgeattack.metrics.latency.UnstableLatencyWarning")

from edgeattack._io import sha256_file
from edgeattack.artifacts import ArtifactMeta, PerturbationArtifact
from edgeattack.bundle import (
    MERGED_KIND,
    create_bundle,
    load_merged_results,
    merge_results,
    open_bundle,
    run_bundle,
)
from edgeattack.cli.bundle import bundle_command, merge_command
from edgeattack.cli.evaluate import evaluate_command
from edgeattack.data import load_dataset
from edgeattack.errors import ArtifactError, ConfigError, EngineError, ResultError

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCKED_MODULES = ("torch", "torchvision", "timm", "tensorrt", "safetensors", "onnx", "onnxscript")
LIMIT = 12
BLACKBOX = ["spatial"]
BUDGET = 20
SETTINGS = {"batch_size": 4, "latency_runs": 2, "latency_seconds": 0.01}


def make_blocker_dir(root: Path, modules: tuple[str, ...] = BLOCKED_MODULES) -> Path:
    """A directory of packages named `modules` whose import raises ImportError (as in test_torch_line)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in modules:
        (root / name).mkdir(exist_ok=True)
        (root / name / "__init__.py").write_text(f'raise ImportError("{name} is blocked: no torch on this board")\n')
    return root


def run_without_torch(
    args: list[str], blocker_dir: Path, *, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python *args` with the blocked packages shadowing the real ones (as in test_torch_line)."""
    env = dict(os.environ)
    paths = [str(blocker_dir), str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ONNX export of the shipped vit_tiny_digits, a universal artifact, and a bundle of both."""
    pytest.importorskip("torch")
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo import create_model

    root = tmp_path_factory.mktemp("bundle")
    onnx_path = root / "vit_tiny_digits.onnx"
    export_onnx(create_model("vit_tiny_digits"), onnx_path)
    meta = ArtifactMeta(
        kind="universal",
        method="random",
        norm="linf",
        eps=8 / 255,
        input_size=(3, 32, 32),
        dataset="digits",
        split="train",
        seed=0,
    )
    delta = np.random.default_rng(0).uniform(-8 / 255, 8 / 255, (1, 3, 32, 32)).astype(np.float32)
    artifact = PerturbationArtifact(delta=delta, meta=meta).save(root / "uap.npz")
    bundle = create_bundle(
        root / "run.tar",
        dataset=load_dataset("digits", split="test", limit=LIMIT),
        engines=[onnx_path],
        perturbations=[artifact],
        blackbox=BLACKBOX,
        budget=BUDGET,
        **SETTINGS,
    )
    return {"root": root, "onnx": onnx_path, "artifact": artifact, "bundle": bundle}


@pytest.fixture(scope="module")
def board_run(world, tmp_path_factory) -> Path:
    """`edgeattack evaluate --bundle run.tar -o out/` in a process where torch cannot be imported."""
    root = tmp_path_factory.mktemp("board")
    blocker = make_blocker_dir(root / "blocked")
    out = root / "out"
    completed = run_without_torch(
        ["-m", "edgeattack.cli.app", "evaluate", "--bundle", str(world["bundle"]), "-o", str(out)], blocker, cwd=root
    )
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}"
    assert "verified" in completed.stdout and "result:" in completed.stdout
    return out


def _repack(
    source: Path,
    target: Path,
    *,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    add: list[tuple[tarfile.TarInfo, bytes | None]] = (),
) -> Path:
    """A copy of the tar `source` with members replaced, dropped or added (the manifest left as it is)."""
    replace = replace or {}
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            if member.name in drop:
                continue
            data = replace.get(member.name, old.extractfile(member).read())
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
        for info, data in add:
            new.addfile(info, io.BytesIO(data) if data is not None else None)
    return target


def _metrics(result) -> dict:
    doc = result.to_dict() if not isinstance(result, dict) else result
    return {
        "clean": {k: doc["clean"][k] for k in ("n_images", "n_correct", "clean_acc")},
        "perturbations": [(p["metrics"], p["norms"]) for p in doc["perturbations"]],
        "blackbox": [(b["metrics"], b["norms"], b["queries"], b["budget"]) for b in doc["blackbox"]],
    }


def test_bundle_runs_without_torch_like_a_direct_evaluate(world, board_run):
    from edgeattack.evaluate import evaluate

    files = sorted(board_run.glob("*.json"))
    assert [f.name for f in files] == ["vit_tiny_digits__digits-test.json"]
    doc = json.loads(files[0].read_text())
    direct = evaluate(
        world["onnx"],
        load_dataset("digits", split="test", limit=LIMIT),
        [world["artifact"]],
        blackbox=BLACKBOX,
        budget=BUDGET,
        seed=0,
        **SETTINGS,
    )
    assert _metrics(doc) == _metrics(direct)
    assert doc["dataset"] == direct.dataset.to_dict()
    origin = doc["settings"]["bundle"]
    assert origin["sha256"] == sha256_file(world["bundle"])
    assert origin["engine_member"] == "engines/vit_tiny_digits.onnx"
    assert doc["engine"]["source"] == "vit_tiny_digits.onnx"
    assert doc["perturbations"][0]["artifact_path"] == "artifacts/uap.npz"
    assert doc["perturbations"][0]["artifact_sha256"] == sha256_file(world["artifact"])
    assert doc["latency"]["batch_size"] == 4


def test_bundle_members_and_spec(world, tmp_path):
    bundle = open_bundle(world["bundle"], tmp_path / "work")
    assert {e.member for e in bundle.engines} == {"engines/vit_tiny_digits.onnx"}
    assert bundle.settings["blackbox"] == BLACKBOX and bundle.settings["budget"] == BUDGET
    dataset = bundle.dataset()
    expected = load_dataset("digits", split="test", limit=LIMIT)
    np.testing.assert_array_equal(dataset.images, expected.images)
    np.testing.assert_array_equal(dataset.indices, expected.indices)
    assert dataset.spec == expected.spec and dataset.class_names == expected.class_names
    with tarfile.open(world["bundle"]) as tar:
        names = set(tar.getnames())
    assert names == {"MANIFEST.json", *bundle.manifest["members"]}


def test_gzip_bundle_and_build_on_board_is_recorded(world, tmp_path):
    dataset = load_dataset("digits", split="test", limit=4)
    path = create_bundle(tmp_path / "b.tar.gz", dataset=dataset, onnx_for_board=[world["onnx"]], board_precision="int8")
    with open(path, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"
    bundle = open_bundle(path, tmp_path / "work")
    (entry,) = bundle.engines
    assert entry.build_on_board and entry.precision == "int8" and entry.member == "onnx/vit_tiny_digits.onnx"
    built = []

    def builder(onnx_path: Path, plan_path: Path, precision: str) -> Path:
        built.append((onnx_path.name, precision))
        raise EngineError("no TensorRT in this test")

    with pytest.raises(EngineError, match="no TensorRT"):
        run_bundle(bundle, out_dir=tmp_path / "out", build_plan=builder)
    assert built == [("vit_tiny_digits.onnx", "int8")]


def test_plan_travels_with_its_sidecar(world, tmp_path):
    from edgeattack.engines import open_engine

    dataset = load_dataset("digits", split="test", limit=4)
    plan = tmp_path / "vit.plan"
    plan.write_bytes(b"not really a plan")
    with pytest.raises(EngineError, match="no sidecar"):
        create_bundle(tmp_path / "p.tar", dataset=dataset, engines=[plan])
    sidecar = dict(open_engine(world["onnx"]).metadata.to_dict(), tensorrt={"version": "10.3"})
    (tmp_path / "vit.plan.json").write_text(json.dumps(sidecar))
    bundle = open_bundle(create_bundle(tmp_path / "p.tar", dataset=dataset, engines=[plan]), tmp_path / "work")
    (entry,) = bundle.engines
    assert entry.format == "tensorrt" and entry.metadata_member == "engines/vit.plan.json"
    assert (bundle.root / "engines" / "vit.plan.json").is_file()


def test_create_refuses_bad_inputs(world, tmp_path):
    dataset = load_dataset("digits", split="test", limit=4)
    with pytest.raises(ConfigError, match="exists"):
        create_bundle(world["bundle"], dataset=dataset, engines=[world["onnx"]])
    with pytest.raises(ConfigError, match="at least one engine"):
        create_bundle(tmp_path / "x.tar", dataset=dataset)
    with pytest.raises(ConfigError):
        create_bundle(tmp_path / "x.tar", dataset=dataset, engines=[world["onnx"]], blackbox=["nosuchattack"])
    assert not (tmp_path / "x.tar").exists()


def _flip_byte(source: Path, target: Path, member: str) -> Path:
    shutil.copyfile(source, target)
    with tarfile.open(source) as tar:
        info = tar.getmember(member)
    with open(target, "r+b") as handle:
        handle.seek(info.offset_data + info.size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return target


def test_altered_engine_is_refused_naming_the_member(world, tmp_path):
    altered = _flip_byte(world["bundle"], tmp_path / "altered.tar", "engines/vit_tiny_digits.onnx")
    work = tmp_path / "work"
    with pytest.raises(ArtifactError, match=r"engines/vit_tiny_digits\.onnx.*altered"):
        open_bundle(altered, work)
    assert not work.exists()
    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.command("merge")(merge_command)
    result = CliRunner().invoke(app, ["evaluate", "--bundle", str(altered), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "engines/vit_tiny_digits.onnx" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_repacked_with_modified_npy_is_refused(world, tmp_path):
    with tarfile.open(world["bundle"]) as tar:
        labels = np.load(io.BytesIO(tar.extractfile("data/labels.npy").read()), allow_pickle=False)
    buffer = io.BytesIO()
    np.save(buffer, (labels + 1) % 10, allow_pickle=False)
    repacked = _repack(world["bundle"], tmp_path / "r.tar", replace={"data/labels.npy": buffer.getvalue()})
    with pytest.raises(ArtifactError, match=r"data/labels\.npy"):
        open_bundle(repacked, tmp_path / "work")


def test_missing_and_extra_members_are_refused(world, tmp_path):
    missing = _repack(world["bundle"], tmp_path / "m.tar", drop=("artifacts/uap.npz",))
    with pytest.raises(ArtifactError, match=r"missing.*artifacts/uap\.npz"):
        open_bundle(missing, tmp_path / "w1")
    info = tarfile.TarInfo("engines/extra.onnx")
    info.size = 3
    extra = _repack(world["bundle"], tmp_path / "e.tar", add=[(info, b"abc")])
    with pytest.raises(ArtifactError, match=r"not in its manifest: engines/extra\.onnx"):
        open_bundle(extra, tmp_path / "w2")
    duplicate = tarfile.TarInfo("data/labels.npy")
    duplicate.size = 3
    twice = _repack(world["bundle"], tmp_path / "d.tar", add=[(duplicate, b"abc")])
    with pytest.raises(ArtifactError, match="appears twice"):
        open_bundle(twice, tmp_path / "w3")


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/edgeattack-evil.txt", "data/../../evil.txt"])
def test_path_traversal_member_is_refused(world, tmp_path, name):
    info = tarfile.TarInfo(name)
    info.size = 4
    evil = _repack(world["bundle"], tmp_path / "evil.tar", add=[(info, b"evil")])
    work = tmp_path / "deep" / "work"
    with pytest.raises(ArtifactError, match="unsafe member path"):
        open_bundle(evil, work)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not work.exists()


def test_link_member_is_refused(world, tmp_path):
    link = tarfile.TarInfo("data/passwd.npy")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    evil = _repack(world["bundle"], tmp_path / "link.tar", add=[(link, None)])
    with pytest.raises(ArtifactError, match="symbolic link"):
        open_bundle(evil, tmp_path / "work")


def test_merge_two_runs_and_refuse_duplicates(world, board_run, tmp_path):
    second = tmp_path / "second"
    bundle = open_bundle(world["bundle"], tmp_path / "work")
    written: list[Path] = []
    run_bundle(bundle, out_dir=second, paths=written)
    merged = merge_results([board_run, second], tmp_path / "merged.json", bundle=world["bundle"])
    doc = json.loads(merged.read_text())
    assert doc["kind"] == MERGED_KIND and doc["bundle"]["sha256"] == sha256_file(world["bundle"])
    assert len(doc["runs"]) == 2 and len(doc["results"]) == 2
    assert [r.dataset.n_images for r in load_merged_results(merged)] == [LIMIT, LIMIT]

    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(written[0], copy / "copied.json")
    with pytest.raises(ResultError, match="collected twice"):
        merge_results([second, copy], tmp_path / "dup.json")

    app = typer.Typer()
    app.command("evaluate")(evaluate_command)
    app.command("merge")(merge_command)
    result = CliRunner().invoke(app, ["merge", str(board_run), str(second), "-o", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert "merged 2 result(s)" in result.output
    assert len(list((tmp_path / "merged").glob("*__*.json"))) == 2
    assert (tmp_path / "merged" / "bundle-results.json").is_file()


def test_merge_refuses_a_result_from_another_bundle(world, board_run, tmp_path):
    other = create_bundle(
        tmp_path / "other.tar",
        dataset=load_dataset("digits", split="test", limit=4),
        engines=[world["onnx"]],
        measure_latency=False,
    )
    run_bundle(open_bundle(other, tmp_path / "work"), out_dir=tmp_path / "other-out")
    with pytest.raises(ResultError, match="another bundle"):
        merge_results([board_run, tmp_path / "other-out"], tmp_path / "merged.json")
    with pytest.raises(ResultError, match="another bundle"):
        merge_results([tmp_path / "other-out"], tmp_path / "merged.json", bundle=world["bundle"])
    assert not (tmp_path / "merged.json").exists()


def test_bundle_cli_and_evaluate_needs_an_engine_or_a_bundle(world, tmp_path):
    app = typer.Typer()
    app.command("bundle")(bundle_command)
    app.command("evaluate")(evaluate_command)
    runner = CliRunner()
    out = tmp_path / "cli.tar.gz"
    result = runner.invoke(
        app,
        [
            "bundle",
            "-e",
            str(world["onnx"]),
            "-p",
            str(world["artifact"]),
            "--limit",
            "5",
            "-B",
            "spatial",
            "--budget",
            "10",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sha256:" in result.output and out.is_file()
    spec = open_bundle(out, tmp_path / "work").spec
    assert spec["dataset"]["n_images"] == 5 and spec["evaluate"]["blackbox"] == ["spatial"]
    result = runner.invoke(app, ["evaluate", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--engine" in result.output and "--bundle" in result.output
    result = runner.invoke(app, ["evaluate", "--bundle", str(out), "-e", str(world["onnx"])])
    assert result.exit_code == 2 and "--bundle carries" in result.output
