"""The figures' shared matplotlib helpers: the report's style, a figure on an Agg canvas, its PNG bytes.

matplotlib is imported inside the functions (the `report` extra), and figures are made with
`matplotlib.figure.Figure` on an Agg canvas: no pyplot, no global backend or state is touched.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from edgeattack.errors import MissingDependencyError

__all__ = ["ASR_CMAP", "DEPTH_CMAP", "DPI"]

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




def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))


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
