"""Facets of a unit: HTML cards for the page and a matplotlib "neuron card" for papers."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from netatlas.backend.facets import FacetReport, flat_images  # noqa: E402
from netatlas.viz.images import GRID_CSS, png_data_uri  # noqa: E402

FACET_CSS = """
<style>
.na-facets{display:flex;flex-wrap:wrap;gap:14px}
.na-facet{border:1px solid #ddd;border-radius:6px;padding:8px;width:236px;font:12px/1.35 sans-serif}
.na-facet-img{image-rendering:pixelated;border:1px solid #999;background:#000;display:block;margin:0 auto 6px}
.na-facet .na-grid img{width:36px;height:36px}
.na-facet b{color:#2c4f7c}
.na-facet-same,.na-facets-converged{color:#b3261e}
</style>
"""


PAGE_HINT = 'For distinct facets, raise the "Diversity term" above 0 or start from random noise.'
NEAR_SAME = 0.0005     # a diversity below this shows as 0.000


def number(x: float, spec: str = ".3g") -> str:
    """``x`` formatted, or "not finite" (never "nan" or "inf" on screen or in a file)."""
    return format(float(x), spec) if np.isfinite(x) else "not finite"


def _listed(items: Sequence[int]) -> str:
    names = [str(i + 1) for i in items]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def dataset_text(report: FacetReport) -> str:
    """The dataset's statistics the facets are measured against."""
    left_out = (f" ({report.dataset_nonfinite:,} images with a non-finite activation left out)"
                if report.dataset_nonfinite else "")
    if not report.dataset_std > 0:
        return (f"all {report.dataset_size:,} dataset activations equal {number(report.dataset_max)}, so there "
                f"is no spread to measure the facets in{left_out}")
    return (f"dataset max {number(report.dataset_max)}, standard deviation (SD) {number(report.dataset_std)} "
            f"over {report.dataset_size:,} images{left_out}")


def rank_text(report: FacetReport, i: int) -> str:
    """Facet ``i``'s rank among the dataset's activations."""
    if report.rank[i] <= 0:
        return "no rank among dataset images (the optimization diverged)"
    return f"rank {report.rank[i]:,} of {report.dataset_size:,} dataset images"


def distance_text(report: FacetReport, i: int) -> str:
    """(activation - dataset max) / dataset SD in words, or why it is absent."""
    above = report.above_max_sd
    if above is None:
        return "no SD distance: all dataset activations are equal"
    z = above[i]
    if not np.isfinite(z):
        return "no SD distance: the activation is not finite"
    if z == 0:
        return "at the dataset max"
    return f"{abs(z):.2f} SD {'above' if z > 0 else 'below'} the dataset max"


def diversity_text(value: float | None, images: np.ndarray) -> str:
    """A diversity, or why it is undefined."""
    if value is not None:
        return f"{value:.3f}"
    if len(images) < 2:
        return "none to measure (one facet)"
    flat = flat_images(images)
    return (f"undefined (image{'s' if len(flat) > 1 else ''} {_listed(flat)} {'are' if len(flat) > 1 else 'is'} "
            "flat: no pattern to correlate)")


def convergence_note(report: FacetReport, hint: str = PAGE_HINT) -> str | None:
    """Words for facets that came out as the same image (or nearly), with ``hint``; None when distinct."""
    k, groups = len(report.images), report.same_image_groups()
    if groups and len(groups[0]) == k:
        note = f"The {k} facets converged to the same image."
    elif groups:
        note = " ".join(f"Facets {_listed(g)} converged to the same image." for g in groups)
    elif report.diversity is not None and report.diversity < NEAR_SAME:
        note = (f"The facets' pixels correlate at {1 - report.diversity:.4f} on average: nearly the same image "
                "(up to brightness and contrast).")
    elif (report.diversity is not None and report.start_diversity is not None
          and report.diversity < report.start_diversity):
        note = (f"The facets are less diverse than the images they started from ({report.diversity:.3f} against "
                f"{report.start_diversity:.3f}): the optimization pulled them together.")
    else:
        return None
    return f"{note} {hint}" if hint else note


def facets_html(report: FacetReport, exemplar_images: Sequence[Sequence[np.ndarray]], shown: int = 10) -> str:
    """One card per facet: the synthetic image, its numbers, and its nearest exemplars."""
    cards = []
    groups = {j: g for g in report.same_image_groups() for j in g}
    for i, image in enumerate(report.images):
        thumbs = "".join(f'<img src="{png_data_uri(ex)}" loading="lazy" alt="">' for ex in exemplar_images[i][:shown])
        same = [j for j in groups.get(i, []) if j != i]
        same_line = (f'<br><span class="na-facet-same">the same image as facet{"s" if len(same) > 1 else ""} '
                     f"{_listed(same)}</span>" if same else "")
        cards.append(
            f'<div class="na-facet"><img class="na-facet-img" src="{png_data_uri(image, 224)}" width="180" '
            f'height="180" alt="facet {i + 1}" title="facet {i + 1}">'
            f"<div><b>facet {i + 1}</b> · {report.sizes[i]} of the top images<br>"
            f"activation {number(report.activation[i])} · {rank_text(report, i)}<br>"
            f"<b>{distance_text(report, i)}</b><br>"
            f"(started at {number(report.start_activation[i])}){same_line}</div>"
            f'<div class="na-grid">{thumbs}</div></div>')
    note = convergence_note(report)
    summary = (f"<p>Measured against the data: {html.escape(dataset_text(report))}.<br>"
               f"Diversity of the facets (mean pairwise 1 - correlation of their pixels): "
               f"<b>{diversity_text(report.diversity, report.images)}</b> "
               f"(their starting images: {diversity_text(report.start_diversity, report.starts)}).</p>"
               + (f'<p class="na-facets-converged"><b>{html.escape(note, quote=False)}</b></p>' if note else ""))
    return f'{GRID_CSS}{FACET_CSS}{summary}<div class="na-facets">{"".join(cards)}</div>'


CLI_HINT = "For distinct facets, try --diversity > 0 or --start noise."
CSV_COLUMNS = ["facet", "activation", "start_activation", "rank", "dataset_images", "sd_above_dataset_max",
               "dataset_max", "dataset_sd", "same_image_as", "note", "images", "exemplars"]


def facets_csv(report: FacetReport) -> str:
    """One row per facet (CSV text). A number that is undefined is an empty cell, and ``note`` says why;
    ``same_image_as`` lists the other facets with the same image."""
    import csv
    import io

    groups = {j: g for g in report.same_image_groups() for j in g}
    above = report.above_max_sd
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cell = lambda x, spec=".6g": format(float(x), spec) if np.isfinite(x) else ""  # noqa: E731
    for i in range(len(report.images)):
        notes = []
        if not np.isfinite(report.activation[i]):
            notes.append("activation not finite: no rank or SD distance")
        if above is None:
            notes.append("all dataset activations equal: no SD distance")
        writer.writerow([
            i + 1, cell(report.activation[i]), cell(report.start_activation[i]),
            report.rank[i] if report.rank[i] > 0 else "", report.dataset_size,
            "" if above is None else cell(above[i], ".4f"), cell(report.dataset_max),
            cell(report.dataset_std) if report.dataset_std > 0 else "",
            " ".join(str(j + 1) for j in groups.get(i, []) if j != i), "; ".join(notes), report.sizes[i],
            " ".join(map(str, report.exemplars[i]))])
    return out.getvalue()


def text_summary(report: FacetReport, hint: str = CLI_HINT) -> list[str]:
    """The facets' numbers as lines of text (the CLI prints them)."""
    lines = [f"measured against the data: {dataset_text(report)}"]
    for i in range(len(report.images)):
        lines.append(f"facet {i + 1}: activation {number(report.activation[i])}, {rank_text(report, i)}, "
                     f"{distance_text(report, i)} ({report.sizes[i]} of the top images)")
    lines.append(f"diversity {diversity_text(report.diversity, report.images)} (starting images "
                 f"{diversity_text(report.start_diversity, report.starts)})")
    note = convergence_note(report, hint)
    return lines + ([note] if note else [])


def _card_label(report: FacetReport, i: int) -> str:
    """A facet's numbers in a few words, for the small titles of the neuron card."""
    if report.rank[i] <= 0:
        return f"facet {i + 1}: not finite"
    above = report.above_max_sd
    distance = "all data equal" if above is None else f"{above[i]:+.2f} SD vs max"
    return f"facet {i + 1}: rank {report.rank[i]:,}, {distance}"


def neuron_card(report: FacetReport, exemplar_images: Sequence[Sequence[np.ndarray]], values: np.ndarray,
                top_images: Sequence[np.ndarray], bottom_images: Sequence[np.ndarray], title: str,
                shown: int = 4) -> plt.Figure:
    """Facets (synthetic image over its exemplars), top/bottom dataset images and the histogram."""
    k = len(report.images)
    cols = max(k, 2)
    fig = plt.figure(figsize=(2.0 * cols, 2.0 * 3 + 2.4), constrained_layout=True)
    grid = fig.add_gridspec(5, cols, height_ratios=[2, 0.9, 0.9, 0.9, 1.4])
    note = convergence_note(report, hint="")
    fig.suptitle(title if note is None else f"{title}\n{note}", fontsize=11 if note is None else 9)
    for i in range(k):
        ax = fig.add_subplot(grid[0, i])
        _show(ax, report.images[i])
        ax.set_title(_card_label(report, i), fontsize=8)
        ax_ex = fig.add_subplot(grid[1, i])
        _show(ax_ex, _strip(exemplar_images[i][:shown]))
        ax_ex.set_title(f"{report.sizes[i]} images", fontsize=7)
    for row, (label, images) in enumerate((("top", top_images), ("bottom", bottom_images)), start=2):
        ax = fig.add_subplot(grid[row, :])
        _show(ax, _strip(images))
        ax.set_title(f"{label} {len(images)} dataset images", fontsize=8)
    hist = fig.add_subplot(grid[4, :])
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    hist.hist(finite, bins=50, color="#4c78a8")
    for activation in report.activation[np.isfinite(report.activation)]:
        hist.axvline(activation, color="#e45756", linestyle="--", linewidth=1)
    left_out = f"; {len(values) - len(finite):,} non-finite left out" if len(finite) < len(values) else ""
    hist.set_xlabel(f"activation over the dataset (dashed: the facets{left_out})", fontsize=8)
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
