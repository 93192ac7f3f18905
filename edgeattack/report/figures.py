"""The report's figures: one function per figure, ReportData in, PNG bytes out (None when no data).

matplotlib is imported inside the functions (the `report` extra), and figures are made with
`matplotlib.figure.Figure` on an Agg canvas: no pyplot, no global backend or state is touched.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from edgeattack.errors import MissingDependencyError
from edgeattack.report.data import ReportData, eps_label, is_missing
from edgeattack.report.tables import latency_groups, transfer_matrix

__all__ = [
    "DPI",
    "FIGURES",
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


def transfer_heatmap(data: ReportData) -> bytes | None:
    """Heatmap of ASR: rows = perturbation (`method ε @source`), columns = engine, cells annotated in %."""
    labels, engines, values = transfer_matrix(data)
    if not any(v is not None for line in values for v in line):
        return None
    import numpy as np

    grid = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in line] for line in values]))
    with _style():
        from matplotlib import colormaps

        cmap = colormaps[ASR_CMAP].with_extremes(bad="#e6e6e6")
        longest = max(len(label) for label in labels)
        width = min(3.2 + 0.06 * longest + 1.15 * len(engines), 16.0)
        height = min(1.8 + 0.38 * len(labels) + 0.05 * max(len(e) for e in engines), 24.0)
        figure = _figure(width, height)
        ax = figure.add_subplot()
        image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(engines)), [_short(e) for e in engines], rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for i, line in enumerate(values):
            for j, value in enumerate(line):
                text = "n/a" if value is None else f"{value * 100:.0f}%"
                colour = "white" if value is not None and value > 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
        ax.set_xlabel("engine (replayed on)")
        ax.set_ylabel("perturbation (method ε @crafted on)")
        ax.set_title("Transfer: attack success rate per perturbation and engine")
        bar = figure.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("attack success rate (%)")
        _percent_axis(bar.ax.yaxis)
        return _png(figure)


def _is_l2(norm: Any) -> bool:
    return str(norm or "").lower() in ("l2", "2")


def asr_vs_eps(data: ReportData) -> bytes | None:
    """ASR vs ε, one line per (method, source → engine) with at least two ε values; one panel per norm."""
    lines: dict[tuple[str, str, str, str], dict[float, float]] = {}
    for row in data.transfer:
        eps, asr = _float(row.get("eps")), _float(row.get("asr"))
        if eps is None or asr is None:
            continue
        norm = "l2" if _is_l2(row.get("norm")) else "linf"
        key = (norm, str(row.get("method")), str(row.get("source")), str(row.get("engine")))
        lines.setdefault(key, {})[eps] = asr
    lines = {key: points for key, points in lines.items() if len(points) >= 2}
    if not lines:
        return None
    norms = [n for n in ("linf", "l2") if any(key[0] == n for key in lines)]
    engines = list(dict.fromkeys(key[3] for key in lines))
    sources = list(dict.fromkeys((key[1], key[2]) for key in lines))
    methods = list(dict.fromkeys(key[1] for key in lines))
    with _style():
        from matplotlib import colormaps

        colours = colormaps["tab10"]
        figure = _figure(5.2 * len(norms) + 3.4, 4.4)
        axes = figure.subplots(1, len(norms), squeeze=False)[0]
        for ax, norm in zip(axes, norms, strict=True):
            for key, points in lines.items():
                if key[0] != norm:
                    continue
                _, method, source, engine = key
                eps_values = sorted(points)
                xs = [e if norm == "l2" else e * 255.0 for e in eps_values]
                ax.plot(
                    xs,
                    [points[e] for e in eps_values],
                    color=colours(engines.index(engine) % 10),
                    linestyle=_LINESTYLES[sources.index((method, source)) % len(_LINESTYLES)],
                    marker=_MARKERS[methods.index(method) % len(_MARKERS)],
                    label=f"{method} {source} → {engine}",
                )
            ticks = sorted(
                {e if norm == "l2" else e * 255.0 for key, pts in lines.items() if key[0] == norm for e in pts}
            )
            if len(ticks) <= 12:
                ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
            ax.set_xlabel("ε (L2, input units)" if norm == "l2" else "ε (L∞, /255)")
            ax.set_ylabel("attack success rate (%)")
            ax.set_ylim(-0.03, 1.03)
            _percent_axis(ax.yaxis)
            ax.grid(alpha=0.3)
            ax.set_title(f"ASR vs ε ({'L2' if norm == 'l2' else 'L∞'})")
        handles, labels = [], []
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.append(handle)
                labels.append(label)
        figure.legend(handles, labels, loc="outside right upper", title="method source → engine")
        return _png(figure)


def accuracy_vs_size(data: ReportData) -> bytes | None:
    """Clean accuracy vs model size (MB) and vs GFLOPs: two panels, one marker/colour per family, labelled points."""
    points = []
    for row in data.engines:
        acc = _float(row.get("clean_acc"))
        if acc is None:
            continue
        points.append((str(row.get("engine")), str(row.get("family") or "unknown"), acc, row))
    panels = [("size_mb", "model size (MB)"), ("gflops", "compute (GFLOPs per image)")]
    if not any(_float(row.get(key)) is not None for _, _, _, row in points for key, _ in panels):
        return None
    families = list(dict.fromkeys(family for _, family, _, _ in points))
    with _style():
        from matplotlib import colormaps

        colours = colormaps["tab10"]
        figure = _figure(11.0, 4.6)
        axes = figure.subplots(1, 2)
        for ax, (key, xlabel) in zip(axes, panels, strict=True):
            drawn = set()
            labels: dict[tuple[float, float], list[str]] = {}
            for engine, family, acc, row in points:
                x = _float(row.get(key))
                if x is None:
                    continue
                labels.setdefault((x, acc), []).append(_short(engine, 32))
                index = families.index(family)
                ax.scatter(
                    [x],
                    [acc],
                    s=55,
                    color=colours(index % 10),
                    marker=_MARKERS[index % len(_MARKERS)],
                    edgecolors="black",
                    linewidths=0.5,
                    label=None if family in drawn else family,
                    zorder=3,
                )
                drawn.add(family)
            _label_points(ax, labels)
            if not drawn:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("clean accuracy (%)")
            _percent_axis(ax.yaxis)
            ax.margins(x=0.25, y=0.15)
            ax.grid(alpha=0.3)
            ax.set_title(f"Clean accuracy vs {xlabel.split(' (')[0]}")
            if drawn:
                ax.legend(title="family", loc="best")
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
            ax.set_xticks(positions, [_short(label, 18) for label, _ in passes], rotation=20, ha="right")
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
                ax.set_title(f"{_short(label, 24)}\nmean {np.nanmean(grid):.2f} blocks", fontsize=8)
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
            label = f"{row.get('engine')} · {row.get('attack') or row.get('method')}"
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
