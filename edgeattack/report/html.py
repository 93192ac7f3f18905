"""The report as one self-contained HTML file: inline CSS, figures as base64 PNG data URIs, no URL outside it."""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from html import escape

from edgeattack import __version__
from edgeattack.report.data import SECTIONS, Block, ReportData, Section
from edgeattack.report.figures import render_figures
from edgeattack.report.tables import FOLD_ROWS, MISSING, block_note, is_numeric_text, meta_items, table_note, table_rows

__all__ = ["png_data_uri", "png_size", "render_html"]

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1f2328; background: #fff; margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
p.intro { color: #57606a; margin: 4px 0 14px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0 18px; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.missing { color: #8c959f; text-align: center; }
table.meta td, table.meta td.missing, table.meta td.num { text-align: left; white-space: normal; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table.wide { font-size: 11px; }
table.wide th, table.wide td { padding: 2px 4px; }
details.fold { margin: 6px 0 18px; }
details.fold > summary { cursor: pointer; font-weight: 600; margin: 14px 0 4px; }
.table-caption { font-weight: 600; margin: 14px 0 2px; }
table.meta th { width: 160px; }
figure { margin: 8px 0 4px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; }
.nodata { color: #6e7781; font-style: italic; background: #f6f8fa; border-left: 4px solid #d0d7de;
          padding: 8px 12px; margin: 8px 0 14px; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 18px;
          display: inline-block; margin: 8px 0; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
.badge { display: inline-block; background: #cf222e; color: #fff; border-radius: 10px; padding: 0 7px;
         font-size: 12px; margin-left: 6px; }
.alert { background: #fff1f0; border: 1px solid #ff8182; border-left: 6px solid #cf222e; border-radius: 6px;
         padding: 4px 16px 8px; margin-top: 36px; }
.alert h2 { color: #a40e26; border-bottom-color: #ffc1c0; }
.banner { background: #fff1f0; border: 1px solid #ff8182; color: #a40e26; border-radius: 6px; padding: 8px 12px;
          margin: 10px 0; }
section.failures td:last-child { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
footer { color: #8c959f; font-size: 12px; margin-top: 40px; }
"""


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def png_data_uri(png: bytes) -> str:
    """`data:image/png;base64,...` for embedding a PNG in HTML or Markdown."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(text: str) -> str:
    if text == MISSING:
        return f'<td class="missing">{escape(text)}</td>'
    kind = ' class="num"' if is_numeric_text(text) else ""
    return f"<td{kind}>{escape(text)}</td>"


WIDE_TABLE = 12
"""A table with more columns than this gets a smaller font and padding (class `wide`)."""


def _breakable(text: str) -> str:
    """Escaped `text` that may wrap after `/` and `_` (long engine names as column headers)."""
    return escape(text).replace("/", "/<wbr>").replace("_", "_<wbr>")


def _table(headers: list[str], rows: list[list[str]], *, css_class: str = "") -> str:
    head = "".join(f'<th scope="col">{_breakable(h)}</th>' for h in headers)
    body = "\n".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    classes = " ".join(c for c in (css_class, "wide" if len(headers) > WIDE_TABLE else "") if c)
    attr = f' class="{classes}"' if classes else ""
    return f'<div class="table-wrap"><table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'


def _nodata(text: str) -> str:
    return f'<p class="nodata">{escape(text)}</p>'


def _figure(block: Block, png: bytes | None, note: str = "") -> str:
    if png is None:
        return _nodata(block.empty)
    width, height = png_size(png)
    caption = f"{block.caption} {note}".strip()
    return (
        f'<figure id="fig-{escape(block.name)}"><img src="{png_data_uri(png)}" alt="{escape(block.caption)}" '
        f'width="{width}" height="{height}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


def _block(data: ReportData, block: Block, images: Mapping[str, bytes | None]) -> str:
    if block.kind == "figure":
        return _figure(block, images.get(block.name), block_note(data, block.name))
    headers, rows = table_rows(data, block.name)
    if not rows:
        return _nodata(block.empty)
    if block.summary and len(rows) > FOLD_ROWS:
        summary = escape(block.summary.format(n=len(rows)))
        return f'<details class="fold"><summary>{summary}</summary>\n{_table(headers, rows)}</details>'
    caption = f'<p class="table-caption">{escape(f"{block.caption} {table_note(data, block.name)}".strip())}</p>'
    return caption + "\n" + _table(headers, rows)


def _section(data: ReportData, section: Section, images: Mapping[str, bytes | None]) -> str:
    rows = data.table(section.source)
    alert = section.source == "failures" and bool(rows)
    classes = " ".join(c for c in (section.source.replace("_", "-"), "alert" if alert else "") if c)
    parts = [f'<section id="{escape(section.anchor)}" class="{classes}">', f"<h2>{escape(section.title)}</h2>"]
    parts.append(f'<p class="intro">{escape(section.intro)}</p>')
    if not rows:
        parts.append(_nodata(section.empty))
    else:
        parts.extend(_block(data, block, images) for block in section.blocks)
    parts.append("</section>")
    return "\n".join(parts)


def _toc(data: ReportData) -> str:
    items = []
    for section in SECTIONS:
        count = len(data.table(section.source))
        badge = f'<span class="badge">{count}</span>' if section.source == "failures" and count else ""
        items.append(f'<li><a href="#{escape(section.anchor)}">{escape(section.title)}</a>{badge}</li>')
    return '<nav class="toc"><strong>Contents</strong><ol>\n' + "\n".join(items) + "\n</ol></nav>"


def render_html(data: ReportData, *, images: Mapping[str, bytes | None] | None = None) -> str:
    """The whole report as one HTML document (figures rendered here unless `images` holds them by name)."""
    figures = render_figures(data) if images is None else images
    meta = meta_items(data)
    header = [f"<h1>{escape(data.title)}</h1>"]
    if meta:
        header.append(_table(["Field", "Value"], [[key, value] for key, value in meta], css_class="meta"))
    if data.failures:
        count = len(data.failures)
        header.append(
            f'<p class="banner"><strong>{count} cell{"s" if count != 1 else ""} did not finish</strong>: '
            'their numbers are missing from this report; see <a href="#failures">Failures</a>.</p>'
        )
    body = [*header, _toc(data), *(_section(data, s, figures) for s in SECTIONS)]
    body.append(f"<footer>Generated by edgeattack {escape(__version__)}.</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(data.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
