"""The embedding map: every image a point at its 2-D position, aggregated by datashader into one pixel
grid per view, so a zoom costs one pass over the points however many there are (1M in well under a
second on two cores) and the browser receives an image, never the points. Points are drawn as dots
sized by how densely they lie in the view (``spread_px``): 5,000 images are 3-5 px dots, a million
fill their clusters pixel by pixel.

``MapPoints`` holds the positions and the columns the map can be coloured by; ``render`` turns a view
(x and y ranges, pixel size, colouring, highlighted images) into a HoloViews RGB element; selection
helpers (``nearest``, ``in_box``, ``in_polygon``) answer hover, tap, box and lasso in data units.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import colorcet
import datashader as ds
import datashader.transfer_functions as tf
from datashader.composite import over
import holoviews as hv
import numpy as np
import pandas as pd
from matplotlib.path import Path as PolygonPath

ColorBy = Literal["class", "predicted", "correct", "cluster", "value", "density"]
CATEGORICAL = ("class", "predicted", "correct", "cluster")
NEEDS_PREDICTIONS = ("predicted", "correct")
CORRECTNESS = ["correct", "misclassified", "unlabeled"]
CORRECTNESS_COLORS = ["#3a7fc1", "#d62728", "#9a9a9a"]
VALUE_CMAP = colorcet.fire[40:]           # dark to bright; low activations stay visible on white
DENSITY_CMAP = colorcet.blues[60:]
MAX_SPREAD_PX = 2          # points are drawn at most 5 px across (``spread_px``)
DENSITY_WINDOW = 7         # pixels: the square a point's neighbours are counted in (``point_density``)


@dataclass
class MapPoints:
    """Positions ``x``, ``y`` and categorical columns (pandas categoricals, as datashader's
    ``count_cat`` needs) of every image; ``value`` (a unit's activation) and ``cluster`` are set later.
    The ``predicted`` and ``correct`` columns exist only when the model predicts the dataset's classes."""

    frame: pd.DataFrame
    class_names: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, xy: np.ndarray, labels: np.ndarray, predictions: np.ndarray | None,
              class_names: list[str]) -> "MapPoints":
        """``predictions`` None: the model has none, and the map offers no colouring by them."""
        names = [str(c) for c in class_names] or ["?"]
        columns = {"x": np.asarray(xy[:, 0], np.float32), "y": np.asarray(xy[:, 1], np.float32),
                   "class": _categorical(labels, names + ["unlabeled"], missing=len(names))}
        if predictions is not None:
            correct = np.where(labels < 0, 2, np.where(labels == predictions, 0, 1))
            columns["predicted"] = _categorical(predictions, names + ["?"], missing=len(names))
            columns["correct"] = pd.Categorical.from_codes(correct, CORRECTNESS)
        frame = pd.DataFrame({**columns, "value": np.zeros(len(xy), np.float32)})
        points = cls(frame, names)
        points.categories = {name: list(frame[name].cat.categories) for name in ("class", "predicted", "correct")
                             if name in frame}
        return points

    @property
    def has_predictions(self) -> bool:
        return "predicted" in self.frame

    def offers(self, color_by: str) -> bool:
        """Whether the map can be coloured by ``color_by`` (by prediction only when there are predictions)."""
        return self.has_predictions or color_by not in NEEDS_PREDICTIONS

    def __len__(self) -> int:
        return len(self.frame)

    def set_clusters(self, cluster_of_image: np.ndarray, names: list[str]) -> None:
        """Colour-by-cluster column: ``cluster_of_image[i]`` indexes ``names``."""
        self.frame["cluster"] = pd.Categorical.from_codes(np.asarray(cluster_of_image, np.int64), names)
        self.categories["cluster"] = list(names)

    def set_values(self, values: np.ndarray) -> None:
        self.frame["value"] = np.asarray(values, np.float32)

    @cached_property
    def xy(self) -> np.ndarray:
        return self.frame[["x", "y"]].to_numpy(np.float64)

    @cached_property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) framing every point with a 2% margin."""
        lo, hi = self.xy.min(0), self.xy.max(0)
        pad = np.maximum((hi - lo) * 0.02, 1e-6)
        return float(lo[0] - pad[0]), float(lo[1] - pad[1]), float(hi[0] + pad[0]), float(hi[1] + pad[1])

    @cached_property
    def _kdtree(self):
        from scipy.spatial import cKDTree

        return cKDTree(self.xy)

    # ------------------------------------------------------------------------- selection
    def nearest(self, x: float, y: float, within: float) -> int | None:
        """The image nearest (x, y) if it lies within ``within`` data units, else None."""
        distance, index = self._kdtree.query([x, y], distance_upper_bound=within)
        return None if not np.isfinite(distance) else int(index)

    def in_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        x, y = self.xy[:, 0], self.xy[:, 1]
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))

    def in_polygon(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Images inside a lasso; only those in its bounding box are tested against the polygon."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        if len(xs) < 3:
            return np.empty(0, np.int64)
        candidates = self.in_box(xs.min(), ys.min(), xs.max(), ys.max())
        inside = PolygonPath(np.column_stack([xs, ys])).contains_points(self.xy[candidates])
        return candidates[inside]


def _categorical(codes: np.ndarray, names: list[str], missing: int) -> pd.Categorical:
    codes = np.asarray(codes, np.int64)
    return pd.Categorical.from_codes(np.where((codes >= 0) & (codes < missing), codes, missing), names)


# ----------------------------------------------------------------------------- aggregation and shading
def aggregate(points: MapPoints | pd.DataFrame, color_by: ColorBy, x_range: tuple[float, float],
              y_range: tuple[float, float], width: int, height: int):
    """datashader's [height, width(, category)] aggregate of the points in the view."""
    frame = points.frame if isinstance(points, MapPoints) else points
    if color_by in NEEDS_PREDICTIONS and color_by not in frame:
        raise ValueError(f"colouring by {color_by!r} needs predictions, and this model has none")
    canvas = _canvas(x_range, y_range, width, height)
    if color_by in CATEGORICAL:
        reduction = ds.count_cat(color_by)
    elif color_by == "value":
        reduction = ds.mean("value")
    else:
        reduction = ds.count()
    return canvas.points(frame, "x", "y", agg=reduction)


