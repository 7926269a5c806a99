"""The embedding map: datashader's aggregates against numpy, selections against brute force, the
UMAP/PCA maps against independent computations, caching and the CLI."""

from __future__ import annotations

import numpy as np
import param
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from netatlas.backend.embedding import (EmbedSettings, Embedding, approximate_knn, embed, exact_knn, membership,
                                       pca)
from netatlas.backend.errors import NetatlasError
from netatlas.viz.embedding import MapPoints, aggregate, legend_html, map_png, render, spread

RNG = np.random.default_rng(7)


def blobs(n: int, dims: int = 20, k: int = 6, spread: float = 8.0, seed: int = 0):
    """``k`` well separated Gaussian blobs: (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dims)) * spread
    which = rng.integers(0, k, n)
    return (centres[which] + rng.normal(size=(n, dims))).astype(np.float32), which


def random_points(n: int = 20_000) -> MapPoints:
    xy = RNG.normal(size=(n, 2)).astype(np.float32)
    labels = RNG.integers(-1, 5, n)                   # -1: unlabeled
    predictions = RNG.integers(0, 5, n)
    return MapPoints.build(xy, labels, predictions, [f"c{i}" for i in range(5)])


def numpy_counts(points: MapPoints, x_range, y_range, width, height, mask=None) -> np.ndarray:
    """[height, width] counts by np.histogram2d on the same bins (datashader's rows run along y)."""
    xy = points.xy if mask is None else points.xy[mask]
    counts, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=(height, width), range=(y_range, x_range))
    return counts


# ----------------------------------------------------------------------------- datashader vs numpy
@pytest.mark.parametrize("view", [((-4.0, 4.0), (-4.0, 4.0), 64, 48), ((-0.5, 1.25), (-1.0, 0.3), 37, 29)])
def test_count_aggregate_equals_numpy_histogram(view):
    points = random_points()
    x_range, y_range, width, height = view
    agg = aggregate(points, "density", x_range, y_range, width, height)
    assert agg.shape == (height, width)
    assert np.array_equal(agg.values, numpy_counts(points, x_range, y_range, width, height))


@pytest.mark.parametrize("column", ["class", "predicted", "correct"])
def test_categorical_aggregate_counts_each_category(column):
    points = random_points()
    x_range, y_range, width, height = (-2.0, 3.0), (-3.0, 2.0), 50, 40
    agg = aggregate(points, column, x_range, y_range, width, height)
    codes = points.frame[column].cat.codes.to_numpy()
    for i, name in enumerate(points.categories[column]):
        expected = numpy_counts(points, x_range, y_range, width, height, codes == i)
        assert np.array_equal(agg.sel({column: name}).values, expected), name


def test_value_aggregate_is_the_mean_per_pixel():
    points = random_points(5_000)
    values = RNG.normal(size=len(points)).astype(np.float32)
    points.set_values(values)
    x_range, y_range, width, height = (-3.0, 3.0), (-3.0, 3.0), 12, 10
    agg = aggregate(points, "value", x_range, y_range, width, height).values
    counts = numpy_counts(points, x_range, y_range, width, height)
    sums, _, _ = np.histogram2d(points.xy[:, 1], points.xy[:, 0], bins=(height, width),
                                range=(y_range, x_range), weights=values)
    filled = counts > 0
    assert np.isnan(agg[~filled]).all()
    np.testing.assert_allclose(agg[filled], sums[filled] / counts[filled], rtol=1e-5, atol=1e-6)


