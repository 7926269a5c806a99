"""Treemap layout, cluster frontier, colours and HTML, checked against scipy's own cluster tree."""

from __future__ import annotations

import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_hex
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage, to_tree

from netatlas.viz.treemap import (
    ClusterTile, Rect, color_scale, legend_html, treemap_html, treemap_layout)
from netatlas.backend.cluster.tree import breadth_first_frontier


class ScipyTree:
    """A scipy linkage as the callables the treemap takes: ids 0..n-1 leaves, n+i row i of Z."""

    def __init__(self, n: int, seed: int, method: str = "average") -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.Z = linkage(rng.normal(size=(n, 3)), method)
        self.kids = {n + i: (int(a), int(b)) for i, (a, b) in enumerate(self.Z[:, :2])}
        self.count = np.concatenate([np.ones(n), self.Z[:, 3]]).astype(int)
        self.height = np.concatenate([np.zeros(n), self.Z[:, 2]])
        self.root = 2 * n - 2
        self.nodes = to_tree(self.Z, rd=True)[1]

    def children(self, node: int) -> tuple[int, ...]:
        return self.kids.get(node, ())

    def leaves(self, node: int) -> list[int]:
        return self.nodes[node].pre_order()


def painted(rects: dict[int, Rect], cols: int, rows: int) -> np.ndarray:
    grid = np.zeros((rows, cols), dtype=int)
    for x, y, w, h in rects.values():
        assert w >= 0 and h >= 0
        assert 0 <= x and x + w <= cols and 0 <= y and y + h <= rows
        grid[y:y + h, x:x + w] += 1
    return grid


# ------------------------------------------------------------------------------------- frontier

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 17, 40])
def test_frontier_is_scipy_maxclust_partition(seed, k):
    tree = ScipyTree(60, seed)
    assert len(np.unique(tree.Z[:, 2])) == len(tree.Z)  # distinct heights: the cut is unique
    frontier = breadth_first_frontier(tree.root, k, tree.children, tree.height)
    labels = fcluster(tree.Z, k, criterion="maxclust")
    expected = {frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)}
    assert len(frontier) == k
    assert {frozenset(tree.leaves(node)) for node in frontier} == expected


@pytest.mark.parametrize("k", [1, 4, 9, 25, 200])
def test_frontier_is_in_dendrogram_leaf_order(k):
    tree = ScipyTree(50, 7, method="ward")
    frontier = breadth_first_frontier(tree.root, k, tree.children, lambda i: tree.height[i])
    assert [leaf for node in frontier for leaf in tree.leaves(node)] == leaves_list(tree.Z).tolist()


def test_frontier_ends():
    tree = ScipyTree(12, 3)
    assert breadth_first_frontier(tree.root, 1, tree.children, tree.height) == [tree.root]
    assert breadth_first_frontier(tree.root, 100, tree.children, tree.height) == leaves_list(tree.Z).tolist()
    assert breadth_first_frontier(0, 5, tree.children, tree.height) == [0]
    with pytest.raises(ValueError):
        breadth_first_frontier(tree.root, 0, tree.children, tree.height)


def test_frontier_ties_expand_smaller_id_first():
    kids = {4: (2, 3), 2: (0, 5), 3: (6, 7), 5: (8, 9)}
    height = {4: 2.0, 2: 1.0, 3: 1.0, 5: 0.5}
    frontier = breadth_first_frontier(4, 3, lambda n: kids.get(n, ()), lambda n: height.get(n, 0.0))
    assert frontier == [0, 5, 3]


# --------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 2, 3, 7, 20, 45, 1000])
@pytest.mark.parametrize("cols,rows", [(1, 1), (2, 1), (1, 2), (3, 3), (7, 4), (30, 20)])
def test_layout_tiles_the_canvas(seed, k, cols, rows):
    tree = ScipyTree(45, seed)
    frontier = breadth_first_frontier(tree.root, k, tree.children, tree.height)
    rects = treemap_layout(tree.root, frontier, tree.children, tree.count, cols, rows)
    assert set(rects) == set(frontier)
    grid = painted(rects, cols, rows)
    assert (grid == 1).all()
    assert sum(r.area for r in rects.values()) == cols * rows
    # a 1x1 rect that must still be split hides the smaller side, so some clusters may not show
    assert 1 <= sum(r.area > 0 for r in rects.values()) <= min(len(frontier), cols * rows)


