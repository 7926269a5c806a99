"""DendroMap-style treemap of hierarchical image clusters (after Bertucci et al. 2022).

A cut through a binary cluster tree (a "frontier") is laid out as rectangles of whole thumbnail
cells: each split goes along the longer side, in proportion to image counts, so a cluster's area
tracks its size and every cell holds exactly one thumbnail. The map is one HTML string (a style
block and absolutely positioned divs), never one widget per image.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Collection, Literal, NamedTuple, Sequence, TypeVar

import numpy as np
from matplotlib import colormaps

from netatlas.backend.cluster.tree import breadth_first_frontier  # noqa: F401 - the map's cut

ColorKind = Literal["accuracy", "share", "activation"]
Misclassified = Literal["outline", "fade", "none"]

NAN_COLOR = "#bbbbbb"
WRONG_COLOR = "#d62728"
HIT_COLOR = "#ff9f1c"

# kind -> (colormap, the part of it used). Blues starts at 0.15 so a zero share is still visible.
_COLORMAPS: dict[str, tuple[str, float, float]] = {
    "accuracy": ("RdYlGn", 0.0, 1.0),
    "share": ("Blues", 0.15, 1.0),
    "activation": ("viridis", 0.0, 1.0),
}

T = TypeVar("T")


class Rect(NamedTuple):
    """A rectangle in thumbnail cells; ``w == 0`` or ``h == 0`` means "not shown"."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


def _lookup(table: Callable[[int], T] | Sequence[T]) -> Callable[[int], T]:
    """Accept either a function of the node id or anything indexable by it (list, numpy array)."""
    return table if callable(table) else table.__getitem__


# --------------------------------------------------------------------------------------- layout

def _split(rect: Rect, left_count: int, right_count: int) -> tuple[Rect, Rect]:
    """Split ``rect`` along its longer side, the left child's share rounded to whole cells.

    Both parts keep at least one cell while the side has two; a 1x1 rect goes whole to the
    larger child (ties to the left) and the other gets a zero-width rect.
    """
    x, y, w, h = rect
    side = max(w, h)
    total = left_count + right_count
    if side == 1:
        if left_count >= right_count:
            return rect, Rect(x, y, 0, h)
        return Rect(x, y, 0, h), rect
    if total > 0:  # round half up, in integers so the result is exact
        a = (2 * side * left_count + total) // (2 * total)
    else:
        a = side // 2
    a = min(max(a, 1), side - 1)
    if w >= h:
        return Rect(x, y, a, h), Rect(x + a, y, w - a, h)
    return Rect(x, y, w, a), Rect(x, y + a, w, h - a)


def treemap_layout(root: int, clusters: Collection[int], children: Callable[[int], tuple[int, ...]],
                   count: Callable[[int], int] | Sequence[int], cols: int, rows: int) -> dict[int, Rect]:
    """Rect (in cells) of every frontier node in ``clusters``; together they tile cols x rows.

    ``children(node)`` is ``(left, right)`` or ``()`` for a leaf. Frontier nodes that lose every
    cell on a tiny canvas get a zero-size rect so the caller can say they are not shown.
    """
    if cols < 1 or rows < 1:
        raise ValueError(f"the treemap needs at least one cell, got {cols}x{rows}")
    frontier = set(clusters)
    count_of = _lookup(count)
    rects: dict[int, Rect] = {}
    stack = [(root, Rect(0, 0, cols, rows))]
    while stack:
        node, rect = stack.pop()
        if node in frontier:
            rects[node] = rect
            continue
        kids = children(node)
        if not kids:
            raise ValueError(f"not a frontier: leaf {node} lies below none of the clusters")
        left, right = kids
        if rect.w == 0 or rect.h == 0:
            parts = (rect, rect)
        else:
            parts = _split(rect, int(count_of(left)), int(count_of(right)))
        stack.append((right, parts[1]))
        stack.append((left, parts[0]))
    if len(rects) != len(frontier):
        missing = sorted(frontier - rects.keys())[:5]
        raise ValueError(f"not a frontier: clusters {missing} are not on a path from root {root} "
                         "(outside the tree or below another cluster)")
    return rects


# --------------------------------------------------------------------------------------- colour

