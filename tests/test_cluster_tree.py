"""Cluster trees (exact and scaled Ward), their flat arrays, and the statistics shown beside them.

Every result is checked against an independent computation: scipy's Ward linkage and ``fcluster``
on the same vectors, leaf sets read off scipy's own ``to_tree``, bincounts and confusion matrices
over a node's members, brute-force distances, and a direct forward pass of the small model.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.cluster.hierarchy import fcluster, is_valid_linkage, linkage, to_tree
from scipy.spatial.distance import pdist
from sklearn.metrics import confusion_matrix

import netatlas.backend.cluster.tree as cluster_tree_module
import netatlas.backend.workspace as workspace_module
from netatlas.backend.cache import ResultCache
from netatlas.backend.class_stats import class_stats
from netatlas.backend.cluster.tree import ClusterTree, TreeSettings, build_cluster_tree
from netatlas.backend.cluster.kmeans import micro_clusters
from netatlas.backend.neighbors import nearest_neighbors
from netatlas.backend.neurons import top_units, unit_baseline
from netatlas.backend.cluster.ward import condensed_distances, ward_distances, ward_linkage, weighted_ward
from netatlas.backend.workspace import Workspace
from netatlas.cli import main
from netatlas.backend.errors import NetatlasError
from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_SIZE, preprocess_by_hand

ARRAYS = ("left", "right", "parent", "height", "count", "start", "medoid", "labeled", "correct",
          "class_counts")
SCALED = TreeSettings(exact_threshold=100, micro_size=50)


# ------------------------------------------------------------------------- independent helpers

def random_points(n: int, d: int, seed: int, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def planted_blobs(seed: int = 0, per_blob: int = 500, blobs: int = 6, d: int = 16):
    """``blobs`` tight Gaussian blobs whose centres are ~50 standard deviations apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(blobs, d)) * 50
    blob = np.repeat(np.arange(blobs), per_blob)
    return centres[blob] + rng.normal(size=(len(blob), d)), blob


def scipy_leaf_sets(z: np.ndarray) -> list[frozenset[int]]:
    """Leaf set of every node (ids as in scipy: leaves, then merge i = n + i), from scipy's tree."""
    _, nodes = to_tree(z, rd=True)
    return [frozenset(node.pre_order()) for node in nodes]


def structural_leaf_sets(tree: ClusterTree) -> list[frozenset[int]]:
    """Leaf set of every node from the left/right arrays alone (never from start/order)."""
    n = tree.n_images
    sets: list[frozenset[int]] = [frozenset([i]) for i in range(n)]
    for node in range(n, 2 * n - 1):
        sets.append(sets[tree.left[node]] | sets[tree.right[node]])
    return sets


def merge_partitions(z: np.ndarray, leaf_group: np.ndarray | None = None) -> dict[frozenset, float]:
    """Each merge of ``z`` as (set of its leaves' groups) -> height; ``leaf_group`` maps leaves.

    Leaf sets by unions of the rows (``to_tree`` rejects weighted Ward's counts, which sum sizes).
    """
    sets = [frozenset([i]) for i in range(len(z) + 1)]
    for a, b in z[:, :2].astype(int):
        sets.append(sets[a] | sets[b])
    n = len(z) + 1
    group = np.arange(n) if leaf_group is None else leaf_group
    return {frozenset(group[list(sets[n + i])].tolist()): float(z[i, 2]) for i in range(len(z))}


def assert_same_linkage(ours: np.ndarray, expected: np.ndarray) -> None:
    """Same merges in the same order, same counts, heights within 1e-6 relative."""
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(ours[:, :2], expected[:, :2])
    np.testing.assert_array_equal(ours[:, 3], expected[:, 3])
    np.testing.assert_allclose(ours[:, 2], expected[:, 2], rtol=1e-6, atol=1e-12)


