"""Bad input in the served app: a clear message in the page, and the server keeps serving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect

from tests.browser.conftest import open_app, start_server, stop

pytestmark = pytest.mark.browser


class _CreatesFile:
    """Unpickling this calls open(path, 'w'): proof that code from the file ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def bad_root_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    marker = root / "pwned.txt"
    torch.save({"weights": torch.zeros(2), "payload": _CreatesFile(marker)}, root / "unsafe.pt")
    (root / "corrupt.pt").write_bytes(os.urandom(4096))
    server = start_server(tmp_path_factory.mktemp("srv"), "--root", str(root))
    yield server, marker
    stop(server)


def choose_checkpoint(page, label: str) -> None:
    page.locator("select").first.select_option(label=label)
    page.get_by_role("button", name="Load").click()


def test_unsafe_pickle_is_refused_in_the_page(page, bad_root_server):
    server, marker = bad_root_server
    open_app(page, server.url, "blocks.0")

    choose_checkpoint(page, next(o for o in page.locator("select").first.locator("option").all_inner_texts()
                                 if o.endswith("unsafe.pt")))
    expect(page.locator(".na-status")).to_contain_text("refused to unpickle unsafe.pt", timeout=30_000)
    expect(page.locator(".na-status")).to_contain_text("--trust-pickle")
    assert not marker.exists(), "unpickling ran code from the file"

    choose_checkpoint(page, next(o for o in page.locator("select").first.locator("option").all_inner_texts()
                                 if o.endswith("corrupt.pt")))
    expect(page.locator(".na-status")).to_contain_text("corrupt.pt is not a readable", timeout=30_000)
    assert server.alive()

    # Another session opens normally: the errors above did not take the server down.
    other = page.context.new_page()
    open_app(other, server.url, "blocks.0")
