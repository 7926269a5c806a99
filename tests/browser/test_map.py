"""The Map tab on the demo, as a user drives it in Chromium: a PCA preview appears, then the UMAP coloured
by class with a legend; hover shows the image under the pointer; box select shows the selected images with
counts per class and highlights them in the DendroMap; a DendroMap cluster is highlighted on the map in turn."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import open_app, start_server, stop

pytestmark = pytest.mark.browser

# Sum of the map image's bytes in the page: changes when the server sends a new rendering. The models
# on screen are the roots' references (the document keeps the PCA preview's plot in _all_models).
IMAGE_SUM = """() => { for (const doc of Bokeh.documents) for (const root of doc.roots())
  for (const m of root.references()) if (m.type === 'GlyphRenderer' && m.glyph.type === 'ImageRGBA') {
    const a = new Uint8Array(m.data_source.data.image[0].buffer); let s = 0;
    for (let i = 3; i < a.length; i += 4) s += a[i]; return s; }
  return -1; }"""


def selected_count(page) -> int:
    text = page.locator(".na-map-count").inner_text()
    return int(re.search(r"([\d,]+) images selected", text).group(1).replace(",", ""))


def class_table_total(page) -> int:
    counts = page.locator(".na-map-counts .tabulator-row [tabulator-field='count']").all_inner_texts()
    return sum(int(c.replace(",", "")) for c in counts)


def coloured_pixel(page, plot) -> tuple[float, float]:
    """Page coordinates of a point drawn on the map (a saturated pixel of the plot's screenshot)."""
    box = plot.bounding_box()
    rgb = np.asarray(Image.open(io.BytesIO(plot.screenshot())).convert("RGB")).astype(int)
    saturated = (rgb.max(2) - rgb.min(2)) > 80
    saturated[:, int(0.9 * rgb.shape[1]):] = False               # not the toolbar's logo
    ys, xs = np.nonzero(saturated)
    scale = rgb.shape[1] / box["width"]
    return box["x"] + xs[len(xs) // 2] / scale, box["y"] + ys[len(ys) // 2] / scale


def box_select(page, box, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag the box-select tool from (x0, y0) to (x1, y1), given as fractions of the plot."""
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + (x0 + x1) / 2 * box["width"], box["y"] + (y0 + y1) / 2 * box["height"], steps=6)
    page.mouse.move(box["x"] + x1 * box["width"], box["y"] + y1 * box["height"], steps=6)
    page.mouse.up()


def test_map_hover_box_select_and_dendromap_links(page, demo_server):
    page.set_viewport_size({"width": 1400, "height": 1400})
    open_app(page, demo_server.url, "blocks.5")
    page.get_by_text("Map", exact=True).click()
    legend, summary = page.locator(".na-map-legend"), page.locator(".na-map-summary")
    expect(summary).to_contain_text("PCA preview", timeout=120_000)         # a picture while UMAP runs
    expect(legend).to_contain_text("true class", timeout=60_000)           # after the first render
    expect(page.locator(".na-cancel")).to_be_visible()                      # with its progress bar
    page.wait_for_function(f"({IMAGE_SUM})() > 0", timeout=30_000)
    preview = page.evaluate(IMAGE_SUM)
    # Then the UMAP map, and its picture on the page: the steps below act on the map they measure (acting
    # on the preview, a UMAP landing between two box selections moved the images under the second).
    expect(summary).not_to_contain_text("PCA preview", timeout=300_000)    # UMAP's first run compiles
    expect(summary).to_contain_text("UMAP map")
    page.wait_for_function(f"(s => s > 0 && s !== {preview})(({IMAGE_SUM})())", timeout=30_000)
    for digit in range(10):
        expect(legend).to_contain_text(f"{digit} (500)")
    plot = page.locator(".na-map canvas").first
    box = plot.bounding_box()
    plain = page.evaluate(IMAGE_SUM)
    assert plain > 0

    # Hover over a drawn point: its image and labels show; a tap opens it with its neighbours.
    point = coloured_pixel(page, plot)
    page.mouse.move(*point)
    expect(page.locator(".na-hovered img")).to_be_visible(timeout=30_000)
    expect(page.locator(".na-hovered")).to_contain_text("predicted")
    page.mouse.click(*point)
    expect(page.locator(".na-map-detail .na-neighbours img")).to_have_count(8, timeout=30_000)

    # Box select over the whole plot: every image, and the class table counts all of them.
    page.locator(".na-map .bk-tool-icon-box-select").first.click()
    box_select(page, box, 0.02, 0.02, 0.999, 0.995)
    expect(page.locator(".na-map-count")).to_contain_text("5,000 images selected", timeout=30_000)
    expect(page.locator(".na-map-grid .na-thumb")).to_have_count(48)
    assert class_table_total(page) == 5000
    page.wait_for_function(f"({IMAGE_SUM})() !== {plain}", timeout=30_000)  # re-rendered with the selection

    # A box over the upper left quarter: some images, counted per class, highlighted on the map.
    box_select(page, box, 0.02, 0.02, 0.5, 0.5)
    expect(page.locator(".na-map-count")).not_to_contain_text("5,000 images", timeout=30_000)
    chosen = selected_count(page)
    assert 0 < chosen < 5000
    assert class_table_total(page) == chosen
    page.wait_for_function(f"({IMAGE_SUM})() < {plain}", timeout=30_000)  # the rest fades

    # A lasso around the lower left triangle of the plot: other images, still counted per class.
    page.locator(".na-map .bk-tool-icon-lasso-select").first.click()
    lasso = [(0.02, 0.02), (0.02, 0.97), (0.9, 0.97), (0.03, 0.03)]
    page.mouse.move(box["x"] + lasso[0][0] * box["width"], box["y"] + lasso[0][1] * box["height"])
    page.mouse.down()
    for fx, fy in lasso[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=5)
    page.mouse.up()
    expect(page.locator(".na-map-count")).not_to_contain_text(f"{chosen:,} images", timeout=30_000)
    lassoed = selected_count(page)
    assert 0 < lassoed < 5000 and class_table_total(page) == lassoed

    # Box again, as a user goes back to the quarter, for the DendroMap check below.
    page.locator(".na-map .bk-tool-icon-box-select").first.click()
    box_select(page, box, 0.02, 0.02, 0.5, 0.5)
    expect(page.locator(".na-map-count")).to_contain_text(f"{chosen:,} images selected", timeout=30_000)

    # The DendroMap highlights the same images.
    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile").first).to_be_visible(timeout=120_000)
    expect(page.locator(".na-cluster-summary")).to_contain_text(
        f"{chosen:,} match the filter ({chosen:,} in all, selected on the Map)", timeout=30_000)

    # Clearing the selection there and zooming into a cluster highlights that cluster on the map.
    page.get_by_text("Map", exact=True).click()
    page.locator(".na-map-clear").locator("button").click()
    expect(page.locator(".na-map-empty")).to_be_visible(timeout=30_000)
    page.wait_for_function(f"({IMAGE_SUM})() === {plain}", timeout=30_000)
    page.get_by_text("DendroMap", exact=True).click()
    page.locator(".na-tile .na-head").first.click()
    expect(page.locator(".na-crumb")).to_have_count(2, timeout=30_000)
    page.get_by_text("Map", exact=True).click()
    page.wait_for_function(f"({IMAGE_SUM})() < {plain}", timeout=30_000)

    # Colour by the DendroMap's top clusters: the legend lists 8 clusters covering every image.
    page.locator(".na-map-color select").select_option("Cluster (DendroMap tree)")
    expect(legend).to_contain_text("top 8 DendroMap clusters", timeout=30_000)
    sizes = [int(n.replace(",", "")) for n in re.findall(r"#\d+ \(([\d,]+)\)", legend.inner_text())]
    assert len(sizes) == 8 and sum(sizes) == 5000


def test_served_with_dask_the_map_is_extracted_on_its_workers(page, tmp_path):
    """`serve --dask local`: the page's activations come from Parquet parts written by the workers."""
    server = start_server(tmp_path, "--dask", "local")
    try:
        open_app(page, server.url, "blocks.5")
        page.get_by_text("Map", exact=True).click()
        page.locator(".na-map-color select").select_option("Correct / misclassified")
        expect(page.locator(".na-map-legend")).to_contain_text("correct (4,", timeout=300_000)
        manifests = list((tmp_path / "cache" / "activations-parts").glob("*/_manifest.json"))
        assert manifests and list(manifests[0].parent.glob("part-*.parquet"))
        assert "extracting on Dask at local" in server.log.read_text()
    finally:
        stop(server)
