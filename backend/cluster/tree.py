"""Hierarchical clusters of a dataset's representations, stored as flat arrays (DendroMap's tree).

Node ids follow scipy: images are leaves ``0..N-1`` and merge ``i`` is node ``N + i``, the root
``2N - 2``. The leaves are laid out in one order in which every node's images are the contiguous
range ``order[start:start + count]``, so a cluster's images, class counts or mean activation are
one slice away, at any size.

Up to ``exact_threshold`` points the tree is exact Ward (scipy's heights). Above it the points are
split by k-means into micro-clusters of about ``micro_size`` points (at most ``MAX_MICRO``); Ward on
the micro-clusters' centroids weighted by their sizes builds the tree above them and exact Ward on
each micro-cluster's own points the tree below. Memory stays O(N*D + MAX_MICRO^2): no N x N matrix
is ever formed. Heights above the micro-clusters are Ward distances between them, so a micro-
cluster's own root can sit higher than the merge above it (an inversion); the ranges stay exact.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from netatlas.backend.cluster.ward import distances_from_gram, ward_linkage, weighted_ward
from netatlas.backend.errors import NetatlasError

Progress = Callable[[int, int], None]
EXACT_THRESHOLD = 20_000
MICRO_SIZE = 100
MAX_MICRO = 5_000
MAX_CLASS_COUNTS = 1 << 27   # per-node class counts are stored up to this many entries (512 MB)
_SMALL = 1024          # nodes' medoids are found with one masked matrix product up to this many points
_META = b"netatlas.cluster.meta"


@dataclass(frozen=True)
class TreeSettings:
    """How the tree is built: exact Ward up to ``exact_threshold`` points, micro-clusters above."""

    exact_threshold: int = EXACT_THRESHOLD
    micro_size: int = MICRO_SIZE
    seed: int = 0


@dataclass
class ClusterTree:
    """A binary cluster tree over N images as flat per-node arrays (length 2N - 1)."""

    left: np.ndarray            # child ids, -1 for leaves
    right: np.ndarray
    parent: np.ndarray          # -1 for the root
    height: np.ndarray          # Ward merge height (0 for leaves)
    count: np.ndarray           # images under the node
    start: np.ndarray           # the node's images are order[start:start + count]
    medoid: np.ndarray          # image nearest the node's centroid
    labeled: np.ndarray         # images with a label under the node
    correct: np.ndarray         # labeled images predicted right
    class_counts: np.ndarray    # [2N - 1, C] images of each class under the node
    meta: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return (len(self.left) + 1) // 2

    @property
    def root(self) -> int:
        return len(self.left) - 1

    @cached_property
    def order(self) -> np.ndarray:
        """Image indices in leaf order (each node's images are one contiguous range of it)."""
        return _leaf_order(self.start, self.n_images)

    @cached_property
    def accuracy(self) -> np.ndarray:
        """Fraction of a node's labeled images predicted right (NaN without labels or predictions)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.labeled > 0, self.correct / np.maximum(self.labeled, 1), np.nan)

    def images(self, node: int) -> np.ndarray:
        return self.order[self.start[node]:self.start[node] + self.count[node]]

    def children(self, node: int) -> tuple[int, ...]:
        return () if self.left[node] < 0 else (int(self.left[node]), int(self.right[node]))

    def ancestors(self, node: int) -> list[int]:
        """Root first, ``node`` last."""
        path = [int(node)]
        while self.parent[path[-1]] >= 0:
            path.append(int(self.parent[path[-1]]))
        return path[::-1]

    def contains(self, node: int, images: np.ndarray) -> np.ndarray:
        """Which of ``images`` lie under ``node`` (one range test per image)."""
        pos = self.start[np.asarray(images, dtype=np.int64)]
        return (pos >= self.start[node]) & (pos < self.start[node] + self.count[node])

    def frontier(self, node: int, k: int) -> list[int]:
        """The k clusters under ``node`` that a cut at its k-1 highest merges leaves, in leaf order."""
        return breadth_first_frontier(int(node), k, self.children, self.height)

    def classes_of(self, node: int, labels: np.ndarray, n_classes: int) -> np.ndarray:
        """Images of each class under ``node``: stored, or counted over its range when C is huge."""
        if self.class_counts.shape[1] == n_classes:
            return self.class_counts[node]
        found = labels[self.images(node)]
        return np.bincount(found[found >= 0], minlength=n_classes)

    def linkage(self) -> np.ndarray:
        """scipy's linkage matrix of this tree (for cophenet, dendrogram, fcluster)."""
        n = self.n_images
        internal = np.arange(n, 2 * n - 1)
        return np.column_stack([self.left[internal], self.right[internal], self.height[internal],
                                self.count[internal]]).astype(np.float64)

    def to_table(self) -> pa.Table:
        """One row per node, the counts per class as a fixed-size list, the settings as metadata."""
        columns = {name: pa.array(getattr(self, name)) for name in
                   ("left", "right", "parent", "height", "count", "start", "medoid", "labeled", "correct")}
        counts = np.ascontiguousarray(self.class_counts, dtype=np.int32)
        if counts.shape[1]:
            columns["class_counts"] = pa.FixedSizeListArray.from_arrays(pa.array(counts.reshape(-1)),
                                                                        counts.shape[1])
        else:                                        # unlabeled, or too many classes to store
            columns["class_counts"] = pa.array(np.zeros(len(counts), dtype=np.int32))
        table = pa.table(columns)
        return table.replace_schema_metadata({_META: json.dumps(self.meta).encode()})

    @classmethod
    def from_table(cls, table: pa.Table) -> "ClusterTree":
        arrays = {name: table.column(name).to_numpy() for name in
                  ("left", "right", "parent", "height", "count", "start", "medoid", "labeled", "correct")}
        column = table.column("class_counts").combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            counts = column.flatten().to_numpy().reshape(len(table), column.type.list_size)
        else:
            counts = np.zeros((len(table), 0), dtype=np.int32)
        meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
        return cls(**arrays, class_counts=counts, meta=meta)


def breadth_first_frontier(root: int, k: int, children: Callable[[int], tuple[int, ...]],
                           height: Callable[[int], float] | Sequence[float]) -> list[int]:
    """The k clusters left after undoing the k-1 highest merges, in left-to-right tree order.

    Repeatedly replaces the frontier node with the greatest merge height by its two children
    (ties: the smaller node id first), until there are k nodes or only leaves. For a tree with
    monotone heights this is the same partition as cutting the dendrogram into k clusters.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    height_of = height if callable(height) else height.__getitem__
    heap: list[tuple[float, int]] = []
    leaves: set[int] = set()

    def add(node: int) -> None:
        if children(node):
            heapq.heappush(heap, (-float(height_of(node)), node))
        else:
            leaves.add(node)

    add(root)
    while heap and len(heap) + len(leaves) < k:
        _, node = heapq.heappop(heap)
        for child in children(node):
            add(child)
    frontier = leaves | {node for _, node in heap}
    return _in_tree_order(root, frontier, children)


def _in_tree_order(root: int, frontier: set[int], children: Callable[[int], tuple[int, ...]]) -> list[int]:
    """Frontier nodes in the order a left-first depth-first walk from ``root`` meets them."""
    ordered: list[int] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if node in frontier:
            ordered.append(node)
        else:
            stack.extend(reversed(children(node)))
    return ordered


def build_cluster_tree(x: np.ndarray, labels: np.ndarray | None = None, predictions: np.ndarray | None = None,
                       n_classes: int | None = None, settings: TreeSettings = TreeSettings(),
                       device: str = "cpu", progress: Progress | None = None) -> ClusterTree:
    """The cluster tree of the rows of ``x`` [N, D] (see the module docstring for the method)."""
    x = np.asarray(x)
    n = len(x) if x.ndim else 0
    if n < 1 or x.ndim != 2:
        raise NetatlasError(f"clustering needs a non-empty [N, D] array of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise NetatlasError("the representation has NaN or infinite values; choose another layer")
    exact_threshold, micro_size, seed = settings.exact_threshold, settings.micro_size, settings.seed
    began = time.perf_counter()
    if n <= exact_threshold:
        stages = StagedProgress(progress, (n - 1, n - 1))     # the distance blocks, then the medoids
        z = ward_linkage(x, stages.stage(0))
        medoid = np.concatenate([np.arange(n), _medoids(x, z, stages.stage(1))])
        stages.finish()
        meta = {"method": "exact-ward", "micro_clusters": 0}
    else:
        z, medoid, micro = _scaled_linkage(x, micro_size, seed, device, progress)
        meta = {"method": "kmeans+weighted-ward", "micro_clusters": micro}
    meta.update(n_images=n, dims=int(x.shape[1]), exact_threshold=exact_threshold,
                micro_size=micro_size, seed=seed, seconds=round(time.perf_counter() - began, 3))
    return tree_from_linkage(z, medoid, labels, predictions, n_classes, meta)


class StagedProgress:
    """Stages of one computation reported through one ``(done, total)`` callback as one count that only
    goes forward: stage ``i`` is worth ``sizes[i]`` steps of the total, and its own ``(done, total)``
    (each stage counts from 0 to its own total) is mapped onto its share. Before, the DendroMap's bar
    ran to 41% on the distances, back to 0% on the medoids, then jumped to 100%."""

    def __init__(self, progress: Progress | None, sizes: Sequence[int]) -> None:
        self.progress, self.sizes = progress, [max(0, int(s)) for s in sizes]
        self.total, self.shown = sum(self.sizes), -1
        self._report(0)

    def stage(self, index: int) -> Progress | None:
        """The callback for stage ``index`` (None when nobody listens)."""
        if self.progress is None:
            return None
        start, size = sum(self.sizes[:index]), self.sizes[index]
        return lambda done, total: self._report(start + (size * min(done, total) // total if total > 0 else size))

    def finish(self) -> None:
        self._report(self.total)

    def _report(self, value: int) -> None:
        if self.progress is not None and self.total > 0 and value > self.shown:
            self.shown = value
            self.progress(value, self.total)


def tree_from_linkage(z: np.ndarray, medoid: np.ndarray, labels: np.ndarray | None = None,
                      predictions: np.ndarray | None = None, n_classes: int | None = None,
                      meta: dict | None = None) -> ClusterTree:
    """Flat per-node arrays (ranges, parents, class counts, accuracy) from a scipy linkage matrix."""
    n = len(z) + 1
    left, right, height, count, start = _tree_arrays(z)
    parent = np.full(2 * n - 1, -1, dtype=np.int64)
    parent[left[n:]] = np.arange(n, 2 * n - 1)
    parent[right[n:]] = np.arange(n, 2 * n - 1)
    order = _leaf_order(start, n)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)
    labeled = labels >= 0
    scored = labeled if predictions is not None else np.zeros(n, dtype=bool)  # no predictions: no accuracy
    predictions = np.full(n, -1) if predictions is None else np.asarray(predictions)
    classes = n_classes if n_classes is not None else int(labels.max()) + 1 if labeled.any() else 0
    hits = _range_sums(np.column_stack([scored, scored & (predictions == labels)])[order], start, count)
    if (2 * n - 1) * classes > MAX_CLASS_COUNTS:
        classes = 0                              # too many to store; ClusterTree.classes_of counts a range
    per_class = np.zeros((2 * n - 1, classes), dtype=np.int32)
    ordered = labels[order]
    for c0 in range(0, classes, 16):             # 16 classes at a time bounds the prefix sums' memory
        block = ordered[:, None] == np.arange(c0, min(c0 + 16, classes))[None, :]
        per_class[:, c0:c0 + block.shape[1]] = _range_sums(block, start, count)
    return ClusterTree(left, right, parent, height, count, start, np.asarray(medoid, dtype=np.int64),
                       hits[:, 0], hits[:, 1], per_class, meta or {})


def _tree_arrays(z: np.ndarray) -> tuple[np.ndarray, ...]:
    """left, right, height, count and leaf-order start of every node of a linkage matrix."""
    n = len(z) + 1
    left = np.full(2 * n - 1, -1, dtype=np.int64)
    right = np.full(2 * n - 1, -1, dtype=np.int64)
    left[n:], right[n:] = z[:, 0].astype(np.int64), z[:, 1].astype(np.int64)
    height = np.zeros(2 * n - 1)
    height[n:] = z[:, 2]
    count = np.ones(2 * n - 1, dtype=np.int64)
    count[n:] = z[:, 3].astype(np.int64)
    start = [0] * (2 * n - 1)
    lefts, rights, counts = left.tolist(), right.tolist(), count.tolist()
    for node in range(2 * n - 2, n - 1, -1):     # parents are numbered after their children
        s, a = start[node], lefts[node]
        start[a] = s
        start[rights[node]] = s + counts[a]
    return left, right, height, count, np.asarray(start, dtype=np.int64)


def _leaf_order(start: np.ndarray, n: int) -> np.ndarray:
    """Image indices in leaf order, from the leaves' positions (``start[:n]``)."""
    order = np.empty(n, dtype=np.int64)
    order[start[:n]] = np.arange(n)
    return order


def _range_sums(values_in_order: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per node, the column sums of ``values_in_order[start:start + count]`` (prefix sums)."""
    prefix = np.zeros((len(values_in_order) + 1, values_in_order.shape[1]), dtype=np.int64)
    np.cumsum(values_in_order, axis=0, out=prefix[1:])
    return prefix[start + count] - prefix[start]


def _medoids(x: np.ndarray, z: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """For each merge of ``z`` (a tree over the rows of ``x``), the row nearest the merge's centroid."""
    n = len(x)
    if n < 2:
        return np.empty(0, dtype=np.int64)
    _, _, _, count, start = _tree_arrays(z)
    order = _leaf_order(start, n)
    points = np.asarray(x, dtype=np.float64)[order]
    points -= points.mean(axis=0)
    prefix = np.zeros((n + 1, points.shape[1]))
    np.cumsum(points, axis=0, out=prefix[1:])
    s, c = start[n:], count[n:]
    centroids = (prefix[s + c] - prefix[s]) / c[:, None]
    return order[_nearest_in_range(points, centroids, s, c, progress)]


def _small_tree(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Ward linkage of a few points and each merge's medoid, both from one Gram matrix.

    The medoid minimises |p|^2 - 2 p.c over the node's members p, and p.c is the mean of the Gram
    row over the node's range, so prefix sums of the Gram matrix in leaf order give every node's
    scores at O(n^2) in all instead of O(n^2 D).
    """
    n = len(points)
    p = points - points.mean(axis=0)
    gram = p @ p.T
    from scipy.cluster.hierarchy import linkage   # here, not at the top: cached runs never cluster

    z = linkage(distances_from_gram(gram), method="ward")
    _, _, _, count, start = _tree_arrays(z)
    order = _leaf_order(start, n)
    prefix = np.zeros((n, n + 1))
    np.cumsum(gram[np.ix_(order, order)], axis=1, out=prefix[:, 1:])
    s, c = start[n:], count[n:]
    score = np.diagonal(gram)[order][:, None] - 2.0 * (prefix[:, s + c] - prefix[:, s]) / c
    pos = np.arange(n)[:, None]
    score[(pos < s) | (pos >= s + c)] = np.inf
    return z, order[score.argmin(axis=0)]


def _nearest_in_range(points: np.ndarray, centroids: np.ndarray, starts: np.ndarray,
                      counts: np.ndarray, progress: Progress | None = None) -> np.ndarray:
    """Position of the point nearest each centroid among ``points[start:start + count]``."""
    if len(points) <= _SMALL:
        sq = (centroids * centroids).sum(1)[:, None] - 2.0 * centroids @ points.T \
            + (points * points).sum(1)[None, :]
        pos = np.arange(len(points))
        sq[(pos[None, :] < starts[:, None]) | (pos[None, :] >= (starts + counts)[:, None])] = np.inf
        return sq.argmin(1)
    out = np.empty(len(centroids), dtype=np.int64)
    for i, (s, c) in enumerate(zip(starts.tolist(), counts.tolist())):
        block = points[s:s + c]
        out[i] = s + int(((block - centroids[i]) ** 2).sum(1).argmin())
        if progress and (i % 1024 == 0 or i == len(centroids) - 1):
            progress(i + 1, len(centroids))
    return out


def _scaled_linkage(x: np.ndarray, micro_size: int, seed: int, device: str,
                    progress: Progress | None) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means micro-clusters, exact Ward inside each, weighted Ward on their centroids above."""
    from netatlas.backend.cluster.kmeans import micro_clusters  # torch: imported only at scale

    n = len(x)
    m = int(np.clip(round(n / micro_size), 2, MAX_MICRO))
    labels = micro_clusters(x, m, seed=seed, device=device)
    m = int(labels.max()) + 1
    stages = StagedProgress(progress, (m, 1))                 # the micro-clusters' trees, then the top
    progress = stages.stage(0)
    members_sorted = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[members_sorted], np.arange(m + 1))
    rows: list[np.ndarray] = []
    medoid = np.empty(2 * n - 1, dtype=np.int64)
    medoid[:n] = np.arange(n)
    roots = np.empty(m, dtype=np.int64)
    centroids = np.empty((m, x.shape[1]))
    sizes = np.diff(bounds)
    next_id = n
    for c in range(m):
        members = members_sorted[bounds[c]:bounds[c + 1]]
        points = np.asarray(x[members], dtype=np.float64)
        centroids[c] = points.mean(axis=0)
        if len(members) == 1:
            roots[c] = members[0]
            continue
        if len(members) <= _SMALL:
            local, local_medoids = _small_tree(points)
        else:
            local = ward_linkage(points)
            local_medoids = _medoids(points, local)
        ids = np.concatenate([members, next_id + np.arange(len(members) - 1)])
        rows.append(np.column_stack([ids[local[:, 0].astype(np.int64)], ids[local[:, 1].astype(np.int64)],
                                     local[:, 2], local[:, 3]]))
        medoid[ids[len(members):]] = members[local_medoids]
        next_id += len(members) - 1
        roots[c] = next_id - 1
        if progress and (c % 256 == 0 or c == m - 1):
            progress(c + 1, m)
    top = weighted_ward(centroids, sizes)
    ids = np.concatenate([roots, next_id + np.arange(m - 1)])
    rows.append(np.column_stack([ids[top[:, 0].astype(np.int64)], ids[top[:, 1].astype(np.int64)],
                                 top[:, 2], top[:, 3]]))
    medoid[ids[m:]] = _top_medoids(top, centroids, sizes, medoid[roots], x)
    stages.finish()
    return np.concatenate(rows), medoid, m


def _top_medoids(top: np.ndarray, centroids: np.ndarray, sizes: np.ndarray, micro_medoids: np.ndarray,
                 x: np.ndarray) -> np.ndarray:
    """Medoids above the micro-clusters: of the micro-clusters' medoids under a node, the one nearest
    the node's centroid (scanning every image of a million-image node would cost O(N) per node)."""
    m = len(sizes)
    leaf_counts = np.ones(2 * m - 1)
    for i, (a, b) in enumerate(top[:, :2].astype(np.int64).tolist()):
        leaf_counts[m + i] = leaf_counts[a] + leaf_counts[b]
    _, _, _, count, start = _tree_arrays(np.column_stack([top[:, :3], leaf_counts[m:]]))
    order = _leaf_order(start, m)
    weighted = np.zeros((m + 1, centroids.shape[1]))
    np.cumsum(centroids[order] * sizes[order, None], axis=0, out=weighted[1:])
    mass = np.concatenate([[0], np.cumsum(sizes[order])])
    s, c = start[m:], count[m:]
    node_centroids = (weighted[s + c] - weighted[s]) / (mass[s + c] - mass[s])[:, None]
    candidates = np.asarray(x[micro_medoids[order]], dtype=np.float64)
    return micro_medoids[order[_nearest_in_range(candidates, node_centroids, s, c)]]
