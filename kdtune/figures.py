"""Static PNGs of the dashboard's key charts, drawn with matplotlib from its own Plotly figures.

The HTML dashboard is Plotly; a static copy through kaleido needs a local Chrome, which headless
cluster nodes do not have, so a sweep there wrote no PNG at all. Here each Plotly figure the
dashboard built (:func:`kdtune.dashboard.build_panels`: the accuracy/latency and accuracy/size
scatters, KD vs no KD) is read trace by trace and drawn again with matplotlib's Agg backend: the
same points, error bars, Pareto staircase, teacher lines, symbols, prune-ratio colours, axis
titles and category labels, so a PNG cannot disagree with the page. Only what these figures use
is read (markers with error bars, ``hv`` lines, horizontal reference lines, one colour axis, a
category x axis with grouped traces); hover texts are the page's alone.

Nothing here touches pyplot's global state (a :class:`~matplotlib.figure.Figure` with its own
Agg canvas), so it runs without a display and from any thread. Writing the four PNGs of a real
dashboard (methods_cpu: 18 configs, three teachers, 16 KD comparisons; front.png is a copy of
accuracy_vs_latency.png, then accuracy vs size and KD vs no KD) takes 2.1 s on a 2-core VM
(3.5 s the first time, importing matplotlib); 123 kB per scatter and 342 kB for KD vs no KD,
1800 px wide.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

DPI = 150
WIDTH_IN, HEIGHT_IN = 12.0, 7.5  # 1800 x 1125 px at DPI, about what the kaleido PNG was
TICK_PT = 8.5  # category tick labels (a KD vs no KD cell's is up to ~100 characters)
PT_PER_PX = 0.75  # a Plotly (CSS) pixel is 1/96 in, a matplotlib point 1/72 in
GRID = "#e5eaf2"
FG = "#2a3f5f"  # plotly_white's text colour

#: Plotly marker symbols -> matplotlib markers ("-open" suffix: hollow, drawn by its outline).
MARKERS = {"circle": "o", "square": "s", "diamond": "D", "triangle-up": "^",
           "triangle-down": "v", "pentagon": "p", "hexagon": "h", "star": "*", "cross": "P",
           "x": "X", "x-thin": "x"}
#: Markers matplotlib draws by their lines alone: a face colour means nothing to them.
LINE_MARKERS = {"x"}
#: Plotly dash names -> matplotlib dash patterns (in line widths, as matplotlib scales them).
DASHES = {"solid": "-", "dot": (0, (1, 2)), "dash": (0, (5, 3)), "dashdot": (0, (5, 2, 1, 2)),
          "longdash": (0, (9, 3)), "longdashdot": (0, (9, 3, 1, 3))}


def text(s) -> str:
    """Plotly's label markup as plain text: ``<br>`` a new line, other tags dropped, entities
    unescaped, ``$`` kept literal (matplotlib would read mathtext)."""
    if s is None:
        return ""
    s = re.sub(r"<br\s*/?>", "\n", str(s))
    return html.unescape(re.sub(r"<[^>]+>", "", s)).replace("$", r"\$")


def _color(c):
    """A Plotly colour string ("#2a9d8f", "rgba(90,90,90,0.6)", "rgb(...)") for matplotlib."""
    if c is None:
        return None
    m = re.fullmatch(r"rgba?\(([^)]*)\)", str(c).strip())
    if not m:
        return to_rgba(c)
    parts = [float(p) for p in m.group(1).split(",")]
    return (*(p / 255 for p in parts[:3]), parts[3] if len(parts) > 3 else 1.0)


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _per_point(value, n: int) -> list:
    """A marker property given once or per point, as a list of ``n``."""
    if value is None or isinstance(value, str) or np.ndim(value) == 0:
        return [value] * n
    return list(value)


def _symbol(name: str | None) -> tuple[str, bool]:
    """(matplotlib marker, hollow?) of a Plotly symbol name."""
    name = name or "circle"
    hollow = name.endswith("-open")
    return MARKERS.get(name.removesuffix("-open"), "o"), hollow


def _colormap(layout):
    """(colormap, norm) of the figure's colour axis, or (None, None) when it has none."""
    ca = layout.coloraxis
    if ca is None or ca.colorscale is None:
        return None, None
    cmap = LinearSegmentedColormap.from_list(
        "plotly", [(float(pos), _color(col)) for pos, col in ca.colorscale])
    return cmap, Normalize(ca.cmin if ca.cmin is not None else 0.0,
                           ca.cmax if ca.cmax is not None else 1.0)