def test_render_highlight_keeps_chosen_points_and_fades_the_rest():
    points = random_points(5_000)
    chosen = np.flatnonzero(points.xy[:, 0] > 1)
    plain = render(points, "class", (-4, 4), (-4, 4), 80, 80).data
    lit = render(points, "class", (-4, 4), (-4, 4), 80, 80, highlight=chosen).data
    alpha_plain, alpha_lit = plain[..., 3].astype(int), lit[..., 3].astype(int)
    left = np.zeros_like(alpha_plain, bool)
    left[:, :30] = True                                     # x < -1: no chosen point can reach it
    assert alpha_lit[left & (alpha_plain > 0)].max() <= 45                   # faded
    right = alpha_plain[:, 55:] > 0                                         # x > 1.5: all chosen
    assert alpha_lit[:, 55:][right].min() >= 190                            # drawn at full strength


# ----------------------------------------------------------------------------- point size
def disk(r: float) -> np.ndarray:
    """The pixels within ``r`` of a pixel's centre: the dot a spread point covers."""
    d = np.arange(-int(r), int(r) + 1)
    return d[:, None] ** 2 + d[None, :] ** 2 <= r * r


def lit(points: MapPoints, x_range, y_range, width: int, height: int, **kw) -> np.ndarray:
    return render(points, "class", x_range, y_range, width, height, **kw).data[..., 3] > 0


def test_a_lone_point_is_a_dot_five_pixels_across():
    xy = np.array([[0.0, 0.0], *RNG.normal(size=(4_999, 2)) * 0.2 + 100], np.float32)   # one far from the rest
    points = MapPoints.build(xy, np.zeros(len(xy), int), None, ["a"])
    drawn = lit(points, (-1, 1), (-1, 1), 41, 41)                   # only the lone point in view, at (20, 20)
    expected = np.zeros((41, 41), bool)
    expected[18:23, 18:23] = disk(2.5)
    assert drawn.sum() == 21 and np.array_equal(drawn, expected)


def clusters(n: int) -> MapPoints:
    """``n`` points in ten round clusters, wide enough that 5,000 of them leave gaps between pixels."""
    rng = np.random.default_rng(3)
    which = rng.integers(0, 10, n)
    xy = rng.uniform(-10, 10, (10, 2))[which] + rng.normal(size=(n, 2)) * 1.5
    return MapPoints.build(xy.astype(np.float32), which, None, [str(i) for i in range(10)])


def typical_spacing_px(counts: np.ndarray) -> int:
    """By brute force: each point's neighbours in the 7 x 7 pixels around its own, per pixel; the
    median over the points; the spacing 1 / sqrt of that in whole pixels, at most 2."""
    rows, cols = np.nonzero(counts)
    around = [counts[max(r - 3, 0):r + 4, max(c - 3, 0):c + 4].sum() / 49 for r, c in zip(rows, cols)]
    typical = np.median(np.repeat(around, counts[rows, cols].astype(int)))
    return min(2, int(1 / np.sqrt(typical)))


@pytest.mark.parametrize("n", [5_000, 1_000_000])
def test_points_are_dots_the_typical_spacing_across(n):
    """5,000 points in ten clusters are dots (each lit pixel grown to a disk the typical spacing in
    radius); a million in the same clusters fill them pixel by pixel and are drawn unspread: not one
    pixel lit beyond those the points fall in, so dense clusters do not swell into blobs."""
    from scipy.ndimage import binary_dilation

    points, view = clusters(n), ((-16.0, 16.0), (-16.0, 16.0), 320, 260)
    counts = numpy_counts(points, *view)
    px = typical_spacing_px(counts)
    assert px == (1 if n == 5_000 else 0)
    alone = np.flipud(counts > 0)                                   # the rendered image has y up
    expected = binary_dilation(alone, disk(px + 0.5)) if px else alone
    assert np.array_equal(lit(points, *view), expected)


