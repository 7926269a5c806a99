"""The Neurons tab on the demo, as a user drives it in Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import expect

from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from tests.browser.conftest import open_app

pytestmark = pytest.mark.browser


def direct_unit_values(layer: str, unit: int) -> np.ndarray:
    """The unit's per-image spatial mean, from a plain forward pass with our own hook."""
    import torch

    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    x = loaded.preprocessing.uint8_to_tensor(dataset.array)
    captured = []
    module = dict(loaded.model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o[:, unit].mean((1, 2))))
    with torch.no_grad():
        loaded.model(x)
    handle.remove()
    return captured[0].numpy()


def test_neurons_tab_shows_top_and_bottom_16(page, demo_server):
    open_app(page, demo_server.url, "blocks.5.conv2")
    page.get_by_text("Neurons", exact=True).click()
    top = page.locator(".na-grid-top img")
    expect(top).to_have_count(16, timeout=60_000)
    expect(page.locator(".na-grid-bottom img")).to_have_count(16)

    # Pick unit 7 by typing it, as a user would.
    unit_input = page.locator(".na-unit input").first
    unit_input.fill("7")
    unit_input.press("Enter")
    expect(page.get_by_text("blocks.5 · unit 7", exact=False).first).to_be_visible(timeout=30_000)
    expect(top).to_have_count(16)

    # The captions are the unit's 16 largest activations, as a direct forward pass computes them.
    values = direct_unit_values("blocks.5", 7)
    expected = np.sort(values)[::-1][:16]
    captions = page.locator(".na-grid-top figcaption").all_inner_texts()
    np.testing.assert_allclose([float(c) for c in captions], expected, rtol=2e-3)
    assert demo_server.alive()
