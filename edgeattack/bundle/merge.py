"""Merging the board's results (workstation side) into one document of kind "bundle-results", and reading it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeattack import __version__
from edgeattack._io import no_overwrite_path, sha256_file
from edgeattack.errors import ResultError
from edgeattack.results import RESULT_KIND, EvaluationResult, write_new_file

from .layout import MERGED_KIND, MERGED_NAME, SCHEMA_VERSION

logger = logging.getLogger("edgeattack.bundle")


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
