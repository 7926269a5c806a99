"""Thumbnails by URL: the PNG a registered dataset's image is served as, and the data-URI fallback."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from netatlas.app import thumbnails


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_png_is_the_dataset_image(small_dataset):
    token = thumbnails.register(small_dataset)
    for index in (0, 7, len(small_dataset) - 1):
        np.testing.assert_array_equal(decode(thumbnails.thumbnail_png(token, index)), small_dataset.read(index))


def test_unknown_token_or_index_is_refused(small_dataset):
    token = thumbnails.register(small_dataset)
    with pytest.raises(KeyError):
        thumbnails.thumbnail_png(token, len(small_dataset))
    with pytest.raises(KeyError):
        thumbnails.thumbnail_png("f" * 32, 0)


def test_src_is_a_url_with_the_route_and_a_data_uri_without(small_dataset, monkeypatch):
    monkeypatch.setattr(thumbnails, "_route_served", False)
    src = thumbnails.thumbnail_src(small_dataset, 3)
    assert src.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(decode(base64.b64decode(src.split(",", 1)[1])), small_dataset.read(3))
    monkeypatch.setattr(thumbnails, "_route_served", True)
    assert re.fullmatch(thumbnails.ROUTE, thumbnails.thumbnail_src(small_dataset, 3))
