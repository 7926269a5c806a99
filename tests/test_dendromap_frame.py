"""One DendroMap frame (viz.dendromap): per-node means, filter matches, representatives and tiles,
each checked by a direct computation over the node's images."""

from __future__ import annotations

import re

import numpy as np
import pytest

from netatlas.backend.cluster.tree import build_cluster_tree
from netatlas.viz.dendromap import MapData, dendromap_frame, node_means, representatives


@pytest.fixture(scope="module")
def data() -> MapData:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 8)) * 6
    labels = rng.integers(0, 5, 600)
    x = centres[labels] + rng.normal(size=(600, 8))
    predictions = np.where(rng.random(600) < 0.85, labels, (labels + 1) % 5)
    labels[::50] = -1                                     # a few unlabeled images
    tree = build_cluster_tree(x, labels, predictions, 5)
    return MapData(tree, labels, predictions, [f"img{i:04d}" for i in range(600)], list("abcde"))


def test_node_means_equal_direct_means(data):
    values = np.random.default_rng(0).normal(size=600)
    mean = node_means(data.tree, values)
    for node in range(len(data.tree.left)):
        assert mean(node) == pytest.approx(values[data.tree.images(node)].mean(), rel=1e-9, abs=1e-12)


def test_hits_in_are_the_matches_under_a_node_in_leaf_order(data):
    hits = (data.predictions == 2) & (data.labels >= 0)
    data.set_hits(hits)
    try:
        for node in (data.tree.root, *data.tree.frontier(data.tree.root, 6)):
            images = data.tree.images(node)
            np.testing.assert_array_equal(data.hits_in(node), images[hits[images]])
    finally:
        data.set_hits(None)


def test_representatives_are_medoid_first_distinct_members(data):
    tree = data.tree
    for node in tree.frontier(tree.root, 5):
        chosen = representatives(tree, node, 12)
        assert chosen[0] == tree.medoid[node]
        assert len(chosen) == len(set(chosen)) == min(12, tree.count[node])
        assert tree.contains(node, np.array(chosen)).all()
        matches = tree.images(node)[:3]
        with_hits = representatives(tree, node, 12, matches)
        assert with_hits[:3] == matches.tolist() and len(with_hits) == len(set(with_hits))


def test_frame_tiles_cover_the_node_and_mark_wrong_and_matching_images(data):
    tree = data.tree
    data.set_hits(data.wrong)
    try:
        html, clusters = dendromap_frame(data, tree.root, 6, 20, 12, 30, lambda i: f"/t/{i}.png")
    finally:
        data.set_hits(None)
    assert len(clusters) == 6 and sum(tree.count[c] for c in clusters) == 600
    assert re.findall(r"data-node=(\d+)", html) == [str(c) for c in clusters]
    for cluster in clusters:                               # the label's counts, computed directly
        images = tree.images(cluster)
        known = images[data.labels[images] >= 0]
        accuracy = (data.predictions[known] == data.labels[known]).mean()
        matches = int(data.wrong[images].sum())
        noun = "image" if len(images) == 1 else "images"
        assert f"{len(images):,} {noun} · {accuracy:.0%} acc · {matches:,} match" in html
    shown = [int(i) for i in re.findall(r"data-image=(\d+)", html)]
    marked = [int(i) for i in re.findall(r'class="na-img[^"]*na-hit[^"]*" data-image=(\d+)', html)]
    assert marked and set(marked) == {i for i in shown if data.wrong[i]}
    wrong = [int(i) for i in re.findall(r'class="na-img na-wrong[^"]*" data-image=(\d+)', html)]
    assert set(wrong) == {i for i in shown if data.wrong[i]}