def test_highlighted_points_keep_their_size():
    """The chosen points are drawn as big as in the plain view (sized by every point in view), where
    drawn alone, being fewer, they would be spread wider."""
    points = random_points(5_000)
    chosen = np.flatnonzero(points.xy[:, 0] > 1)
    view = ((-5.0, 5.0), (-5.0, 5.0), 300, 300)                     # x = 1 at column 180
    strong = render(points, "class", *view, highlight=chosen).data[..., 3] > 45
    plain_right = lit(points, *view)[:, 182:]                       # past the others' 1 px of spread
    alone = MapPoints.build(points.xy[chosen].astype(np.float32), np.zeros(len(chosen), int), None, ["a"])
    assert np.array_equal(strong[:, 182:], plain_right)
    assert lit(alone, *view)[:, 182:].sum() > 1.2 * plain_right.sum()


@pytest.mark.parametrize("fill", [0.002, 0.05, 0.5])
def test_spread_is_datashaders_pixel_for_pixel(fill):
    """Our spread (no numba kernel to compile) against datashader's tf.spread on random RGBA images."""
    import datashader.transfer_functions as tf
    import xarray as xr

    alpha = RNG.integers(1, 256, 500).astype(np.uint32) << 24
    colours = RNG.integers(0, 2 ** 24, 500).astype(np.uint32) | alpha
    data = np.where(RNG.random((60, 80)) < fill, colours[RNG.integers(0, 500, (60, 80))], 0).astype(np.uint32)
    image = tf.Image(xr.DataArray(data, dims=["y", "x"], coords={"x": np.arange(80.0), "y": np.arange(60.0)}))
    for px in (1, 2, 3):
        assert np.array_equal(spread(image, px).data, tf.spread(image, px).data), px


# ----------------------------------------------------------------------------- selection vs brute force
def test_box_polygon_and_nearest_equal_brute_force():
    points = random_points(8_000)
    x, y = points.xy[:, 0], points.xy[:, 1]
    box = np.flatnonzero((x >= -0.3) & (x <= 1.1) & (y >= -2) & (y <= 0.4))
    assert np.array_equal(points.in_box(1.1, 0.4, -0.3, -2), box)      # corners in any order

    tri = np.array([[-1.0, -1.0], [2.0, -0.5], [0.0, 1.5]])            # barycentric inside test
    (ax, ay), (bx, by), (cx, cy) = tri
    det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    l1 = ((by - cy) * (x - cx) + (cx - bx) * (y - cy)) / det
    l2 = ((cy - ay) * (x - cx) + (ax - cx) * (y - cy)) / det
    inside = np.flatnonzero((l1 > 0) & (l2 > 0) & (1 - l1 - l2 > 0))
    assert np.array_equal(points.in_polygon(tri[:, 0], tri[:, 1]), inside)
    assert len(points.in_polygon([0, 1], [0, 1])) == 0                  # not a polygon

    d = np.hypot(x - 0.2, y + 0.1)
    assert points.nearest(0.2, -0.1, within=1.0) == int(np.argmin(d))
    assert points.nearest(50, 50, within=1.0) is None


def test_legends_name_every_present_category_and_the_value_span():
    points = random_points(2_000)
    html = legend_html(points, "class", "true class")
    counts = points.frame["class"].value_counts()
    for name in points.categories["class"]:
        assert f"{name} ({counts[name]:,})" in html
    points.set_values(np.linspace(-2, 5, len(points)))
    assert "-2" in legend_html(points, "value") and "5" in legend_html(points, "value")


def test_map_png_is_a_picture_of_the_points_with_axes_and_a_legend():
    import io

    from netatlas.viz.embedding import map_figure

    points = random_points(3_000)
    png = map_png(points, "class", 120, 100)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[0] > 100 + 40 and image.shape[1] > 120 + 150 and (image < 250).any()   # room for both
    figure = map_figure(points, "class", 120, 100)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "map 1" and axes.get_ylabel() == "map 2"
    assert len(axes.get_xticks()) >= 2 and len(axes.get_yticks()) >= 2
    counts = points.frame["class"].value_counts()
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == [f"{name} ({counts[name]:,})" for name in points.categories["class"] if counts[name]]
    assert axes.get_legend().get_title().get_text() == "true class"
    # the legend's colours are the map's
    colors = [tuple(np.round(np.array(h.get_facecolor()[:3]) * 255).astype(int))
              for h in axes.get_legend().legend_handles]
    from matplotlib.colors import to_rgb
    expected = [tuple(np.round(np.array(to_rgb(c)) * 255).astype(int))
                for name, c in __import__("netatlas.viz.embedding", fromlist=["x"]).category_colors(points, "class").items()
                if counts[name]]
    assert colors == expected
    points.set_values(np.linspace(-2, 5, len(points)))
    bar = map_figure(points, "value", 120, 100).axes[1]       # values: a colour bar on their span
    assert bar.get_ylim() == pytest.approx((-2, 5))