def _hex(rgba: np.ndarray) -> list[str]:
    rgb = np.round(np.asarray(rgba)[:, :3] * 255).astype(int)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb]


def color_scale(values: np.ndarray, kind: ColorKind, vmin: float | None = None,
                vmax: float | None = None) -> list[str]:
    """CSS hex colour per value: accuracy and share on [0, 1], activation on [vmin, vmax].

    Activation bounds default to the values' own finite range (a bound that is None or not finite
    falls back to it); a constant array maps to the middle of viridis. NaN and infinite values are
    neutral grey, so "no data" (or no number) never reads as a score.
    """
    if kind not in _COLORMAPS:
        raise ValueError(f"unknown colour kind {kind!r}; use one of {sorted(_COLORMAPS)}")
    values = np.asarray(values, dtype=float).ravel()
    ok = np.isfinite(values)
    finite = values[ok]
    if kind == "activation":
        given = lambda bound: bound is not None and bool(np.isfinite(bound))  # noqa: E731
        lo = float(vmin) if given(vmin) else (float(finite.min()) if finite.size else 0.0)
        hi = float(vmax) if given(vmax) else (float(finite.max()) if finite.size else 1.0)
    else:
        lo, hi = 0.0, 1.0
    t = np.full_like(values, 0.5)
    if hi > lo:
        t[ok] = np.clip((values[ok] - lo) / (hi - lo), 0.0, 1.0)
    name, start, stop = _COLORMAPS[kind]
    colors = _hex(colormaps[name](start + t * (stop - start)))
    return [c if good else NAN_COLOR for good, c in zip(ok, colors)]


def legend_html(kind: ColorKind, vmin: float | None = None, vmax: float | None = None,
                title: str = "") -> str:
    """A small gradient bar with end labels, from the same colours the tiles use."""
    if kind == "activation":
        lo = 0.0 if vmin is None else float(vmin)
        hi = 1.0 if vmax is None else float(vmax)
        labels = (f"{lo:.3g}", f"{hi:.3g}")
    else:
        lo, hi = 0.0, 1.0
        labels = ("0%", "100%")
    stops = ",".join(color_scale(np.linspace(lo, hi, 8), kind, lo, hi))
    return (
        '<div class="na-legend" style="display:inline-flex;align-items:center;gap:4px;'
        'font:11px/1.2 sans-serif;color:#333">'
        f"<span>{html.escape(title)}</span><span>{html.escape(labels[0])}</span>"
        f'<span style="display:inline-block;width:120px;height:10px;border-radius:2px;'
        f'background:linear-gradient(to right,{stops})"></span>'
        f"<span>{html.escape(labels[1])}</span></div>")


# ----------------------------------------------------------------------------------------- HTML

@dataclass
class ClusterTile:
    """One cluster on the map: where it goes, how it is labelled, which thumbnails it shows."""

    node: int
    rect: Rect
    label: str
    color: str
    title: str
    images: Sequence[int]
    image_titles: Sequence[str]
    wrong: Sequence[bool]
    highlight: Sequence[bool]
    dim: bool = False

    def __post_init__(self) -> None:
        # A short flag list would silently mark the wrong thumbnails, so refuse it here.
        n = len(self.images)
        if not len(self.image_titles) == len(self.wrong) == len(self.highlight) == n:
            raise ValueError(f"tile {self.node}: images, image_titles, wrong and highlight "
                             "must have the same length")


HEAD_PX = 15   # a tile's header bar; its thumbnails share the rest of the tile's height