def _marker_colors(marker, n: int, cmap, norm) -> list:
    if marker.coloraxis and cmap is not None:
        return [cmap(norm(0.0 if v is None or math.isnan(float(v)) else float(v)))
                for v in _per_point(marker.color, n)]
    return [_color(c) or "#444444" for c in _per_point(marker.color, n)]


def _category_positions(fig) -> tuple[list[str], dict[int, np.ndarray]]:
    """A category x axis: the categories in order of first appearance, and each trace's x
    positions, traces side by side within a category as Plotly's scattermode "group" puts
    them (a band of 1 - scattergap, split evenly)."""
    cats: list[str] = []
    drawn = [i for i, tr in enumerate(fig.data) if tr.x is not None
             and any(x is not None for x in tr.x)]
    for i in drawn:
        for x in fig.data[i].x:
            if x is not None and x not in cats:
                cats.append(x)
    grouped = fig.layout.scattermode == "group" and len(drawn) > 1
    gap = fig.layout.scattergap if fig.layout.scattergap is not None else 0.0
    band = 1.0 - gap
    out = {}
    for k, i in enumerate(drawn):
        shift = (-band / 2 + band * (k + 0.5) / len(drawn)) if grouped else 0.0
        out[i] = np.array([cats.index(x) + shift for x in fig.data[i].x], dtype=float)
    return cats, out


def _is_category(fig) -> bool:
    if fig.layout.xaxis.type == "category":
        return True
    return any(isinstance(x, str) for tr in fig.data if tr.x is not None for x in tr.x)


def _draw_markers(ax, tr, xs, ys, cmap, norm, z: int):
    n = len(xs)
    colors = _marker_colors(tr.marker, n, cmap, norm)
    marker, hollow = _symbol(tr.marker.symbol)
    sizes = [(PT_PER_PX * float(s if s is not None else 6)) ** 2
             for s in _per_point(tr.marker.size, n)]
    edge_widths = [PT_PER_PX * float(w if w is not None else 0)
                   for w in _per_point(tr.marker.line.width, n)]
    edge_colors = _per_point(tr.marker.line.color, n)
    if hollow or marker in LINE_MARKERS:  # the outline carries the colour
        face, edges = "none", colors
        edge_widths = [w or PT_PER_PX * 1.5 for w in edge_widths]
    else:
        face = colors
        edges = [_color(c) if c is not None else col for c, col in zip(edge_colors, colors)]
    err = tr.error_y
    if err is not None and err.array is not None and err.visible is not False:
        e = _floats(err.array)
        ok = np.isfinite(e) & np.isfinite(ys)
        if ok.any():
            ax.errorbar(xs[ok], ys[ok], yerr=e[ok], fmt="none", zorder=z,
                        ecolor=_color(err.color) if err.color else colors[0],
                        elinewidth=PT_PER_PX * (err.thickness or 2),
                        capsize=PT_PER_PX * (err.width if err.width is not None else 4))
    if marker in LINE_MARKERS:
        return ax.scatter(xs, ys, s=sizes, marker=marker, c=edges, linewidths=edge_widths,
                          zorder=z + 0.5, label=text(tr.name))
    return ax.scatter(xs, ys, s=sizes, marker=marker, facecolors=face, edgecolors=edges,
                      linewidths=edge_widths, alpha=tr.marker.opacity, zorder=z + 0.5,
                      label=text(tr.name))


def _legend_handle(tr):
    if tr.mode and "markers" in tr.mode:
        marker, hollow = _symbol(tr.marker.symbol)
        color = tr.marker.color if isinstance(tr.marker.color, str) else "#2a3f5f"
        color = _color(color)
        filled = not (hollow or marker in LINE_MARKERS)
        return Line2D([], [], linestyle="none", marker=marker, markersize=8,
                      markerfacecolor=color if filled else "none", markeredgecolor=color,
                      markeredgewidth=1.5 if not filled else 0.5)
    line = tr.line
    return Line2D([], [], color=_color(line.color) or FG,
                  linewidth=PT_PER_PX * (line.width or 2),
                  linestyle=DASHES.get(line.dash or "solid", "-"))


def _hlines(ax, layout):
    """The horizontal reference lines of ``add_hline`` (a teacher's accuracy)."""
    for shape in layout.shapes or ():
        if shape.type == "line" and shape.y0 is not None and shape.y0 == shape.y1 \
                and str(shape.xref or "").endswith("domain"):
            line = shape.line
            ax.axhline(float(shape.y0), color=_color(line.color) or FG,
                       linewidth=PT_PER_PX * (line.width or 2),
                       linestyle=DASHES.get(line.dash or "solid", "-"), zorder=1)


