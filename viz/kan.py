"""KAN figures: the network drawn as pykan draws it, per-layer importance heatmaps, small multiples
of edge curves, and the raw curve values as a table (issue 8, SCIENCE.md section 7).

Every figure renders in both backends: Bokeh in the page, Matplotlib through ``styling.export``.
Curves are sampled once per layer for all edges (``EdgeLayer.curves`` is batched) and then picked
per edge, so a 64x64 layer costs one evaluation, not 4096.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import holoviews as hv
import numpy as np
import pandas as pd
import torch
from bokeh.layouts import GridPlot, gridplot
from bokeh.models import FixedTicker, HoverTool, Legend, LegendItem
from bokeh.plotting import figure as bokeh_figure
from holoviews import dim
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from netatlas.backend.kan.base import INPUT, EdgeLayer, KANNetwork
from netatlas.backend.errors import NetatlasError
from netatlas.viz.styling import PAGE_SCROLLS, styled

BETA = 3.0              # pykan's plot(): alpha = tanh(beta * importance)
MAX_EDGES = 32          # edges drawn per layer of the network; wider layers show only their top edges
COLORS = {"numeric": "#222222", "symbolic": "#d62728", "data": "#b0b0b0",
          "fit": "#2ca02c", "node": "#222222"}
PART_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2")
_PX_X, _PX_LAYER = 720, 190          # network drawing: pixels per x unit and per layer
_BOX_FILL, _BOX_MAX = 0.85, 0.42     # share of a slot a curve box fills; its largest height (layers)
_PHI = hv.Dimension("phi", label="phi")
_TICK = 0.06            # knot ticks: their length below a curve panel, as a share of its height
_STRIP = (0.12, 0.42)   # the inputs' histogram: a strip from 0.42 to 0.12 curve heights below the curve
_FONTS_MPL = {"fontsize": {"title": 9, "labels": 8, "xticks": 7, "yticks": 7, "legend": 7}}


class Formula(Protocol):
    """A fitted symbolic curve (``backend.kan.symbolic.FormulaFit``): callable on x, printable."""

    def __call__(self, x: np.ndarray) -> Any: ...

    def expression(self, var: str = "x", digits: int = 3) -> str: ...


def top_edges(importance: Tensor | np.ndarray, n: int) -> list[tuple[int, int]]:
    """The ``n`` edges (i, j) with the largest importance [out, in], most important first."""
    scores = _numpy(importance)
    order = np.argsort(-scores.ravel(), kind="stable")[:n]
    js, is_ = np.unravel_index(order, scores.shape)
    return [(int(i), int(j)) for i, j in zip(is_, js)]


def axis_variable(layer: EdgeLayer) -> str:
    """The variable curves are drawn against: the transformed input if a part reads one (FastKAN's
    LayerNorm(x)), since that is where the layer's grid, domain and knots live."""
    return next((p.variable for p in layer.parts if p.variable != INPUT), INPUT)


def axis_label(layer: EdgeLayer) -> str:
    """The x axis's name: the one variable, or each part's variable when the parts read different ones."""
    variables = dict.fromkeys(p.variable for p in layer.parts)
    if len(variables) == 1:
        return next(iter(variables))
    return ", ".join(f"{p.variable} ({p.name})" for p in layer.parts)


def curve_ranges(layer: EdgeLayer, inputs: Tensor | None = None) -> np.ndarray:
    """[in, 2]: the range each input's curves are drawn over, the domain widened to the sample's values."""
    ranges = _numpy(layer.domain()).astype(float).copy()
    values = _variable_values(layer, inputs)
    if values is not None and len(values):
        ranges[:, 0] = np.minimum(ranges[:, 0], np.nanmin(values, 0))
        ranges[:, 1] = np.maximum(ranges[:, 1], np.nanmax(values, 0))
    return ranges


