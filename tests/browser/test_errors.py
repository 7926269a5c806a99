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


ODD_NAME = "my_model_`v2`_*final*.pt"      # underscores, backticks and asterisks: Markdown's own characters
SHOTS = Path(os.environ.get("NETATLAS_SCREENSHOTS", "/tmp/netatlas-screenshots"))


@pytest.fixture(scope="module")
def literal_server(tmp_path_factory):
    """A 64 px ViT (it refuses any other input size with "Input image size (224*224) doesn't match model
    (64*64)") and a corrupt checkpoint whose name is full of Markdown."""
    from transformers import ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("literal")
    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=16, num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                       intermediate_size=32, num_labels=10)
    ViTForImageClassification(config).save_pretrained(root / "vit-64")
    (root / ODD_NAME).write_bytes(os.urandom(2048))
    server = start_server(tmp_path_factory.mktemp("srv"), "--root", str(root))
    yield server
    stop(server)


def status_and_toast(page, expected: str, shot: str) -> None:
    """The status line says "Error:" in bold and then ``expected`` character for character; so does the
    newest red toast, which is readable (white on dark red) and shows all of its text."""
    status = page.locator(".na-status")
    expect(status).to_contain_text(expected, timeout=60_000)
    text = " ".join(status.locator("p").first.inner_text().split())
    assert text.startswith("Error: ") and expected in text, text
    assert status.locator("strong").first.inner_text() == "Error:"
    assert status.locator("em, code, a").count() == 0          # no Markdown was read into the message
    status.screenshot(path=str(SHOTS / f"{shot}_status.png"))
    toast = page.locator(".notyf__toast").last
    expect(toast).to_contain_text(expected)
    toast.evaluate("t => Promise.all(t.getAnimations({subtree: true}).map(a => a.finished))")   # slid into place
    style = toast.evaluate("""t => { const s = getComputedStyle(t), m = t.querySelector('.notyf__message');
        const r = t.getBoundingClientRect();
        return {bg: s.backgroundColor, color: getComputedStyle(m).color, clipped: m.scrollHeight > m.clientHeight + 1
                || m.getBoundingClientRect().bottom > r.bottom + 1, bottom: r.bottom, height: innerHeight}}""")
    assert style["bg"] == "rgb(164, 22, 26)" and style["color"] == "rgb(255, 255, 255)", style
    assert not style["clipped"] and style["bottom"] <= style["height"], style


def test_error_text_is_shown_literally_in_the_status_line_and_the_toast(page, literal_server):
    page.set_viewport_size({"width": 1400, "height": 900})
    open_app(page, literal_server.url, "blocks.0")
    SHOTS.mkdir(parents=True, exist_ok=True)
    # A real message from the model's own forward: the ViT refuses 224 px, typed in the sidebar.
    expect(page.get_by_role("button", name="Load")).to_be_enabled(timeout=120_000)   # the demo's first pass is done
    choose = page.locator("select").first
    choose.select_option(label=next(o for o in choose.locator("option").all_inner_texts() if o.endswith("vit-64")))
    page.get_by_text("Preprocessing", exact=True).first.click()
    size = page.get_by_placeholder("e.g. 224 or 28 28")
    size.fill("224")
    size.press("Enter")
    page.get_by_role("button", name="Load").click()
    status_and_toast(page, "Input image size (224*224) doesn't match model (64*64).", "error_literal_size")
    page.screenshot(path=str(SHOTS / "error_literal_size.png"))

    # A file name that is all Markdown: named as it is, in both places.
    size.fill("")
    size.press("Enter")
    expect(page.get_by_role("button", name="Load")).to_be_enabled(timeout=60_000)
    choose_checkpoint(page, next(o for o in choose.locator("option").all_inner_texts() if o.endswith(ODD_NAME)))
    status_and_toast(page, f"{ODD_NAME} is not a readable", "error_literal_name")
    page.screenshot(path=str(SHOTS / "error_literal_name.png"))
