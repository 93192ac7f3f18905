"""Opening a bundle (board side): verify the tar file and every member's sha256, then extract; nothing runs."""

from __future__ import annotations

import json
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

from edgeattack._io import sha256_file
from edgeattack.errors import ArtifactError, ConfigError

from .layout import _DATA_ARRAYS, BUNDLE_KIND, SCHEMA_VERSION, SPEC_NAME, Bundle
from .members import _extract, _scan


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
