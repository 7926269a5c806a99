"""Serve the real app in a subprocess and drive it with Debian's Chromium through Playwright."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.serving import Server, start_server, stop  # noqa: F401 - re-exported for the tests

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch options, pointed at the system Chromium (no browser download)."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_FLAGS}


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("demo"))
    yield server
    stop(server)


def wait_for_session(page) -> None:
    """The page's Bokeh document is live once its websocket has delivered the first render."""
    page.wait_for_function("() => window.Bokeh !== undefined && Bokeh.documents.length > 0", timeout=60_000)


def open_app(page, url: str, module: str = "blocks.5") -> None:
    """Open the app and wait until the opening model's module tree (naming ``module``) is shown."""
    page.goto(url)
    wait_for_session(page)
    expect(page.locator(".na-module-tree")).to_contain_text(module, timeout=60_000)