def _fit_legend(fig: Figure, handles, labels):
    """A legend under the chart with as many columns as fit the figure's width."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower left", ncol=ncol,
                            frameon=False, fontsize=9.5, handlelength=2.6, columnspacing=1.6,
                            labelcolor=FG)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.97 * fig.bbox.width:
            return legend
        legend.remove()
    return None


def render(fig, label: str = "") -> Figure:
    """The matplotlib Figure of a dashboard Plotly figure. Its title is ``layout.meta``'s
    ``title`` followed by ``label`` (dataset · sweep name), and its ``subtitle`` under it."""
    layout = fig.layout
    xa, ya = layout.xaxis, layout.yaxis
    upright = abs(xa.tickangle or 0) > 45 and xa.ticktext is not None
    # upright category labels (KD vs no KD with many cells) get room of their own below a
    # chart of the usual height
    label_in = max(map(len, xa.ticktext)) * 0.6 * TICK_PT / 72 if upright else 0.0
    out = Figure(figsize=(WIDTH_IN, HEIGHT_IN + label_in), dpi=DPI, layout="constrained",
                 facecolor="white")
    FigureCanvasAgg(out)
    ax = out.add_subplot()
    cmap, norm = _colormap(layout)
    category = _is_category(fig)
    cats, positions = _category_positions(fig) if category else ([], {})
    handles, labels = [], []
    for i, tr in enumerate(fig.data):
        if tr.type != "scatter" or tr.x is None:
            continue
        z = i + 2  # in trace order, above the grid and the reference lines, as Plotly draws
        if any(x is not None for x in tr.x):  # not a legend-only trace (x = [None])
            xs = positions[i] if category else _floats(tr.x)
            ys = _floats(tr.y)
            if tr.mode and "markers" in tr.mode:
                _draw_markers(ax, tr, xs, ys, cmap, norm, z)
            elif tr.mode and "lines" in tr.mode:
                line = tr.line
                ax.plot(xs, ys, color=_color(line.color) or FG,
                        linewidth=PT_PER_PX * (line.width or 2),
                        linestyle=DASHES.get(line.dash or "solid", "-"),
                        drawstyle="steps-post" if line.shape == "hv" else "default",
                        zorder=z + 0.5, label=text(tr.name))
        if tr.name and tr.showlegend is not False:
            handles.append(_legend_handle(tr))
            labels.append(text(tr.name))
    _hlines(ax, layout)

    ax.set_xlabel(text(xa.title.text), color=FG, fontsize=11)
    ax.set_ylabel(text(ya.title.text), color=FG, fontsize=11)
    if category:
        vals = list(xa.tickvals) if xa.tickvals is not None else cats
        ticks = list(xa.ticktext) if xa.ticktext is not None else vals
        ax.set_xticks([cats.index(v) for v in vals if v in cats],
                      [text(t) for v, t in zip(vals, ticks) if v in cats],
                      rotation=-(xa.tickangle or 0), fontsize=TICK_PT)
        ax.set_xlim(-0.5, len(cats) - 0.5)
    if ya.range is not None:
        ax.set_ylim(*ya.range)
    for axis, get, set_ in ((xa, ax.get_xlim, ax.set_xlim), (ya, ax.get_ylim, ax.set_ylim)):
        if axis.rangemode == "nonnegative" and get()[0] < 0:
            set_(0, get()[1])
    ax.grid(True, color=GRID, linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=FG, labelsize=9.5)

    if cmap is not None and any(tr.marker and tr.marker.coloraxis for tr in fig.data
                                if tr.type == "scatter"):
        bar = out.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.75,
                           fraction=0.03, pad=0.015)
        cb = layout.coloraxis.colorbar
        bar.ax.set_title(text(cb.title.text) if cb and cb.title else "", fontsize=9.5,
                         color=FG, loc="left")
        if cb and cb.tickformat and cb.tickformat.endswith("%"):
            bar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        bar.ax.tick_params(labelsize=9, colors=FG)
    meta = layout.meta if isinstance(layout.meta, dict) else {}
    title = " — ".join(t for t in (meta.get("title"), label) if t)
    if title:
        out.suptitle(text(title), x=0.01, ha="left", fontsize=13, color=FG)
    if meta.get("subtitle"):
        ax.set_title(text(meta["subtitle"]), loc="left", fontsize=10, color="#5b6472")
    if handles:
        _fit_legend(out, handles, labels)
    return out


def write_png(fig, path: Path, label: str = "") -> None:
    """Draw a dashboard Plotly figure with :func:`render` and save it as a PNG at ``path``."""
    rendered = render(fig, label)
    rendered.savefig(path, format="png", dpi=DPI, facecolor="white")
