"""The zoo manifest: one JSON file beside the shipped safetensors (no torch).

Each entry records the family, architecture, parameter count, accuracy, sha256 of the weights and
the exact command that rebuilt them, so a shipped model can be checked and reproduced.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_json, sha256_file
from edgeattack.errors import EdgeAttackError

SHIPPED_DIR = Path(__file__).parent / "weights"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ManifestEntry:
    """What the manifest says about one set of weights."""

    name: str
    file: str
    sha256: str
    family: str
    architecture: str
    params: int
    metrics: dict[str, float] = field(default_factory=dict)
    dataset: str = ""
    seed: int = 0
    command: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(directory: Path = SHIPPED_DIR) -> dict[str, ManifestEntry]:
    """Entries by model name; an absent manifest is an empty one."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return {name: ManifestEntry(name=name, **fields) for name, fields in doc.get("models", {}).items()}
    except (json.JSONDecodeError, TypeError) as exc:
        raise EdgeAttackError(f"zoo manifest {path} is malformed: {exc}") from exc


def write_entry(entry: ManifestEntry, directory: Path) -> Path:
    """Add or replace `entry` in `directory`'s manifest, atomically."""
    entries = read_manifest(directory)
    entries[entry.name] = entry
    models = {}
    for name in sorted(entries):
        fields = asdict(entries[name])
        fields.pop("name")
        models[name] = fields
    return atomic_write_json(directory / MANIFEST_NAME, {"schema_version": 1, "models": models})


def shipped_weights(name: str) -> tuple[Path, ManifestEntry] | None:
    """The shipped weights file of `name` and its entry, checked against the recorded sha256."""
    entry = read_manifest().get(name)
    if entry is None:
        return None
    path = SHIPPED_DIR / entry.file
    if not path.is_file():
        raise EdgeAttackError(f"the manifest lists {entry.file} for {name} but the file is missing; reinstall")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise EdgeAttackError(f"shipped weights {path} do not match their manifest sha256; reinstall or rebuild")
    return path, entry
