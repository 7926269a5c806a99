"""The KAN tab on the pykan demo: open it, pick edges (list and heatmap tap), see their curves, fit a
formula, download the curve values and a figure; a wrong family is refused while the server serves."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from playwright.sync_api import expect

from netatlas.backend.kan.checkpoint import find_kan_files
from netatlas.backend.kan.demo import demo_kan
from tests.browser.conftest import open_app
from tests.browser.test_diagram_tab import choose

pytestmark = pytest.mark.browser

SCROLLED = """() => window.scrollY + [...document.querySelectorAll('*')].reduce((s, e) => s + e.scrollTop, 0)"""
RANGES = """() => [...new Set(Bokeh.documents[0].roots().flatMap(root => [...root.references()]))]
                  .filter(m => m.type.endsWith("Range1d")).map(m => [m.id, m.start, m.end])"""
TITLES = """() => [...new Set(Bokeh.documents[0].roots().flatMap(root => [...root.references()]))]
                  .filter(m => m.type === "Title" && m.text.startsWith("phi[")).map(m => m.text).sort()"""


def curve_titles(page) -> list[str]:
    """The titles of the curve panels in the page's Bokeh document (drawn on canvas, not in the DOM)."""
    return page.evaluate(TITLES)


def open_kan(page) -> None:
    """Press Open KAN once the page is idle (the opening model's first pass keeps every Open disabled)."""
    button = page.locator(".na-kan-open button")
    expect(button).to_be_enabled(timeout=180_000)
    button.click()


def wheel_scrolls_the_page(page, selector: str) -> None:
    """The real mouse wheel over ``selector``'s canvas scrolls the page (the window or Panel's main
    container, whichever scrolls) and leaves every plot's ranges as they were: no plot catches the wheel."""
    canvas = page.locator(f"{selector} canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    box = canvas.bounding_box()
    before, ranges = page.evaluate(SCROLLED), page.evaluate(RANGES)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + min(box["height"] / 2, 100))
    page.mouse.wheel(0, 400)
    page.wait_for_function(f"({SCROLLED})() > {before}", timeout=5_000)
    page.wait_for_timeout(300)
    assert page.evaluate(RANGES) == ranges


def cli_formulas(tmp_path) -> dict[tuple[int, int, int], str]:
    """``netatlas kan demo --suggest``'s best formula of every edge it draws."""
    from netatlas.cli import main

    assert main(["kan", "demo", "-o", str(tmp_path / "cli"), "--suggest", "--format", "svg"]) == 0
    return {(int(r["layer"]), int(r["i"]), int(r["j"])): r["formula"]
            for r in csv.DictReader(open(tmp_path / "cli" / "formulas.csv", encoding="utf-8")) if r["rank"] == "1"}


def pykan_hidden(x: np.ndarray) -> np.ndarray:
    """The demo's hidden node on inputs (x, 0), from pykan's own classes: the independent check."""
    from kan import KAN

    model = KAN.loadckpt(str(find_kan_files(demo_kan()).state)[: -len("_state")])
    with torch.no_grad():
        model(torch.tensor(np.column_stack([x, np.zeros_like(x)]), dtype=torch.float32))
    return model.acts[1][:, 0].numpy()


def test_kan_tab_on_the_pykan_demo(page, demo_server, tmp_path):
    open_app(page, demo_server.url)
    page.get_by_text("KAN", exact=True).click()
    placeholder = page.locator(".na-kan-placeholder")                # before Open: what it will show, how long
    expect(placeholder).to_contain_text("Press Open KAN")
    expect(placeholder).to_contain_text("about 2 s on the demo")
    for name in ("network", "heatmap", "curves", "csv"):               # nothing to download yet
        expect(page.locator(f".na-kan-download-{name} button")).to_be_disabled()
    expect(page.locator(".na-kan-suggest button")).to_be_disabled()
    open_kan(page)
    summary = page.locator(".na-kan-summary")
    expect(summary).to_contain_text("family pykan", timeout=60_000)
    expect(placeholder).to_be_hidden()
    expect(page.locator(".na-kan-download-csv button")).to_be_enabled()
    expect(summary).to_contain_text("2 → 1 → 1")
    expect(page.locator(".na-kan-network canvas").first).to_be_visible()
    page.wait_for_function(f"({TITLES})().length === 2", timeout=30_000)   # the top edges of layer 0
    assert curve_titles(page) == ["phi[0](0 -> 0)", "phi[0](1 -> 0)"]

    choose(page, ".na-kan-picked", "1 → 0")                       # pick one edge from the list
    page.wait_for_function(f"({TITLES})().length === 1", timeout=30_000)
    assert curve_titles(page) == ["phi[0](1 -> 0)"]

    canvas = page.locator(".na-kan-heatmap canvas").first        # tap the heatmap's left cell: edge 0 -> 0
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.wait_for_function(f"({TITLES})().length === 2", timeout=30_000)
    expect(page.locator(".na-kan-picked")).to_contain_text("0 → 0")

    page.locator(".na-kan-suggest button").click()               # every drawn edge: 1 -> 0 (x^2), 0 -> 0 (sin)
    formulas = page.locator(".na-kan-formulas")
    expect(formulas).to_contain_text("Layer 0: the best formula of each of its 2 drawn edges", timeout=60_000)
    best = formulas.locator("table").first.locator("tbody tr")
    expect(best).to_have_count(2)
    cli = cli_formulas(tmp_path)                                   # the CLI's formulas for the same edges
    for row in range(2):
        cells = best.nth(row).locator("td")
        i, j = map(int, cells.nth(0).inner_text().split("→"))
        assert cells.nth(1).inner_text() == cli[(0, i, j)]
        assert float(cells.nth(2).inner_text()) > 0.99
    assert "x^2" in cli[(0, 1, 0)] and "sin(" in cli[(0, 0, 0)]

    with page.expect_download() as download:
        page.locator(".na-kan-download-csv button").click()
    rows = list(csv.DictReader(open(download.value.path(), encoding="utf-8")))
    assert {(r["i"], r["j"]) for r in rows} == {("1", "0"), ("0", "0")}
    edge = [r for r in rows if (r["i"], r["j"]) == ("0", "0")]
    x, total = (np.array([float(r[k]) for r in edge]) for k in ("x", "total"))
    hidden = pykan_hidden(x)                  # phi_00(x) + phi_10(0) + c: differences are phi_00's alone
    np.testing.assert_allclose(total - total[0], hidden - hidden[0], atol=1e-4)

    with page.expect_download() as download:
        page.locator(".na-kan-download-curves button").click()
    assert download.value.suggested_filename == "kan_curves.svg"
    assert ET.parse(download.value.path()).getroot().tag.endswith("svg")

    page.locator(".na-kan-family select").select_option("fourierkan")   # a wrong family: a clear refusal
    page.locator(".na-kan-open button").click()
    expect(page.locator(".na-status")).to_contain_text(re.compile("fourierkan|FourierKAN"), timeout=30_000)
    expect(summary).to_contain_text("family pykan")
    assert demo_server.alive()


def test_the_wheel_scrolls_the_page_over_the_kan_plots(page, demo_server):
    open_app(page, demo_server.url)
    page.get_by_text("KAN", exact=True).click()
    open_kan(page)
    expect(page.locator(".na-kan-summary")).to_contain_text("family pykan", timeout=60_000)
    page.wait_for_function(f"({TITLES})().length === 2", timeout=30_000)
    for selector in (".na-kan-network", ".na-kan-heatmap"):      # the curves grid: tests/test_kan_viz.py
        wheel_scrolls_the_page(page, selector)