def _canvas(x_range: tuple[float, float], y_range: tuple[float, float], width: int, height: int) -> ds.Canvas:
    return ds.Canvas(plot_width=max(int(width), 1), plot_height=max(int(height), 1),
                     x_range=tuple(map(float, x_range)), y_range=tuple(map(float, y_range)))


def category_colors(points: MapPoints, color_by: str) -> dict[str, str]:
    """A fixed colour per category (by position, so a class keeps its colour across views)."""
    names = points.categories[color_by]
    if color_by == "correct":
        palette = CORRECTNESS_COLORS
    elif color_by == "cluster":
        palette = colorcet.glasbey_dark
    else:
        palette = colorcet.b_glasbey_category10
    colors = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    for other in ("unlabeled", "?"):
        if other in colors and color_by != "correct":
            colors[other] = "#9a9a9a"
    return colors


def shade(points: MapPoints, agg, color_by: ColorBy, value_span: tuple[float, float] | None = None,
          alpha: int = 255, px: int = 0) -> tf.Image:
    """Colour an aggregate: categories mixed by count, values on a fixed span (so a colour means the
    same activation at every zoom), density on a histogram-equalized ramp; each point drawn ``px``
    pixels wider on every side (``spread_px``)."""
    floor = min(alpha, 190)                  # a lone point stays visible next to dense clusters
    if color_by in CATEGORICAL:
        image = tf.shade(agg, color_key=category_colors(points, color_by), how="eq_hist",
                         min_alpha=floor, alpha=alpha)
    elif color_by == "value":
        image = tf.shade(agg, cmap=VALUE_CMAP, how="linear", span=value_span, alpha=alpha, min_alpha=floor)
    else:
        image = tf.shade(agg, cmap=DENSITY_CMAP, how="eq_hist", alpha=alpha, min_alpha=floor)
    return spread(image, px)


def shaded_view(points: MapPoints, color_by: ColorBy, x_range: tuple[float, float],
                y_range: tuple[float, float], width: int, height: int,
                highlight: np.ndarray | None = None) -> tf.Image:
    """The shaded view; with ``highlight`` (image indices) the rest fades and those keep their colour.
    Points are sized by the density of all the points in view, so a chosen point keeps its size."""
    span = _value_span(points) if color_by == "value" else None
    base, counts = _aggregate_counted(points, color_by, x_range, y_range, width, height)
    px = spread_px(counts)
    if highlight is None:
        return shade(points, base, color_by, span, px=px)
    chosen = points.frame.iloc[np.asarray(highlight, np.int64)]
    top = aggregate(chosen, color_by, x_range, y_range, width, height)
    return tf.stack(shade(points, base, color_by, span, alpha=45, px=px),
                    shade(points, top, color_by, span, px=px))


# ----------------------------------------------------------------------------- point size
def spread_px(counts: np.ndarray) -> int:
    """How many pixels each point is spread by on every side: the typical spacing between the points
    in view, 1 / sqrt(points per pixel around the typical point), in whole pixels, at most
    ``MAX_SPREAD_PX``. 5,000 images in a few clusters are 3 px dots and a zoom into one of them 5 px
    dots; a million fill their clusters pixel by pixel and stay 1 px, so dense clusters keep their
    outline and their colours' mix. One size for the whole view: sized per pixel, the sparse rim of a
    dense cluster grew a halo of big dots around a core of small ones."""
    density = point_density(counts)
    return 0 if density <= 0 else int(min(MAX_SPREAD_PX, np.floor(1 / np.sqrt(density))))


