"""Reading a bundle's tar file safely (board side): the manifest, and every member checked before extraction.

Links, devices, absolute and path-traversal names, duplicates, and members missing from or not
listed in the manifest are refused; sizes are checked against the manifest here, sha256 after
extraction (`edgeattack.bundle.unpack`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgeattack import __version__
from edgeattack.errors import ArtifactError

from .layout import _MAX_MANIFEST_BYTES, MANIFEST_KIND, MANIFEST_NAME, SCHEMA_VERSION


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
