"""One DendroMap frame: the k clusters under a node as treemap tiles of representative thumbnails.

Every number a tile shows is a range lookup on the tree's flat arrays or a prefix sum over its leaf
order, so a frame costs O(cells + k log k) whatever the dataset's size.

Without predictions (a backbone with no classifier head) a frame says nothing about them: no accuracy
colouring or label, no "predicted" in a tooltip, no misclassified outline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from netatlas.backend.cluster.tree import ClusterTree
from netatlas.viz.treemap import ClusterTile, color_scale, treemap_html, treemap_layout

ColorBy = Literal["accuracy", "class share", "neuron"]


@dataclass
class MapData:
    """Per-image facts a frame needs, with prefix sums over the tree's leaf order. ``predictions`` is
    None when the model has none (no classifier head for these classes); ``wrong`` is then None too."""

    tree: ClusterTree
    labels: np.ndarray
    predictions: np.ndarray | None
    ids: list[str]
    class_names: list[str]
    hits: np.ndarray | None = None          # [N] bool: images matching the filter or selection
    _hit_positions: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.wrong: np.ndarray | None = (None if self.predictions is None
                                         else (self.labels >= 0) & (self.predictions != self.labels))
        self.set_hits(self.hits)

    @property
    def has_predictions(self) -> bool:
        return self.predictions is not None

    def set_hits(self, hits: np.ndarray | None) -> None:
        """Mark the images a filter or selection matched (None: no filter)."""
        self.hits = hits
        positions = np.flatnonzero(hits[self.tree.order]) if hits is not None else np.empty(0, np.int64)
        self._hit_positions = positions

    def hits_in(self, node: int) -> np.ndarray:
        """The matching images under ``node``, in leaf order."""
        start = self.tree.start[node]
        lo, hi = np.searchsorted(self._hit_positions, [start, start + self.tree.count[node]])
        return self.tree.order[self._hit_positions[lo:hi]]

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else "?"


def node_means(tree: ClusterTree, values: np.ndarray) -> Callable[[int], float]:
    """Mean of a per-image value over any node, by prefix sums over the leaf order (O(1) a node)."""
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64)[tree.order])])

    def mean(node: int) -> float:
        s, c = tree.start[node], tree.count[node]
        return float((prefix[s + c] - prefix[s]) / c)
    return mean


def node_colors(data: MapData, nodes: list[int], color_by: ColorBy, class_index: int = 0,
                unit_mean: Callable[[int], float] | None = None,
                unit_range: tuple[float, float] | None = None) -> tuple[np.ndarray, list[str]]:
    """(values, CSS colours) of ``nodes`` for the chosen colouring (accuracy needs predictions)."""
    tree = data.tree
    if color_by == "accuracy":
        if not data.has_predictions:
            raise ValueError("colouring by accuracy needs predictions, and this model has none")
        values = np.array([tree.accuracy[n] for n in nodes])
        return values, color_scale(values, "accuracy")
    if color_by == "class share":
        values = np.array([tree.classes_of(n, data.labels, len(data.class_names))[class_index] / tree.count[n]
                           if class_index < len(data.class_names) else np.nan for n in nodes])
        return values, color_scale(values, "share")
    if unit_mean is None:
        values = np.full(len(nodes), np.nan)
        return values, color_scale(values, "activation")
    values = np.array([unit_mean(n) for n in nodes])
    lo, hi = unit_range or (None, None)
    return values, color_scale(values, "activation", lo, hi)


def representatives(tree: ClusterTree, node: int, cells: int, hits: np.ndarray | None = None) -> list[int]:
    """Up to ``cells`` images for a tile: matches first (when filtering), then the node's medoid and
    the medoids of its largest sub-clusters (a cut of the node into ``cells`` clusters)."""
    chosen: list[int] = []
    if hits is not None and len(hits):
        chosen = [int(i) for i in hits[:cells]]
    seen = set(chosen)
    for sub in [node] + tree.frontier(node, cells):
        if len(chosen) >= cells:
            break
        image = int(tree.medoid[sub])
        if image not in seen:
            seen.add(image)
            chosen.append(image)
    return chosen


def dendromap_frame(data: MapData, node: int, k: int, cols: int, rows: int, cell_px: int,
                    image_src: Callable[[int], str], color_by: ColorBy | None = None, class_index: int = 0,
                    unit_mean: Callable[[int], float] | None = None,
                    unit_range: tuple[float, float] | None = None,
                    misclassified: Literal["outline", "fade", "none"] = "outline",
                    selected: int | None = None) -> tuple[str, list[int]]:
    """(HTML, the clusters shown) for ``node`` expanded breadth-first into ``k`` clusters. ``color_by``
    defaults to accuracy, or a class's share when there are no predictions."""
    tree = data.tree
    if color_by is None:
        color_by = "accuracy" if data.has_predictions else "class share"
    if not data.has_predictions:
        misclassified = "none"                       # nothing is misclassified without predictions
    clusters = tree.frontier(node, k)
    rects = treemap_layout(node, clusters, tree.children, tree.count, cols, rows)
    values, colors = node_colors(data, clusters, color_by, class_index, unit_mean, unit_range)
    tiles = []
    for cluster, value, color in zip(clusters, values, colors):
        rect = rects[cluster]
        hits = data.hits_in(cluster) if data.hits is not None else None
        images = representatives(tree, cluster, rect.w * rect.h, hits)
        tiles.append(ClusterTile(
            node=cluster, rect=rect, label=_tile_label(data, cluster, None if hits is None else len(hits)),
            color=color, title=_tile_title(data, cluster, color_by, value),
            images=images, image_titles=[image_title(data, i) for i in images],
            wrong=[data.wrong is not None and bool(data.wrong[i]) for i in images],
            highlight=[hits is not None and bool(data.hits[i]) for i in images],
            dim=hits is not None and not len(hits)))
    return treemap_html(tiles, cell_px, cols, rows, image_src, misclassified, selected), clusters


