"""A folder with unreadable files, served: the page says how many were left out and names them, and the
DendroMap and the Map count only the readable images."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app, start_server, stop
from tests.test_unreadable import BROKEN, digit_folder

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def broken_folder_server(tmp_path_factory):
    folder = digit_folder(tmp_path_factory.mktemp("data") / "mixed", broken=True)
    server = start_server(tmp_path_factory.mktemp("srv"), "--data", str(folder))
    yield server
    stop(server)


def test_the_page_leaves_unreadable_images_out_and_says_so(page, broken_folder_server):
    page.set_viewport_size({"width": 1400, "height": 1100})
    open_app(page, broken_folder_server.url, "blocks.5")
    status = page.locator(".na-status")
    expect(status).to_contain_text("Left out 4 unreadable images", timeout=120_000)
    expect(status).to_contain_text(BROKEN[0])                  # the first ones are named

    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile").first).to_be_visible(timeout=120_000)
    heads = page.locator(".na-tile .na-head").all_inner_texts()
    sizes = [int(m.group(1).replace(",", "")) for m in (re.search(r"([\d,]+) images?", h) for h in heads) if m]
    assert sum(sizes) == 120                                   # 124 files listed, 4 unreadable
    expect(status).to_contain_text("Left out 4 unreadable images")   # still said while the dataset is open
    assert not re.search(r"\bnan\b", page.locator("body").inner_text().lower())
    page.screenshot(path=str(broken_folder_server.log.parent / "unreadable-dendromap.png"))

    page.get_by_text("Map", exact=True).click()
    expect(page.get_by_text(re.compile(r"of 120 images on")).first).to_be_visible(timeout=120_000)
