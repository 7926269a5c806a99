"""The first hour's smaller things on the demo page (issue 26), measured in the browser: the module table's counts
right-aligned, the header's controls named by what they do, and every label beside a button group on its
neighbours' title line with the buttons centred on their neighbours' boxes."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser
PX = 1.5     # layout tolerance: sub-pixel rounding


def top(locator) -> float:
    return locator.bounding_box()["y"]


def middle(locator) -> float:
    box = locator.bounding_box()
    return box["y"] + box["height"] / 2


def assert_level(a: float, b: float, what: str) -> None:
    assert abs(a - b) <= PX, f"{what}: {a:.1f} vs {b:.1f}"


def test_counts_are_right_aligned_and_header_controls_say_what_they_do(page, demo_server):
    page.set_viewport_size({"width": 1400, "height": 1000})
    open_app(page, demo_server.url)
    for column in ("units", "params", "trainable"):
        # Polled: the table is drawn again once the first pass ends (the summary's chance hint), which can
        # detach the cell found first.
        cell = page.locator(f".na-module-tree .tabulator-cell[tabulator-field='{column}'] > div").first
        expect(cell).to_have_css("text-align", "right")
        title = page.locator(f".na-module-tree .tabulator-col[tabulator-field='{column}'] .tabulator-col-title")
        expect(title).to_have_css("text-align", "right")
    for element, says in (("sidebar-button", "sidebar"), ("theme-switch", "theme"), ("busy-container", "server")):
        label = page.locator(f"#{element}").get_attribute("aria-label")
        assert label and says in label, (element, label)
        expect(page.locator(f"fast-tooltip[anchor='{element}']")).to_have_text(label)


def test_labels_and_buttons_line_up_with_the_inputs_beside_them(page, demo_server):
    page.set_viewport_size({"width": 1400, "height": 1000})
    open_app(page, demo_server.url)
    expect(page.get_by_role("button", name="Load")).to_be_enabled(timeout=120_000)   # the first pass is done

    page.get_by_text("Residual", exact=True).click()
    images = page.locator(".na-images input").first
    expect(images).to_be_visible(timeout=30_000)
    assert_level(top(page.locator(".na-field-label:visible", has_text="Export as")),
                 top(page.locator(".na-images label").first), "Residual: 'Export as' on the inputs' title line")
    assert_level(middle(page.locator(".bk-btn-group:visible", has_text="svg")), middle(images),
                 "Residual: export formats centred on the inputs")
    assert_level(middle(page.get_by_role("button", name="Compute path plots")), middle(images),
                 "Residual: Compute centred on the inputs")

    page.get_by_text("Diagram", exact=True).click()
    expect(page.locator(".na-diagram svg")).to_be_visible(timeout=60_000)
    assert_level(top(page.locator(".na-field-label:visible", has_text="Layout")),
                 top(page.locator(".bk-slider-title:visible").first), "Diagram: 'Layout' on the slider's title line")
    dpi = page.locator(".na-dpi input").first
    for name in ("Download SVG", "Download TikZ"):
        assert_level(middle(page.get_by_role("button", name=name)), middle(dpi), f"Diagram: {name} centred on dpi")

    page.get_by_text("KAN", exact=True).click()
    options = page.locator(".na-kan-options input").first
    expect(options).to_be_visible(timeout=30_000)
    assert_level(middle(page.get_by_role("button", name="Open KAN")), middle(options), "KAN: Open centred on input")
    formats = page.locator(".bk-btn-group:visible", has_text="svg")
    for name in ("Download network", "Curve values (CSV)"):
        assert_level(middle(page.get_by_role("button", name=name)), middle(formats), f"KAN: {name} beside formats")
