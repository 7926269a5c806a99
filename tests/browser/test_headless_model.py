"""A backbone with no classifier head (a tiny DINOv2 ``Dinov2Model`` folder) served on a folder of digits:
every tab renders, and nothing on the page names a prediction, an accuracy or a misclassified image (issue
22: no classifier, no predictions). The Model tab says once why; the DendroMap offers no accuracy colouring."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.backbones import digit_folder, dinov2_folder
from tests.browser.conftest import open_app, start_server, stop

pytestmark = pytest.mark.browser
IMAGES = 40
FORBIDDEN = re.compile(r"accura|predicted|misclassif", re.IGNORECASE)
SHOTS = Path(os.environ.get("NETATLAS_SCREENSHOTS", "/tmp/netatlas-screenshots"))


@pytest.fixture(scope="module")
def backbone_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("headless")
    server = start_server(root, "--checkpoint", str(dinov2_folder(root)), "--data", str(digit_folder(root, IMAGES)))
    yield server
    stop(server)


# The text a reader sees and the tooltips they can hover, through every shadow root (Bokeh renders each
# component in one), leaving out what is not rendered (hidden widgets, other tabs, style blocks).
VISIBLE_TEXT = """() => {
  const out = [document.body.innerText];
  const roots = [document];
  while (roots.length) {
    const root = roots.pop();
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) roots.push(el.shadowRoot);
      if (!el.checkVisibility()) continue;
      if (root !== document && el.parentNode === root) out.push(el.innerText || '');
      const title = el.getAttribute('title');
      if (title) out.push(title);
    }
  }
  return out.join('\\n');
}"""


def page_text(page, note: str) -> str:
    """What the open tab shows, the one sentence that says why there are no predictions taken out."""
    text = page.evaluate(VISIBLE_TEXT)
    return text.replace(note, " ")


def offered(page, selector: str) -> list[str]:
    return page.locator(f"{selector} select option").all_inner_texts()


def test_a_backbone_gets_no_predictions_on_any_tab(page, backbone_server):
    errors: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_viewport_size({"width": 1400, "height": 1300})
    open_app(page, backbone_server.url, "encoder.layer.1")
    expect(page.locator(".na-module-tree")).to_contain_text("Dinov2Model")
    summary = page.locator(".na-model-summary")
    expect(summary).to_contain_text("No predictions", timeout=30_000)
    note = summary.locator("p", has_text="No predictions").inner_text().split(":", 1)[1].strip()
    assert "no classification head" in note
    seen = {"Model": page_text(page, note)}
    assert " ".join(page.evaluate(VISIBLE_TEXT).split()).count(" ".join(note.split())) >= 1

    page.get_by_text("Diagram", exact=True).click()
    expect(page.locator(".na-diagram svg")).to_be_visible(timeout=60_000)
    seen["Diagram"] = page_text(page, note)

    page.get_by_text("Neurons", exact=True).click()
    expect(page.locator(".na-grid-top img")).to_have_count(16, timeout=60_000)
    assert not page.locator(".na-thumb.wrong").count()
    seen["Neurons"] = page_text(page, note)

    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile").first).to_be_visible(timeout=90_000)
    expect(page.locator(".na-legend")).to_contain_text("share of class", timeout=30_000)
    page.wait_for_timeout(1000)
    sizes = [int(m.group(1)) for t in page.locator(".na-tile .na-head").all_inner_texts()
             if (m := re.fullmatch(r"(\d+) images?", t.strip()))]
    assert sum(sizes) == IMAGES                         # every label is a count alone: no accuracy
    colours = offered(page, ".na-color-by")
    assert "Share of a class" in colours and not [c for c in colours if FORBIDDEN.search(c)], colours
    assert page.locator(".na-color-by select").input_value() == "Share of a class"
    assert not page.locator(".na-pred").first.is_visible() and not page.locator(".na-wrong-only").first.is_visible()
    assert not page.locator(".na-img.na-wrong").count()
    titles = [t.strip() for t in page.locator(".na-classes .tabulator-col-title").all_inner_texts()]
    assert "count" in titles and set(titles) <= {"class", "label", "count", ""}, titles
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "headless-dendromap.png"), full_page=True)
    page.locator(".na-img").first.hover()                 # its "i" opens the details (a click zooms)
    page.locator(".na-info").click()
    expect(page.locator(".na-neighbours img")).to_have_count(8, timeout=30_000)
    with page.expect_download() as download:
        page.locator(".na-export button").click()
    header = open(download.value.path()).read().splitlines()[0]
    assert header == "index,id,label,class,cluster"
    seen["DendroMap"] = page_text(page, note)

    page.get_by_text("Map", exact=True).click()
    expect(page.locator(".na-map canvas").first).to_be_visible(timeout=180_000)
    expect(page.locator(".na-map-summary")).to_contain_text(re.compile(r"(UMAP|PCA) (map|preview)"),
                                                            timeout=120_000)
    colours = offered(page, ".na-map-color")
    assert "Class" in colours and not [c for c in colours if FORBIDDEN.search(c) or "correct" in c.lower()], colours
    seen["Map"] = page_text(page, note)

    page.get_by_text("Residual", exact=True).click()
    expect(page.locator(".na-units")).to_be_visible(timeout=30_000)
    seen["Residual"] = page_text(page, note)

    page.get_by_text("KAN", exact=True).click()
    expect(page.locator(".na-kan-summary")).to_be_visible(timeout=60_000)

    said = {tab: sorted(set(m.lower() for m in FORBIDDEN.findall(text))) for tab, text in seen.items()}
    assert not any(said.values()), said
    assert not errors, errors
    assert backbone_server.alive()
