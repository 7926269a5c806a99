"""Facets of a unit in the Neurons tab: k synthetic images, and the neuron card download."""

from __future__ import annotations

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser


def test_facets_show_k_images_and_export_a_card(page, demo_server):
    open_app(page, demo_server.url)
    page.get_by_text("Neurons", exact=True).click()
    expect(page.locator(".na-grid-top img")).to_have_count(16, timeout=60_000)

    placeholder = page.locator(".na-facets-placeholder")          # before the button: what, and how long
    expect(placeholder).to_contain_text("Nothing visualized yet")
    expect(placeholder).to_contain_text("one synthetic image per facet")
    expect(placeholder).to_contain_text("The demo's defaults (4 facets, 200 steps) take about 5 s")
    steps = page.locator(".na-steps input").first
    steps.fill("40")
    steps.press("Enter")
    expect(placeholder).to_contain_text("optimized for 40 steps")
    page.get_by_role("button", name="Visualize facets").click()
    facets = page.locator(".na-facet-img")
    expect(facets).to_have_count(4, timeout=180_000)
    expect(placeholder).to_be_hidden()
    expect(page.locator(".na-facets-pane")).to_contain_text("the dataset max")
    expect(page.locator(".na-facets-pane")).to_contain_text("Diversity of the facets")

    with page.expect_download() as download:
        page.locator(".na-card-download button").click()
    assert download.value.suggested_filename == "neuron_card.png"
    with Image.open(download.value.path()) as card:
        assert card.width > 400 and card.height > 400
    assert demo_server.alive()
