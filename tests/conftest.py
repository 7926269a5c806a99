"""Shared fixtures for the backend tests: tiny models, tiny datasets, a private cache folder.

Everything lives under pytest's tmp_path; nothing touches the user's ~/.cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
import pytest

from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_PRE, SMALL_SIZE, small_demo_resnet


@pytest.fixture(scope="session")
def _session_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("default-cache")


@pytest.fixture(autouse=True)
def _private_cache_dir(request, _session_cache_dir, monkeypatch):
    """Code that falls back to the default cache writes under a temporary folder, not ~/.cache."""
    if request.node.get_closest_marker("browser") is None:
        monkeypatch.setenv("NETATLAS_CACHE_DIR", str(_session_cache_dir))


@pytest.fixture
def small_model() -> nn.Module:
    return small_demo_resnet()


@pytest.fixture
def small_images() -> tuple[np.ndarray, np.ndarray]:
    """30 grayscale 12x12 uint8 images with labels 0..4."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, SMALL_SIZE, SMALL_SIZE), dtype=np.uint8)
    labels = np.arange(30) % 5
    return images, labels


@pytest.fixture
def small_npz(tmp_path, small_images) -> Path:
    images, labels = small_images
    path = tmp_path / "small.npz"
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture
def small_dataset(small_npz):
    from netatlas.backend.datasets import npz_dataset

    return npz_dataset(small_npz)


@pytest.fixture
def small_checkpoint(tmp_path, small_model) -> Path:
    path = tmp_path / "small.pt"
    torch.save(small_model.state_dict(), path)
    return path


@pytest.fixture
def small_loaded(small_checkpoint):
    from netatlas.backend.checkpoint import load_checkpoint

    return load_checkpoint(small_checkpoint, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path