def assert_consistent_ranges(tree: ClusterTree) -> None:
    """Every node's leaf range holds exactly the leaves of its subtree; parents match children."""
    n = tree.n_images
    for name in ARRAYS:
        assert len(getattr(tree, name)) == 2 * n - 1, name
    np.testing.assert_array_equal(np.sort(tree.order), np.arange(n))
    assert tree.root == 2 * n - 2 and tree.parent[tree.root] == -1 and tree.count[tree.root] == n
    assert (tree.parent[:-1] >= 0).all(), "only the root has no parent"
    np.testing.assert_array_equal(np.sort(tree.images(tree.root)), np.arange(n))
    for leaf in range(n):
        assert tree.images(leaf).tolist() == [leaf] and tree.count[leaf] == 1
        assert tree.children(leaf) == () and tree.left[leaf] == tree.right[leaf] == -1
    for node in range(n, 2 * n - 1):
        a, b = tree.children(node)
        assert a < node and b < node and tree.parent[a] == tree.parent[b] == node
        mine, left, right = tree.images(node), tree.images(a), tree.images(b)
        assert not set(left.tolist()) & set(right.tolist())
        assert set(mine.tolist()) == set(left.tolist()) | set(right.tolist())
        assert tree.count[node] == tree.count[a] + tree.count[b] == len(mine)
    for node, members in enumerate(structural_leaf_sets(tree)):
        assert set(tree.images(node).tolist()) == members
    assert is_valid_linkage(tree.linkage())


def distance_to_centroid(x: np.ndarray, members: list[int], point: int) -> tuple[float, float]:
    """(distance of ``point`` to the members' centroid, smallest such distance over the members)."""
    centroid = x[members].mean(axis=0)
    d = np.sqrt(((x[members] - centroid) ** 2).sum(axis=1))
    return float(np.sqrt(((x[point] - centroid) ** 2).sum())), float(d.min())


# ------------------------------------------------------------------------------- exact Ward

@pytest.mark.parametrize("n, d, dtype, seed", [(300, 8, np.float64, 0), (1000, 64, np.float64, 1),
                                               (500, 16, np.float32, 2), (1500, 6, np.float64, 3)],
                         ids=["300x8", "1000x64", "500x16-float32", "1500x6-blocked"])
def test_exact_tree_is_scipy_ward(n, d, dtype, seed):
    x = random_points(n, d, seed, dtype) + 100.0       # offset: the Gram trick must not lose precision
    expected = linkage(x, "ward")
    assert_same_linkage(ward_linkage(x), expected)
    tree = build_cluster_tree(x)
    assert tree.meta["method"] == "exact-ward" and tree.meta["n_images"] == n and tree.meta["dims"] == d
    assert_same_linkage(tree.linkage(), expected)


@pytest.mark.parametrize("block", [7, 50, 1024])
def test_condensed_distances_are_pdist(block):
    x = random_points(60, 5, 4) * 10 + 1000.0
    np.testing.assert_allclose(condensed_distances(x, block=block), pdist(x), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- weighted Ward

def test_weighted_ward_with_unit_sizes_is_scipy_ward():
    c = random_points(80, 6, 5)
    assert_same_linkage(weighted_ward(c, np.ones(80)), linkage(c, "ward"))


@pytest.mark.parametrize("seed", [6, 7, 8])
def test_weighted_ward_matches_ward_on_the_expanded_points(seed):
    rng = np.random.default_rng(seed)
    m = 25
    centroids = rng.normal(size=(m, 4))
    sizes = rng.integers(1, 7, size=m)
    expanded = np.repeat(centroids, sizes, axis=0)
    owner = np.repeat(np.arange(m), sizes)              # expanded point -> its centroid
    full = linkage(expanded, "ward")
    duplicates = len(expanded) - m
    # Ward on the expanded points first merges every centroid's copies, at height 0 ...
    np.testing.assert_array_equal(full[:duplicates, 2], 0.0)
    assert (full[duplicates:, 2] > 0).all()
    for members in scipy_leaf_sets(full)[len(expanded):len(expanded) + duplicates]:
        assert len(set(owner[list(members)].tolist())) == 1
    # ... then makes the same merges as weighted Ward on the centroids, at the same heights.
    ours = weighted_ward(centroids, sizes)
    np.testing.assert_allclose(ours[:, 2], full[duplicates:, 2], rtol=1e-9)
    np.testing.assert_array_equal(ours[:, 3], full[duplicates:, 3])
    ours_merges = merge_partitions(ours)
    full_merges = {k: h for k, h in merge_partitions(full, owner).items() if len(k) > 1}
    assert ours_merges.keys() == full_merges.keys()
    for key, height in ours_merges.items():
        assert height == pytest.approx(full_merges[key], rel=1e-9)


def test_ward_distances_formula():
    c = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5], [1.0, 1.0, 1.0], [-2.0, 0.0, 4.0]])
    w = np.array([1.0, 2.0, 3.0, 5.0])
    expected = np.zeros((4, 4))
    for a in range(4):
        for b in range(4):
            expected[a, b] = 2 * w[a] * w[b] / (w[a] + w[b]) * sum((c[a] - c[b]) ** 2)
    np.testing.assert_allclose(ward_distances(c, w), expected, rtol=1e-12, atol=1e-12)


