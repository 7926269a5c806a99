"""Several browser sessions on one server: one loaded model between them, freed when the last page closes;
a load past --max-memory is refused in the page while the other sessions keep working."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import open_app, start_server, stop

pytestmark = pytest.mark.browser
LOADED = "loaded model demo_resnet.safetensors"
RELEASED = "released model demo_resnet.safetensors"


def wait_for_log(server, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := server.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return log


def test_two_pages_share_one_model_which_is_freed_after_both_close(browser, tmp_path):
    server = start_server(tmp_path)
    try:
        pages = [browser.new_context().new_page() for _ in range(2)]
        for page in pages:
            open_app(page, server.url, "blocks.0")
        log = server.log.read_text()
        assert log.count(LOADED) == 1 and RELEASED not in log
        pages[0].context.close()
        time.sleep(1)
        assert RELEASED not in server.log.read_text()       # the other page still holds it
        pages[1].context.close()
        # Bokeh drops a closed session after its unused lifetime (15 s) at its next check (every 17 s).
        log = wait_for_log(server, RELEASED, timeout=90)
        assert log.count(RELEASED) == 1 and server.alive()
    finally:
        stop(server)


def test_a_load_past_the_memory_budget_is_refused_in_the_page(page, tmp_path):
    # The demo model is 0.7 MiB; its 5,000 digits in memory are 3.8 MiB more: 2 MiB cannot hold both.
    server = start_server(tmp_path, "--max-memory", "2M")
    try:
        page.goto(server.url)
        expect(page.locator(".na-status")).to_contain_text("memory budget (--max-memory)", timeout=60_000)
        log = server.log.read_text()
        assert RELEASED in log                # the model loaded for the refused Workspace is given back
        other = page.context.new_page()
        other.goto(server.url)
        expect(other.locator(".na-status")).to_contain_text("2.0 MiB memory budget", timeout=60_000)
        assert server.alive()
    finally:
        stop(server)
