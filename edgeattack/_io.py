"""Small file helpers: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_json(path: str | os.PathLike[str], document: Any) -> Path:
    """Atomically write a JSON document (indented, keys in insertion order, NaN refused)."""
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def no_overwrite_path(path: str | os.PathLike[str]) -> Path:
    """`path` itself if free, else `stem-1.suffix`, `stem-2.suffix`, ...: results are never overwritten."""
    target = Path(path)
    if not target.exists():
        return target
    for n in range(1, 100_000):
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"no free name next to {target}")


def file_label(text: str, max_length: int = 80) -> str:
    """`text` as a safe piece of a file name: a dataset spec keeps only its folder's own name.

    `folder:/data/imagenet-test` gives `imagenet-test` (a result's file name never embeds an absolute
    path), `digits` stays `digits`; characters outside `[A-Za-z0-9_.-]` become `_`.
    """
    if text.startswith("folder:"):
        text = Path(text.removeprefix("folder:")).name or "folder"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:max_length] or "unnamed"


def dataset_file_label(name: str, split: str) -> str:
    """`<dataset>-<split>` for result and artifact file names (`imagenet-test-val`, never `folder:/data/...`)."""
    return f"{file_label(name)}-{file_label(split)}"