def test_weighted_ward_terminates_on_ties():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    z = weighted_ward(square, np.ones(4))
    assert is_valid_linkage(z) and (np.diff(z[:, 2]) >= 0).all()
    np.testing.assert_allclose(z[:, 2], [1.0, 1.0, np.sqrt(2.0)])
    lattice = np.repeat(np.arange(16.0)[:, None], 2, axis=1)  # many equal nearest-neighbour distances
    z = weighted_ward(lattice, np.full(16, 3))
    assert (np.diff(z[:, 2]) >= 0).all() and z[-1, 3] == 48   # counts sum sizes: scipy's checks refuse
    children = z[:, :2].astype(int)
    assert sorted(children.ravel().tolist()) == list(range(2 * 16 - 2))
    assert (children < 16 + np.arange(15)[:, None]).all()


# --------------------------------------------------------------------------- scaled mode

@pytest.fixture(scope="module")
def blobs():
    x, blob = planted_blobs()
    return x, blob, build_cluster_tree(x, blob, blob, settings=SCALED)


def test_scaled_tree_ranges_and_planted_blobs(blobs):
    x, blob, tree = blobs
    assert tree.meta["method"] == "kmeans+weighted-ward"
    assert_consistent_ranges(tree)
    top = tree.frontier(tree.root, 6)
    found = sorted(sorted(tree.images(node).tolist()) for node in top)
    expected = sorted(np.flatnonzero(blob == b).tolist() for b in range(6))
    assert found == expected
    assert (np.diff(tree.start[top]) > 0).all(), "frontier is in leaf order"


def test_scaled_tree_is_exact_ward_inside_each_micro_cluster(blobs):
    x, blob, tree = blobs
    m = round(len(x) / SCALED.micro_size)
    labels = micro_clusters(x, m, seed=SCALED.seed)
    assert tree.meta["micro_clusters"] == labels.max() + 1
    sets = structural_leaf_sets(tree)
    node_of = {members: node for node, members in enumerate(sets)}
    for c in range(labels.max() + 1):
        members = np.flatnonzero(labels == c)
        assert len(set(blob[members].tolist())) == 1, "a micro-cluster spans two blobs"
        node = node_of[frozenset(members.tolist())]      # each micro-cluster is one subtree
        if c % 10:
            continue                                     # a few are enough for the heights
        inside = sorted(tree.height[n] for n in range(len(x), 2 * len(x) - 1) if sets[n] <= sets[node])
        np.testing.assert_allclose(inside, np.sort(linkage(x[members], "ward")[:, 2]), rtol=1e-6)
        for sub in (n for n in range(len(x), 2 * len(x) - 1) if sets[n] <= sets[node]):
            got, best = distance_to_centroid(x, sorted(sets[sub]), tree.medoid[sub])
            assert got == pytest.approx(best, rel=1e-9, abs=1e-9)
    for node, members in enumerate(sets):
        assert tree.medoid[node] in members


@pytest.mark.parametrize("m", [1, 2, 7, 40, 300])
def test_micro_clusters_are_nonempty_and_numbered_densely(m):
    x, _ = planted_blobs(seed=1, per_blob=100, blobs=4)
    labels = micro_clusters(x, m, seed=3)
    assert labels.shape == (len(x),) and labels.min() == 0
    assert (np.bincount(labels) > 0).all()
    # About m: rounding each coarse cluster's share (k1 = round(sqrt(m)) of them) adds at most k1.
    assert labels.max() + 1 <= m + round(np.sqrt(m))


