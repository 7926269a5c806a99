"""The Diagram tab on the demo: the circuit drawn, a folded block unrolled, a module opened, SVG and TikZ downloaded."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser


def boxes(page) -> int:
    """Operation boxes in the page's SVG (inputs, outputs and copy points excluded)."""
    return page.locator(".na-diagram svg g.node.op").count()


def boxes_said(page) -> int:
    said = page.locator(".na-diagram-summary strong", has_text="boxes").inner_text()
    return int(said.split()[0])


def choose(page, css: str, option: str) -> None:
    """Pick ``option`` in a Panel MultiChoice (a Choices.js box)."""
    page.locator(f"{css} input").first.click()
    page.locator(f"{css} .choices__item--choice", has_text=re.compile(rf"^{re.escape(option)}$")).first.click()
    page.keyboard.press("Escape")


def test_diagram_tab_unfolds_and_downloads(page, demo_server):
    open_app(page, demo_server.url)
    page.get_by_text("Diagram", exact=True).click()
    figure = page.locator(".na-diagram svg")
    expect(figure).to_be_visible(timeout=60_000)
    summary = page.locator(".na-diagram-summary")
    expect(summary).to_contain_text("×2")              # the demo's two identical first blocks, folded
    folded = boxes(page)
    assert folded == boxes_said(page) > 20
    expect(page.locator(".na-diagram svg g.cluster", has_text="×2")).to_have_count(1)
    expect(page.locator(".na-diagram-legend")).to_contain_text("C₂ = 16")

    choose(page, ".na-unroll", "blocks.0")     # unroll the pair: one more block of 7 (conv bn relu conv bn + relu)
    expect(summary).to_contain_text("folded: none")
    assert boxes(page) == boxes_said(page) == folded + 7

    page.locator(".na-fold-depth .noUi-handle").focus()  # fold to depth 1: top-level modules as boxes
    page.keyboard.press("ArrowRight")
    expect(summary).to_contain_text("5 boxes")
    choose(page, ".na-unfold", "blocks")                 # ... then open `blocks`: its six blocks as boxes
    expect(summary).to_contain_text("10 boxes")
    expect(page.locator(".na-diagram svg g.node.block")).to_have_count(7)   # stem and blocks.0-5

    with page.expect_download() as download:
        page.locator(".na-download-svg button").click()
    assert download.value.suggested_filename == "diagram.svg"
    root = ET.parse(download.value.path()).getroot()
    assert root.tag.endswith("svg")
    assert len(root.findall(".//{http://www.w3.org/2000/svg}g[@class='node op learned block']")) >= 6

    with page.expect_download() as download:
        page.locator(".na-download-tex button").click()
    tex = open(download.value.path(), encoding="utf-8").read()
    assert "\\begin{tikzpicture}" in tex and "\\end{document}" in tex
    assert demo_server.alive()


def test_diagram_scrolls_at_natural_size_and_fit_to_width_wraps_it_readably(page, demo_server):
    """The demo's diagram is ~7,000 px wide: at natural size it scrolls in a box as wide as the tab (with
    a line saying so); *Fit to width* wraps it into rows that fit the tab and stay readable."""
    open_app(page, demo_server.url)
    page.get_by_text("Diagram", exact=True).click()
    scroll = page.locator(".na-diagram-scroll")
    expect(scroll).to_be_visible(timeout=60_000)
    tab = page.locator(".na-diagram").bounding_box()
    assert scroll.bounding_box()["width"] <= tab["width"] + 1
    assert scroll.evaluate("e => e.scrollWidth > 3 * e.clientWidth")        # the rest is a scroll away
    scroll.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    assert scroll.evaluate("e => e.scrollLeft") > 0
    expect(page.locator(".na-diagram-hint")).to_contain_text("scroll sideways")

    fit = page.locator(".na-fit input").bounding_box()
    page.mouse.click(fit["x"] + fit["width"] / 2, fit["y"] + fit["height"] / 2)
    rows = page.locator(".na-diagram-rows")
    expect(rows).to_be_visible(timeout=30_000)
    drawn = rows.bounding_box()
    assert drawn["width"] <= tab["width"] + 1 and drawn["height"] > 200
    first = page.locator(".na-diagram-rows svg").first.bounding_box()
    assert first["width"] <= tab["width"] + 1 and first["height"] > 200        # one row alone is readable
    assert page.locator(".na-diagram-rows svg").count() > 1
    assert demo_server.alive()
