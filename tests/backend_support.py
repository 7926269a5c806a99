"""Helpers shared by the backend tests (constants, tiny models, hand-written preprocessing)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from netatlas.backend.preprocessing import Preprocessing

DEMO_ARCH = "netatlas.backend.demo_model:DemoResNet"
# A small DemoResNet: two stages, one block each (stem.0 conv, blocks.0, blocks.1, pool, fc).
SMALL_KWARGS = {"in_channels": 1, "num_classes": 5, "widths": [4, 8], "blocks_per_stage": 1}
SMALL_SIZE = 12
SMALL_PRE = Preprocessing(size=(SMALL_SIZE, SMALL_SIZE), grayscale=True, mean=(0.4,), std=(0.3,))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running stats and affine params, so eval != identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def small_demo_resnet(seed: int = 0) -> nn.Module:
    from netatlas.backend.demo_model import DemoResNet

    torch.manual_seed(seed)
    return randomize_batchnorm(DemoResNet(**SMALL_KWARGS), seed).eval()


def preprocess_by_hand(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N,H,W] or [N,H,W,C] at the model's size -> normalized float [N,C,H,W], written out."""
    x = images.astype(np.float64) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    x = (x - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))


def run_coroutine(coroutine) -> None:
    """To completion in a thread of its own: the browser tests' sync Playwright keeps a loop running here."""
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, coroutine).result()


def page_views(loaded, dataset, cache_dir) -> tuple[dict, object]:
    """The page's linked views (by tab name) and the Workspace they have open, as after the page's Load
    but with no first pass run (the state's watchers are not told)."""
    import param

    from netatlas.app.config import AppConfig
    from netatlas.app.page import build_views, load_extensions
    from netatlas.app.state import AppState
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.workspace import Workspace

    load_extensions()
    ws = Workspace(loaded, dataset, ResultCache(cache_dir), device="cpu")
    state = AppState(AppConfig())
    built = build_views(state)
    with param.discard_events(state):
        state.workspace = ws
    return built, ws