def test_scaled_tree_of_identical_points():
    tree = build_cluster_tree(np.ones((40, 3)), settings=TreeSettings(exact_threshold=1, micro_size=10))
    assert_consistent_ranges(tree)
    np.testing.assert_array_equal(tree.height, 0.0)


# ------------------------------------------------------------------- exact mode, node stats

@pytest.fixture(scope="module")
def labelled():
    """Points with labels (some -1), predictions, and an exact tree over them (6 classes, one unused)."""
    rng = np.random.default_rng(9)
    n = 240
    x = rng.normal(size=(n, 5))
    labels = rng.integers(-1, 5, size=n)
    predictions = np.where(rng.random(n) < 0.6, np.maximum(labels, 0), rng.integers(0, 5, size=n))
    return x, labels, predictions, build_cluster_tree(x, labels, predictions, n_classes=6)


def test_exact_tree_ranges_and_scipy_leaf_sets(labelled):
    x, _, _, tree = labelled
    assert_consistent_ranges(tree)
    for node, members in enumerate(scipy_leaf_sets(linkage(x, "ward"))):
        assert set(tree.images(node).tolist()) == members


def test_node_class_counts_and_accuracy_are_bincounts(labelled):
    x, labels, predictions, tree = labelled
    assert tree.class_counts.shape == (2 * len(x) - 1, 6)
    for node, members in enumerate(scipy_leaf_sets(linkage(x, "ward"))):
        idx = np.array(sorted(members))
        known = labels[idx] >= 0
        np.testing.assert_array_equal(tree.class_counts[node], np.bincount(labels[idx][known], minlength=6))
        hits = int((labels[idx][known] == predictions[idx][known]).sum())
        assert tree.labeled[node] == known.sum() and tree.correct[node] == hits
        if known.any():
            assert tree.accuracy[node] == pytest.approx(hits / known.sum())
        else:
            assert np.isnan(tree.accuracy[node])
        np.testing.assert_array_equal(tree.classes_of(node, labels, 8),
                                      np.bincount(labels[idx][known], minlength=8))


def test_class_counts_beyond_the_storage_limit_are_counted_on_demand(monkeypatch, labelled):
    x, labels, predictions, _ = labelled
    monkeypatch.setattr(cluster_tree_module, "MAX_CLASS_COUNTS", 10)
    tree = build_cluster_tree(x, labels, predictions, n_classes=6)
    assert tree.class_counts.shape[1] == 0
    for node in (0, len(x), tree.root, tree.root - 3):
        members = tree.images(node)
        known = labels[members][labels[members] >= 0]
        np.testing.assert_array_equal(tree.classes_of(node, labels, 6), np.bincount(known, minlength=6))


@pytest.mark.parametrize("n", [150, 1100], ids=["one-product", "per-node-scan"])
def test_medoid_is_the_member_nearest_the_centroid(n):
    x = random_points(n, 4, 10)
    tree = build_cluster_tree(x)
    for node, members in enumerate(scipy_leaf_sets(linkage(x, "ward"))):
        assert tree.medoid[node] in members
        if node >= n and (n < 1000 or node % 7 == 0 or tree.count[node] > n // 4):
            got, best = distance_to_centroid(x, sorted(members), tree.medoid[node])
            assert got == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5, 17, 240, 500])
def test_frontier_is_scipy_maxclust(labelled, k):
    x, _, _, tree = labelled
    groups = fcluster(linkage(x, "ward"), min(k, len(x)), "maxclust")
    expected = {frozenset(np.flatnonzero(groups == g).tolist()) for g in np.unique(groups)}
    frontier = tree.frontier(tree.root, k)
    assert len(frontier) == min(k, len(x))
    assert {frozenset(tree.images(node).tolist()) for node in frontier} == expected
    assert (np.diff(tree.start[frontier]) > 0).all()


def test_contains_and_ancestors(labelled):
    x, _, _, tree = labelled
    sets = scipy_leaf_sets(linkage(x, "ward"))
    everything = np.arange(len(x))
    for node in (0, 17, len(x) + 5, len(x) + 150, tree.root - 1, tree.root):
        np.testing.assert_array_equal(tree.contains(node, everything), np.isin(everything, list(sets[node])))
        holders = [v for v, members in enumerate(sets) if sets[node] <= members]
        path = tree.ancestors(node)
        assert sorted(path) == sorted(holders)
        assert path[0] == tree.root and path[-1] == node
        assert all(tree.parent[child] == parent for parent, child in zip(path, path[1:]))