# ----------------------------------------------------------------------------- the maps
def test_pca_map_is_sklearns_first_two_components():
    from sklearn.decomposition import PCA

    x, _ = blobs(600, dims=12)
    ours = embed(x, EmbedSettings(method="pca")).xy
    theirs = PCA(2).fit_transform(x)
    for j in range(2):                                         # equal up to sign and scale
        assert abs(np.corrcoef(ours[:, j], theirs[:, j])[0, 1]) > 0.999


def manifold(n: int, seed: int) -> np.ndarray:
    """Points near a curved 3-D surface in 16-D, as learned representations are (low intrinsic dims)."""
    rng = np.random.default_rng(seed)
    latent = rng.uniform(-2, 2, (n, 3))
    lift = np.random.default_rng(0).normal(size=(6, 16))
    features = np.column_stack([latent, np.sin(2 * latent)])
    return (features @ lift + 0.05 * rng.normal(size=(n, 16))).astype(np.float32)


def test_approximate_knn_finds_the_exact_neighbours():
    base, queries = manifold(6_000, 1), manifold(800, 2)
    index, distance = approximate_knn(queries, base, 10)
    exact = torch.cdist(torch.from_numpy(queries), torch.from_numpy(base)).topk(10, largest=False)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(index, exact.indices.numpy())])
    assert recall > 0.9
    np.testing.assert_allclose(distance, np.linalg.norm(queries[:, None] - base[index], axis=2), rtol=1e-3, atol=1e-3)


def test_membership_is_umaps_smooth_knn():
    distances = np.sort(RNG.random((50, 15)) * 3, axis=1).astype(np.float32)
    weights = membership(distances)
    assert np.allclose(weights[:, 0], 1)                       # the nearest neighbour is certain
    np.testing.assert_allclose(weights.sum(1), np.log2(15), rtol=1e-4)
    assert (np.diff(weights, axis=1) <= 1e-7).all()            # farther is never more likely


def test_umap_map_separates_blobs_and_places_the_unfitted_rows():
    x, blob = blobs(1_500, dims=20)
    result = embed(x, EmbedSettings(fit_sample=1_000, n_neighbors=10, seed=0))
    assert result.method == "umap" and result.n_fitted == 1_000 and result.xy.shape == (1_500, 2)
    fitted, placed = np.flatnonzero(result.fitted), np.flatnonzero(~result.fitted)
    # Each placed row lands among fitted rows of its own blob (5-nearest vote in the map).
    d = np.linalg.norm(result.xy[placed, None] - result.xy[None, fitted], axis=2)
    votes = blob[fitted][np.argsort(d, axis=1)[:, :5]]
    agree = (votes == blob[placed, None]).mean(1) > 0.5
    assert agree.mean() > 0.97


