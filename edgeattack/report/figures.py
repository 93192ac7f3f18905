"""The report's figures: one function per figure, ReportData in, PNG bytes out (None when no data).

matplotlib is imported inside the functions (the `report` extra), and figures are made with
`matplotlib.figure.Figure` on an Agg canvas: no pyplot, no global backend or state is touched.
"""

from __future__ import annotations

import io
import math
import re
import statistics
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from edgeattack.errors import MissingDependencyError
from edgeattack.report.data import (
    ReportData,
    compact_floats,
    deployment_of,
    eps_label,
    is_missing,
    model_of,
)
from edgeattack.report.tables import (
    EpsPanel,
    asr_eps_panels,
    latency_groups,
    model_order,
    shown_eps_panels,
    transfer_matrix,
)

__all__ = [
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

DPI = 100
ASR_CMAP = "YlOrRd"
DEPTH_CMAP = "viridis"
LABELLED_POINTS = 6
"""Up to this many engines the accuracy figures name each point; beyond, legends identify them."""
WIDE_COLUMNS = 12
"""Beyond this many engines the transfer heatmap gets wider, with vertical column labels."""
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": False,
}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINESTYLES = ("-", "--", ":", "-.")


def _style() -> AbstractContextManager[Any]:
    """matplotlib, imported on first use, with the report's style for the duration of one figure."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            f"matplotlib is needed for the report's figures but cannot be imported ({exc}); "
            "pip install 'edgeattack[report]'"
        ) from exc
    return matplotlib.rc_context(_STYLE)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return buffer.getvalue()


def _float(value: Any) -> float | None:
    if is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))


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


def _jitter(xs: list[float], ys: list[float]) -> list[float]:
    """`xs` with points of the same y that (nearly) coincide spread sideways, about 4 % of the x range apart."""
    if not xs:
        return []
    span = max(xs) - min(xs)
    step = 0.04 * (span or abs(xs[0]) or 1.0)
    result = list(xs)
    for y in set(ys):
        indices = sorted((i for i, value in enumerate(ys) if value == y), key=lambda i: xs[i])
        clusters: list[list[int]] = []
        for index in indices:
            if clusters and xs[index] - xs[clusters[-1][-1]] < step:
                clusters[-1].append(index)
            else:
                clusters.append([index])
        for cluster in clusters:
            centre = statistics.fmean(xs[i] for i in cluster)
            for rank, index in enumerate(cluster):
                result[index] = centre + (rank - (len(cluster) - 1) / 2) * step
    return result


def accuracy_vs_size(data: ReportData) -> bytes | None:
    """Clean accuracy vs model size (MB) and vs GFLOPs: colour = family, marker = deployment.

    Up to LABELLED_POINTS engines each point is named; beyond, the two legends identify them and
    engines at the same spot are spread slightly sideways.
    """
    points = []
    for row in data.engines:
        acc = _float(row.get("clean_acc"))
        if acc is None:
            continue
        engine = str(row.get("engine"))
        deployment = deployment_of(engine) or str(row.get("precision") or "–")
        points.append((engine, str(row.get("family") or "unknown"), deployment, acc, row))
    panels = [("size_mb", "model size (MB)"), ("gflops", "compute (GFLOPs per image)")]
    if not any(_float(row.get(key)) is not None for *_, row in points for key, _ in panels):
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
            placed = [(p, x) for p in points if (x := _float(p[4].get(key))) is not None]
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


def _label_points(ax: Any, labels: Mapping[tuple[float, float], list[str]]) -> None:
    """Name each point (engines at the same spot share one label); labels near the right edge point left."""
    xs = [x for x, _ in labels]
    right = min(xs, default=0.0) + 0.7 * (max(xs, default=0.0) - min(xs, default=0.0))
    for (x, y), names in labels.items():
        flip = len(labels) > 1 and x > right
        ax.annotate(
            "\n".join(names),
            (x, y),
            textcoords="offset points",
            xytext=(-6, 5) if flip else (6, 5),
            ha="right" if flip else "left",
            va="bottom",
            fontsize=7,
        )


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

    depths = [d for _, _, row in passes if (d := _float(row.get("depth"))) is not None]
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
            q, r = _float(point.get("queries")), _float(point.get("success_rate", point.get("rate")))
        elif isinstance(point, (list, tuple)) and len(point) >= 2:
            q, r = _float(point[0]), _float(point[1])
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