# ------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("with_labels", [True, False], ids=["labelled", "unlabelled"])
def test_parquet_round_trip(tmp_path, labelled, with_labels):
    x, labels, predictions, tree = labelled
    if not with_labels:
        tree = build_cluster_tree(x)
        assert tree.class_counts.shape == (2 * len(x) - 1, 0)
    pq.write_table(tree.to_table(), tmp_path / "tree.parquet")
    again = ClusterTree.from_table(pq.read_table(tmp_path / "tree.parquet"))
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(tree, name), err_msg=name)
    assert again.class_counts.shape == tree.class_counts.shape
    assert again.meta == tree.meta
    np.testing.assert_array_equal(again.order, tree.order)
    np.testing.assert_array_equal(again.accuracy, tree.accuracy)


# -------------------------------------------------------------------- statistics beside trees

def test_class_stats_against_a_confusion_matrix():
    rng = np.random.default_rng(11)
    labels = rng.integers(-1, 6, size=400)
    predictions = np.where(rng.random(400) < 0.5, labels, rng.integers(0, 7, size=400))
    names = ["a", "b", "c", "d", "e"]                      # class 5 has no name: shown as "5"
    known = labels >= 0
    cm = confusion_matrix(labels[known], predictions[known], labels=np.arange(7))
    stats = class_stats(labels, predictions, names)
    assert sorted(stats["label"]) == sorted(np.unique(labels[known]).tolist())
    assert list(stats["count"]) == sorted(stats["count"], reverse=True)
    total = cm.sum()
    for row in stats.itertuples():
        c = row.label
        assert row._1 == (names[c] if c < 5 else str(c))     # "class" column
        assert row.count == cm[c].sum()
        assert row.accuracy == pytest.approx(cm[c, c] / cm[c].sum())
        assert row.FNR == pytest.approx(1 - cm[c, c] / cm[c].sum())
        assert row.FPR == pytest.approx((cm[:, c].sum() - cm[c, c]) / (total - cm[c].sum()))


def test_class_stats_of_one_class_has_no_false_positive_rate():
    stats = class_stats(np.array([2, 2, -1]), np.array([2, 1, 2]), ["x", "y", "z"])
    assert len(stats) == 1 and stats["count"][0] == 2 and stats["accuracy"][0] == 0.5
    assert np.isnan(stats["FPR"][0])


@pytest.mark.parametrize("block", [1, 7, 25, 103, 1000])
@pytest.mark.parametrize("query, k", [(0, 1), (50, 5), (102, 20), (31, 102), (31, 500)])
def test_nearest_neighbors_are_brute_force(block, query, k):
    x = random_points(103, 6, 12).astype(np.float32)
    d = np.sqrt(((x.astype(np.float64) - x[query].astype(np.float64)) ** 2).sum(axis=1))
    others = np.array([i for i in np.argsort(d, kind="stable") if i != query])[:k]
    idx, dist = nearest_neighbors(x, query, k, block=block)
    np.testing.assert_array_equal(idx, others)
    np.testing.assert_allclose(dist, d[others], rtol=1e-12)
    assert query not in idx


