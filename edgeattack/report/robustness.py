"""The robustness-of-record table: AutoAttack crafted on the reference model vs on its int8 twin, per engine.

Read from the report's `transfer` rows (one per replayed artifact and engine) whose method is
`autoattack` and which carry the replay `breakdown` (`edgeattack.replay_breakdown`). One row per
engine M/E, ε and twin: the robust accuracy on E under the AutoAttack artifact crafted on M itself
("reference") and under the one crafted on the fake-quant twin of M's int8 engine ("twin", source
`M~T`), each with its per-attack breakdown: per sub-attack "engine broken / source broken" (of the
images the attack broke on its source, how many E misclassifies), and the transfer counts "robust on
source, broken on E" and "broken on source, robust on E". Cross-model replays are left to the
transfer table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeattack.report.data import ReportData, eps_label
from edgeattack.report.formatting import MISSING, integer, percent

__all__ = ["AUTOATTACK_METHOD", "autoattack_rows"]

AUTOATTACK_METHOD = "autoattack"
SIDES = ("reference", "twin")
"""The two crafting sides compared, in column order."""


def _side(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """("reference", "") or ("twin", T) when the row's artifact was crafted on the replaying engine's model."""
    model = str(row.get("engine") or "").split("/", 1)[0]
    source = str(row.get("source") or "")
    if source == model:
        return "reference", ""
    if source.startswith(f"{model}~"):
        return "twin", source.removeprefix(f"{model}~")
    return None


def _breakers(breakdown: Mapping[str, Any]) -> str:
    """`apgd-ce 10/10 · apgd-t 0/0 ...`: per sub-attack, misclassified on the engine / broken on the source."""
    rows = [r for r in breakdown.get("rows") or [] if r.get("name") not in ("clean", "robust")]
    return " · ".join(f"{r['name']} {int(r['engine_broken'])}/{int(r['source'])}" for r in rows) or MISSING


def _cells(entry: Mapping[str, Any] | None) -> list[str]:
    if entry is None:
        return [MISSING] * 4
    breakdown = entry.get("breakdown") or {}
    return [
        percent(entry.get("adv_acc")),
        _breakers(breakdown),
        integer(breakdown.get("robust_source_broken_engine")),
        integer(breakdown.get("broken_source_robust_engine")),
    ]


def autoattack_rows(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of the table (module docstring); no rows without an AutoAttack replay."""
    reference: dict[tuple[str, Any, Any], Mapping[str, Any]] = {}
    twins: dict[tuple[str, Any, Any], dict[str, Mapping[str, Any]]] = {}
    for row in data.table("transfer"):
        if row.get("method") != AUTOATTACK_METHOD or not row.get("breakdown"):
            continue
        side = _side(row)
        if side is None:
            continue
        key = (str(row["engine"]), row.get("norm"), row.get("eps"))
        if side[0] == "reference":
            reference.setdefault(key, row)
        else:
            twins.setdefault(key, {}).setdefault(side[1], row)
    headers = ["Engine", "ε", "Images", "Twin of"]
    for side in SIDES:
        headers += [
            f"Robust acc. crafted on {side} (%)",
            f"Misclassified here / broken on source, per attack ({side})",
            f"Robust on source, broken here ({side})",
            f"Broken on source, robust here ({side})",
        ]
    rows = []
    for key in sorted(set(reference) | set(twins), key=lambda k: (k[0], str(k[1]), k[2] or 0.0)):
        engine, norm, eps = key
        ref = reference.get(key)
        pairs: list[tuple[str, Mapping[str, Any] | None]] = list((twins.get(key) or {}).items()) or [("", None)]
        for twin, twin_row in pairs:
            images = (ref or twin_row or {}).get("images")
            line = [engine, eps_label(eps, norm), integer(images), twin or MISSING]
            rows.append(line + _cells(ref) + _cells(twin_row))
    return headers, rows