def test_umap_reports_its_epochs_and_can_be_cancelled_between_them():
    x, _ = blobs(300, dims=10)
    seen = []
    embed(x, EmbedSettings(n_neighbors=10, seed=0), lambda done, total: seen.append((done, total)))
    done = [d for d, _ in seen]
    assert all(t == 300 for _, t in seen) and done == sorted(done) and done[-1] == 300
    during_fit = [d for d in done if 0 < d < 300]
    assert len(during_fit) > 100                              # epoch by epoch, not one jump at the end

    class Stop(Exception):
        pass

    def cancel(done, total):
        if total // 2 < done < total:                         # past the neighbour search: between epochs
            raise Stop
    with pytest.raises(Stop):
        embed(x, EmbedSettings(n_neighbors=10, seed=0), cancel)
    seen.clear()                                              # and the hook is gone afterwards
    import umap
    umap.UMAP(n_neighbors=10, random_state=0, n_epochs=5).fit_transform(x)
    assert seen == []


def test_progress_moves_while_the_nearest_neighbours_are_found(monkeypatch):
    """The bar moves from the start: the neighbour search reports block by block before the first epoch."""
    import netatlas.backend.embedding as embedding

    x, _ = blobs(600, dims=10)
    searching, real = [False], embedding.exact_knn

    def watched(*args, **kwargs):
        searching[0] = True
        try:
            return real(*args, **kwargs)
        finally:
            searching[0] = False
    monkeypatch.setattr(embedding, "exact_knn", watched)
    seen = []
    embed(x, EmbedSettings(n_neighbors=10, seed=0), lambda done, total: seen.append((done, total, searching[0])))
    during = [done for done, total, search in seen if search]
    assert len(set(during)) >= 10 and all(0 < done < 600 for done in during)
    assert during == sorted(during)
    assert seen.index((during[-1], 600, True)) < len(seen) - 100        # the epochs follow, one by one


def test_exact_knn_is_the_brute_force_neighbours_itself_first():
    x = (RNG.normal(size=(700, 12)) * 40 + 300).astype(np.float32)       # large norms: rounding would show
    x[5] = x[9]                                                          # a duplicate: two rows at distance 0
    index, distance = exact_knn(x, 8, block=5_000)                      # several blocks
    full = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    assert np.array_equal(index[:, 0], np.arange(len(x))) and not distance[:, 0].any()
    np.fill_diagonal(full, np.inf)
    expected = np.sort(full, axis=1)[:, :7]
    np.testing.assert_allclose(distance[:, 1:], expected, rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, index[:, 1:], 1), expected, rtol=1e-5)


def test_umap_graph_on_our_neighbours_is_umaps_own():
    """Below 4,096 rows umap-learn finds the neighbours itself from every pairwise distance (no
    pynndescent): given ours it builds the same fuzzy graph; and the same seed gives the same map."""
    from netatlas.backend.embedding import import_umap

    x, _ = blobs(800, dims=10)
    umap = import_umap()
    theirs = umap.UMAP(n_neighbors=10, random_state=0, n_epochs=2).fit(x).graph_
    knn = (*exact_knn(x, 10), None)
    ours = umap.UMAP(n_neighbors=10, random_state=0, n_epochs=2, precomputed_knn=knn).fit(x)
    assert abs(theirs - ours.graph_).max() < 1e-4 and theirs.nnz == ours.graph_.nnz
    settings = EmbedSettings(n_neighbors=10, seed=0)
    assert np.array_equal(embed(x, settings).xy, embed(x, settings).xy)


def test_umap_functions_are_cached_by_numba():
    import numba
    from numba.core.caching import NullCache

    from netatlas.backend.embedding import import_umap

    umap = import_umap()
    assert numba.njit is numba.core.decorators.njit and numba.jit is numba.core.decorators.jit  # restored
    # plain @numba.njit in umap-learn: cached only because import_umap asked for it
    assert not isinstance(umap.umap_.smooth_knn_dist._cache, NullCache)
    assert not isinstance(umap.layouts._nb_optimize_layout_euclidean_single_epoch._cache, NullCache)


