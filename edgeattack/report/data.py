"""What a report shows: `ReportData`, plain tables of JSON values (no numpy, no torch, no matplotlib).

An experiment store builds one (`edgeattack.experiments.report_data`); the renderers only read it.
Every value may be None (not measured) and every table may be empty. Rates are fractions in
[0, 1]; ε is in input units (a fraction of the [0, 1] range; shown as `n/255` for L∞ budgets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from edgeattack.budget import format_eps
from edgeattack.errors import ConfigError

__all__ = [
    "SECTIONS",
    "Block",
    "ReportData",
    "Section",
    "compact_floats",
    "deployment_of",
    "eps_label",
    "is_missing",
    "model_of",
    "perturbation_label",
]

NO_DATA = (
    "No data: the store holds no finished cell of this kind (the experiment does not plan this stage, "
    "or its cells failed, were skipped or have not run yet; see Failures)."
)

_LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{7,}(?:[eE][-+]?\d+)?(?![\w.])")


@dataclass
class ReportData:
    """The tables of one experiment report (one dict per row, JSON values only)."""

    title: str
    meta: dict[str, Any] = field(default_factory=dict)
    engines: list[dict[str, Any]] = field(default_factory=list)
    transfer: list[dict[str, Any]] = field(default_factory=list)
    blackbox: list[dict[str, Any]] = field(default_factory=list)
    availability: list[dict[str, Any]] = field(default_factory=list)
    token_depth: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    TABLES: ClassVar[tuple[str, ...]] = ("engines", "transfer", "blackbox", "availability", "token_depth", "failures")

    def is_empty(self) -> bool:
        """True when every table is empty (the store holds no finished or failed cell)."""
        return not any(self.table(name) for name in self.TABLES)

    def table(self, name: str) -> list[dict[str, Any]]:
        """The rows of table `name` (one of TABLES)."""
        if name not in self.TABLES:
            raise ConfigError(f"unknown report table {name!r}; known: {', '.join(self.TABLES)}")
        rows: list[dict[str, Any]] = getattr(self, name)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON document: title, meta and one list of row objects per table."""
        return {
            "title": self.title,
            "meta": _plain(self.meta),
            **{name: [_plain(row) for row in self.table(name)] for name in self.TABLES},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ReportData:
        """The inverse of `to_dict`; a missing table is empty, a malformed one raises ConfigError."""
        if not isinstance(doc, Mapping):
            raise ConfigError(f"a report document must be a JSON object, not {type(doc).__name__}")
        title = doc.get("title")
        if not isinstance(title, str):
            raise ConfigError("a report document needs a string 'title'")
        meta = doc.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ConfigError("the report document's 'meta' must be an object")
        tables: dict[str, list[dict[str, Any]]] = {}
        for name in cls.TABLES:
            rows = doc.get(name) or []
            if not isinstance(rows, list) or not all(isinstance(row, Mapping) for row in rows):
                raise ConfigError(f"the report document's {name!r} must be a list of objects")
            tables[name] = [dict(row) for row in rows]
        return cls(title=title, meta=dict(meta), **tables)


def is_missing(value: Any) -> bool:
    """None, NaN or an empty string: a value the report shows as not measured."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, a bool, not a number, NaN or infinite)."""
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def eps_label(eps: Any, norm: Any = None) -> str:
    """ε as shown: `8/255` for an L∞ (or unspecified) budget, the plain number for L2; '–' if missing."""
    if is_missing(eps):
        return "–"
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    if str(norm or "").lower() in ("l2", "2"):
        return f"{value:.3g}"
    scaled = value * 255.0
    if abs(scaled - round(scaled)) < 1e-3:
        return f"{round(scaled)}/255"
    return f"{scaled:.3g}/255"


def _compact_float(match: re.Match[str]) -> str:
    return format_eps(float(match.group(0)))


def compact_floats(text: str) -> str:
    """`text` with each long float (over 6 decimals) as `n/255` when a multiple of 1/255, else 4 digits.

    `square:eps=0.03137254901960784` becomes `square:eps=8/255`, `lr=0.123456789` becomes `lr=0.1235`.
    """
    return _LONG_FLOAT.sub(_compact_float, text)


def model_of(engine: str) -> str:
    """The model of an engine label `model/deployment` (the whole label when it has no `/`)."""
    return engine.split("/", 1)[0]


def deployment_of(engine: str) -> str:
    """The deployment of an engine label `model/deployment` (`torch`, `fp32`, `int8`, ...; '' without `/`)."""
    return engine.split("/", 1)[1] if "/" in engine else ""


def perturbation_label(row: Mapping[str, Any]) -> str:
    """`method ε @source` for a transfer row, e.g. `pgd 8/255 @deit_tiny`, `cw L2 0.5 @deit_small`."""
    parts = [compact_floats(str(row.get("method") or row.get("artifact") or "?"))]
    if not is_missing(row.get("eps")):
        l2 = str(row.get("norm") or "").lower() in ("l2", "2")
        parts.append(("L2 " if l2 else "") + eps_label(row.get("eps"), row.get("norm")))
    if not is_missing(row.get("source")):
        parts.append(f"@{row['source']}")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    """JSON types only: mappings to dicts with string keys, tuples to lists, numpy scalars/arrays to Python."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):
        return _plain(tolist())
    return value


@dataclass(frozen=True)
class Block:
    """A figure (a name of `figures.FIGURES`) or a table (a name `tables.table_rows` knows) of a section.

    A table with a `summary` is folded away (HTML `<details>`, the first rows in Markdown) when it
    has more than `tables.FOLD_ROWS` rows; `{n}` in the summary is the number of rows.
    """

    kind: Literal["figure", "table"]
    name: str
    caption: str
    empty: str = "No data for this part."
    summary: str = ""


@dataclass(frozen=True)
class Section:
    """One section of the report: its anchor, title, the ReportData table it reads, and its blocks."""

    anchor: str
    title: str
    source: str
    intro: str
    blocks: tuple[Block, ...]
    empty: str = NO_DATA


SECTIONS: tuple[Section, ...] = (
    Section(
        "engines",
        "Engines",
        "engines",
        "Every engine evaluated: size, compute, clean accuracy and speed of one clean batch.",
        (
            Block(
                "figure",
                "accuracy_vs_size",
                "Clean accuracy vs model size and vs GFLOPs per image: colour = family, marker = deployment.",
                "No engine has a clean accuracy together with a size or GFLOPs.",
            ),
            Block("table", "engines", "Engines (numbers of the figure above)."),
        ),
    ),
    Section(
        "transfer-matrix",
        "Transfer matrix",
        "transfer",
        "Attack success rate (ASR) of each perturbation, crafted on a source model or twin, replayed on each engine.",
        (
            Block(
                "figure",
                "transfer_heatmap",
                "ASR of each perturbation (row) on each engine (column).",
                "No replayed perturbation has an ASR.",
            ),
            Block("table", "transfer_matrix", "ASR (%) per perturbation and engine (numbers of the heatmap)."),
        ),
    ),
    Section(
        "asr-eps",
        "ASR vs ε",
        "transfer",
        "How the attack success rate grows with the perturbation budget ε.",
        (
            Block(
                "figure",
                "asr_vs_eps",
                "ASR vs ε, one panel per method and source model. One line per target model: the mean over "
                "its engines, with their min–max as a band; thick = the source's own model (white-box), "
                "thin = transfer to another model.",
                "No figure: no method was replayed at two or more ε values on the same engine.",
            ),
            Block(
                "table",
                "asr_vs_eps",
                "Mean ASR (%) per ε over each target model's engines (numbers of the figure, every panel).",
            ),
            Block(
                "table",
                "transfer",
                "Every replayed perturbation (one row per perturbation and engine).",
                summary="All {n} replayed perturbations (one row per perturbation and engine; click to show)",
            ),
        ),
    ),
    Section(
        "autoattack",
        "Robustness of record (AutoAttack)",
        "transfer",
        "Robust accuracy of each engine under AutoAttack crafted on its reference model vs on the int8 "
        "twin, with the per-attack breakdown: of the images each sub-attack broke on its source, how many "
        "this engine misclassifies, and the images whose fate differs between source and engine.",
        (
            Block(
                "table",
                "autoattack",
                "AutoAttack per engine: crafted on the reference model vs on the int8 twin, replayed here.",
                "No AutoAttack artifact crafted on an engine's own model or twin was replayed.",
            ),
        ),
    ),
    Section(
        "blackbox",
        "Black-box attacks",
        "blackbox",
        "Decision- and score-based attacks run against the engines themselves, under a query budget.",
        (
            Block(
                "figure",
                "blackbox_curves",
                "Success rate vs queries per image, one line per engine and attack.",
                "No figure: no black-box attack recorded a query-success curve.",
            ),
            Block("table", "blackbox", "Black-box attacks."),
        ),
    ),
    Section(
        "availability",
        "Availability (DeSparsify)",
        "availability",
        "Perturbations that make token-sparse ViTs keep more tokens: accuracy, token utilisation, compute, "
        "latency and energy, clean vs adversarial.",
        (
            Block(
                "figure",
                "latency_distributions",
                "Latency per call, clean vs each adversarial pass.",
                "No figure: no pass recorded its latency samples.",
            ),
            Block("table", "latency_distribution", "Latency samples (numbers of the box plots)."),
            Block("table", "availability", "Availability passes."),
        ),
    ),
    Section(
        "token-depth",
        "Token depth",
        "token_depth",
        "How many blocks each patch token is processed in, averaged over the images: clean, then each "
        "adversarial pass.",
        (
            Block(
                "figure",
                "token_depth_maps",
                "Blocks reached per patch token (shared colour scale).",
                "No figure: no pass recorded a token-depth grid.",
            ),
            Block("table", "token_depth", "Token depth per pass."),
        ),
    ),
    Section(
        "failures",
        "Failures",
        "failures",
        "Cells that failed, were skipped or were interrupted; their numbers are missing above.",
        (Block("table", "failures", "Failed cells."),),
        empty="No failed, skipped or interrupted cell.",
    ),
)