def point_density(counts: np.ndarray) -> float:
    """Points per pixel around the typical point in view: each point's count in the
    ``DENSITY_WINDOW``-pixel square around it over the square's area, the median over the points (not
    over pixels, so a few outliers do not shrink the clusters' dots); 0 when the view is empty."""
    from scipy.ndimage import uniform_filter

    lit = counts > 0
    if not lit.any():
        return 0.0
    around = uniform_filter(counts.astype(np.float32), DENSITY_WINDOW, mode="constant")[lit]
    order = np.argsort(around, kind="stable")
    cumulative = np.cumsum(counts[lit][order], dtype=np.float64)
    return float(around[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def spread(image: tf.Image, px: int) -> tf.Image:
    """datashader's ``tf.spread(image, px)`` (a circle, composited "over", later pixels on top), pixel
    for pixel, as one shifted copy per pixel of the circle: datashader's own numba kernel compiles for
    2-3 s in every process, which the first picture of a map would wait on."""
    if px <= 0:
        return image
    data = np.asarray(image.data, dtype=np.uint32)
    h, w = data.shape
    ys, xs = np.nonzero((data >> 24) > 0)
    colours = data[ys, xs]
    out = np.zeros((h + 2 * px) * (w + 2 * px), np.uint32)
    d = np.arange(-px, px + 1)
    circle = np.hypot(d[:, None], d[None, :]) <= px + 0.5          # datashader's circle of radius px
    offsets = sorted(zip(*np.nonzero(circle)), reverse=True)      # a pixel's sources in raster order
    for i, j in offsets:
        at = (ys + i) * (w + 2 * px) + xs + j       # one offset moves every lit pixel to a different place
        below = out[at]
        under = below != 0                          # an empty pixel takes the colour as it is
        below[under] = over(colours[under], below[under])
        below[~under] = colours[~under]
        out[at] = below
    return image.copy(data=out.reshape(h + 2 * px, w + 2 * px)[px:px + h, px:px + w].copy())


def _aggregate_counted(points: MapPoints, color_by: ColorBy, x_range: tuple[float, float],
                       y_range: tuple[float, float], width: int, height: int):
    """(the aggregate ``shade`` colours, [height, width] points per pixel) in one pass over the points."""
    if color_by != "value":
        agg = aggregate(points, color_by, x_range, y_range, width, height)
        counts = agg.values.sum(axis=2) if agg.ndim == 3 else agg.values
        return agg, counts
    canvas = _canvas(x_range, y_range, width, height)
    both = canvas.points(points.frame, "x", "y", agg=ds.summary(count=ds.count(), value=ds.mean("value")))
    return both["value"], both["count"].values


def render(points: MapPoints, color_by: ColorBy, x_range: tuple[float, float] | None = None,
           y_range: tuple[float, float] | None = None, width: int = 640, height: int = 520,
           highlight: np.ndarray | None = None) -> hv.RGB:
    """One view of the map as a HoloViews RGB element (what the Map tab's DynamicMap returns)."""
    x0, y0, x1, y1 = points.bounds
    x_range = x_range if x_range and None not in x_range else (x0, x1)
    y_range = y_range if y_range and None not in y_range else (y0, y1)
    image = shaded_view(points, color_by, x_range, y_range, width, height, highlight)
    return hv.RGB(_rgba(image), bounds=(x_range[0], y_range[0], x_range[1], y_range[1]), kdims=["x", "y"])


def _rgba(image: tf.Image) -> np.ndarray:
    """datashader's packed uint32 RGBA -> [H, W, 4] uint8 with the first row at the top (HoloViews)."""
    data = np.asarray(image.data, dtype=np.uint32)
    rgba = data.view(np.uint8).reshape(*data.shape, 4)
    return np.flipud(rgba)


def _value_span(points: MapPoints) -> tuple[float, float]:
    """The colour scale's ends: the finite values' range (a constant unit is shaded, not spread over a
    made-up range; the legend says so); (0, 1) when there is no finite value to colour."""
    values = points.frame["value"].to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi if hi > lo else lo + max(abs(lo), 1.0) * 1e-6)


def map_png(points: MapPoints, color_by: ColorBy = "class", width: int = 800, height: int = 800,
            axis_label: str = "map", title: str = "") -> bytes:
    """The whole map as a PNG (for the CLI and the README): ``map_figure`` saved."""
    out = io.BytesIO()
    map_figure(points, color_by, width, height, axis_label, title).savefig(out, format="png")
    return out.getvalue()


def map_figure(points: MapPoints, color_by: ColorBy = "class", width: int = 800, height: int = 800,
               axis_label: str = "map", title: str = ""):
    """The whole map as a matplotlib Figure: the datashader image, pixel for pixel,
    ``width`` x ``height``, framed by axes in map units (``axis_label`` 1 and 2: "UMAP" gives UMAP 1 and
    UMAP 2) and beside it the colouring's legend: each present category's colour, name and count, or a
    colour bar for values and density. Drawn by matplotlib's Agg canvas (no pyplot: thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    x0, y0, x1, y1 = points.bounds
    image = tf.set_background(shaded_view(points, color_by, (x0, x1), (y0, y1), width, height), "white")
    dpi, left, bottom, top, right = 100, 80, 60, 40 if title else 16, 230
    figure = Figure(figsize=((left + width + right) / dpi, (bottom + height + top) / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    full_w, full_h = left + width + right, bottom + height + top
    axes = figure.add_axes((left / full_w, bottom / full_h, width / full_w, height / full_h))
    axes.imshow(_rgba(image), extent=(x0, x1, y0, y1), origin="upper", interpolation="nearest", aspect="auto")
    axes.set_xlim(x0, x1)
    axes.set_ylim(y0, y1)
    axes.set_xlabel(f"{axis_label} 1")
    axes.set_ylabel(f"{axis_label} 2")
    if title:
        axes.set_title(title)
    if color_by in CATEGORICAL:
        counts = points.frame[color_by].value_counts(sort=False)
        handles = [Patch(facecolor=color, label=f"{name} ({int(counts.get(name, 0)):,})")
                   for name, color in category_colors(points, color_by).items() if counts.get(name, 0)]
        axes.legend(handles=handles, title=LEGEND_TITLES.get(color_by, color_by), loc="upper left",
                    bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False,
                    ncol=1 if len(handles) <= height // 22 else 2, fontsize="small")
    else:
        cmap = ListedColormap(VALUE_CMAP if color_by == "value" else DENSITY_CMAP)
        lo, hi = _value_span(points) if color_by == "value" else (0.0, 1.0)
        bar = figure.add_axes(((left + width + 20) / full_w, bottom / full_h, 16 / full_w, height / full_h))
        scalar = ScalarMappable(norm=Normalize(lo, hi), cmap=cmap)
        colorbar = figure.colorbar(scalar, cax=bar)
        if color_by == "value":
            colorbar.set_label("activation")
        else:
            colorbar.set_ticks([0, 1], labels=["few", "many"])
            colorbar.set_label("images per pixel (histogram-equalized)")
    return figure


LEGEND_TITLES = {"class": "true class", "predicted": "predicted class", "correct": "prediction",
                 "cluster": "cluster"}


# ----------------------------------------------------------------------------- legends
def legend_html(points: MapPoints, color_by: ColorBy, title: str = "") -> str:
    """Swatches with counts for categories; a colour bar with its span for values; a density note."""
    if color_by in CATEGORICAL:
        counts = points.frame[color_by].value_counts(sort=False)
        items = "".join(
            f"<span class='na-map-key' style='margin-right:10px;white-space:nowrap'>"
            f"<span style='display:inline-block;width:10px;height:10px;background:{color};"
            f"margin-right:4px;border-radius:2px'></span>{_escape(name)} ({int(counts.get(name, 0)):,})</span>"
            for name, color in category_colors(points, color_by).items() if counts.get(name, 0))
        return f"<div class='na-map-legend'><b>{_escape(title or color_by)}</b>: {items}</div>"
    cmap = VALUE_CMAP if color_by == "value" else DENSITY_CMAP
    stops = ", ".join(cmap[int(i)] for i in np.linspace(0, len(cmap) - 1, 8))
    if color_by == "value":
        values = points.frame["value"].to_numpy(dtype=np.float64)
        finite = values[np.isfinite(values)]
        if not len(finite):
            return f"<div class='na-map-legend'><b>{_escape(title or color_by)}</b>: no finite value to colour</div>"
        lo, hi = float(finite.min()), float(finite.max())
        if lo == hi:
            return (f"<div class='na-map-legend'><b>{_escape(title or color_by)}</b>: every image {lo:.3g} "
                    "(a constant unit)</div>")
        ends = (f"{lo:.3g}", f"{hi:.3g}")
    else:
        ends = ("few", "many images (histogram-equalized)")
    return (f"<div class='na-map-legend'><b>{_escape(title or color_by)}</b>: {ends[0]} "
            f"<span class='na-colorbar' style='display:inline-block;width:160px;height:10px;vertical-align:middle;"
            f"background:linear-gradient(to right, {stops})'></span> {ends[1]}</div>")


def _escape(text: object) -> str:
    return html.escape(str(text))