def curve_table(layer: EdgeLayer, edges: Sequence[tuple[int, int]], points: int = 200,
                inputs: Tensor | None = None, index: int = 0) -> pd.DataFrame:
    """One row per (edge, x): layer, i, j, variable, x, each part and the total, the raw values behind
    every drawn curve (for CSV). ``inputs`` widens the range as the figures do. A value the curve does
    not take (a symbolic 1/x at 0, log of a negative) is NaN, an empty cell in a CSV, never "inf"."""
    return _curve_rows(layer, edges, points, inputs, index, [p.name for p in layer.parts])


def _curve_rows(layer: EdgeLayer, edges: Sequence[tuple[int, int]], points: int, inputs: Tensor | None,
                index: int, parts: Sequence[str]) -> pd.DataFrame:
    """``curve_table`` with only the named parts (each part costs a pass over every edge)."""
    ii, jj = _edge_indices(layer, edges)
    x, values = _sample(layer, curve_ranges(layer, inputs), points, parts)
    columns: dict[str, Any] = {"layer": index, "i": np.repeat(ii, points), "j": np.repeat(jj, points),
                               "variable": axis_label(layer), "x": x[:, ii].T.ravel()}
    columns.update({name: np.where(np.isfinite(v := value[:, ii, jj].T.ravel()), v, np.nan)
                    for name, value in values.items()})
    return pd.DataFrame(columns)


def importance_heatmap(importance: Tensor | np.ndarray, layer_name: str) -> hv.HeatMap:
    """[out x in] edge importance of one layer; hover gives i, j and the value, a tap picks an edge."""
    scores = _numpy(importance)
    j, i = np.indices(scores.shape)
    heatmap = hv.HeatMap((i.ravel(), j.ravel(), scores.ravel()),
                         [hv.Dimension("i", label="input i"), hv.Dimension("j", label="output j")],
                         [hv.Dimension("importance")])
    ticks = {"xticks": integer_ticks(scores.shape[1]), "yticks": integer_ticks(scores.shape[0])}
    return styled(heatmap, {"cmap": "viridis", "colorbar": True, "title": heatmap_title(layer_name), **ticks},
                  {"tools": ["hover", "tap"], "width": 440, "height": 360, "fontsize": {"title": "9pt"},
                   **PAGE_SCROLLS},
                  {"aspect": 1.2, "show_values": False, **_FONTS_MPL})