def _tile_label(data: MapData, node: int, hits: int | None) -> str:
    tree = data.tree
    acc = tree.accuracy[node] if data.has_predictions else np.nan
    count = int(tree.count[node])
    text = f"{count:,} image{'s' if count != 1 else ''}" + ("" if np.isnan(acc) else f" · {acc:.0%} acc")
    return text + (f" · {hits:,} match" + ("es" if hits != 1 else "") if hits is not None else "")


def _tile_title(data: MapData, node: int, color_by: str, value: float) -> str:
    tree = data.tree
    counts = tree.classes_of(node, data.labels, len(data.class_names))
    top = np.argsort(-counts, kind="stable")[:3]
    classes = ", ".join(f"{data.class_name(int(c))} {counts[c]:,}" for c in top if counts[c])
    return (f"cluster {node}: {tree.count[node]:,} images, merge height {tree.height[node]:.4g}; "
            f"{color_by} {_defined(value, color_by)}; classes: {classes or 'unlabeled'} (click to zoom in)")


def _defined(value: float, color_by: str) -> str:
    """A tile's colour value in words: a number, or why there is none."""
    if np.isfinite(value):
        return f"{value:.3g}"
    return "none (no labelled image here)" if color_by == "accuracy" else "none (no value for these images)"


IMAGE_HINT = "click to zoom in, the i in the corner for details"


def image_title(data: MapData, index: int) -> str:
    """Tooltip of a thumbnail: id, label and (when the model predicts classes) prediction."""
    label = int(data.labels[index])
    if not data.has_predictions:
        return f"{data.ids[index]} · label {data.class_name(label)} · {IMAGE_HINT}"
    pred = int(data.predictions[index])
    return (f"{data.ids[index]} · label {data.class_name(label)} · predicted {data.class_name(pred)}"
            f"{' (wrong)' if data.wrong[index] else ''} · {IMAGE_HINT}")