def test_numba_cache_dir_falls_back_quietly(tmp_path, monkeypatch):
    import netatlas.backend.embedding as embedding

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    blocked = tmp_path / "a-file"
    blocked.write_text("a file where a folder would be: nothing can be written under it")
    monkeypatch.setattr(embedding, "_in_tree_cache", lambda: tmp_path / "site-packages" / "umap" / "__pycache__")
    assert embedding.numba_cache_dir(tmp_path / "cache") == str(tmp_path / "site-packages/umap/__pycache__")
    monkeypatch.setattr(embedding, "_in_tree_cache", lambda: blocked / "umap" / "__pycache__")  # read-only install
    assert embedding.numba_cache_dir(tmp_path / "cache") == str(tmp_path / "cache" / "numba")
    assert (tmp_path / "cache" / "numba").is_dir()
    assert embedding.numba_cache_dir(blocked / "cache") is None                          # nothing writable
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert embedding.numba_cache_dir(blocked / "cache") == str(tmp_path / "mine")         # the user's choice


def test_seeded_up_to_50k_images_parallel_above_with_the_same_fit_sample():
    from netatlas.backend.embedding import PARALLEL_ABOVE, _fit_rows, default_seed

    assert default_seed(PARALLEL_ABOVE) == 0 and default_seed(PARALLEL_ABOVE + 1) is None
    settings = EmbedSettings(fit_sample=100, seed=None)
    assert np.array_equal(_fit_rows(1_000, settings), _fit_rows(1_000, settings))


def test_embedding_refuses_non_finite_and_empty_inputs():
    x, _ = blobs(100)
    x[3, 2] = np.nan
    with pytest.raises(NetatlasError, match="NaN"):
        embed(x)
    with pytest.raises(NetatlasError, match="shape"):
        embed(np.zeros((0, 4), np.float32))
    with pytest.raises(NetatlasError, match="unknown embedding method"):
        embed(blobs(100)[0], EmbedSettings(method="tsne"))  # type: ignore[arg-type]


def test_tiny_datasets_fall_back_to_pca():
    x, _ = blobs(5, dims=6)
    result = embed(x, EmbedSettings(n_neighbors=15))
    assert result.method == "pca" and result.xy.shape == (5, 2)
    single = embed(np.arange(10, dtype=np.float32)[:, None], EmbedSettings(method="pca")).xy
    assert single.shape == (10, 2) and (single[:, 1] == 0).all()
    assert abs(np.corrcoef(single[:, 0], np.arange(10))[0, 1]) > 0.999


def test_pca_helper_keeps_few_dimensions_as_they_are():
    x, _ = blobs(50, dims=4)
    np.testing.assert_allclose(pca(x, 8), x - x.mean(0), atol=1e-5)


# ----------------------------------------------------------------------------- cache and CLI
def test_workspace_embedding_is_cached(small_loaded, small_dataset, cache_dir, monkeypatch):
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.workspace import Workspace

    settings = EmbedSettings(method="pca")
    first = Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu").embedding(None, settings=settings)
    import netatlas.backend.workspace as workspace

    monkeypatch.setattr(workspace, "embed", lambda *a, **k: pytest.fail("recomputed a cached map"))
    again = Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu").embedding(None, settings=settings)
    assert np.array_equal(first.xy, again.xy) and again.method == "pca"
    assert np.array_equal(again.fitted, np.ones(len(small_dataset), bool))


def test_cli_embed_writes_the_table_and_a_picture(tmp_path, capsys):
    from netatlas.cli import main

    out, png = tmp_path / "map.parquet", tmp_path / "map.png"
    assert main(["embed", "demo", "demo", "--method", "pca", "--cache-dir", str(tmp_path / "cache"),
                 "-o", str(out), "--png", str(png)]) == 0
    table = pq.read_table(out).to_pandas()
    assert len(table) == 5000 and {"id", "label", "prediction", "x", "y", "fitted"} <= set(table.columns)
    width, height = Image.open(png).size                  # an 800 x 800 map with axes and a legend around it
    assert width > 800 + 150 and height > 800 + 40
    assert "pca map of 5,000 images" in capsys.readouterr().out


