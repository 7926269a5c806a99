"""Facets of a unit: HTML cards for the page and a matplotlib "neuron card" for papers."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from netatlas.backend.facets import FacetReport  # noqa: E402
from netatlas.viz.images import GRID_CSS, png_data_uri  # noqa: E402

FACET_CSS = """
<style>
.na-facets{display:flex;flex-wrap:wrap;gap:14px}
.na-facet{border:1px solid #ddd;border-radius:6px;padding:8px;width:236px;font:12px/1.35 sans-serif}
.na-facet-img{image-rendering:pixelated;border:1px solid #999;background:#000;display:block;margin:0 auto 6px}
.na-facet .na-grid img{width:36px;height:36px}
.na-facet b{color:#2c4f7c}
</style>
"""


def facets_html(report: FacetReport, exemplar_images: Sequence[Sequence[np.ndarray]], shown: int = 10) -> str:
    """One card per facet: the synthetic image, its numbers, and its nearest exemplars."""
    cards = []
    for i, image in enumerate(report.images):
        ratio = report.ratio[i]
        thumbs = "".join(f'<img src="{png_data_uri(ex)}" loading="lazy" alt="">' for ex in exemplar_images[i][:shown])
        cards.append(
            f'<div class="na-facet"><img class="na-facet-img" src="{png_data_uri(image, 224)}" width="180" '
            f'height="180" alt="facet {i + 1}" title="facet {i + 1}">'
            f"<div><b>facet {i + 1}</b> · {report.sizes[i]} of the top images<br>"
            f"activation {report.activation[i]:.3g} = <b>{ratio:.2f}x</b> the dataset max · "
            f"rank {report.rank[i]:,} among dataset images<br>"
            f"(started at {report.start_activation[i]:.3g})</div>"
            f'<div class="na-grid">{thumbs}</div></div>')
    summary = (f"<p>Diversity of the facets (mean pairwise 1 - correlation of their pixels): "
               f"<b>{report.diversity:.3f}</b> (their starting images: {report.start_diversity:.3f}).</p>")
    return f'{GRID_CSS}{FACET_CSS}{summary}<div class="na-facets">{"".join(cards)}</div>'


def neuron_card(report: FacetReport, exemplar_images: Sequence[Sequence[np.ndarray]], values: np.ndarray,
                top_images: Sequence[np.ndarray], bottom_images: Sequence[np.ndarray], title: str,
                shown: int = 4) -> plt.Figure:
    """Facets (synthetic image over its exemplars), top/bottom dataset images and the histogram."""
    k = len(report.images)
    cols = max(k, 2)
    fig = plt.figure(figsize=(2.0 * cols, 2.0 * 3 + 2.4), constrained_layout=True)
    grid = fig.add_gridspec(5, cols, height_ratios=[2, 0.9, 0.9, 0.9, 1.4])
    fig.suptitle(title, fontsize=11)
    for i in range(k):
        ax = fig.add_subplot(grid[0, i])
        _show(ax, report.images[i])
        ax.set_title(f"facet {i + 1}: {report.ratio[i]:.2f}x max, rank {report.rank[i]}", fontsize=8)
        ax_ex = fig.add_subplot(grid[1, i])
        _show(ax_ex, _strip(exemplar_images[i][:shown]))
        ax_ex.set_title(f"{report.sizes[i]} images", fontsize=7)
    for row, (label, images) in enumerate((("top", top_images), ("bottom", bottom_images)), start=2):
        ax = fig.add_subplot(grid[row, :])
        _show(ax, _strip(images))
        ax.set_title(f"{label} {len(images)} dataset images", fontsize=8)
    hist = fig.add_subplot(grid[4, :])
    hist.hist(values, bins=50, color="#4c78a8")
    for activation in report.activation:
        hist.axvline(activation, color="#e45756", linestyle="--", linewidth=1)
    hist.set_xlabel("activation over the dataset (dashed: the facets)", fontsize=8)
    hist.set_ylabel("images", fontsize=8)
    hist.tick_params(labelsize=7)
    return fig


def _strip(images: Sequence[np.ndarray]) -> np.ndarray:
    """Images side by side (resized to the first one's size) with a 1-px gap."""
    if not len(images):
        return np.zeros((8, 8), dtype=np.uint8)
    h, w = images[0].shape[:2]
    rgb = any(im.ndim == 3 for im in images)
    tiles = [_fitted(np.repeat(im[..., None], 3, -1) if rgb and im.ndim == 2 else im, h, w) for im in images]
    gap = np.full((h, 1, 3) if rgb else (h, 1), 255, dtype=np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=255)
    ax.set_axis_off()


def save_card(fig: plt.Figure, path: str | Path, dpi: int = 200) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi if path.suffix == ".png" else None)
    plt.close(fig)
    return path


def _fitted(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` at height x width (exemplars from a folder of mixed sizes share one strip)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
