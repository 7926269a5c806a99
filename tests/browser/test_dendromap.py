"""The DendroMap tab on the demo, as a user drives it in Chromium: zoom two levels, come back by a
breadcrumb, colour by accuracy, filter, open an image by its "i" and export a cluster."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from playwright.sync_api import expect
from scipy.cluster.hierarchy import fcluster, linkage

from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser
LABEL = re.compile(r"([\d,]+) images? · (\d+)% acc")


def scipy_top_clusters(k: int) -> list[tuple[int, int]]:
    """(size, rounded accuracy %) of scipy's k Ward clusters of the demo's penultimate code."""
    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    x = loaded.preprocessing.uint8_to_tensor(dataset.array)
    codes = []
    handle = loaded.model.flatten.register_forward_hook(lambda m, i, o: codes.append(o))
    with torch.no_grad():
        predictions = loaded.model(x).argmax(1).numpy()
    handle.remove()
    parts = fcluster(linkage(codes[0].numpy().astype(np.float64), "ward"), k, "maxclust")
    correct = predictions == dataset.labels
    return sorted((int((parts == p).sum()), round(100 * correct[parts == p].mean())) for p in np.unique(parts))


def tile_labels(page) -> list[tuple[int, int]]:
    """(size, accuracy %) of every tile on the map, sorted (two clusters can look alike)."""
    heads = page.locator(".na-tile .na-head").all_inner_texts()
    found = [LABEL.search(text) for text in heads]
    return sorted((int(m.group(1).replace(",", "")), int(m.group(2))) for m in found if m)


def settled_labels(page, total: int, timeout: float = 30.0) -> list[tuple[int, int]]:
    """The tile labels once the map shows ``total`` images (the map and the breadcrumbs are
    separate updates, so the tiles can arrive a moment after the breadcrumbs)."""
    deadline = time.monotonic() + timeout
    while True:
        labels = tile_labels(page)
        if sum(size for size, _ in labels) == total or time.monotonic() > deadline:
            return labels
        page.wait_for_timeout(200)


def test_dendromap_zoom_breadcrumbs_colour_filter_export(page, demo_server):
    fetched: list[str] = []                      # thumbnails the browser had to fetch
    page.on("requestfinished", lambda request: "/thumb/" in request.url and fetched.append(request.url))
    page.set_viewport_size({"width": 1400, "height": 1300})   # the whole map on screen (lazy images load)
    open_app(page, demo_server.url, "blocks.5")
    page.get_by_text("DendroMap", exact=True).click()
    tiles = page.locator(".na-tile")
    expect(tiles).to_have_count(8, timeout=120_000)
    expect(page.locator(".na-legend")).to_contain_text("accuracy")

    # The 8 top clusters are scipy's Ward clusters of the same code, with the same accuracy.
    top = tile_labels(page)
    assert top == scipy_top_clusters(8)
    # The whole dataset has no excess over its own mean: its units are the most active ones, said so.
    units = page.locator(".na-units-title")
    expect(units).to_contain_text("Most active units", timeout=30_000)
    unit_columns = page.locator(".na-top-units .tabulator-col-title")
    expect(unit_columns.filter(has_text="dataset mean")).to_have_count(1)
    expect(unit_columns.filter(has_text="excess")).to_have_count(0)

    # Zoom in two levels, a click anywhere on a tile (its centre is a thumbnail): the breadcrumbs grow,
    # the tiles are the clicked cluster's parts.
    biggest = max(top)[0]
    page.locator(".na-tile", has_text=f"{biggest:,} images").click()
    crumbs = page.locator(".na-crumb")
    expect(crumbs).to_have_count(2, timeout=30_000)
    expect(units).to_contain_text("Top units of this cluster", timeout=30_000)
    expect(unit_columns.filter(has_text="excess")).to_have_count(1)
    level1 = settled_labels(page, biggest)
    assert sum(size for size, _ in level1) == biggest and len(level1) >= 2
    # The side panel follows: the class table counts the zoomed cluster's images.
    expect(page.locator(".na-cluster-summary p").first).to_contain_text(f"{biggest:,} images")
    class_rows = page.locator(".na-classes .tabulator-row")
    assert sum(int(row.split("\n")[1]) for row in class_rows.all_inner_texts()) == biggest
    # Choosing a class row highlights that class's images in this cluster.
    chosen = class_rows.first.inner_text().split("\n")
    class_rows.first.click()
    expect(page.locator(".na-cluster-summary p").first).to_contain_text(f"{int(chosen[1]):,} match the filter",
                                                                       timeout=30_000)
    second = max(level1)[0]
    page.locator(".na-tile", has_text=f"{second:,} images").first.click()
    expect(crumbs).to_have_count(3, timeout=30_000)
    assert sum(size for size, _ in settled_labels(page, second)) == second

    # Back to the whole dataset by the first breadcrumb. Thumbnails are URLs (cacheable by the
    # browser), not inline bytes, so an update sends only the HTML.
    assert fetched and page.locator(".na-img").first.get_attribute("src").startswith("/thumb/")
    crumbs.first.click()
    expect(crumbs).to_have_count(1, timeout=30_000)
    expect(tiles).to_have_count(8)
    assert settled_labels(page, 5000) == top

    # Colour by a class's share, then back to accuracy: the legend follows.
    page.locator(".na-color-by select").select_option("Share of a class")
    expect(page.locator(".na-legend")).to_contain_text("share of class", timeout=30_000)
    page.locator(".na-color-by select").select_option("Neuron (from the Neurons tab)")
    expect(page.locator(".na-legend")).to_contain_text("mean activation of unit", timeout=30_000)
    page.locator(".na-color-by select").select_option("Accuracy")
    expect(page.locator(".na-legend")).to_contain_text("accuracy", timeout=30_000)

    # Misclassified only: every match is outlined as wrong, and the summary counts them.
    page.locator(".na-wrong-only input").check()
    summary = page.locator(".na-cluster-summary p").first
    expect(summary).to_contain_text("match the filter", timeout=30_000)
    hits = page.locator(".na-img.na-hit")
    expect(hits.first).to_be_visible()
    assert hits.count() == page.locator(".na-img.na-hit.na-wrong").count()

    # Export the matches of the whole dataset: one CSV row per misclassified image.
    with page.expect_download() as download:
        page.locator(".na-export button").click()
    rows = open(download.value.path()).read().strip().splitlines()
    wrong = int(re.search(r"([\d,]+) match the filter", summary.inner_text()).group(1).replace(",", ""))
    assert rows[0].startswith("index,id,label") and len(rows) - 1 == wrong
    assert all(line.endswith(",False,9998") for line in rows[1:])

    # An image's "i" (shown on the thumbnail under the pointer) opens its details with its 8 nearest neighbours.
    page.locator(".na-img").first.hover()
    page.locator(".na-info").click()
    expect(page.locator(".na-image-detail")).to_contain_text("Nearest neighbours", timeout=30_000)
    expect(page.locator(".na-neighbours img")).to_have_count(8)
    assert demo_server.alive()
