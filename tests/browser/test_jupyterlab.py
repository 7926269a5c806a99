"""examples/tour.ipynb in JupyterLab itself, in Chromium, with every request to another host refused (a cluster
with no internet): each view draws in its cell from resources in the page, a button in a view computes, an
earlier cell keeps its output, printing still prints, and nothing fails in the browser's console."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.serving import REPO, free_port

pytestmark = pytest.mark.browser

# The tour's cells that return a view, by the start of their source.
VIEW_CELLS = ("atlas.neurons", "atlas.facets", "atlas.dendromap", "atlas.map", "diagram =", "atlas.residual",
              "na.kan", "atlas.app")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free local port, serving a copy of the tour, with its own cache and settings."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "examples" / "tour.ipynb", root / "tour.ipynb")
    settings = root / "jupyter-config" / "labconfig"
    settings.mkdir(parents=True)     # no "would you like news?" popup over the cells
    (settings / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    tracker = root / "lab-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)   # every cell drawn, not only those scrolled into view
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    port = free_port()
    env = {**os.environ, "NETATLAS_CACHE_DIR": str(root / "cache"), "JUPYTER_CONFIG_DIR": str(root / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / "lab-workspaces"), "PYTHONUNBUFFERED": "1"}
    log = root / "lab.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         "--IdentityProvider.token=netatlas", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=root, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(f"{base}/api/status?token=netatlas", timeout=2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    yield base, log
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def offline(page, base: str) -> dict[str, list[str]]:
    """Refuse every request that leaves ``base``; collect those, failed requests and console errors."""
    seen: dict[str, list[str]] = {"other hosts": [], "failed": [], "console errors": []}

    def route(request_route) -> None:
        url = request_route.request.url
        if url.startswith((base, "data:", "blob:")):
            request_route.continue_()
        else:
            seen["other hosts"].append(url)
            request_route.abort()
    page.route("**/*", route)
    page.on("requestfailed", lambda request: seen["failed"].append(request.url))
    page.on("console", lambda message: seen["console errors"].append(message.text) if message.type == "error"
            else None)
    page.on("pageerror", lambda error: seen["console errors"].append(str(error)))
    return seen


def code_cell(page, start: str):
    """The notebook's code cell whose source starts with ``start``."""
    return page.locator(".jp-CodeCell").filter(has=page.locator(".jp-InputArea-editor", has_text=start)).first


def run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def wait_until_run(page, cells: int, timeout_s: float = 600) -> None:
    """Until there are ``cells`` code cells, each with an execution count (none pending, none running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if len(prompts) == cells and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts):
            return
        if time.monotonic() > deadline:
            page.screenshot(path=os.environ.get("NETATLAS_SHOT", "/tmp/jupyterlab-timeout.png"))
            pytest.fail(f"cells not run: {prompts}")
        time.sleep(2)


def add_cell_and_run(page, source: str) -> None:
    """Append a code cell after the last one and run it, as a user does (Esc, B, Enter, type, Ctrl+Enter)."""
    last = page.locator(".jp-CodeCell").last
    last.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(source)
    page.keyboard.press("Control+Enter")


def drawn_height(cell) -> float:
    """Height of the Panel/Bokeh drawing in a cell's output (0 when nothing was drawn)."""
    roots = cell.locator(".jp-OutputArea-output .bk-panel-models-layout-Column")
    return max((box["height"] for box in (r.bounding_box() for r in roots.all()) if box), default=0.0)


@pytest.mark.timeout(1200)
def test_the_tour_in_jupyterlab_offline(page, lab):
    base, log = lab
    page.set_viewport_size({"width": 1400, "height": 1000})
    seen = offline(page, base)
    page.goto(f"{base}/lab/tree/tour.ipynb?token=netatlas")
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)
    cells = page.locator(".jp-CodeCell").count()
    run_all(page)
    wait_until_run(page, cells)

    # Every view cell drew its view (BokehJS and Panel came with the first cell's output, from no CDN).
    for start in VIEW_CELLS:
        cell = code_cell(page, start)
        cell.scroll_into_view_if_needed()
        expect(cell.locator(".jp-OutputArea-output .bk-panel-models-layout-Column").first).to_be_attached(
            timeout=60_000)
        assert drawn_height(cell) > 150, start

    # A button in a view computes, and reports in its own cell: new facets with other settings.
    facets = code_cell(page, "atlas.facets")
    facets.scroll_into_view_if_needed()
    images = facets.locator("img[src^='data:image/png']")
    expect(images.first).to_be_visible(timeout=60_000)
    before = images.first.get_attribute("src")
    steps_field = facets.locator(".na-steps input")
    steps_field.fill("12")
    steps_field.press("Enter")
    button = facets.get_by_role("button", name="Visualize facets")
    box = button.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    expect(images.first).not_to_have_attribute("src", before, timeout=180_000)
    assert "Error" not in facets.locator(".na-status").inner_text()

    # An earlier cell keeps its output when a later call shows the same view with other arguments.
    neurons = code_cell(page, "atlas.neurons")

    def shown() -> tuple[str, list[str]]:
        output = neurons.locator(".jp-OutputArea")
        return output.inner_text(), output.locator("input").evaluate_all("inputs => inputs.map(i => i.value)")
    before = shown()
    assert "7" in before[1]                     # the unit field
    add_cell_and_run(page, 'atlas.neurons("blocks.5", unit=3)\n')
    wait_until_run(page, cells + 1, timeout_s=120)
    assert "3" in page.locator(".jp-CodeCell").last.locator("input").evaluate_all("i => i.map(x => x.value)")
    assert shown() == before

    # print still prints after the widget callbacks above.
    add_cell_and_run(page, 'print("netatlas prints " + str(6 * 7))\n')
    wait_until_run(page, cells + 2, timeout_s=120)
    expect(page.locator(".jp-CodeCell").last.locator(".jp-OutputArea")).to_contain_text("netatlas prints 42")

    assert seen == {"other hosts": [], "failed": [], "console errors": []}, seen
    assert "Traceback" not in log.read_text()