def integer_ticks(n: int, most: int = 10) -> list[int]:
    """Ticks for an axis of ``n`` integer indices (edge i or j): whole numbers only, at most ``most``."""
    step = max(1, -(-n // most))
    return list(range(0, n, step))


def heatmap_title(layer_name: str, width: int = 48) -> str:
    """The heatmap's title, short enough to fit over it: a long layer label is cut with an ellipsis."""
    title = f"Edge importance, {layer_name}"
    return title if len(title) <= width else title[:width - 1] + "…"


def edge_curves(layer: EdgeLayer, edges: Sequence[tuple[int, int]], inputs: Tensor | None = None,
                parts: Sequence[str] = (), symbolic_fits: Mapping[tuple[int, int], Formula] | None = None,
                columns: int = 4, index: int = 0, points: int = 200, bins: int = 30) -> hv.Layout:
    """Small multiples of the chosen edges of layer ``index``: each curve over its range with the
    input's histogram behind it, the knots as ticks, the named ``parts`` beside the total and a
    symbolic fit dashed when given.

    Elements carry their role as a group (Total, Part0, Fit, ...) and the whole layout is styled by
    one options call per backend: styling each element apart cost more than the page's rendering budget
    allows (~0.15 s of 1 s for 16 panels). Each panel's y range is its data's: the curves, the knot
    ticks just below them and, below those, the input's histogram as a light filled strip of its own
    (``_histogram``), which the phi ticks never reach; a fit is cut off outside the curves' range.
    """
    names = [p.name for p in layer.parts]
    unknown = set(parts) - set(names)
    if unknown:
        raise NetatlasError(f"this layer has no part {', '.join(sorted(unknown))}; choose among {', '.join(names)}")
    mixed = len({p.variable for p in layer.parts}) > 1   # FastKAN with LayerNorm: parts on different axes,
    if mixed:                                            # whose sum is no curve of one variable: parts only
        parts = names
    table = _curve_rows(layer, edges, points, inputs, index, parts)
    data = _variable_values(layer, inputs)
    knots = layer.knots()
    knots = None if knots is None else _numpy(knots)
    symbolic, xdim = layer.symbolic(), hv.Dimension("x", label=axis_label(layer))
    panels = []
    for k, (i, j) in enumerate(edges):
        rows = table.iloc[k * points:(k + 1) * points]
        x, fit = rows["x"].to_numpy(), (symbolic_fits or {}).get((i, j))
        legend = bool(parts) or fit is not None
        lines = [] if mixed else [hv.Curve((x, rows["total"].to_numpy()), xdim, _PHI, label="total" if legend else "",
                                           group="Symbolic" if (i, j) in symbolic else "Total")]
        lines += [hv.Curve((x, rows[p].to_numpy()), xdim, _PHI, label=p,
                           group=f"Part{names.index(p) % len(PART_COLORS)}") for p in parts]
        yrange = _span(np.concatenate([line.dimension_values(1) for line in lines]))
        lines += [] if fit is None else [_fit_curve(fit, x, yrange, xdim)]
        behind = [_histogram(x, yrange, None if data is None else data[:, i], bins, xdim),
                  _knot_ticks(x, yrange, None if knots is None else knots[i], xdim)]
        title = _edge_title(layer, index, (i, j), symbolic.get((i, j)))
        ylim, yticks = panel_axis(yrange)
        panel = hv.Overlay([*behind, *lines], label=title)
        panels.append(panel.opts(ylim=ylim, yticks=yticks, backend="bokeh").opts(
            ylim=ylim, yticks=yticks, hooks=[_spine_on(yticks)], backend="matplotlib"))
    figure = hv.Layout(panels).cols(columns)
    return figure.opts(_SMALL_MULTIPLES["bokeh"], backend="bokeh").opts(_SMALL_MULTIPLES["matplotlib"],
                                                                         backend="matplotlib")


def _spine_on(ticks: list[float]):
    """Matplotlib hook: the phi axis's line spans the curve's ticks only, as in the page (not the strip)."""
    def hook(plot, _element) -> None:
        if ticks:
            plot.handles["axis"].spines["left"].set_bounds(ticks[0], ticks[-1])
    return hook


def panel_axis(yrange: tuple[float, float]) -> tuple[tuple[float, float], list[float]]:
    """A curve panel's y limits (the curve, the knot ticks and the histogram strip below it) and its
    phi ticks, which stay within the curve's own range: the strip below has no phi values."""
    low, high = yrange
    span = high - low
    ticks = MaxNLocator(nbins=4).tick_values(low, high)
    ticks = [float(t) for t in ticks if low - 1e-9 * span <= t <= high + 1e-9 * span]
    return (low - (_STRIP[1] + 0.03) * span, high + 0.05 * span), ticks


# Each small-multiples line by role (its Curve's group): colour, width, and the tool it carries in the page.
_LINES = {"Knots": (COLORS["data"], 1.0, ""), "Total": (COLORS["numeric"], 2.0, "hover"),
          "Symbolic": (COLORS["symbolic"], 2.0, "hover"), "Fit": (COLORS["fit"], 1.6, ""),
          **{f"Part{k}": (color, 1.3, "") for k, color in enumerate(PART_COLORS)}}
_HISTOGRAM = {"color": "#c9d3e0", "alpha": 0.8}     # the inputs' strip: a light fill, no outline
_PANEL_PX = (250, 210)
_LEGEND_ROW_PX = 13


def bokeh_small_multiples(figure: hv.Layout, columns: int = 4) -> GridPlot:
    """``edge_curves``'s panels drawn with Bokeh directly, for the page.

    HoloViews' own Bokeh rendering of 16 panels costs ~0.8 s of server time (plot objects, range
    computation, option resolution per element); the same lines as plain Bokeh figures ~0.25 s, and
    every edge pick redraws them. Files still go through HoloViews and Matplotlib (``styling.export``).
    The mouse wheel scrolls the page (wheel zoom waits in the toolbar); a legend sits below its panel.
    """
    plots = []
    for panel in figure.values():
        behind = [e for e in panel.values() if e.group in ("Inputs", "Knots")]
        curves = [e for e in panel.values() if e.group not in ("Inputs", "Knots")]
        x = curves[0].dimension_values(0)
        ylim, yticks = panel_axis(_span(np.concatenate([c.dimension_values(1) for c in curves
                                                        if c.group != "Fit"])))
        plot = bokeh_figure(width=_PANEL_PX[0], height=_PANEL_PX[1], title=panel.label,
                            tools="pan,wheel_zoom,box_zoom,reset,save",
                            x_range=(float(x[0]), float(x[-1])), y_range=ylim,
                            x_axis_label=curves[0].kdims[0].pprint_label, y_axis_label="phi")
        plot.toolbar.active_scroll = None
        plot.yaxis.ticker = FixedTicker(ticks=yticks)
        plot.yaxis.bounds = (yticks[0], yticks[-1]) if yticks else "auto"
        plot.title.text_font_size = "9pt"
        for element in behind:
            if element.group == "Inputs":
                plot.varea(element.dimension_values(0), element.dimension_values(2), element.dimension_values(1),
                           fill_color=_HISTOGRAM["color"], fill_alpha=_HISTOGRAM["alpha"])
            else:
                plot.line(element.dimension_values(0), element.dimension_values(1), color=_LINES["Knots"][0],
                          line_width=_LINES["Knots"][1])
        items = []
        for curve in curves:
            color, width, tool = _LINES[curve.group]
            line = plot.line(curve.dimension_values(0), curve.dimension_values(1), color=color, line_width=width,
                             line_dash="dashed" if curve.group == "Fit" else "solid")
            if curve.label:
                items.append(LegendItem(label=curve.label, renderers=[line]))
            if tool == "hover":
                plot.add_tools(HoverTool(renderers=[line], tooltips=[("x", "@x{0.000}"), ("phi", "@y{0.000}")]))
        if items:                                  # below the panel: never over the curve
            plot.add_layout(Legend(items=items, label_text_font_size="7pt", padding=2, spacing=0, margin=2,
                                   glyph_height=10, label_height=10), "below")
            plot.height += _LEGEND_ROW_PX * len(items) + 6
        plots.append(plot)
    grid = gridplot(plots, ncols=columns, toolbar_location="right")
    grid.toolbar.active_scroll = None
    return grid


def _small_multiples_options() -> dict[str, dict[str, dict[str, Any]]]:
    """Options of every small-multiples element by backend, keyed by role (``Curve.<group>``)."""
    lines = _LINES
    own = {"axiswise": True}                                          # each panel keeps its own ranges
    bokeh = {f"Curve.{group}": {"color": color, "line_width": width, "tools": [tool] if tool else [], **own}
             for group, (color, width, tool) in lines.items()}
    mpl = {f"Curve.{group}": {"color": color, "linewidth": width * 0.75, **own}
           for group, (color, width, _) in lines.items()}
    bokeh["Curve.Fit"]["line_dash"], mpl["Curve.Fit"]["linestyle"] = "dashed", "--"
    bokeh["Area.Inputs"] = {"color": _HISTOGRAM["color"], "alpha": _HISTOGRAM["alpha"], "line_alpha": 0, **own}
    mpl["Area.Inputs"] = {"color": _HISTOGRAM["color"], "facecolor": _HISTOGRAM["color"],   # color: not the cycle
                          "alpha": _HISTOGRAM["alpha"], "linewidth": 0, **own}
    panel = {"title": "{label}", "padding": (0, 0.05), **own}
    bokeh["Overlay"] = {**panel, "width": _PANEL_PX[0], "height": _PANEL_PX[1], "legend_position": "bottom",
                        "fontsize": {"title": "9pt"}, **PAGE_SCROLLS,
                        "legend_opts": {"label_text_font_size": "7pt", "padding": 2, "spacing": 0}}
    mpl["Overlay"] = {**panel, "aspect": 1.25, "legend_position": "bottom", **_FONTS_MPL}
    return {"bokeh": {**bokeh, "Layout": {"shared_axes": False}},
            "matplotlib": {**mpl, "Layout": {"sublabel_format": ""}}}


_SMALL_MULTIPLES = _small_multiples_options()


def network_figure(network: KANNetwork, inputs: Sequence[Tensor] | None,
                   importance: Sequence[Tensor | np.ndarray], max_edges: int = MAX_EDGES,
                   points: int = 40) -> hv.Overlay:
    """The network as pykan's ``plot()`` draws it: inputs at the bottom, each edge a line from node i
    through a small box with its curve to node j, alpha = tanh(3 importance), symbolic edges red.

    A layer with more than ``max_edges`` edges shows only its ``max_edges`` most important ones, so
    the boxes stay legible. All edge lines are one element and all curves another: Segments, since
    HoloViews maps per-path styles of a Path by splitting it into one Dataset per path (~0.5 s per
    element for a few dozen paths), while Segments map theirs as table columns.
    """
    inputs = inputs if inputs is not None else [None] * len(network.layers)
    drawn = [_draw_layer(level, layer, x, _numpy(scores), max_edges, points)
             for level, (layer, x, scores) in enumerate(zip(network.layers, inputs, importance, strict=True))]
    edges, curves, boxes = (pd.concat(parts, ignore_index=True) for parts in zip(*drawn))
    depth = len(network.layers)
    capped = any(a * b > max_edges for a, b in zip(network.widths, network.widths[1:]))
    title = f"{network.family} KAN {network.widths}" + (
        f" (top {max_edges} edges of each wider layer)" if capped else "")
    overlay = hv.Overlay([_segments(edges, 1.2), _boxes(boxes), _segments(curves, 1.6), _nodes(network.widths)])
    return styled(overlay, {"title": title, "xaxis": None, "yaxis": None, "show_legend": False,
                            "xlim": (-0.02, 1.02), "ylim": (-0.15, depth + 0.15)},
                  {"frame_width": int(_PX_X * 1.04), "frame_height": int(_PX_LAYER * (depth + 0.3)),
                   "show_grid": False, **PAGE_SCROLLS},
                  {"aspect": 1.04 * _PX_X / (_PX_LAYER * (depth + 0.3)), "fig_size": 250, **_FONTS_MPL})


def _draw_layer(level: int, layer: EdgeLayer, inputs: Tensor | None, scores: np.ndarray, max_edges: int,
                points: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One layer's edge lines, curve drawings (as segments) and boxes, in pykan's slot order (i, then j)."""
    ii, jj = np.array(sorted(top_edges(scores, min(max_edges, layer.in_dim * layer.out_dim)))).T
    slots = len(ii)
    centre = (np.arange(slots) + 0.5) / slots
    width = min(_BOX_FILL / slots, 1.5 * _BOX_MAX * _PX_LAYER / _PX_X)   # at most 3:2 on screen
    height = min(_BOX_MAX, width * _PX_X / _PX_LAYER)
    middle, bottom, top = level + 0.5, level + 0.5 - height / 2, level + 0.5 + height / 2
    importance = np.nan_to_num(scores[jj, ii].astype(float))
    symbolic = layer.symbolic()
    meta = pd.DataFrame({"layer": level, "i": ii, "j": jj, "importance": importance,
                         "alpha": np.tanh(BETA * importance),
                         "color": [COLORS["symbolic" if e in symbolic else "numeric"] for e in zip(ii, jj)]})
    below = {"x0": _node_x(ii, layer.in_dim), "y0": float(level), "x1": centre, "y1": bottom}
    above = {"x0": centre, "y0": top, "x1": _node_x(jj, layer.out_dim), "y1": level + 1.0}
    edges = pd.concat([_tagged(below, meta), _tagged(above, meta)], ignore_index=True)
    x, values = _sample(layer, curve_ranges(layer, inputs), points, [])
    u, v = _unit(x[:, ii]), _unit(values["total"][:, ii, jj])      # [points, slots], each in [0, 1]
    curve_x, curve_y = centre + width * 0.8 * (u - 0.5), middle + height * 0.8 * (v - 0.5)
    curves = _tagged({"x0": curve_x[:-1].T.ravel(), "y0": curve_y[:-1].T.ravel(),
                      "x1": curve_x[1:].T.ravel(), "y1": curve_y[1:].T.ravel()},
                     meta.loc[meta.index.repeat(points - 1)].reset_index(drop=True))
    boxes = _tagged({"x0": centre - width / 2, "y0": bottom, "x1": centre + width / 2, "y1": top}, meta)
    return edges, curves, boxes


def _tagged(geometry: dict[str, Any], meta: pd.DataFrame) -> pd.DataFrame:
    """Geometry columns beside their edge's layer, i, j, importance, alpha and colour (for hover, style)."""
    return pd.concat([pd.DataFrame(geometry), meta], axis=1)


def _node_x(k: np.ndarray | int, n: int) -> np.ndarray | float:
    return (k + 0.5) / n


def _unit(values: np.ndarray) -> np.ndarray:
    """Each column rescaled to [0, 1] (a flat one sits in the middle), to fit a curve in its box."""
    with np.errstate(all="ignore"):
        low, high = np.nanmin(values, 0), np.nanmax(values, 0)
        scaled = (values - low) / (high - low)
    return np.where(high > low, scaled, 0.5)


def _nodes(widths: Sequence[int]) -> hv.Points:
    rows = [(_node_x(k, n), level, level, k) for level, n in enumerate(widths) for k in range(n)]
    points = hv.Points(rows, vdims=["layer", "node"])
    return styled(points, {"color": COLORS["node"]},
                  {"size": 6, "tools": ["hover"], "hover_tooltips": NODE_TOOLTIPS}, {"s": 12})


# What hovering the network drawing says: an edge as the user reads it, never the drawing's own columns
# (x0, y0, x1, y1, alpha, color).
EDGE_TOOLTIPS = [("layer", "@{layer}"), ("edge", "input @{i} → output @{j}"),
                 ("importance", "@{importance}{0.000}")]
NODE_TOOLTIPS = [("layer", "@{layer}"), ("node", "@{node}")]


_EDGE_DIMS = ["layer", "i", "j", "importance", "alpha", "color"]


def _segments(table: pd.DataFrame, width: float) -> hv.Segments:
    """Lines coloured and faded per edge (their ``color`` and ``alpha`` columns)."""
    return styled(hv.Segments(table, vdims=_EDGE_DIMS), {"color": dim("color"), "alpha": dim("alpha")},
                  {"line_width": width}, {"linewidth": width * 0.6})


def _boxes(table: pd.DataFrame) -> hv.Rectangles:
    """The curve boxes: outlines only, coloured and faded like their edge."""
    return styled(hv.Rectangles(table, vdims=_EDGE_DIMS), {},
                  {"fill_alpha": 0, "line_color": dim("color"), "line_alpha": dim("alpha"), "tools": ["hover"],
                   "hover_tooltips": EDGE_TOOLTIPS},
                  {"facecolor": "none", "edgecolor": dim("color"), "alpha": dim("alpha"), "linewidth": 0.5})


def _edge_title(layer: EdgeLayer, index: int, edge: tuple[int, int], symbolic: str | None) -> str:
    title = f"phi[{index}]({edge[0]} -> {edge[1]})"
    if not layer.separable:
        title = f"conditional curve {title}"
    return f"{title}, symbolic: {symbolic}" if symbolic else title


def _fit_curve(fit: Formula, x: np.ndarray, yrange: tuple[float, float], xdim: hv.Dimension) -> hv.Curve:
    """The symbolic fit over the same x, dashed; values it cannot take (log of a negative) or that
    leave the panel (near a pole) are left out."""
    with np.errstate(all="ignore"):
        y = np.asarray(fit(np.array(x)), dtype=float) * np.ones_like(x)   # a writable copy: torch warns on views
    low, high = yrange
    margin = 0.05 * (high - low)
    y[~np.isfinite(y) | (y < low - margin) | (y > high + margin)] = np.nan
    label = fit.expression() if hasattr(fit, "expression") else "symbolic fit"
    return hv.Curve((x, y), xdim, _PHI, group="Fit", label=label)


def _histogram(x: np.ndarray, yrange: tuple[float, float], data: np.ndarray | None, bins: int,
               xdim: hv.Dimension) -> hv.Area:
    """The sample's values of the edge's input as a light filled histogram in a strip of its own below
    the curve (tallest bar = the strip's height), so it never reads as the curve's values: vdims are
    the bars' tops, the strip's floor and the counts (never below 0). No sample: an empty strip."""
    (lo, hi), (low, high) = (float(x[0]), float(x[-1])), yrange
    floor, ceiling = low - _STRIP[1] * (high - low), low - _STRIP[0] * (high - low)
    if data is None:
        counts, edges = np.zeros(0), np.zeros(0)
    else:
        counts, edges = np.histogram(data[np.isfinite(data)], bins=bins, range=(lo, hi))
    xs = np.repeat(edges, 2)[1:-1] if len(edges) else edges               # a step: (e0, c0), (e1, c0), ...
    count = np.repeat(counts, 2).astype(float)
    tops = floor + count / max(counts.max(initial=0), 1) * (ceiling - floor)
    return hv.Area((xs, tops, np.full_like(tops, floor), count), xdim, [_PHI, "floor", "count"], group="Inputs")


def _knot_ticks(x: np.ndarray, yrange: tuple[float, float], knots: np.ndarray | None,
                xdim: hv.Dimension) -> hv.Curve:
    """The knots as short ticks just below the curve, one NaN-broken Curve: (k, below), (k, low), break."""
    (lo, hi), (low, high) = (float(x[0]), float(x[-1])), yrange
    ticks = np.zeros(0) if knots is None else knots[(knots >= lo) & (knots <= hi)].astype(float)
    xs = np.column_stack([ticks, ticks, np.full_like(ticks, np.nan)]).ravel()
    ys = np.tile([low - _TICK * (high - low), low, np.nan], len(ticks))
    return hv.Curve((xs, ys), xdim, _PHI, group="Knots")


def _span(values: np.ndarray) -> tuple[float, float]:
    """The finite range of ``values``; a flat curve gets a unit-wide band, so the histogram shows."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _sample(layer: EdgeLayer, ranges: np.ndarray, points: int,
            parts: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every edge over ``points`` values of its range: x [points, in] and, for each of ``parts`` and
    "total", [points, in, out]."""
    dtype = layer.domain().dtype
    frac = torch.linspace(0, 1, points, dtype=torch.float64)[:, None]
    low, high = torch.as_tensor(ranges, dtype=torch.float64).T
    t = (low + frac * (high - low)).to(dtype)
    with torch.no_grad():
        values = {name: _numpy(layer.curves(t, parts=(name,))) for name in parts}
        values["total"] = _numpy(layer.curves(t))
    return _numpy(t), values


def _variable_values(layer: EdgeLayer, inputs: Tensor | None) -> np.ndarray | None:
    """The sample's values of the axis variable [N, in], what each curve's histogram shows."""
    if inputs is None:
        return None
    x = torch.as_tensor(inputs).detach().cpu().to(layer.domain().dtype)
    with torch.no_grad():
        return _numpy(layer.variables(x)[axis_variable(layer)])


def _edge_indices(layer: EdgeLayer, edges: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Edges as index arrays, each checked against the layer's shape."""
    if not len(edges):
        raise NetatlasError("choose at least one edge (i, j) to draw")
    ii, jj = np.asarray(edges, dtype=int).reshape(-1, 2).T
    bad = (ii < 0) | (ii >= layer.in_dim) | (jj < 0) | (jj >= layer.out_dim)
    if bad.any():
        i, j = ii[bad][0], jj[bad][0]
        raise NetatlasError(f"edge ({i}, {j}) is not in this layer of {layer.in_dim} inputs and "
                            f"{layer.out_dim} outputs; choose i < {layer.in_dim} and j < {layer.out_dim}")
    return ii, jj


def _numpy(value: Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
