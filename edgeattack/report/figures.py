"""The report's figures: one function per figure, ReportData in, PNG bytes out (None when no data).

matplotlib is imported inside the functions (the `report` extra), and figures are made with
`matplotlib.figure.Figure` on an Agg canvas: no pyplot, no global backend or state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from edgeattack.report.data import ReportData, compact_floats, deployment_of, eps_label, finite_number, is_missing
from edgeattack.report.figures_transfer import WIDE_COLUMNS, asr_vs_eps, transfer_heatmap
from edgeattack.report.pivots import latency_groups
from edgeattack.report.plotting import (
    _LINESTYLES,
    _MARKERS,
    ASR_CMAP,
    DEPTH_CMAP,
    DPI,
    _figure,
    _jitter,
    _label_points,
    _percent_axis,
    _png,
    _short,
    _style,
)

__all__ = [
    "ASR_CMAP",
    "DEPTH_CMAP",
    "DPI",
    "FIGURES",
    "LABELLED_POINTS",
    "WIDE_COLUMNS",
    "accuracy_vs_size",
    "asr_vs_eps",
    "blackbox_curves",
    "latency_distributions",
    "render_figures",
    "token_depth_maps",
    "transfer_heatmap",
]

LABELLED_POINTS = 6
"""Up to this many engines the accuracy figures name each point; beyond, legends identify them."""


def accuracy_vs_size(data: ReportData) -> bytes | None:
    """Clean accuracy vs model size (MB) and vs GFLOPs: colour = family, marker = deployment.

    Up to LABELLED_POINTS engines each point is named; beyond, the two legends identify them and
    engines at the same spot are spread slightly sideways.
    """
    points = []
    for row in data.engines:
        acc = finite_number(row.get("clean_acc"))
        if acc is None:
            continue
        engine = str(row.get("engine"))
        deployment = deployment_of(engine) or str(row.get("precision") or "–")
        points.append((engine, str(row.get("family") or "unknown"), deployment, acc, row))
    panels = [("size_mb", "model size (MB)"), ("gflops", "compute (GFLOPs per image)")]
    if not any(finite_number(row.get(key)) is not None for *_, row in points for key, _ in panels):
        return None
    families = list(dict.fromkeys(point[1] for point in points))
    deployments = list(dict.fromkeys(point[2] for point in points))
    labelled = len(points) <= LABELLED_POINTS
    with _style():
        from matplotlib import colormaps
        from matplotlib.lines import Line2D

        palette = colormaps["tab10" if len(families) <= 10 else "tab20"]
        figure = _figure(11.0 if labelled else 12.0, 4.6)
        axes = figure.subplots(1, 2)
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            placed = [(p, x) for p in points if (x := finite_number(p[4].get(key))) is not None]
            xs = _jitter([x for _, x in placed], [p[3] for p, _ in placed])
            labels: dict[tuple[float, float], list[str]] = {}
            for ((engine, family, deployment, acc, _), x), shown_x in zip(placed, xs, strict=True):
                labels.setdefault((x, acc), []).append(_short(engine, 32))
                ax.scatter(
                    [shown_x],
                    [acc],
                    s=55,
                    color=palette(families.index(family) % palette.N),
                    marker=_MARKERS[deployments.index(deployment) % len(_MARKERS)],
                    edgecolors="black",
                    linewidths=0.5,
                    alpha=0.9,
                    zorder=3,
                )
            if labelled:
                _label_points(ax, labels)
            if not placed:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("clean accuracy (%)")
            _percent_axis(ax.yaxis)
            ax.margins(x=0.25 if labelled else 0.08, y=0.15 if labelled else 0.08)
            ax.grid(alpha=0.3)
            ax.set_title(f"Clean accuracy vs {xlabel.split(' (')[0]}")
        family_handles = [
            Line2D([], [], linestyle="", marker="o", markersize=7, color=palette(i % palette.N), label=f)
            for i, f in enumerate(families)
        ]
        deployment_handles = [
            Line2D([], [], linestyle="", marker=_MARKERS[i % len(_MARKERS)], markersize=7, color="#777777", label=d)
            for i, d in enumerate(deployments)
        ]
        figure.legend(handles=family_handles, title="family (colour)", loc="outside right upper")
        figure.legend(handles=deployment_handles, title="deployment (marker)", loc="outside right lower")
        return _png(figure)


def latency_distributions(data: ReportData) -> bytes | None:
    """Box plots of latency per call (ms), per availability engine: clean and each pass side by side."""
    groups = latency_groups(data)
    if not groups:
        return None
    columns = min(len(groups), 3)
    rows = math.ceil(len(groups) / columns)
    widest = max(len(passes) for passes in groups.values())
    with _style():
        figure = _figure(min(1.6 + columns * (1.2 + 0.9 * widest), 16.0), 3.4 * rows + 0.4)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax, (engine, passes) in zip(axes, groups.items(), strict=False):
            positions = list(range(1, len(passes) + 1))
            boxes = ax.boxplot(
                [values for _, values in passes],
                positions=positions,
                widths=0.6,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 3, "alpha": 0.5},
                medianprops={"color": "black"},
            )
            for patch, (label, _) in zip(boxes["boxes"], passes, strict=True):
                patch.set_facecolor("#9ecae1" if label == "clean" else "#fc9272")
            names = [_short(compact_floats(label), 18) for label, _ in passes]
            ax.set_xticks(positions, names, rotation=20, ha="right")
            ax.set_ylabel("latency per call (ms)")
            ax.set_xlabel("pass")
            ax.set_title(_short(engine, 40))
            ax.grid(axis="y", alpha=0.3)
        for ax in axes[len(groups) :]:
            ax.set_visible(False)
        figure.suptitle("Latency, clean (blue) vs adversarial (red) passes")
        return _png(figure)


def _depth_scale(passes: list[tuple[str, Any, Mapping[str, Any]]]) -> float:
    """The top of the shared colour scale: the deepest model's block count, else the largest grid value."""
    import numpy as np

    depths = [d for _, _, row in passes if (d := finite_number(row.get("depth"))) is not None]
    if depths:
        return max(depths)
    values = [float(v) for _, grid, _ in passes for v in grid.ravel() if np.isfinite(v)]
    return max(values, default=1.0) or 1.0


