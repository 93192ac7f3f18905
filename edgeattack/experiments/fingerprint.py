"""What a cell's input hash sees of local files: checkpoints by content, image folders by listing.

A checkpoint path in a cell's parameters becomes `sha256:<digest>` (cached per path, size and
modification time), so moving the file keeps every cached cell and changing it re-runs them; an
image folder becomes a digest of its files' names, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

from edgeattack._io import sha256_file


def by_content(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with each checkpoint path replaced by the file's sha256 and the image folder by its listing."""
    out = dict(params)
    for key in ("model", "models"):
        value = out.get(key)
        if isinstance(value, dict):
            out[key] = _spec_by_content(value)
        elif isinstance(value, list):
            out[key] = [_spec_by_content(v) if isinstance(v, dict) else v for v in value]
    data = out.get("data")
    if isinstance(data, dict) and data.get("dataset", "digits") != "digits":
        out["data"] = dict(data, dataset=f"folder:{_folder_fingerprint(data['dataset'])}")
    return out


def _spec_by_content(spec: dict[str, Any]) -> dict[str, Any]:
    if not spec.get("checkpoint"):
        return spec
    return dict(spec, checkpoint=f"sha256:{content_sha256(spec['checkpoint'])}")


def content_sha256(path: str) -> str:
    """The file's sha256, computed once per (path, size, mtime); "missing:PATH" for a file that is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return f"missing:{path}"
    return _sha256_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@cache
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _folder_fingerprint(path: str) -> str:
    """Files, sizes and modification times under an image folder (hashing every image would be slow)."""
    root = Path(path)
    if not root.is_dir():
        return f"missing:{path}"
    return _folder_cached(str(root.resolve()), root.stat().st_mtime_ns)


@cache
def _folder_cached(path: str, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    root = Path(path)
    for directory, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(directory, name))
            digest.update(f"{os.path.relpath(os.path.join(directory, name), root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
