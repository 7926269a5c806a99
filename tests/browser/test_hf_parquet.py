"""A Hugging Face save_pretrained folder and a Parquet dataset in the hub's layout, served with no
flags but the two paths: every tab renders, the page logs no error and asks no other host for anything
(fonts included: the page works air-gapped)."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
import torch
from playwright.sync_api import expect
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from tests.browser.conftest import open_app, start_server, stop
from tests.shard_builders import encode, image_table, spread_digits, write_shards

pytestmark = pytest.mark.browser
DIGITS = [f"digit {d}" for d in range(10)]
@pytest.fixture(scope="module")
def hf_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-parquet")
    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=7, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, id2label=dict(enumerate(DIGITS)),
                       label2id={d: i for i, d in enumerate(DIGITS)})
    ViTForImageClassification(config).save_pretrained(root / "vit-digits")
    ViTImageProcessor(size={"height": 28, "width": 28}).save_pretrained(root / "vit-digits")
    images, labels = spread_digits(80)
    table = image_table([encode(im) for im in images], labels, classes=DIGITS)
    write_shards(root / "mnist-parquet" / "data", table, shards=2, row_group_size=16)
    server = start_server(root, "--checkpoint", str(root / "vit-digits"), "--data", str(root / "mnist-parquet"))
    yield server
    stop(server)


def test_every_tab_renders_on_a_hf_folder_and_a_parquet_dataset(page, hf_server):
    errors: list[str] = []
    elsewhere: list[str] = []                # requests to any host but the server's own
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda request: urlparse(request.url).hostname not in (None, "localhost", "127.0.0.1")
            and not request.url.startswith(("data:", "blob:")) and elsewhere.append(request.url))
    page.set_viewport_size({"width": 1400, "height": 1100})
    open_app(page, hf_server.url, "vit.layers.1.attention")
    expect(page.locator(".na-module-tree")).to_contain_text("ViTForImageClassification")

    page.get_by_text("Diagram", exact=True).click()
    expect(page.locator(".na-diagram svg")).to_be_visible(timeout=60_000)
    expect(page.locator(".na-diagram-summary")).to_contain_text("torch.export", timeout=30_000)

    page.get_by_text("Neurons", exact=True).click()
    expect(page.locator(".na-grid-top img")).to_have_count(16, timeout=60_000)

    page.get_by_text("DendroMap", exact=True).click()
    expect(page.locator(".na-tile").first).to_be_visible(timeout=90_000)
    page.wait_for_timeout(1000)
    sizes = [int(m.group(1)) for t in page.locator(".na-tile .na-head").all_inner_texts()
             if (m := re.search(r"(\d+) images? ·", t))]
    assert sum(sizes) == 80, sizes                    # every row of both shards is on the map

    page.get_by_text("Map", exact=True).click()
    expect(page.locator(".na-map canvas").first).to_be_visible(timeout=180_000)
    # A PCA preview comes first; the UMAP map replaces it (minutes on a fresh install: numba compiles once).
    expect(page.locator(".na-map-summary")).to_contain_text("UMAP map", timeout=300_000)

    page.get_by_text("Residual", exact=True).click()
    expect(page.locator(".na-units")).to_contain_text("vit.layers.1 add 1", timeout=30_000)
    images = page.locator(".na-images input").first
    images.fill("32")
    images.press("Enter")
    page.get_by_role("button", name="Compute path plots").click()
    expect(page.locator(".na-residual-plot")).to_have_count(4, timeout=180_000)

    page.get_by_text("KAN", exact=True).click()
    expect(page.locator(".na-kan-summary")).to_be_visible(timeout=60_000)

    assert not elsewhere, elsewhere
    assert not errors, errors
    assert hf_server.alive()
