"""Regenerate the README's screenshots: serve the demo, open each view in headless Chromium.

    .venv/bin/python docs/make_screenshots.py              # every view
    .venv/bin/python docs/make_screenshots.py dendromap map    # only the named ones
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS, open_app, start_server, stop  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"


def model(page) -> None:
    page.screenshot(path=OUT / "model.png")


def neurons(page) -> None:
    page.get_by_text("Neurons", exact=True).click()
    expect(page.locator(".na-grid-top img")).to_have_count(16, timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=OUT / "neurons.png")


def facets(page) -> None:
    page.get_by_text("Neurons", exact=True).click()
    page.set_viewport_size({"width": 1400, "height": 1700})
    page.get_by_role("button", name="Visualize facets").click()
    expect(page.locator(".na-facet-img")).to_have_count(4, timeout=300_000)
    page.locator(".na-facets-pane").scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    page.screenshot(path=OUT / "facets.png")


def dendromap(page) -> None:
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile")).to_have_count(8, timeout=120_000)
    page.locator(".na-tile").nth(4).locator(".na-head").click()
    expect(page.locator(".na-crumb")).to_have_count(2, timeout=30_000)
    page.wait_for_timeout(1500)
    page.locator(".na-img").nth(5).hover()                # its "i" opens the details (a click zooms)
    page.locator(".na-info").click()
    expect(page.locator(".na-neighbours img")).to_have_count(8, timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=OUT / "dendromap.png")


def map_view(page) -> None:
    from tests.browser.test_map import box_select, coloured_pixel

    page.set_viewport_size({"width": 1400, "height": 1250})
    page.get_by_text("Map", exact=True).click()
    expect(page.locator(".na-map-legend")).to_contain_text("true class", timeout=300_000)
    plot = page.locator(".na-map canvas").first
    page.locator(".na-map .bk-tool-icon-box-select").first.click()
    box_select(page, plot.bounding_box(), 0.02, 0.35, 0.6, 0.75)
    expect(page.locator(".na-map-count")).to_contain_text("selected", timeout=30_000)
    page.mouse.move(*coloured_pixel(page, plot))
    expect(page.locator(".na-hovered img")).to_be_visible(timeout=30_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=OUT / "map.png")


def residual(page) -> None:
    page.set_viewport_size({"width": 1400, "height": 2300})
    page.get_by_text("Residual", exact=True).click()
    page.get_by_role("button", name="Compute path plots").click()
    expect(page.locator(".na-residual-plot")).to_have_count(4, timeout=180_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=OUT / "residual.png")


def diagram(page) -> None:
    page.set_viewport_size({"width": 1900, "height": 1000})
    page.get_by_text("Diagram", exact=True).click()
    expect(page.locator(".na-diagram svg")).to_be_visible(timeout=60_000)
    page.locator(".na-fold-depth .noUi-handle").focus()     # blocks as boxes, one of them opened
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.locator(".na-unfold input").first.click()
    page.locator(".na-unfold .choices__item--choice", has_text=re.compile(r"^blocks\.2$")).first.click()
    page.keyboard.press("Escape")
    page.locator(".na-axis-names input").fill("C2=ch, H=h, W=w")
    page.locator(".na-axis-names input").press("Enter")
    expect(page.locator(".na-diagram-legend")).to_contain_text("ch = 16", timeout=30_000)
    page.locator(".na-fit input").check()
    page.locator(".na-diagram svg g.edge").nth(1).hover()
    page.wait_for_timeout(1000)
    page.screenshot(path=OUT / "diagram.png")


def kan(page) -> None:
    page.set_viewport_size({"width": 1400, "height": 1750})
    page.get_by_text("KAN", exact=True).click()
    page.locator(".na-kan-checkpoint select").select_option(label="kan/efficient_kan_digits.pt")
    page.locator(".na-kan-open button").click()
    expect(page.locator(".na-kan-summary")).to_contain_text("64 → 16 → 10", timeout=60_000)
    page.locator(".na-kan-layer select").select_option(label="layer 1 (layers.1: 16 -> 10)")
    page.locator(".na-kan-top .noUi-handle").focus()
    for _ in range(8):                                       # the top 8 edges of the 16 -> 10 layer
        page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Suggest formula").click()
    expect(page.locator(".na-kan-formulas")).to_contain_text("Edge", timeout=60_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=OUT / "kan.png")


VIEWS = {"model": model, "diagram": diagram, "neurons": neurons, "facets": facets, "dendromap": dendromap, "map": map_view,
         "residual": residual, "kan": kan}


def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 950})
                open_app(page, server.url)
                for name in names:
                    VIEWS[name](page)
                browser.close()
        finally:
            stop(server)
    print(f"wrote {', '.join(f'{n}.png' for n in names)} to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:] or list(VIEWS))