def token_depth_maps(data: ReportData) -> bytes | None:
    """Per model a row of token-depth grids (clean, then each pass), shared colour scale 0..depth."""
    import numpy as np

    models: dict[str, list[tuple[str, Any, Mapping[str, Any]]]] = {}
    for row in data.token_depth:
        try:
            grid = np.array(row.get("grid"), dtype=float)
        except (TypeError, ValueError):
            continue
        if grid.ndim != 2 or not np.isfinite(grid).any():
            continue
        models.setdefault(str(row.get("model")), []).append((str(row.get("pass") or "?"), grid, row))
    if not models:
        return None
    for passes in models.values():
        passes.sort(key=lambda item: item[0] != "clean")
    top = _depth_scale([item for passes in models.values() for item in passes])
    columns = max(len(passes) for passes in models.values())
    with _style():
        from matplotlib import colormaps

        cmap = colormaps[DEPTH_CMAP]
        figure = _figure(2.7 * columns + 1.2, 2.9 * len(models) + 0.5)
        axes = figure.subplots(len(models), columns, squeeze=False)
        image = None
        for r, (model, passes) in enumerate(models.items()):
            for c in range(columns):
                ax = axes[r][c]
                if c >= len(passes):
                    ax.set_visible(False)
                    continue
                label, grid, _ = passes[c]
                image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=top, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{_short(compact_floats(label), 24)}\nmean {np.nanmean(grid):.2f} blocks", fontsize=8)
                if grid.size <= 100:
                    for (i, j), value in np.ndenumerate(grid):
                        if math.isfinite(value):
                            colour = "black" if value > 0.6 * top else "white"
                            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=6, color=colour)
                ax.set_xlabel("patch columns")
                if c == 0:
                    ax.set_ylabel(f"{_short(model, 24)}\npatch rows")
        bar = figure.colorbar(image, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02)
        bar.set_label("blocks reached")
        figure.suptitle("Token depth: blocks each patch token is processed in (mean over images)")
        return _png(figure)


def _curve_points(curve: Any) -> list[tuple[float, float]]:
    """[(queries, success rate)] from `[[q, r], ...]` or `[{"queries": q, "success_rate": r}, ...]`."""
    points = []
    for point in curve or []:
        if isinstance(point, Mapping):
            q, r = finite_number(point.get("queries")), finite_number(point.get("success_rate", point.get("rate")))
        elif isinstance(point, (list, tuple)) and len(point) >= 2:
            q, r = finite_number(point[0]), finite_number(point[1])
        else:
            continue
        if q is not None and r is not None:
            points.append((q, r))
    return sorted(points)


def blackbox_curves(data: ReportData) -> bytes | None:
    """Success rate vs queries per image, one step line per (engine, attack)."""
    curves = []
    for row in data.blackbox:
        points = _curve_points(row.get("curve"))
        if points:
            label = compact_floats(f"{row.get('engine')} · {row.get('attack') or row.get('method')}")
            eps = row.get("eps")
            if not is_missing(eps) and str(eps_label(eps, row.get("norm"))) not in label:
                label += f" ({eps_label(eps, row.get('norm'))})"
            curves.append((label, points))
    if not curves:
        return None
    xs = [q for _, points in curves for q, _ in points]
    positive = [q for q in xs if q > 0]
    logarithmic = bool(positive) and max(positive) / min(positive) >= 100
    with _style():
        from matplotlib import colormaps

        colours = colormaps["tab10"]
        figure = _figure(9.5, 4.6)
        ax = figure.add_subplot()
        for index, (label, points) in enumerate(curves):
            shown = [(q, r) for q, r in points if q > 0] if logarithmic else points
            ax.plot(
                [q for q, _ in shown],
                [r for _, r in shown],
                drawstyle="steps-post",
                marker="o",
                markersize=3,
                color=colours(index % 10),
                linestyle=_LINESTYLES[(index // 10) % len(_LINESTYLES)],
                label=label,
            )
        if logarithmic:
            ax.set_xscale("log")
        ax.set_xlabel("queries per image" + (" (log scale)" if logarithmic else ""))
        ax.set_ylabel("success rate (%)")
        ax.set_ylim(-0.03, 1.03)
        _percent_axis(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.set_title("Black-box attacks: success rate vs queries")
        if len(curves) > 5:
            figure.legend(title="engine · attack", loc="outside right upper")
        else:
            ax.legend(title="engine · attack", loc="lower right")
        return _png(figure)


FIGURES: dict[str, Callable[[ReportData], bytes | None]] = {
    "accuracy_vs_size": accuracy_vs_size,
    "transfer_heatmap": transfer_heatmap,
    "asr_vs_eps": asr_vs_eps,
    "blackbox_curves": blackbox_curves,
    "latency_distributions": latency_distributions,
    "token_depth_maps": token_depth_maps,
}


def render_figures(data: ReportData) -> dict[str, bytes | None]:
    """Every figure of the report: name → PNG bytes, or None where its data is missing."""
    return {name: render(data) for name, render in FIGURES.items()}