def test_layout_follows_proportions_with_a_provable_bound():
    """Each split misses the exact share by under one cell along the split side (half a cell
    unless clamped), so a cluster's error is at most p * (parent's error) + parent's short side."""
    tree = ScipyTree(300, 11)
    cols, rows = 120, 80
    total = cols * rows
    frontiers = [breadth_first_frontier(tree.root, k, tree.children, tree.height) for k in range(1, 31)]
    layouts = [treemap_layout(tree.root, f, tree.children, tree.count, cols, rows) for f in frontiers]
    bound = {tree.root: 0.0}
    for before, after in zip(layouts, layouts[1:]):
        (parent,) = set(before) - set(after)
        pr = before[parent]
        short, side = min(pr.w, pr.h), max(pr.w, pr.h)
        for child in tree.children(parent):
            p = tree.count[child] / tree.count[parent]
            cr = after[child]
            miss = abs(cr.area - p * pr.area)
            clamped = max(cr.w, cr.h) != side and (cr.area // short) in (1, side - 1)
            assert miss <= (1.0 if clamped else 0.5) * short + 1e-9
            bound[child] = p * bound[parent] + short
            ideal = tree.count[child] / tree.n * total
            assert abs(cr.area - ideal) <= bound[child] + 1e-9
        # a node's rect never moves when a deeper cut is drawn: its children tile it exactly
        a, b = (after[c] for c in tree.children(parent))
        assert a.area + b.area == pr.area
        assert painted({0: a, 1: b}, cols, rows)[pr.y:pr.y + pr.h, pr.x:pr.x + pr.w].all()
    for node, rect in layouts[-1].items():
        share = tree.count[node] / tree.n
        if share >= 0.05:
            assert abs(rect.area - share * total) <= 0.1 * share * total


def test_split_goes_along_the_longer_side():
    children = lambda n: (0, 1) if n == 2 else ()
    count = [3, 7, 10]
    assert treemap_layout(2, [0, 1], children, count, 10, 2) == {0: Rect(0, 0, 3, 2), 1: Rect(3, 0, 7, 2)}
    assert treemap_layout(2, [0, 1], children, count, 2, 10) == {0: Rect(0, 0, 2, 3), 1: Rect(0, 3, 2, 7)}
    assert treemap_layout(2, [0, 1], children, count, 4, 4)[0] == Rect(0, 0, 1, 4)  # square: left/right


def test_small_children_stay_visible_and_one_cell_goes_to_the_larger():
    children = lambda n: (0, 1) if n == 2 else ()
    rects = treemap_layout(2, [0, 1], children, [1, 99, 100], 10, 2)
    assert rects[0] == Rect(0, 0, 1, 2) and rects[1] == Rect(1, 0, 9, 2)
    rects = treemap_layout(2, [0, 1], children, [1, 3, 4], 1, 1)
    assert rects[1] == Rect(0, 0, 1, 1) and rects[0].area == 0


def test_layout_of_root_alone_and_bad_frontiers():
    tree = ScipyTree(10, 0)
    assert treemap_layout(tree.root, [tree.root], tree.children, tree.count, 5, 4) == {tree.root: Rect(0, 0, 5, 4)}
    left, right = tree.children(tree.root)
    with pytest.raises(ValueError, match="frontier"):
        treemap_layout(tree.root, [left], tree.children, tree.count, 5, 4)  # right side uncovered
    with pytest.raises(ValueError, match="frontier"):  # a cluster below another one
        inner = left if tree.children(left) else right
        treemap_layout(tree.root, [left, right, *tree.children(inner)], tree.children, tree.count, 5, 4)
    with pytest.raises(ValueError, match="frontier"):  # a node outside the tree
        treemap_layout(tree.root, [left, right, tree.root + 1], tree.children, tree.count, 5, 4)


# --------------------------------------------------------------------------------------- colour

def test_color_scale_ends_and_nan():
    rdylgn = colormaps["RdYlGn"]
    assert color_scale(np.array([0.0, 1.0, np.nan]), "accuracy") == [
        to_hex(rdylgn(0.0)), to_hex(rdylgn(1.0)), "#bbbbbb"]
    viridis = colormaps["viridis"]
    assert color_scale(np.array([-5.0, 2.0, 9.0]), "activation", vmin=-1, vmax=2) == [
        to_hex(viridis(0.0)), to_hex(viridis(1.0)), to_hex(viridis(1.0))]
    assert color_scale(np.array([3.0, 1.0, 2.0]), "activation")[:2] == [to_hex(viridis(1.0)), to_hex(viridis(0.0))]


def test_share_zero_is_visible_and_shares_darken():
    colors = color_scale(np.linspace(0, 1, 5), "share")
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colors])
    assert (255 - rgb[0]).sum() >= 30  # not white
    assert (np.diff(rgb.sum(axis=1)) < 0).all()