def test_top_units_rank_by_excess_in_dataset_standard_deviations():
    rng = np.random.default_rng(13)
    values = rng.normal(size=(60, 6))
    values[:, 2] *= 1000.0                                 # large scale, no excess: must not win
    values[:, 5] = 3.0                                     # constant: score 0
    members = np.arange(10, 20)
    values[members, 4] += 4.0                              # planted: fires in the cluster
    overall = values.mean(axis=0)
    spread = np.sqrt(((values - overall) ** 2).mean(axis=0))
    inside = values[members].mean(axis=0)
    score = np.array([(inside[u] - overall[u]) / spread[u] if spread[u] > 0 else 0.0 for u in range(6)])
    table = top_units(values, members, k=6)
    assert table["unit"].iloc[0] == 4
    np.testing.assert_array_equal(table["unit"], np.argsort(-score, kind="stable"))
    np.testing.assert_allclose(table["excess (sd)"], np.sort(score)[::-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table["in cluster"], inside[table["unit"]])
    np.testing.assert_allclose(table["dataset"], overall[table["unit"]])
    assert len(top_units(values, members, k=2)) == 2


def test_unit_baseline_and_sampled_top_units_match_numpy():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5000, 7)).astype(np.float32) * np.arange(1, 8) + 100.0
    mean, sd = unit_baseline(values, block=999)
    np.testing.assert_allclose(mean, values.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sd, values.astype(np.float64).std(0), rtol=1e-9)
    members = np.arange(4000)
    values[members, 3] += 2.0 * sd[3]
    exact = values[members].astype(np.float64).mean(0)
    table = top_units(values, members, k=7, sample=1000)      # estimated from 1,000 of 4,000 members
    assert table["unit"].iloc[0] == 3
    np.testing.assert_allclose(table.set_index("unit")["in cluster"].sort_index(), exact, atol=0.15 * sd.max())


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("x, message", [
    (np.array([[0.0, 1.0], [np.nan, 2.0]]), "NaN"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinite"),
    (np.empty((0, 4)), "non-empty"),
    (np.arange(5.0), r"\[N, D\]"),
], ids=["nan", "inf", "empty", "1-d"])
def test_bad_vectors_are_user_errors(x, message):
    with pytest.raises(NetatlasError, match=message):
        build_cluster_tree(x)


@pytest.mark.parametrize("settings", [TreeSettings(), TreeSettings(exact_threshold=0, micro_size=2)],
                         ids=["exact", "scaled"])
def test_one_point_is_a_tree_of_one_leaf(settings):
    tree = build_cluster_tree(np.array([[1.0, 2.0, 3.0]]), np.array([1]), np.array([1]), settings=settings)
    assert tree.n_images == 1 and tree.root == 0
    assert tree.images(0).tolist() == [0] and tree.medoid.tolist() == [0]
    assert tree.linkage().shape == (0, 4) and tree.frontier(0, 3) == [0]
    assert tree.class_counts.tolist() == [[0, 1]] and tree.accuracy.tolist() == [1.0]


def test_two_identical_points():
    tree = build_cluster_tree(np.array([[1.0, 2.0], [1.0, 2.0]]))
    assert tree.root == 2 and tree.height[2] == 0.0 and sorted(tree.images(2).tolist()) == [0, 1]
    assert tree.medoid[2] in (0, 1) and sorted(tree.frontier(2, 2)) == [0, 1]
    assert tree.linkage().tolist() == linkage(np.array([[1.0, 2.0], [1.0, 2.0]]), "ward").tolist()


# ------------------------------------------------------------------------ workspace and CLI

def test_workspace_tree_is_cached_and_clusters_the_representation(small_loaded, small_dataset, cache_dir,
                                                                  monkeypatch):
    builds = []
    real_build = workspace_module.build_cluster_tree

    def counting_build(*args, **kwargs):
        builds.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(workspace_module, "build_cluster_tree", counting_build)
    ws = Workspace(small_loaded, small_dataset, ResultCache(cache_dir), "cpu")
    tree = ws.cluster_tree()
    layer, x, acts = ws.representation(None)
    assert layer == tree.meta["layer"] == "flatten" and x.shape == (30, 8)
    expected = linkage(x, "ward")
    np.testing.assert_allclose(tree.height[30:], expected[:, 2], rtol=1e-6)
    np.testing.assert_array_equal(tree.class_counts[tree.root], np.bincount(small_dataset.labels, minlength=5))
    assert tree.accuracy[tree.root] == pytest.approx(float((acts.predictions == small_dataset.labels).mean()))
    assert len(builds) == 1

    again = ws.cluster_tree()
    assert len(builds) == 1, "rebuilt instead of reading the cache"
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(again, name), getattr(tree, name), err_msg=name)
    assert again.meta == tree.meta

    files = list((cache_dir / "cluster").glob("*.parquet"))
    assert len(files) == 1
    files[0].write_bytes(b"PAR1 this is not a parquet file" * 10)
    rebuilt = ws.cluster_tree()
    assert len(builds) == 2, "a corrupt cache file was trusted"
    np.testing.assert_allclose(rebuilt.height, tree.height)
    assert ClusterTree.from_table(pq.read_table(files[0])).n_images == 30

    foreign = pq.read_table(files[0]).drop_columns(["medoid"])   # same inputs, an older layout
    pq.write_table(foreign.replace_schema_metadata(pq.read_schema(files[0]).metadata), files[0])
    ws.cluster_tree()
    assert len(builds) == 3, "a table without the tree's columns was trusted"

    scaled = ws.cluster_tree(settings=TreeSettings(exact_threshold=10, micro_size=5))
    assert len(builds) == 4 and scaled.meta["method"] == "kmeans+weighted-ward"
    assert_consistent_ranges(scaled)


