"""The Residual tab on the demo: compute, see the four plots, download one as SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app
from tests.browser.test_kan_tab import wheel_scrolls_the_page

pytestmark = pytest.mark.browser


def test_residual_tab_shows_four_plots_and_exports_svg(page, demo_server):
    open_app(page, demo_server.url, "blocks.5")
    page.get_by_text("Residual", exact=True).click()
    units = page.locator(".na-units")
    for i in range(6):
        expect(units).to_contain_text(f"blocks.{i}")

    placeholder = page.locator(".na-residual-placeholder")          # before Compute: what, and how long
    expect(placeholder).to_contain_text("Nothing computed yet")
    expect(placeholder).to_contain_text("With 6 units and 256 images it runs the model about 190 times")
    images = page.locator(".na-images input").first
    images.fill("64")
    images.press("Enter")
    expect(placeholder).to_contain_text("6 units and 64 images")
    compute = page.get_by_role("button", name="Compute path plots")
    expect(compute).to_be_enabled(timeout=180_000)      # the opening model's first pass keeps it disabled
    compute.click()
    plots = page.locator(".na-residual-plot")
    expect(plots).to_have_count(4, timeout=120_000)
    expect(placeholder).to_have_count(0)
    for title in ("Per residual unit", "Veit et al.", "Order-k decomposition", "Lesions"):
        expect(page.locator(".na-residual-plot", has_text=title)).to_have_count(1)
    # Each card holds rendered Bokeh canvases (one per panel).
    expect(page.locator(".na-residual-plot canvas").first).to_be_visible()
    expect(page.get_by_text("6 units, 64 images")).to_be_visible()

    with page.expect_download() as download:
        page.locator(".na-download-orders button").click()
    path = download.value.path()
    assert download.value.suggested_filename == "residual_orders.svg"
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    wheel_scrolls_the_page(page, ".na-residual-plot")                 # no residual plot catches the wheel
    assert demo_server.alive()