def test_constant_activation_does_not_divide_by_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        colors = color_scale(np.full(4, 2.5), "activation")
        assert len(set(colors)) == 1 and colors[0] != "#bbbbbb"
        assert color_scale(np.array([np.nan, np.nan]), "activation") == ["#bbbbbb"] * 2


def test_infinite_values_are_grey_and_do_not_stretch_the_scale():
    """An infinite value has no colour on a scale (it was coloured as the top end), and a bound that is
    not finite falls back to the finite values' own range (a NaN bound made every tile middle-green)."""
    viridis = colormaps["viridis"]
    expected = [to_hex(viridis(0.0)), to_hex(viridis(0.25)), to_hex(viridis(1.0)), "#bbbbbb", "#bbbbbb"]
    values = np.array([0.0, 1.0, 4.0, np.inf, -np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert color_scale(values, "activation") == expected
        assert color_scale(values, "activation", vmin=np.nan, vmax=np.inf) == expected
        assert color_scale(np.array([0.5, np.inf]), "accuracy")[1] == "#bbbbbb"


def test_legend_is_a_gradient_of_the_same_colours():
    out = legend_html("accuracy", title="<b>acc</b>")
    stops = re.search(r"linear-gradient\(to right,([^)]*)\)", out).group(1).split(",")
    assert len(stops) == 8
    assert stops[0] == to_hex(colormaps["RdYlGn"](0.0)) and stops[-1] == to_hex(colormaps["RdYlGn"](1.0))
    assert "&lt;b&gt;acc&lt;/b&gt;" in out and "0%" in out and "100%" in out
    out = legend_html("activation", -1.5, 3.25, "act")
    assert "-1.5" in out and "3.25" in out


# ----------------------------------------------------------------------------------------- HTML

class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(text)
    return parser.tags


def make_tiles(rects: dict[int, Rect], per_tile: int, seed: int = 0, label: str = "cluster") -> list[ClusterTile]:
    rng = np.random.default_rng(seed)
    tiles = []
    for node, rect in rects.items():
        n = int(rng.integers(0, per_tile + 1))
        images = (node * 1000 + np.arange(n)).tolist()
        tiles.append(ClusterTile(
            node=node, rect=rect, label=f"{label} {node}", color="#1a9850", title=f"node {node}",
            images=images, image_titles=[f"image {i}" for i in images],
            wrong=(rng.random(n) < 0.3).tolist(), highlight=[False] * n))
    return tiles


def test_html_has_one_div_per_visible_tile_and_the_right_images():
    tree = ScipyTree(40, 5)
    cols, rows, cell = 9, 5, 24
    frontier = breadth_first_frontier(tree.root, 40, tree.children, tree.height)
    rects = treemap_layout(tree.root, frontier, tree.children, tree.count, cols, rows)
    tiles = make_tiles(rects, per_tile=6)
    tags = parse(treemap_html(tiles, cell, cols, rows, lambda i: f"/img/{i}.png"))
    visible = {t.node: t for t in tiles if t.rect.area > 0}
    assert sum(r.area == 0 for r in rects.values()) > 0  # 40 clusters on 45 cells: some are hidden
    nodes = [int(a["data-node"]) for _, a in tags if "data-node" in a]
    assert sorted(nodes) == sorted(visible)
    images = [a for tag, a in tags if tag == "img"]
    assert len(images) == sum(min(len(t.images), t.rect.area) for t in visible.values())
    for tag, a in tags:
        if "data-node" in a:
            x, y, w, h = visible[int(a["data-node"])].rect
            assert f"left:{x * cell}px;top:{y * cell}px;width:{w * cell}px;height:{h * cell}px" in a["style"]
            assert "na-tile" in a["class"].split()
    for a in images:
        i = int(a["data-image"])
        assert a["src"] == f"/img/{i}.png" and a["title"] == f"image {i}" and a["loading"] == "lazy"
        tile = visible[i // 1000]
        assert ("na-wrong" in a["class"].split()) == tile.wrong[tile.images.index(i)]
    root = next(a for tag, a in tags if tag == "div" and "na-treemap" in (a.get("class") or ""))
    assert f"width:{cols * cell}px;height:{rows * cell}px" in root["style"]


def test_html_escapes_text():
    tile = ClusterTile(node=3, rect=Rect(0, 0, 2, 1), label="<script>alert(1)</script>", color="#000",
                       title='a "quoted" & <b>', images=[1], image_titles=["<i>x</i>"],
                       wrong=[False], highlight=[False])
    out = treemap_html([tile], 16, 2, 1, lambda i: f"/img?i={i}&x=1")
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<i>" not in out and "<b>" not in out
    (_, attrs), = [t for t in parse(out) if t[0] == "img"]
    assert attrs["title"] == "<i>x</i>" and attrs["src"] == "/img?i=1&x=1"


@pytest.mark.parametrize("mode,rule", [("outline", ".na-mis-outline .na-wrong{outline:2px solid #d62728"),
                                       ("fade", ".na-mis-fade .na-wrong{opacity:.25}")])
def test_misclassified_modes(mode, rule):
    tile = ClusterTile(node=0, rect=Rect(0, 0, 2, 1), label="", color="#000", title="", images=[1, 2],
                       image_titles=["", ""], wrong=[True, False], highlight=[False, False])
    out = treemap_html([tile], 16, 2, 1, str, misclassified=mode)
    assert rule in out
    root_class = next(a["class"] for tag, a in parse(out) if "na-treemap" in (a.get("class") or ""))
    assert f"na-mis-{mode}" in root_class.split()
    none = treemap_html([tile], 16, 2, 1, str, misclassified="none")
    assert "na-mis-none" in none and "na-mis-outline\"" not in none
    with pytest.raises(ValueError):
        treemap_html([tile], 16, 2, 1, str, misclassified="blink")


def test_highlight_dim_and_selection():
    base = dict(label="", color="#123456", title="", image_titles=["", ""], wrong=[False, False])
    tiles = [ClusterTile(node=0, rect=Rect(0, 0, 2, 1), images=[0, 1], highlight=[False, True], **base),
             ClusterTile(node=1, rect=Rect(2, 0, 2, 1), images=[2, 3], highlight=[False, False], dim=True,
                         **base)]
    tags = parse(treemap_html(tiles, 16, 4, 1, str, selected=1))
    tile_class = {int(a["data-node"]): a["class"].split() for _, a in tags if "data-node" in a}
    image_class = {int(a["data-image"]): a["class"].split() for _, a in tags if "data-image" in a}
    root = next(a["class"].split() for _, a in tags if "na-treemap" in (a.get("class") or ""))
    assert "na-has-highlight" in root
    assert ["na-hit" in image_class[i] for i in range(4)] == [False, True, False, False]
    assert "na-dim" in tile_class[1] and "na-dim" not in tile_class[0]
    assert "na-selected" in tile_class[1] and "na-selected" not in tile_class[0]
    # a highlight among images that are not drawn does not fade the drawn ones
    hidden = [ClusterTile(node=0, rect=Rect(0, 0, 1, 1), images=[0, 1], highlight=[False, True], **base)]
    assert "na-has-highlight" not in treemap_html(hidden, 16, 1, 1, str).split("</style>")[1]


def test_tile_rejects_mismatched_flags():
    with pytest.raises(ValueError):
        ClusterTile(node=0, rect=Rect(0, 0, 1, 1), label="", color="#000", title="", images=[1, 2],
                    image_titles=["a", "b"], wrong=[False], highlight=[False, False])


def test_html_stays_compact_at_400_tiles():
    """The markup around the caller's URLs and tooltips stays small at ten thousand thumbnails."""
    tree = ScipyTree(2000, 9)
    cols, rows = 200, 160  # enough cells that most of 400 x 30 images are drawn
    frontier = breadth_first_frontier(tree.root, 400, tree.children, tree.height)
    rects = treemap_layout(tree.root, frontier, tree.children, tree.count, cols, rows)
    tiles = []
    for node, rect in rects.items():
        images = list(range(node * 30, node * 30 + 30))
        tiles.append(ClusterTile(node=node, rect=rect, label=f"{tree.count[node]:,} images · 97.1% acc",
                                 color="#1a9850", title=f"cluster {node}", images=images,
                                 image_titles=["7 as 1"] * 30, wrong=[i % 7 == 0 for i in images],
                                 highlight=[False] * 30))
    src = lambda i: f"/t/{i}.png"
    out = treemap_html(tiles, 32, cols, rows, src)
    drawn = [i for t in tiles for i in t.images[:t.rect.area]]
    assert out.count("<img") == len(drawn) > 10_000
    own = len(out.encode()) - sum(len(src(i)) + len("7 as 1") for i in drawn)
    assert own / len(drawn) < 80  # about 61 bytes per <img> plus its share of tile markup and CSS
    assert len(out.encode()) < 1_100_000