def test_cli_embed_rejects_bad_settings(tmp_path, capsys):
    from netatlas.cli import main

    assert main(["embed", "demo", "demo", "--neighbors", "1", "--cache-dir", str(tmp_path)]) == 2
    assert "--neighbors" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the Map tab
def test_map_shows_a_pca_preview_until_the_umap_map_is_ready(small_loaded, small_dataset, cache_dir, monkeypatch):
    """A slow UMAP (held on an Event): the view shows the PCA map of the same representation first, with
    hover and box selection working on it, then the UMAP map, keeping the selection; cached, at once."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    import threading

    import netatlas.backend.workspace as workspace
    from netatlas.app.config import AppConfig
    from netatlas.app.dendromap_view import DendroMapView
    from netatlas.app.map_view import MapView
    from netatlas.app.neurons_view import LOGITS, NeuronsView
    from netatlas.app.page import load_extensions
    from netatlas.app.state import AppState
    from netatlas.backend.cache import ResultCache

    release, real_embed = threading.Event(), workspace.embed
    umap_xy = np.column_stack([np.arange(len(small_dataset)), -np.arange(len(small_dataset))]).astype(np.float32)

    def slow_embed(x, settings, progress=None):
        if settings.method == "pca":
            return real_embed(x, settings, progress)
        assert release.wait(30), "the UMAP was never released"
        return Embedding(umap_xy, np.ones(len(x), bool), "umap")
    monkeypatch.setattr(workspace, "embed", slow_embed)
    ws = workspace.Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu")
    _, x, _ = ws.representation("")
    expected_pca = embed(x, EmbedSettings(method="pca")).xy

    load_extensions()

    def map_view():
        state = AppState(AppConfig())
        neurons = NeuronsView(state)
        view = MapView(state, neurons, DendroMapView(state, neurons))
        with param.discard_events(state):
            state.workspace = ws
        with param.discard_events(view.layer):                         # no build of its own
            view.layer.options, view.layer.value = [LOGITS], LOGITS
        view.shown = True
        return view, state

    async def scenario() -> None:
        view, state = map_view()
        build = asyncio.ensure_future(view._build(ws, LOGITS, "umap"))
        for _ in range(600):
            if view.points is not None:
                break
            await asyncio.sleep(0.05)
        np.testing.assert_allclose(view.points.xy, expected_pca, atol=1e-6)
        assert "PCA preview" in view.summary.object and state.busy       # UMAP still running
        x0, y0, x1, y1 = view.points.bounds
        view._on_pointer(*view.points.xy[3])
        assert small_dataset.ids[3] in view.hover.object
        view._on_box((x0, y0, x1, y1))
        assert len(view.selection) == len(small_dataset)
        release.set()
        await build
        np.testing.assert_allclose(view.points.xy, umap_xy)
        assert "UMAP map" in view.summary.object and not state.busy
        assert len(view.selection) == len(small_dataset)                 # kept across the swap

        again, _ = map_view()                                            # cached: UMAP at once
        shown = []
        again.show = lambda embedding, *rest, **kw: shown.append((embedding.method, kw.get("preview", False)))
        await again._build(ws, LOGITS, "umap")
        assert shown == [("umap", False)]

    with ThreadPoolExecutor(1) as thread:   # a loop of its own: the browser tests' Playwright keeps one running here
        thread.submit(asyncio.run, scenario()).result()


def test_identical_rows_are_one_point_not_a_random_scatter():
    """A constant representation: UMAP would start at random and spread identical images apart."""
    x = np.full((60, 7), 0.25, dtype=np.float32)
    emb = embed(x, EmbedSettings(method="umap", n_neighbors=5))
    assert np.isfinite(emb.xy).all()
    np.testing.assert_array_equal(emb.xy, np.zeros_like(emb.xy))
    assert emb.method == "pca" and emb.n_fitted == 60
