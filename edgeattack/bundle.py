"""On-device bundles: carry one evaluation onto a board that has no torch, and its results back.

A bundle is ONE tar file (plain or gzip) holding everything an evaluation needs:
```
MANIFEST.json           sha256 and size of every other member
bundle.json             the evaluation spec: engines, artifacts, dataset, evaluate settings
engines/<name>          engines to run as they are (.onnx; TensorRT plans with their .json sidecar)
onnx/<name>.onnx        ONNX files from which the board builds a TensorRT plan (`build_on_board`)
artifacts/<name>.npz    perturbation artifacts
data/images.npy ...     the dataset slice: images, labels, indices (written with allow_pickle=False)
```
`create_bundle` writes it on the workstation; `open_bundle` checks it on the board before anything
runs (every member's sha256 against the manifest; missing, extra, duplicate, linked and
path-traversal members refused) and extracts it with tarfile's `data` filter; `run_bundle` runs
`evaluate` on each engine with numpy and a runtime only and writes one result per engine, each
recording the sha256 of the bundle it came from; `merge_results` collects the board's results into
one document of kind "bundle-results", refusing duplicates and results of another bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
import platform
import shutil
import tarfile
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack._io import no_overwrite_path, sha256_file
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ArtifactError, ConfigError, EngineError, ResultError
from edgeattack.results import RESULT_KIND, EvaluationResult, write_new_file

__all__ = [
    "BOARD_PRECISIONS",
    "BUNDLE_KIND",
    "MERGED_KIND",
    "Bundle",
    "BundleEngine",
    "PlanBuilder",
    "create_bundle",
    "load_merged_results",
    "merge_results",
    "open_bundle",
    "run_bundle",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUNDLE_KIND = "edgeattack-bundle"
MANIFEST_KIND = "edgeattack-bundle-manifest"
MERGED_KIND = "bundle-results"
MANIFEST_NAME = "MANIFEST.json"
SPEC_NAME = "bundle.json"
MERGED_NAME = "bundle-results.json"
BOARD_PRECISIONS = ("fp32", "fp16", "int8", "best")
ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
_MAX_MANIFEST_BYTES = 16 << 20
_DATA_ARRAYS = ("images", "labels", "indices")

PlanBuilder = Callable[[Path, Path, str], Path]
"""Builds a TensorRT plan on the board: `builder(onnx_path, plan_path, precision) -> plan path`."""


# ---------------------------------------------------------------------------------------------
# Creating a bundle (workstation side)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    source: Path | None = None
    data: bytes | None = None
    sha256: str = ""
    size: int = 0

    def __post_init__(self) -> None:
        if self.data is not None:
            self.sha256 = hashlib.sha256(self.data).hexdigest()
            self.size = len(self.data)
        elif self.source is not None:
            self.sha256 = sha256_file(self.source)
            self.size = self.source.stat().st_size


def _free_member(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.suffix`, `stem-3.suffix`... when two inputs share a file name."""
    if name not in taken:
        taken.add(name)
        return name
    path = PurePosixPath(name)
    suffixes = "".join(path.suffixes)
    stem = path.name[: -len(suffixes)] if suffixes else path.name
    for n in range(2, 100_000):
        candidate = str(path.with_name(f"{stem}-{n}{suffixes}"))
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise ConfigError(f"too many bundle members named {name}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def engine_input_size(path: Path) -> tuple[int, int, int] | None:
    """The (C, H, W) an engine file takes, from its metadata; None where it cannot be read here."""
    if path.suffix.lower() in ONNX_SUFFIXES:
        from edgeattack.engines import open_engine

        return tuple(open_engine(path).input_size)  # type: ignore[return-value]
    from edgeattack.export.metadata import EngineMetadata, sidecar_path

    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    return tuple(EngineMetadata.from_json(sidecar.read_text(encoding="utf-8")).input_size)  # type: ignore[return-value]


def create_bundle(
    out: str | Path,
    *,
    dataset: ImageDataset,
    engines: Sequence[str | Path] = (),
    onnx_for_board: Sequence[str | Path] = (),
    board_precision: str = "fp16",
    perturbations: Sequence[str | Path] = (),
    blackbox: Sequence[str] = (),
    budget: int | None = None,
    batch_size: int = 64,
    quantize_inputs: bool = False,
    latency_runs: int | None = None,
    latency_seconds: float | None = None,
    measure_latency: bool = True,
    measure_memory: bool = True,
    seed: int = 0,
    meter: str | None = None,
    dataset_source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Pack engines, artifacts, `dataset` and the evaluate settings into the tar file `out`; returns it.

    `engines` are run on the board as they are (`.onnx`, or TensorRT plans with their `.json`
    sidecar, which only run on the GPU and TensorRT version they were built for); each of
    `onnx_for_board` is an ONNX file from which the board builds a TensorRT plan at
    `board_precision` (recorded as `build_on_board: true`). `out` ending in `.tar.gz`/`.tgz` is
    gzip-compressed. Everything is checked here, before the bundle travels: files exist, artifacts
    load and fit the dataset, engines take the dataset's input size, black-box specs parse.
    An existing `out` is refused unless `overwrite`.
    """
    from edgeattack.artifacts import PerturbationArtifact
    from edgeattack.attacks.blackbox.registry import parse_spec
    from edgeattack.attacks.blackbox.runner import DEFAULT_BUDGET
    from edgeattack.metrics.latency import DEFAULT_MIN_RUNS, DEFAULT_MIN_SECONDS

    target = Path(out)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists; choose another name or overwrite it explicitly")
    if not engines and not onnx_for_board:
        raise ConfigError("a bundle needs at least one engine (or an ONNX file to build on the board)")
    if board_precision not in BOARD_PRECISIONS:
        raise ConfigError(f"unknown board precision {board_precision!r}; choose one of {', '.join(BOARD_PRECISIONS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    budget = DEFAULT_BUDGET if budget is None else budget
    if budget is not None and budget < 1:
        raise ConfigError(f"the query budget must be at least 1 query per image, got {budget}")
    if len(dataset) == 0:
        raise ConfigError(f"dataset {dataset.spec} holds no images")
    for text in blackbox:
        parse_spec(text)  # a typo fails here, not on the board

    taken: set[str] = {MANIFEST_NAME, SPEC_NAME}
    members: list[_Member] = []
    engine_entries: list[dict[str, Any]] = []
    input_size = tuple(dataset.input_shape)

    def add_engine(source: str | Path, build_on_board: bool) -> None:
        path = Path(source)
        if not path.is_file():
            raise EngineError(f"engine file {path} does not exist")
        suffix = path.suffix.lower()
        allowed = ONNX_SUFFIXES if build_on_board else ONNX_SUFFIXES + PLAN_SUFFIXES
        if suffix not in allowed:
            what = "an ONNX file to build on the board" if build_on_board else "an engine"
            raise EngineError(f"{path} is not {what}: expected {'/'.join(allowed)}")
        size = engine_input_size(path)
        if size is not None and tuple(size) != input_size:
            raise EngineError(
                f"engine {path} takes images of size {tuple(size)} but dataset {dataset.spec} holds images of "
                f"size {input_size}"
            )
        folder = "onnx" if build_on_board else "engines"
        member = _Member(_free_member(f"{folder}/{path.name}", taken), source=path)
        members.append(member)
        entry: dict[str, Any] = {
            "member": member.name,
            "name": path.name,
            "format": "onnx" if suffix in ONNX_SUFFIXES else "tensorrt",
            "sha256": member.sha256,
            "size": member.size,
            "metadata_member": None,
            "build_on_board": build_on_board,
        }
        if build_on_board:
            entry["precision"] = board_precision
        if suffix in PLAN_SUFFIXES:
            from edgeattack.export.metadata import sidecar_path

            sidecar = sidecar_path(path)
            if sidecar.is_file():
                meta_member = _Member(member.name + ".json", source=sidecar)
                taken.add(meta_member.name)
                members.append(meta_member)
                entry["metadata_member"] = meta_member.name
            else:
                raise EngineError(
                    f"TensorRT plan {path} has no sidecar {sidecar.name}: the board cannot run it without one; "
                    f"bundle the ONNX file with --onnx-for-board to build the plan on the board instead"
                )
        engine_entries.append(entry)

    for source in engines:
        add_engine(source, build_on_board=False)
    for source in onnx_for_board:
        add_engine(source, build_on_board=True)

    artifact_entries = []
    for source in perturbations:
        path = Path(source)
        artifact = PerturbationArtifact.load(path)
        meta = artifact.meta
        if tuple(meta.input_size) != input_size:
            raise ArtifactError(
                f"perturbation {path} is for inputs of size {tuple(meta.input_size)} but dataset {dataset.spec} "
                f"holds images of size {input_size}"
            )
        if meta.dataset != dataset.name:
            raise ArtifactError(
                f"perturbation {path} was crafted on dataset {meta.dataset!r} but the bundle carries {dataset.spec}"
            )
        if not artifact.covers(dataset.indices).any():
            raise ArtifactError(
                f"per-image perturbation {path} covers none of the {len(dataset)} images of {dataset.spec} in the bundle"
            )
        member = _Member(_free_member(f"artifacts/{path.name}", taken), source=path)
        members.append(member)
        artifact_entries.append(
            {
                "member": member.name,
                "name": path.name,
                "sha256": member.sha256,
                "kind": meta.kind,
                "method": meta.method,
            }
        )

    data_members = {}
    for key, array in (("images", dataset.images), ("labels", dataset.labels), ("indices", dataset.indices)):
        member = _Member(f"data/{key}.npy", data=_npy_bytes(array))
        taken.add(member.name)
        members.append(member)
        data_members[key] = member.name

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    spec = {
        "schema_version": SCHEMA_VERSION,
        "kind": BUNDLE_KIND,
        "created": created,
        "edgeattack_version": __version__,
        "engines": engine_entries,
        "artifacts": artifact_entries,
        "dataset": {
            "spec": dataset.spec,
            "name": dataset.name,
            "split": dataset.split,
            "seed": dataset.seed,
            "n_images": len(dataset),
            "input_size": list(input_size),
            "class_names": list(dataset.class_names),
            "source": dataset_source,
            **data_members,
        },
        "evaluate": {
            "batch_size": batch_size,
            "quantize_inputs": quantize_inputs,
            "latency_runs": DEFAULT_MIN_RUNS if latency_runs is None else latency_runs,
            "latency_seconds": DEFAULT_MIN_SECONDS if latency_seconds is None else latency_seconds,
            "measure_latency": measure_latency,
            "measure_memory": measure_memory,
            "blackbox": list(blackbox),
            "budget": budget,
            "seed": seed,
            "meter": meter,
        },
    }
    spec_member = _Member(SPEC_NAME, data=(json.dumps(spec, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    members.insert(0, spec_member)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": MANIFEST_KIND,
        "algorithm": "sha256",
        "members": {m.name: {"sha256": m.sha256, "size": m.size} for m in members},
    }
    manifest_member = _Member(MANIFEST_NAME, data=(json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    _write_tar(target, [manifest_member, *members], mtime=int(datetime.now(timezone.utc).timestamp()))
    return target


class _HashingReader:
    """A file reader that hashes what passes through it (so a file changed mid-bundle is caught)."""

    def __init__(self, handle: io.BufferedReader) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.digest.update(block)
        return block


def _write_tar(target: Path, members: list[_Member], *, mtime: int) -> None:
    name = target.name.lower()
    mode = "w:gz" if name.endswith((".tar.gz", ".tgz")) else "w"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for member in members:
                    info = tarfile.TarInfo(member.name)
                    info.size = member.size
                    info.mode = 0o644
                    info.mtime = mtime
                    if member.data is not None:
                        tar.addfile(info, io.BytesIO(member.data))
                    else:
                        assert member.source is not None
                        with open(member.source, "rb") as source:
                            reader = _HashingReader(source)
                            tar.addfile(info, reader)  # type: ignore[arg-type]
                        if reader.digest.hexdigest() != member.sha256:
                            raise ArtifactError(f"{member.source} changed while it was being bundled; try again")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Opening a bundle (board side): verify, then extract
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleEngine:
    """One engine entry of a bundle's spec."""

    member: str
    name: str
    format: str
    sha256: str
    build_on_board: bool = False
    precision: str | None = None
    metadata_member: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BundleEngine:
        return cls(
            member=str(doc["member"]),
            name=str(doc["name"]),
            format=str(doc["format"]),
            sha256=str(doc["sha256"]),
            build_on_board=bool(doc.get("build_on_board", False)),
            precision=doc.get("precision"),
            metadata_member=doc.get("metadata_member"),
        )


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle extracted under `root`."""

    path: Path
    sha256: str
    root: Path
    spec: dict[str, Any]
    manifest: dict[str, Any]
    manifest_sha256: str

    @property
    def engines(self) -> tuple[BundleEngine, ...]:
        return tuple(BundleEngine.from_dict(e) for e in self.spec["engines"])

    @property
    def artifacts(self) -> tuple[Path, ...]:
        return tuple(self.member_path(a["member"]) for a in self.spec["artifacts"])

    @property
    def settings(self) -> dict[str, Any]:
        """The evaluate settings the bundle was created with."""
        return dict(self.spec["evaluate"])

    def member_path(self, member: str) -> Path:
        return self.root / member

    def dataset(self) -> ImageDataset:
        """The bundled dataset slice (arrays read with allow_pickle=False)."""
        info = self.spec["dataset"]
        arrays = {}
        for key in _DATA_ARRAYS:
            path = self.member_path(info[key])
            try:
                arrays[key] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"bundle {self.path.name}: cannot read {info[key]}: {exc}") from exc
        if len(arrays["labels"]) != int(info["n_images"]):
            raise ArtifactError(
                f"bundle {self.path.name}: {info['labels']} holds {len(arrays['labels'])} labels, the spec says "
                f"{info['n_images']} images"
            )
        return ImageDataset(
            images=arrays["images"],
            labels=arrays["labels"],
            name=str(info["name"]),
            split=str(info["split"]),
            seed=int(info["seed"]),
            indices=arrays["indices"],
            class_names=tuple(str(c) for c in info.get("class_names", ())),
        )

    def describe(self) -> dict[str, Any]:
        """What a result records about the bundle it came from."""
        return {
            "name": self.path.name,
            "sha256": self.sha256,
            "manifest_sha256": self.manifest_sha256,
            "created": self.spec.get("created"),
        }


def _check_member_name(name: str, bundle: str) -> None:
    parts = name.split("/")
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("..",) for part in parts)
    ):
        raise ArtifactError(f"bundle {bundle}: unsafe member path {name!r} (absolute or leaving the bundle); refused")


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, bundle: str) -> tuple[dict[str, Any], str]:
    if member.size > _MAX_MANIFEST_BYTES:
        raise ArtifactError(f"bundle {bundle}: {MANIFEST_NAME} is implausibly large ({member.size} bytes)")
    handle = tar.extractfile(member)
    if handle is None:
        raise ArtifactError(f"bundle {bundle}: cannot read {MANIFEST_NAME}")
    raw = handle.read()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"bundle {bundle}: {MANIFEST_NAME} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise ArtifactError(f"bundle {bundle}: {MANIFEST_NAME} is not an edgeattack bundle manifest")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ArtifactError(
            f"bundle {bundle} has schema {manifest.get('schema_version')}, newer than this edgeattack {__version__} "
            f"understands ({SCHEMA_VERSION}); upgrade edgeattack on the board"
        )
    entries = manifest.get("members")
    if not isinstance(entries, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
        for v in entries.values()
    ):
        raise ArtifactError(f"bundle {bundle}: {MANIFEST_NAME} is malformed (members need sha256 and size)")
    for name in entries:
        _check_member_name(name, bundle)
    return manifest, hashlib.sha256(raw).hexdigest()


def _scan(tar: tarfile.TarFile, bundle: str) -> tuple[list[tarfile.TarInfo], dict[str, Any], str]:
    """Every member checked for type, path and duplicates; the manifest; the files to extract."""
    files: dict[str, tarfile.TarInfo] = {}
    directories = set()
    for member in tar.getmembers():
        name = member.name
        _check_member_name(name, bundle)
        name = name.rstrip("/") if member.isdir() else name
        if member.issym() or member.islnk():
            raise ArtifactError(
                f"bundle {bundle}: member {name!r} is a {'symbolic' if member.issym() else 'hard'} link to "
                f"{member.linkname!r}; bundles hold regular files only"
            )
        if member.isdir():
            directories.add(name)
            continue
        if not member.isfile():
            raise ArtifactError(
                f"bundle {bundle}: member {name!r} is not a regular file; bundles hold regular files only"
            )
        if name in files:
            raise ArtifactError(f"bundle {bundle}: member {name!r} appears twice; refused")
        files[name] = member
    if MANIFEST_NAME not in files:
        raise ArtifactError(f"bundle {bundle} has no {MANIFEST_NAME}: not an edgeattack bundle, or truncated")
    manifest, manifest_sha = _read_manifest(tar, files[MANIFEST_NAME], bundle)
    listed = manifest["members"]
    missing = sorted(set(listed) - set(files))
    if missing:
        raise ArtifactError(f"bundle {bundle} is missing member(s) listed in its manifest: {', '.join(missing)}")
    extra = sorted(set(files) - set(listed) - {MANIFEST_NAME})
    if extra:
        raise ArtifactError(f"bundle {bundle} holds member(s) not in its manifest: {', '.join(extra)}; refused")
    parents = {str(p) for name in files for p in PurePosixPath(name).parents if str(p) != "."}
    stray = sorted(directories - parents)
    if stray:
        raise ArtifactError(f"bundle {bundle} holds directories not in its manifest: {', '.join(stray)}; refused")
    for name, entry in listed.items():
        if files[name].size != entry["size"]:
            raise ArtifactError(
                f"bundle {bundle}: member {name} is {files[name].size} bytes but the manifest says {entry['size']}: "
                f"the bundle was altered or truncated"
            )
    return [files[name] for name in listed], manifest, manifest_sha


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        try:
            tar.extractall(root, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise ArtifactError(f"unsafe bundle member refused: {exc}") from exc
        return
    for member in members:  # Pythons without extraction filters: regular files only, checked above
        target = root / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        with source, open(target, "wb") as handle:
            shutil.copyfileobj(source, handle)


def _check_spec(spec: Any, listed: dict[str, Any], bundle: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("kind") != BUNDLE_KIND:
        raise ArtifactError(f"bundle {bundle}: {SPEC_NAME} is not an edgeattack bundle spec")
    if int(spec.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ArtifactError(
            f"bundle {bundle} has spec schema {spec.get('schema_version')}, newer than this edgeattack understands "
            f"({SCHEMA_VERSION}); upgrade edgeattack on the board"
        )
    try:
        referenced = [e["member"] for e in spec["engines"]]
        referenced += [e["metadata_member"] for e in spec["engines"] if e.get("metadata_member")]
        referenced += [a["member"] for a in spec["artifacts"]]
        referenced += [spec["dataset"][key] for key in _DATA_ARRAYS]
        if "batch_size" not in spec["evaluate"]:
            raise KeyError("evaluate.batch_size")
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"bundle {bundle}: {SPEC_NAME} is malformed: {exc!r}") from exc
    unknown = sorted(set(referenced) - set(listed))
    if unknown:
        raise ArtifactError(f"bundle {bundle}: {SPEC_NAME} names member(s) not in the manifest: {', '.join(unknown)}")
    if not spec["engines"]:
        raise ArtifactError(f"bundle {bundle} holds no engine")
    return spec


def open_bundle(path: str | Path, workdir: str | Path, *, expected_sha256: str | None = None) -> Bundle:
    """Verify the bundle at `path` and extract it into `workdir` (absent or empty); nothing runs.

    Refused with ArtifactError: a file that is not a tar, a sha256 other than `expected_sha256`,
    members that are links, devices, absolute or contain `..`, duplicate names, members missing from
    or not listed in the manifest, and any member whose size or sha256 differs from the manifest (the
    error names it). On failure `workdir` is left as it was found.
    """
    source = Path(path)
    name = source.name
    if not source.is_file():
        raise ArtifactError(f"bundle {source} does not exist")
    bundle_sha = sha256_file(source)
    if expected_sha256 is not None and bundle_sha != expected_sha256.lower():
        raise ArtifactError(f"bundle {name} has sha256 {bundle_sha}, expected {expected_sha256}")
    root = Path(workdir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(f"bundle work directory {root} must be empty or absent")
    created_root = not root.exists()
    try:
        with tarfile.open(source, mode="r:*") as tar:
            members, manifest, manifest_sha = _scan(tar, name)
            root.mkdir(parents=True, exist_ok=True)
            _extract(tar, members, root)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        _clear(root, created_root)
        raise ArtifactError(f"bundle {name} is not a readable tar file: {exc}") from exc
    except BaseException:
        _clear(root, created_root)
        raise
    try:
        listed = manifest["members"]
        altered = []
        for member, entry in listed.items():
            digest = sha256_file(root / member)
            if digest != entry["sha256"]:
                altered.append(f"{member} (sha256 {digest[:12]}..., manifest {entry['sha256'][:12]}...)")
        if altered:
            raise ArtifactError(
                f"bundle {name}: member(s) do not match the manifest: {'; '.join(altered)}; the bundle was altered "
                f"or corrupted, nothing was run"
            )
        try:
            spec = json.loads((root / SPEC_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ArtifactError(f"bundle {name} has no {SPEC_NAME}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"bundle {name}: {SPEC_NAME} is not JSON: {exc}") from exc
        spec = _check_spec(spec, listed, name)
    except BaseException:
        _clear(root, created_root)
        raise
    return Bundle(source, bundle_sha, root, spec, manifest, manifest_sha)


def _clear(root: Path, created: bool) -> None:
    if not root.exists():
        return
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Running a bundle (board side)
# ---------------------------------------------------------------------------------------------


def _default_plan_builder() -> PlanBuilder | None:
    """The TensorRT plan builder of this edgeattack (`edgeattack.export.tensorrt_build`); None without TensorRT."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    from edgeattack.export.tensorrt_build import build_tensorrt_engine

    def builder(onnx_path: Path, plan_path: Path, precision: str) -> Path:
        build_tensorrt_engine(onnx_path, plan_path, precision=precision)
        return plan_path

    return builder


def run_bundle(
    bundle: Bundle,
    *,
    out_dir: str | Path,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    build_plan: PlanBuilder | None = None,
    blackbox_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    paths: list[Path] | None = None,
) -> list[EvaluationResult]:
    """Evaluate every engine of `bundle` with its artifacts, black-box specs and settings; numpy + runtime only.

    Each result is written to `out_dir` as soon as it is done (never overwriting) and records in
    `settings["bundle"]` the bundle's sha256, the engine member and a run id shared by this call's
    results; the written paths are appended to `paths` when given. Entries with `build_on_board`
    get their TensorRT plan built first by `build_plan(onnx, plan, precision)` (default: this
    edgeattack's TensorRT builder; EngineError before anything runs when there is none).
    `progress(engine_name, total, advance)` follows each evaluation.
    """
    from edgeattack.engines import open_engine
    from edgeattack.evaluate import evaluate

    entries = bundle.engines
    builder = build_plan
    if any(e.build_on_board for e in entries) and builder is None:
        builder = _default_plan_builder()
        if builder is None:
            wanted = ", ".join(f"{e.member} ({e.precision})" for e in entries if e.build_on_board)
            raise EngineError(
                f"bundle {bundle.path.name} asks to build TensorRT plans on the board from {wanted}, but this "
                f"edgeattack has no TensorRT builder here (install JetPack's TensorRT Python bindings)"
            )
    dataset = bundle.dataset()
    settings = bundle.settings
    meter = settings.get("meter")
    extra: dict[str, Any] = {}
    if meter is not None:
        if "meter" in inspect.signature(evaluate).parameters:
            extra["meter"] = meter
        else:
            logger.warning("bundle asks for the %s energy meter; this edgeattack's evaluate measures no energy", meter)
    artifact_names = {str(bundle.member_path(a["member"])): a["member"] for a in bundle.spec["artifacts"]}
    run_id = uuid.uuid4().hex
    out = Path(out_dir)
    results = []
    for entry in entries:
        engine_path = bundle.member_path(entry.member)
        built = None
        if entry.build_on_board:
            assert builder is not None
            plan = bundle.root / "built" / f"{Path(entry.name).stem}-{entry.precision}.plan"
            plan.parent.mkdir(parents=True, exist_ok=True)
            engine_path = builder(engine_path, plan, str(entry.precision))
            built = {"from": entry.member, "precision": entry.precision, "plan_sha256": sha256_file(engine_path)}

        def advance(total: int, steps: int, name: str = entry.name) -> None:
            if progress is not None:
                progress(name, total, steps)

        with open_engine(engine_path, providers=providers, intra_op_threads=threads) as engine:
            result = evaluate(
                engine,
                dataset,
                list(bundle.artifacts),
                batch_size=int(settings["batch_size"]),
                quantize_inputs=bool(settings["quantize_inputs"]),
                latency_runs=int(settings["latency_runs"]),
                latency_seconds=float(settings["latency_seconds"]),
                measure_latency=bool(settings.get("measure_latency", True)),
                measure_memory=bool(settings.get("measure_memory", True)),
                blackbox=list(settings.get("blackbox", ())),
                budget=settings.get("budget"),
                blackbox_dir=blackbox_dir,
                seed=int(settings.get("seed", 0)),
                progress=advance,
                **extra,
            )
        result = _tag(result, bundle, entry, run_id, providers, threads, built, artifact_names)
        written = result.save(out / f"{Path(entry.name).stem}__{dataset.name}-{dataset.split}.json")
        if paths is not None:
            paths.append(written)
        results.append(result)
    return results


def _tag(
    result: EvaluationResult,
    bundle: Bundle,
    entry: BundleEngine,
    run_id: str,
    providers: Sequence[str] | None,
    threads: int | None,
    built: dict[str, Any] | None,
    artifact_names: dict[str, str],
) -> EvaluationResult:
    """The result with bundle member names instead of work-directory paths, and the bundle recorded."""
    engine = dict(result.engine, source=entry.name, bundle_member=entry.member)
    perturbations = tuple(
        dataclasses.replace(p, artifact_path=artifact_names.get(str(p.artifact_path), p.artifact_path))
        for p in result.perturbations
    )
    origin = {
        **bundle.describe(),
        "run_id": run_id,
        "engine_member": entry.member,
        "engine_sha256": entry.sha256,
        "built_on_board": built,
        "host": platform.node(),
        "machine": platform.machine(),
        "providers_requested": list(providers) if providers else None,
        "threads": threads,
        "meter": bundle.settings.get("meter"),
    }
    settings = dict(result.settings, bundle=origin)
    return dataclasses.replace(result, engine=engine, perturbations=perturbations, settings=settings)


# ---------------------------------------------------------------------------------------------
# Merging the board's results (workstation side)
# ---------------------------------------------------------------------------------------------


def _result_files(sources: Iterable[str | Path]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for each source: a file, or every .json under a directory."""
    files: list[tuple[Path, bool]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files += [(p, False) for p in sorted(path.rglob("*.json")) if p.is_file()]
        elif path.is_file():
            files.append((path, True))
        else:
            raise ResultError(f"{path} does not exist")
    return files


def merge_results(
    sources: Iterable[str | Path],
    out: str | Path,
    *,
    bundle: str | Path | None = None,
) -> Path:
    """Collect the results of `run_bundle` (files, or directories searched for .json) into `out`.

    Each is validated with `edgeattack.results.load` and must record the bundle it came from; all
    must come from one bundle (the tar file `bundle` when given, else the first result's), and no
    (run, engine) may appear twice: either is a ResultError naming the files. `out` ending in
    `.json` gets one document of kind "bundle-results" (the results embedded); any other `out` is a
    directory that gets a copy of each result plus that document. Nothing is overwritten; returns
    the document's path.
    """
    from edgeattack.results import load

    sources = list(sources)
    expected: dict[str, Any] | None = None
    if bundle is not None:
        bundle_path = Path(bundle)
        if not bundle_path.is_file():
            raise ResultError(f"bundle {bundle_path} does not exist")
        expected = {"name": bundle_path.name, "sha256": sha256_file(bundle_path), "from": str(bundle_path)}
    seen_files: set[Path] = set()
    seen_keys: dict[tuple[str, str], Path] = {}
    entries = []
    for path, explicit in _result_files(sources):
        resolved = path.resolve()
        if resolved in seen_files:
            continue
        seen_files.add(resolved)
        if not explicit and not _is_result_document(path):
            logger.info("skipping %s: not an evaluation result", path)
            continue
        result = load(path)
        origin = result.settings.get("bundle")
        if not isinstance(origin, dict) or not origin.get("sha256") or not origin.get("run_id"):
            raise ResultError(
                f"{path} does not come from a bundle run (no settings.bundle): merge collects the results of "
                f"`edgeattack evaluate --bundle`"
            )
        if expected is None:
            expected = {"name": origin.get("name"), "sha256": origin["sha256"], "from": str(path)}
        if origin["sha256"] != expected["sha256"]:
            raise ResultError(
                f"{path} comes from another bundle: {origin.get('name')} (sha256 {origin['sha256'][:16]}...), not "
                f"{expected['name']} (sha256 {expected['sha256'][:16]}..., from {expected['from']}); merge the "
                f"results of one bundle at a time"
            )
        key = (str(origin["run_id"]), str(origin.get("engine_member")))
        if key in seen_keys:
            raise ResultError(
                f"{path} and {seen_keys[key]} are the same result (run {key[0][:12]}, engine {key[1]}): a result "
                f"was collected twice; pass each once"
            )
        seen_keys[key] = path
        entries.append((path, result, origin))
    if not entries:
        raise ResultError("no bundle results found in " + ", ".join(str(s) for s in sources))
    assert expected is not None
    return _write_merged(Path(out), entries, expected)


def _is_result_document(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let `load` report it
    return not isinstance(doc, dict) or doc.get("kind") == RESULT_KIND


def _write_merged(
    out: Path, entries: list[tuple[Path, EvaluationResult, dict[str, Any]]], expected: dict[str, Any]
) -> Path:
    runs: dict[str, dict[str, Any]] = {}
    for _, result, origin in entries:
        run = runs.setdefault(
            origin["run_id"],
            {"run_id": origin["run_id"], "host": origin.get("host"), "machine": origin.get("machine"), "engines": []},
        )
        run["engines"].append(
            {
                "member": origin.get("engine_member"),
                "providers": result.engine.get("providers"),
                "created": result.created,
            }
        )
    first = entries[0][2]
    directory = None if out.suffix == ".json" else out
    items = []
    for path, result, origin in entries:
        item: dict[str, Any] = {
            "file": str(path),
            "file_sha256": sha256_file(path),
            "run_id": origin["run_id"],
            "engine_member": origin.get("engine_member"),
            "result": result.to_dict(),
        }
        if directory is not None:
            copy = write_new_file(directory / f"{origin['run_id'][:8]}__{path.name}", path.read_bytes())
            item["copied_to"] = copy.name
        items.append(item)
    document = {
        "schema_version": SCHEMA_VERSION,
        "kind": MERGED_KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgeattack_version": __version__,
        "bundle": {
            "name": first.get("name"),
            "sha256": expected["sha256"],
            "manifest_sha256": first.get("manifest_sha256"),
            "created": first.get("created"),
        },
        "runs": list(runs.values()),
        "results": items,
    }
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    target = out if directory is None else no_overwrite_path(directory / MERGED_NAME)
    return write_new_file(target, text.encode("utf-8"))


def load_merged_results(path: str | Path) -> list[EvaluationResult]:
    """The evaluation results of a "bundle-results" document written by `merge_results`."""
    source = Path(path)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultError(f"{source} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"cannot read {source}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != MERGED_KIND:
        raise ResultError(f"{source} is not a {MERGED_KIND} document")
    return [EvaluationResult.from_dict(item["result"]) for item in doc.get("results", [])]
