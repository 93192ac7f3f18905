"""The report as GitHub Markdown: the same sections, figures and tables as the HTML report.

Figures are embedded as data URIs, or, given `image_dir`, written there as `<figure>.png` and
linked as `<image_dir name>/<figure>.png`: the Markdown file is meant to sit in image_dir's parent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import escape
from pathlib import Path

from edgeattack import __version__
from edgeattack._io import atomic_write_bytes
from edgeattack.report.data import SECTIONS, Block, ReportData, Section
from edgeattack.report.figures import render_figures
from edgeattack.report.html import png_data_uri
from edgeattack.report.tables import FOLD_ROWS, MISSING, block_note, is_numeric_text, meta_items, table_note, table_rows

__all__ = ["github_anchor", "render_markdown"]


def _text(text: str) -> str:
    """Inline text safe in a Markdown table cell or paragraph: HTML escaped, pipes escaped, one line."""
    return escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _align(rows: list[list[str]], column: int) -> str:
    """`---:` for a column whose measured cells are all numbers, else `---`."""
    cells = [row[column] for row in rows if row[column] != MISSING]
    return "---:" if cells and all(is_numeric_text(c) for c in cells) else "---"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    rule = "| " + " | ".join(_align(rows, i) for i in range(len(headers))) + " |"
    lines = ["| " + " | ".join(_text(h) for h in headers) + " |", rule]
    lines.extend("| " + " | ".join(_text(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _nodata(text: str) -> str:
    return f"*{_text(text)}*"


def _figure(block: Block, png: bytes | None, image_dir: Path | None, note: str = "") -> str:
    if png is None:
        return _nodata(block.empty)
    alt = _text(block.caption).replace("[", "(").replace("]", ")")
    if image_dir is None:
        target = png_data_uri(png)
    else:
        path = atomic_write_bytes(image_dir / f"{block.name}.png", png)
        target = f"{image_dir.name}/{path.name}"
    return f"![{alt}]({target})\n\n*{_text(f'{block.caption} {note}'.strip())}*"


def _rest_of(name: str, shown: int, total: int, tables: str | None) -> str:
    """The line under a folded table: where its other rows are."""
    target = f"{tables}/{name}.csv".replace(" ", "%20")
    where = f"[{tables}/{name}.csv]({target})" if tables else f"`tables/{name}.csv`"
    return f"*Showing the first {shown} of {total} rows; all {total} are in {where} (and `{name}.json`).*"


def _block(
    data: ReportData,
    block: Block,
    images: Mapping[str, bytes | None],
    image_dir: Path | None,
    tables: str | None,
) -> str:
    if block.kind == "figure":
        return _figure(block, images.get(block.name), image_dir, block_note(data, block.name))
    headers, rows = table_rows(data, block.name)
    if not rows:
        return _nodata(block.empty)
    if block.summary and len(rows) > FOLD_ROWS:
        rest = _rest_of(block.name, FOLD_ROWS, len(rows), tables)
        return f"**{_text(block.caption)}**\n\n{_table(headers, rows[:FOLD_ROWS])}\n\n{rest}"
    note = table_note(data, block.name)
    return f"**{_text(block.caption)}**" + (f" {_text(note)}" if note else "") + f"\n\n{_table(headers, rows)}"


def _section(
    data: ReportData,
    section: Section,
    images: Mapping[str, bytes | None],
    image_dir: Path | None,
    tables: str | None,
) -> str:
    rows = data.table(section.source)
    parts = [f"## {_text(section.title)}", _text(section.intro)]
    if section.source == "failures" and rows:
        count = len(rows)
        parts.append(f"> **Warning: {count} cell{'s' if count != 1 else ''} did not finish.**")
    if not rows:
        parts.append(_nodata(section.empty))
    else:
        parts.extend(_block(data, block, images, image_dir, tables) for block in section.blocks)
    return "\n\n".join(parts)


def render_markdown(
    data: ReportData,
    *,
    image_dir: Path | None = None,
    images: Mapping[str, bytes | None] | None = None,
    tables_link: str | None = None,
) -> str:
    """The whole report as GitHub Markdown (figures rendered here unless `images` holds them by name).

    `tables_link` is the CSV/JSON tables' folder relative to the Markdown file, linked under a table
    that shows only its first rows (default: the text `tables/<table>.csv`, unlinked).
    """
    figures = render_figures(data) if images is None else images
    directory = Path(image_dir) if image_dir is not None else None
    parts = [f"# {_text(data.title)}"]
    meta = meta_items(data)
    if meta:
        parts.append(_table(["Field", "Value"], [[key, value] for key, value in meta]))
    if data.failures:
        count = len(data.failures)
        parts.append(
            f"> **Warning: {count} cell{'s' if count != 1 else ''} did not finish**: their numbers are missing "
            "from this report; see [Failures](#failures)."
        )
    toc = [f"{n}. [{_text(s.title)}](#{github_anchor(s.title)})" for n, s in enumerate(SECTIONS, start=1)]
    parts.append("**Contents**\n\n" + "\n".join(toc))
    parts.extend(_section(data, section, figures, directory, tables_link) for section in SECTIONS)
    parts.append(f"<sub>Generated by edgeattack {_text(__version__)}.</sub>")
    return "\n\n".join(parts) + "\n"
