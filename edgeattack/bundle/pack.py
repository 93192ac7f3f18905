"""Creating a bundle (workstation side): check every input, then write one tar file with its manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgeattack import __version__
from edgeattack._io import sha256_file
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ArtifactError, ConfigError, EngineError

from .layout import (
    BOARD_PRECISIONS,
    BUNDLE_KIND,
    MANIFEST_KIND,
    MANIFEST_NAME,
    ONNX_SUFFIXES,
    PLAN_SUFFIXES,
    SCHEMA_VERSION,
    SPEC_NAME,
)


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


def engine_metadata(path: Path) -> Any:
    """An engine file's `EngineMetadata` (input size, labels, ...); None where it cannot be read here."""
    if path.suffix.lower() in ONNX_SUFFIXES:
        from edgeattack.engines import open_engine

        return open_engine(path).metadata
    from edgeattack.export.metadata import EngineMetadata, sidecar_path

    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    return EngineMetadata.from_json(sidecar.read_text(encoding="utf-8"))


def engine_input_size(path: Path) -> tuple[int, int, int] | None:
    """The (C, H, W) an engine file takes, from its metadata; None where it cannot be read here."""
    metadata = engine_metadata(path)
    return None if metadata is None else tuple(metadata.input_size)  # type: ignore[return-value]


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
    from edgeattack.artifacts import PerturbationArtifact, check_replay
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
    engine_names = ", ".join(Path(e).name for e in [*engines, *onnx_for_board]) or "(none)"
    for source in perturbations:
        path = Path(source)
        artifact = PerturbationArtifact.load(path)
        # the checks the board's replay makes (input size, dataset and split, budget, coverage), here
        check_replay(artifact, dataset, label=str(path), input_size=input_size, engine=engine_names)
        meta = artifact.meta
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
    for key, array in (("images", np.asarray(dataset.images)), ("labels", dataset.labels), ("indices", dataset.indices)):
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
            "selection": dataset.selection,
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
