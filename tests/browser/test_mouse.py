"""The real mouse on the demo: the wheel scrolls the page over every plot but the Map (which zooms), a
click anywhere on a DendroMap tile zooms into it, and a thumbnail's "i" opens its details beside the map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1400, "height": 800}      # a laptop screen: every tab is taller than it
# The template scrolls its main container, not the window; either counts as the page scrolling.
SCROLLED = "() => window.scrollY + (document.querySelector('#main')?.scrollTop ?? 0)"
ROOM = "() => { const m = document.querySelector('#main'); return m.scrollHeight - m.clientHeight; }"
TO_TOP = "() => { window.scrollTo(0, 0); document.querySelector('#main').scrollTop = 0; }"
# Every Bokeh range in the document: a wheel zoom anywhere would change one.
RANGES = """() => [...Bokeh.documents[0].all_models]
    .filter(m => m.x_range !== undefined && m.y_range !== undefined)
    .map(m => [m.x_range.start, m.x_range.end, m.y_range.start, m.y_range.end])"""


def shots() -> Path:
    """Where the screenshots go (NETATLAS_SCREENSHOTS to keep them; else a scratch folder)."""
    path = Path(os.environ.get("NETATLAS_SCREENSHOTS", "/tmp/netatlas-mouse"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_over(page, locator) -> float:
    """From the top of the page, wheel down 400 px over ``locator``'s centre; how far the page scrolled."""
    page.evaluate(TO_TOP)
    page.wait_for_timeout(200)
    box = locator.bounding_box()
    assert box and box["y"] + box["height"] / 2 < VIEWPORT["height"], "the plot must be on screen"
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    before = page.evaluate(SCROLLED)
    page.mouse.wheel(0, 400)
    page.wait_for_timeout(600)                  # smooth scrolling, then Bokeh's range events
    return page.evaluate(SCROLLED) - before


def centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_wheel_scrolls_the_page_over_the_neurons_plots(page, demo_server):
    page.set_viewport_size(VIEWPORT)
    open_app(page, demo_server.url)
    page.get_by_text("Neurons", exact=True).click()
    for name in (".na-histogram", ".na-class-means"):
        expect(page.locator(f"{name} canvas").first).to_be_visible(timeout=60_000)
    assert page.evaluate(ROOM) > 100
    for name in (".na-histogram", ".na-class-means"):
        ranges = page.evaluate(RANGES)
        assert ranges, "the Bokeh plots are in the document"
        assert wheel_over(page, page.locator(f"{name} canvas").first) > 50, f"the wheel over {name} scrolled nothing"
        assert page.evaluate(RANGES) == ranges, f"the wheel over {name} zoomed it"


def test_dendromap_wheel_scrolls_click_zooms_and_i_opens_details(page, demo_server):
    page.set_viewport_size(VIEWPORT)
    open_app(page, demo_server.url)
    page.get_by_text("DendroMap", exact=True).click()
    tiles, crumbs = page.locator(".na-tile"), page.locator(".na-crumb")
    treemap = page.locator(".na-dendromap")
    expect(treemap).to_be_visible(timeout=60_000)
    first = treemap.bounding_box()["y"]            # while the tree is built: no breadcrumbs yet
    expect(tiles).to_have_count(8, timeout=120_000)
    assert treemap.bounding_box()["y"] == first, "the map moved when the breadcrumbs came"
    expect(crumbs).to_have_count(1)
    page.wait_for_timeout(500)                  # thumbnails load
    page.screenshot(path=shots() / "dendromap-top.png")

    # The wheel over the map scrolls the page.
    assert page.evaluate(ROOM) > 100
    assert wheel_over(page, page.locator(".na-treemap")) > 50

    # A click at the centre of the largest tile (on a thumbnail) zooms one level.
    page.evaluate(TO_TOP)
    areas = [box["width"] * box["height"] for box in (tile.bounding_box() for tile in tiles.all())]
    largest = tiles.nth(areas.index(max(areas)))
    node = largest.get_attribute("data-node")
    largest.scroll_into_view_if_needed()
    page.mouse.click(*centre(largest))
    expect(crumbs).to_have_count(2, timeout=30_000)
    expect(crumbs.last).to_contain_text(f"#{node}")
    page.wait_for_timeout(800)
    page.screenshot(path=shots() / "dendromap-zoomed.png")

    # Hovering a thumbnail shows its "i"; clicking the "i" opens the image beside the map, on screen.
    thumb = page.locator(".na-img").first
    page.mouse.move(*centre(thumb))
    info = page.locator(".na-info")
    expect(info).to_be_visible()
    image = thumb.get_attribute("data-image")
    page.mouse.click(*centre(info))
    detail = page.locator(".na-image-detail")
    expect(detail).to_contain_text("Nearest neighbours", timeout=30_000)
    expect(crumbs).to_have_count(2)             # the "i" does not zoom
    expect(page.locator(".na-neighbours img")).to_have_count(8)
    box = detail.bounding_box()
    assert 0 <= box["y"] and box["y"] + 200 <= VIEWPORT["height"], f"details off screen: {box}"
    page.wait_for_timeout(500)
    page.screenshot(path=shots() / "dendromap-details.png")
    assert image is not None

    # The close button puts the side panel back.
    page.locator(".na-close-detail button").click()
    expect(detail).to_be_hidden(timeout=30_000)
    assert demo_server.alive()


def test_wheel_zooms_the_map_and_does_not_scroll_the_page(page, demo_server):
    page.set_viewport_size(VIEWPORT)
    open_app(page, demo_server.url)
    page.get_by_text("Map", exact=True).click()
    expect(page.locator(".na-map-legend")).to_contain_text("true class", timeout=120_000)
    plot = page.locator(".na-map canvas").first
    expect(plot).to_be_visible()
    assert page.evaluate(ROOM) > 100
    ranges = page.evaluate(RANGES)
    assert wheel_over(page, plot) == 0
    assert page.evaluate(RANGES) != ranges, "the wheel over the Map zooms it"
    page.screenshot(path=shots() / "map-wheel.png")
