"""Image thumbnails as one HTML block of inline PNGs (never one Panel pane per image)."""

from __future__ import annotations

import base64
import html
import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image

GRID_CSS = """
<style>
.na-grid{display:flex;flex-wrap:wrap;gap:6px}
.na-thumb{margin:0;display:flex;flex-direction:column;align-items:center;font:11px/1.2 sans-serif}
.na-thumb img{image-rendering:pixelated;border:1px solid #ccc;background:#000}
.na-thumb figcaption{color:#444;max-width:100%;text-align:center;white-space:nowrap;overflow:hidden}
.na-thumb.wrong img{outline:2px solid #d62728;outline-offset:-2px}
</style>
"""


def png_data_uri(image: np.ndarray, max_side: int = 128) -> str:
    """uint8 [H, W] or [H, W, 3] -> ``data:image/png;base64,...``, downscaled to ``max_side``."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_grid_html(images: Sequence[np.ndarray], captions: Sequence[str], *, size: int = 64,
                    css_class: str = "", titles: Sequence[str] | None = None,
                    flagged: Sequence[bool] | None = None) -> str:
    """A wrapping grid of thumbnails with captions; ``flagged`` outlines (e.g. misclassified) images."""
    titles = titles or captions
    flagged = flagged or [False] * len(images)
    cells = []
    for image, caption, title, flag in zip(images, captions, titles, flagged):
        cells.append(
            f'<figure class="na-thumb{" wrong" if flag else ""}" title="{html.escape(title)}">'
            f'<img src="{png_data_uri(image)}" width="{size}" height="{size}" loading="lazy" alt="">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return f'{GRID_CSS}<div class="na-grid {css_class}">{"".join(cells)}</div>'


def image_detail_html(read: Callable[[int], np.ndarray], ids: Sequence[str], class_name: Callable[[int], str],
                      labels: np.ndarray, predictions: np.ndarray | None, index: int, neighbours: Sequence[int],
                      distances: Sequence[float], heading: str = "Nearest neighbours") -> str:
    """One image large with its label and prediction (none when ``predictions`` is None: the model has no
    classifier for these classes), then its nearest neighbours with distances."""
    if predictions is None:
        wrong = np.zeros(len(labels), bool)
    else:
        wrong = (labels >= 0) & (predictions != labels)

    def title(i: int) -> str:
        if predictions is None:
            return f"{ids[i]} · label {class_name(int(labels[i]))}"
        return (f"{ids[i]} · label {class_name(int(labels[i]))} · predicted {class_name(int(predictions[i]))}"
                + (" (wrong)" if wrong[i] else ""))

    big = image_grid_html([read(index)], [ids[index]], size=160, flagged=[bool(wrong[index])])
    grid = image_grid_html([read(int(i)) for i in neighbours], [f"{d:.3g}" for d in distances],
                           titles=[title(int(i)) for i in neighbours], flagged=[bool(wrong[i]) for i in neighbours],
                           size=56, css_class="na-neighbours")
    facts = f"label <b>{html.escape(class_name(int(labels[index])))}</b>"
    if predictions is not None:
        flag = " · <b style='color:#d62728'>misclassified</b>" if wrong[index] else ""
        facts += f" · predicted <b>{html.escape(class_name(int(predictions[index])))}</b>{flag}"
    return (f"<h4 style='margin:4px 0'>Image {html.escape(ids[index])}</h4>{big}"
            f"<p>{facts}</p>"
            f"<p>{html.escape(heading)}:</p>{grid}")
