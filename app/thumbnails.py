"""Thumbnails served at stable URLs, so the browser caches them and a zoom sends only new ones.

A session registers the dataset it opened; ``/thumb/<manifest hash>/<index>.png`` then answers with
that image as a PNG (with a long cache lifetime: the manifest hash changes with the files). Only
registered datasets are served, and they were opened from the allowed roots. When the app runs
without the route (``panel serve app``), ``thumbnail_src`` falls back to inline data URIs.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image
from tornado.web import HTTPError, RequestHandler

from netatlas.backend.datasets import ImageDataset
from netatlas.viz.images import png_data_uri

ROUTE = r"/thumb/([0-9a-f]{8,64})/([0-9]{1,10})\.png"
MAX_SIDE = 128
_datasets: dict[str, ImageDataset] = {}
_pngs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_lock = threading.Lock()
_route_served = False
_CACHED_PNGS = 50_000


def register(dataset: ImageDataset) -> str:
    """Make ``dataset``'s thumbnails servable; returns the token in their URLs."""
    token = dataset.manifest_hash[:32]
    with _lock:
        _datasets[token] = dataset
    return token


def enable_route() -> None:
    """Called by the server that mounted ``ThumbnailHandler`` at ``ROUTE``."""
    global _route_served
    _route_served = True


def thumbnail_src(dataset: ImageDataset, index: int) -> str:
    """The ``src`` of image ``index``: a cacheable URL when the route is served, else a data URI."""
    if _route_served:
        return f"/thumb/{register(dataset)}/{int(index)}.png"
    return png_data_uri(dataset.read(int(index)), MAX_SIDE)


def thumbnail_png(token: str, index: int) -> bytes:
    """PNG bytes of a registered dataset's image (kept in a bounded in-memory cache)."""
    key = (token, index)
    with _lock:
        if key in _pngs:
            _pngs.move_to_end(key)
            return _pngs[key]
        dataset = _datasets.get(token)
    if dataset is None or not 0 <= index < len(dataset):
        raise KeyError(key)
    image = Image.fromarray(np.asarray(dataset.read(index), dtype=np.uint8))
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    with _lock:
        _pngs[key] = data
        while len(_pngs) > _CACHED_PNGS:
            _pngs.popitem(last=False)
    return data


class ThumbnailHandler(RequestHandler):
    """GET /thumb/<token>/<index>.png -> the image, or 404 for anything not registered."""

    def get(self, token: str, index: str) -> None:
        try:
            data = thumbnail_png(token, int(index))
        except KeyError:
            raise HTTPError(404) from None
        except Exception:  # an unreadable image file: the page shows a broken thumbnail, no more
            raise HTTPError(404) from None
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "private, max-age=86400, immutable")
        self.finish(data)
