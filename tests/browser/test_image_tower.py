"""A CLIP folder (text and image towers) served on a ``datasets`` save_to_disk DatasetDict of digits: it opens as
its image tower, the Model tab says the text tower is left out, and every tab renders on the vision tower, over
both splits' images, with no console error."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.backbones import clip_folder, saved_digits
from tests.browser.conftest import open_app, start_server, stop

pytestmark = pytest.mark.browser
IMAGES = 40


@pytest.fixture(scope="module")
def clip_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    server = start_server(root, "--checkpoint", str(clip_folder(root)), "--data", str(saved_digits(root, IMAGES)))
    yield server
    stop(server)


def test_clip_opens_as_its_image_tower_on_every_tab(page, clip_server):
    errors: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_viewport_size({"width": 1400, "height": 1300})
    open_app(page, clip_server.url, "vision_model.encoder.layers.1")
    tree = page.locator(".na-module-tree")
    expect(tree).to_contain_text("visual_projection")
    assert "text_model" not in tree.inner_text()
    expect(page.locator(".na-model-summary")).to_contain_text("the text tower is left out", timeout=30_000)

    page.get_by_text("Diagram", exact=True).click()
    expect(page.locator(".na-diagram svg")).to_be_visible(timeout=90_000)
    assert "text" not in page.locator(".na-diagram svg").evaluate("svg => svg.textContent").lower()

    page.get_by_text("Neurons", exact=True).click()
    expect(page.locator(".na-grid-top img")).to_have_count(16, timeout=90_000)

    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile").first).to_be_visible(timeout=90_000)
    page.wait_for_timeout(1000)
    sizes = [int(m.group(1)) for t in page.locator(".na-tile .na-head").all_inner_texts()
             if (m := re.fullmatch(r"(\d+) images?", t.strip()))]
    assert sum(sizes) == IMAGES
    chosen = page.locator(".na-rep select").evaluate("s => s.options[s.selectedIndex].text")
    assert "output" in chosen.lower(), chosen                     # the image embedding, by default

    page.get_by_text("Map", exact=True).click()
    expect(page.locator(".na-map canvas").first).to_be_visible(timeout=180_000)

    page.get_by_text("Residual", exact=True).click()
    expect(page.locator(".na-units")).to_contain_text("vision_model.encoder", timeout=60_000)

    assert not errors, errors
    assert clip_server.alive()
