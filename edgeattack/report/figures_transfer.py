"""The transfer figures: the ASR heatmap (perturbation × engine) and ASR vs ε small multiples."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from edgeattack.report.data import ReportData, compact_floats, deployment_of, model_of
from edgeattack.report.pivots import EpsPanel, asr_eps_panels, model_order, shown_eps_panels, transfer_matrix
from edgeattack.report.plotting import ASR_CMAP, _figure, _percent_axis, _png, _short, _style

__all__ = ["WIDE_COLUMNS", "asr_vs_eps", "transfer_heatmap"]

WIDE_COLUMNS = 12
"""Beyond this many engines the transfer heatmap gets wider, with vertical column labels."""


def _model_groups(engines: list[str]) -> list[tuple[str, int, int]] | None:
    """[(model, first column, last column)] when every engine is `model/deployment`, models contiguous."""
    if not all(deployment_of(engine) for engine in engines):
        return None
    groups: list[tuple[str, int, int]] = []
    for index, engine in enumerate(engines):
        model = model_of(engine)
        if groups and groups[-1][0] == model:
            groups[-1] = (model, groups[-1][1], index)
        elif any(g[0] == model for g in groups):
            return None
        else:
            groups.append((model, index, index))
    return groups if len(groups) < len(engines) else None


def _wrap(text: str, width: int) -> str:
    """`text` broken after `_` or `-` into lines of about `width` characters (never inside a part)."""
    lines = [""]
    for part in re.findall(r"[^_-]+[_-]?", text) or [text]:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _group_columns(ax: Any, groups: list[tuple[str, int, int]], cell_points: float, pad: float) -> Any:
    """Name each model once under its columns (a second row of labels) and part the groups by white lines.

    Returns the axis of the model names, which takes the x label.
    """
    centres = [(first + last) / 2 for _, first, last in groups]
    names = [_wrap(model, max(8, int((last - first + 1) * cell_points / 5.2))) for model, first, last in groups]
    secondary = ax.secondary_xaxis("bottom")
    secondary.set_xticks(centres, names, fontsize=7.5, fontweight="bold", linespacing=1.0)
    secondary.tick_params(length=0, pad=pad)
    secondary.spines["bottom"].set_visible(False)
    for _, first, _ in groups[1:]:
        ax.axvline(first - 0.5, color="white", linewidth=2.5)
    return secondary


def transfer_heatmap(data: ReportData) -> bytes | None:
    """Heatmap of ASR: rows = perturbation (`method ε @source`), columns = engine, cells annotated in %.

    Beyond WIDE_COLUMNS engines the figure is wider (capped to the page), the column labels are
    vertical (the deployment, with each model named once under its columns when engines are
    `model/deployment`) and the annotations' font shrinks to fit a cell.
    """
    labels, engines, values = transfer_matrix(data)
    if not any(v is not None for line in values for v in line):
        return None
    import numpy as np

    grid = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in line] for line in values]))
    wide = len(engines) > WIDE_COLUMNS
    groups = _model_groups(engines) if wide else None
    names = [deployment_of(e) for e in engines] if groups else [_short(e, 40 if wide else 28) for e in engines]
    longest = max(len(label) for label in labels)
    tallest = max(len(n) for n in names)
    if wide:
        fixed = 1.9 + 0.055 * longest
        width = min(fixed + 0.5 * len(engines), 13.0)
        height = min(1.9 + 0.3 * len(labels) + 0.07 * tallest + (0.45 if groups else 0.0), 26.0)
    else:
        fixed = 3.2 + 0.06 * longest
        width = min(fixed + 1.15 * len(engines), 16.0)
        height = min(1.8 + 0.38 * len(labels) + 0.05 * tallest, 24.0)
    cell_points = 72.0 * max(width - fixed, 1.0) / len(engines)
    annotation = max(5.0, min(8.0, cell_points / 3.3))
    with _style():
        from matplotlib import colormaps

        cmap = colormaps[ASR_CMAP].with_extremes(bad="#e6e6e6")
        figure = _figure(width, height)
        ax = figure.add_subplot()
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        if wide:
            ax.set_xticks(range(len(engines)), names, rotation=90, ha="center", fontsize=7.5)
            ax.set_yticks(range(len(labels)), labels, fontsize=7.5)
        else:
            ax.set_xticks(range(len(engines)), names, rotation=30, ha="right")
            ax.set_yticks(range(len(labels)), labels)
        label_axis = ax
        if groups:
            label_axis = _group_columns(ax, groups, cell_points, pad=7.5 * 0.62 * tallest + 8.0)
        for i, line in enumerate(values):
            for j, value in enumerate(line):
                text = "n/a" if value is None else f"{value * 100:.0f}%"
                colour = "white" if value is not None and value > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=annotation)
        label_axis.set_xlabel("engine (replayed on)" + (": deployment, model" if groups else ""))
        ax.set_ylabel("perturbation (method ε @crafted on)")
        ax.set_title("Transfer: attack success rate per perturbation and engine")
        bar = figure.colorbar(image, ax=ax, fraction=0.03 if wide else 0.05, pad=0.015 if wide else 0.02)
        bar.set_label("attack success rate (%)")
        _percent_axis(bar.ax.yaxis)
        return _png(figure)


def _eps_panel(ax: Any, panel: EpsPanel, colour: Callable[[str], Any]) -> None:
    """One method/source panel: a band and a line per target model, the white-box one thick on top."""
    scale = 1.0 if panel.norm == "l2" else 255.0
    for curve in sorted(panel.curves, key=lambda c: c.white_box):
        eps_values = sorted(curve.points)
        xs = [e * scale for e in eps_values]
        means, lows, highs = zip(*(curve.points[e] for e in eps_values), strict=True)
        if curve.engines > 1 and any(high > low for low, high in zip(lows, highs, strict=True)):
            ax.fill_between(xs, lows, highs, color=colour(curve.model), alpha=0.22 if curve.white_box else 0.1, lw=0)
        ax.plot(
            xs,
            means,
            color=colour(curve.model),
            linewidth=2.8 if curve.white_box else 1.1,
            marker="o" if curve.white_box else ".",
            markersize=6 if curve.white_box else 5,
            markeredgecolor="black" if curve.white_box else colour(curve.model),
            markeredgewidth=0.6,
            alpha=1.0 if curve.white_box else 0.85,
            zorder=4 if curve.white_box else 3,
        )
    ticks = [e * scale for e in panel.eps]
    if len(ticks) <= 8:
        ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.set_ylim(-0.03, 1.03)
    _percent_axis(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.set_title(_short(compact_floats(panel.title), 42), fontsize=9)


def asr_vs_eps(data: ReportData) -> bytes | None:
    """ASR vs ε as small multiples: one panel per (method, source), one line per target model.

    Each line is the mean ASR over the target model's engines, with their min–max as a band; the
    source's own model (white-box) is thick, the others (transfer) thin. At most MAX_EPS_PANELS
    panels (those with the most ε values), in a grid of up to four columns.
    """
    panels = shown_eps_panels(asr_eps_panels(data))
    if not panels:
        return None
    models = [m for m in model_order(data) if any(c.model == m for p in panels for c in p.curves)]
    models += [c.model for p in panels for c in p.curves if c.model not in models]
    columns = min(4, math.ceil(len(panels) / math.ceil(len(panels) / 4)))
    rows = math.ceil(len(panels) / columns)
    with _style():
        from matplotlib import colormaps
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        palette = colormaps["tab10" if len(models) <= 10 else "tab20"]

        def colour(model: str) -> Any:
            return palette(models.index(model) % palette.N)

        figure = _figure(0.6 + 3.3 * columns, 1.3 + 2.8 * rows + 0.22 * math.ceil(len(models) / 4))
        axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
        for index, (ax, panel) in enumerate(zip(axes.ravel(), panels, strict=False)):
            _eps_panel(ax, panel, colour)
            if index + columns >= len(panels):
                ax.set_xlabel("ε (L2, input units)" if panel.norm == "l2" else "ε (L∞, /255)")
        for ax in axes.ravel()[len(panels) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("attack success rate (%)")
        handles = [Line2D([], [], color=colour(m), linewidth=2.2, label=m) for m in models]
        handles += [
            Line2D([], [], color="#444444", linewidth=2.8, marker="o", markeredgecolor="black", label="white-box"),
            Line2D([], [], color="#444444", linewidth=1.1, marker=".", label="transfer"),
            Patch(facecolor="#444444", alpha=0.15, label="min–max over engines"),
        ]
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4 if columns >= 3 else 2),
            title="target model (line colour) · kind",
            frameon=False,
        )
        figure.suptitle("ASR vs ε, per method and source model")
        return _png(figure)