# A tile is a header bar above a grid of its thumbnails (a label drawn over the images was hard to
# read on a bright digit). The grid keeps a column per cell and shrinks rows to fit under the bar:
# thumbnails keep their aspect (contain, on black), so nothing is cropped and every cell shows one.
TREEMAP_CSS = f"""<style>
.na-treemap{{position:relative;overflow:hidden;background:#f2f2f2;font:10px/1.3 sans-serif}}
.na-tile{{position:absolute;box-sizing:border-box;overflow:hidden;display:flex;flex-direction:column;
 background:#e6e6e6;cursor:zoom-in}}
.na-tile::after{{content:"";position:absolute;inset:0;pointer-events:none;z-index:3;
 box-shadow:inset 0 0 0 3px var(--c)}}
.na-tile:hover{{filter:brightness(1.1)}}
.na-tile.na-selected::after{{box-shadow:inset 0 0 0 3px #111,inset 0 0 0 6px var(--c)}}
.na-tile.na-dim{{opacity:.35}}
.na-head{{flex:none;height:{HEAD_PX}px;line-height:{HEAD_PX}px;padding:0 6px;color:#fff;background:#2b2b2b;
 font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}}
.na-body{{flex:1;min-height:0;display:grid;grid-template-columns:repeat(var(--w),var(--s));
 grid-template-rows:repeat(var(--h),minmax(0,1fr))}}
.na-img{{display:block;width:100%;height:100%;min-height:0;object-fit:contain;image-rendering:pixelated;
 background:#000}}
.na-mis-outline .na-wrong{{outline:2px solid {WRONG_COLOR};outline-offset:-2px}}
.na-mis-fade .na-wrong{{opacity:.25}}
.na-has-highlight .na-img{{opacity:.35}}
.na-has-highlight .na-img.na-hit{{opacity:1;position:relative;z-index:1;
 box-shadow:0 0 0 2px {HIT_COLOR}}}
.na-info{{position:absolute;z-index:5;display:none;width:16px;height:16px;padding:0;border:1px solid #fff;
 border-radius:50%;background:#1f6feb;color:#fff;font:bold 11px/14px serif;text-align:center;cursor:pointer;
 box-shadow:0 1px 3px rgba(0,0,0,.5)}}
.na-info:hover{{background:#0b4fc2;transform:scale(1.2)}}
</style>"""


def _image_html(index: int, src: str, title: str, wrong: bool, hit: bool) -> str:
    # Size comes from the stylesheet (var(--s)), not width/height attributes: at ten thousand
    # thumbnails those attributes alone would add a quarter megabyte to the page.
    classes = "na-img" + (" na-wrong" if wrong else "") + (" na-hit" if hit else "")
    return (f'<img class="{classes}" data-image={int(index)} src="{html.escape(src)}" '
            f'title="{html.escape(title)}" loading=lazy>')


def _tile_html(tile: ClusterTile, cell_px: int, image_src: Callable[[int], str], selected: bool) -> str:
    x, y, w, h = tile.rect
    shown = w * h
    images = "".join(
        _image_html(i, image_src(i), t, bool(bad), bool(hit))
        for i, t, bad, hit in zip(tile.images[:shown], tile.image_titles[:shown],
                                  tile.wrong[:shown], tile.highlight[:shown]))
    classes = "na-tile" + (" na-dim" if tile.dim else "") + (" na-selected" if selected else "")
    style = (f"left:{x * cell_px}px;top:{y * cell_px}px;width:{w * cell_px}px;"
             f"height:{h * cell_px}px;--w:{w};--h:{h};--c:{html.escape(tile.color)}")
    return (f'<div class="{classes}" data-node={int(tile.node)} style="{style}" '
            f'title="{html.escape(tile.title)}"><div class="na-head">{html.escape(tile.label)}</div>'
            f'<div class="na-body">{images}</div></div>')


def treemap_html(tiles: Sequence[ClusterTile], cell_px: int, cols: int, rows: int,
                 image_src: Callable[[int], str], misclassified: Misclassified = "outline",
                 selected: int | None = None) -> str:
    """The whole map as one self-contained HTML string; zero-size tiles are left out.

    ``image_src(index)`` gives each thumbnail's URL or data URI; only the first w*h images of a
    tile are drawn. When any drawn image is highlighted, the others fade so the matches stand out.
    """
    if misclassified not in ("outline", "fade", "none"):
        raise ValueError(f"misclassified must be 'outline', 'fade' or 'none', got {misclassified!r}")
    visible = [t for t in tiles if t.rect.w > 0 and t.rect.h > 0]
    any_hit = any(any(t.highlight[:t.rect.area]) for t in visible)
    classes = f"na-treemap na-mis-{misclassified}" + (" na-has-highlight" if any_hit else "")
    body = "".join(_tile_html(t, cell_px, image_src, t.node == selected) for t in visible)
    return (f'{TREEMAP_CSS}<div class="{classes}" style="width:{cols * cell_px}px;'
            f'height:{rows * cell_px}px;--s:{cell_px}px">{body}</div>')