def test_cli_cluster_lists_the_top_clusters_and_writes_the_tree(tmp_path, capsys, small_model,
                                                                small_checkpoint, small_npz, small_images):
    images, labels = small_images
    out_path = tmp_path / "out" / "tree.parquet"
    code = main(["cluster", str(small_checkpoint), str(small_npz), "--arch", DEMO_ARCH,
                 "--arch-kwargs", json.dumps(SMALL_KWARGS), "--size", str(SMALL_SIZE), "--grayscale",
                 "--mean", "0.4", "--std", "0.3", "-k", "3", "-o", str(out_path),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert re.match(r"exact-ward tree of 30 images on flatten \(8 dims\) in [\d.]+ s$", lines[0])
    rows = [line.split() for line in lines[2:] if re.match(r"\s*\d+ ", line)]
    assert len(rows) == 3

    # Independent: the penultimate code by a direct forward pass, clustered by scipy.
    x = preprocess_by_hand(images, (0.4,), (0.3,))
    with torch.no_grad():
        code_vectors = small_model.flatten(small_model.pool(small_model.blocks(small_model.stem(x)))).numpy()
        predictions = small_model.fc(torch.from_numpy(code_vectors)).argmax(1).numpy()
    z = linkage(code_vectors.astype(np.float64), "ward")
    groups = fcluster(z, 3, "maxclust")
    assert sorted(int(r[1]) for r in rows) == sorted(np.bincount(groups)[1:].tolist())

    tree = ClusterTree.from_table(pq.read_table(out_path))
    assert tree.n_images == 30 and tree.count[tree.root] == 30
    np.testing.assert_array_equal(np.sort(tree.images(tree.root)), np.arange(30))
    np.testing.assert_allclose(tree.height[30:], z[:, 2], rtol=1e-4)
    for row in rows:                       # node, images, accuracy, height, majority (share), medoid
        node = int(row[0])
        members = tree.images(node)
        assert int(row[1]) == len(members)
        assert row[2] == f"{(predictions[members] == labels[members]).mean():.1%}"
        counts = np.bincount(labels[members], minlength=5)
        assert row[4:6] == [str(counts.argmax()), f"({counts.max() / len(members):.0%})"]
        got, best = distance_to_centroid(code_vectors.astype(np.float64), members.tolist(), int(row[6]))
        assert int(row[6]) in members and got == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("extra, missing", [([], True), (["-k", "0"], False)], ids=["missing-data", "bad-k"])
def test_cli_cluster_user_errors_exit_2(tmp_path, capsys, small_checkpoint, small_npz, extra, missing):
    data = tmp_path / "no_such_data" if missing else small_npz
    code = main(["cluster", str(small_checkpoint), str(data), "--arch", DEMO_ARCH,
                 "--arch-kwargs", json.dumps(SMALL_KWARGS), "--size", str(SMALL_SIZE), "--grayscale",
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("netatlas: error: ")
    assert "Traceback" not in captured.err + captured.out


def test_exact_mode_reports_progress_and_stops_when_it_raises():
    """The app's Cancel raises from the progress callback; the exact build must stop there."""
    x = random_points(2500, 8, seed=21)
    calls: list[tuple[int, int]] = []
    build_cluster_tree(x, progress=lambda done, total: calls.append((done, total)))
    total = 2 * (len(x) - 1)                      # two stages of n - 1 steps (distance rows, merges) as one count
    assert calls[-1] == (total, total) and (len(x) - 1, total) in calls and len(calls) > 3
    assert all(0 <= d <= t == total for d, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)

    class Stop(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        build_cluster_tree(x, progress=cancel)
