"""The experiment report: one self-contained HTML file, its Markdown twin, and the tables as CSV/JSON.

Torch-free and numpy/matplotlib only; matplotlib (the `report` extra) is imported when a figure
is drawn. `ReportData` is the input; `write_report` writes everything:

    files = write_report(data, "out/report.html", markdown_path="out/report.md", tables_dir="out/tables")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edgeattack._io import atomic_write_bytes
from edgeattack.errors import ConfigError
from edgeattack.report.data import ReportData
from edgeattack.report.figures import render_figures
from edgeattack.report.html import render_html
from edgeattack.report.markdown import render_markdown
from edgeattack.report.tables import table_rows, write_tables

__all__ = [
    "ReportData",
    "ReportFiles",
    "render_html",
    "render_markdown",
    "table_rows",
    "write_report",
    "write_tables",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportFiles:
    """The files `write_report` wrote."""

    html: Path
    markdown: Path | None = None
    images: tuple[Path, ...] = ()
    tables: tuple[Path, ...] = ()


def _relative_link(path: Path, start: Path) -> str:
    """`path` relative to `start` with `/` separators (absolute when they share no root)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def write_report(
    data: ReportData,
    html_path: str | Path,
    *,
    markdown_path: str | Path | None = None,
    tables_dir: str | Path | None = None,
) -> ReportFiles:
    """Write the HTML report, and optionally its Markdown twin and the CSV/JSON tables.

    The Markdown's figures go to `<markdown stem>_figures/` next to it. Raises ConfigError when
    the data holds no row at all.
    """
    if data.is_empty():
        raise ConfigError(
            f"{data.title}: nothing to report: the store holds no finished cell (run the experiment first)"
        )
    images = render_figures(data)
    html = atomic_write_bytes(html_path, render_html(data, images=images).encode("utf-8"))
    logger.info("report written to %s", html)
    markdown = None
    written_images: tuple[Path, ...] = ()
    if markdown_path is not None:
        target = Path(markdown_path)
        image_dir = target.parent / f"{target.stem}_figures"
        link = None if tables_dir is None else _relative_link(Path(tables_dir), target.parent)
        text = render_markdown(data, image_dir=image_dir, images=images, tables_link=link)
        markdown = atomic_write_bytes(target, text.encode("utf-8"))
        candidates = (image_dir / f"{name}.png" for name, png in images.items() if png is not None)
        written_images = tuple(path for path in candidates if path.exists())
        logger.info("Markdown report written to %s (figures in %s)", markdown, image_dir)
    tables: tuple[Path, ...] = ()
    if tables_dir is not None:
        tables = tuple(write_tables(data, tables_dir))
        logger.info("%d table files written to %s", len(tables), tables_dir)
    return ReportFiles(html=html, markdown=markdown, images=written_images, tables=tables)
