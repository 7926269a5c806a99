"""Figures for one unit: its activation histogram and its mean activation per class."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd

from netatlas.viz.styling import page_scrolls


def activation_histogram(values: np.ndarray, title: str, bins: int = 50,
                         marks: dict[str, float] | None = None) -> hv.Overlay:
    """Histogram of a unit's activations over the dataset, with optional vertical marks.

    Only finite values are binned (NaN or inf has no bin, and numpy cannot even choose the range);
    how many were left out is said in the title. A constant unit gets one bar of unit width centred
    on its value, so its value is not smeared over 50 bins of an invented range.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if len(finite) < len(values):
        title = f"{title} ({len(values) - len(finite):,} non-finite left out)"
    if len(finite) and finite.min() == finite.max():
        counts, edges = np.array([len(finite)]), finite[:1] + np.array([-0.5, 0.5])
    else:
        counts, edges = np.histogram(finite, bins=bins)
    hist = hv.Histogram((edges, counts), kdims="activation", vdims="images").opts(
        title=title, color="#4c78a8", line_color=None, responsive=True, height=260, tools=["hover"])
    lines = [hv.VLine(x).opts(color="#d62728", line_dash="dashed", line_width=1)
             for x in (marks or {}).values() if np.isfinite(x)]
    return page_scrolls(hv.Overlay([hist, *lines]).opts(title=title))


def class_mean_bars(means: pd.DataFrame, title: str) -> hv.Overlay:
    """Bar per class of the mean activation, with +-1 sd error bars."""
    bars = hv.Bars(means, kdims="class", vdims=["mean", "std", "count"]).opts(
        title=title, color="#72b7b2", responsive=True, height=260, tools=["hover"],
        ylabel="mean activation")
    errors = hv.ErrorBars(means, kdims="class", vdims=["mean", "std"]).opts(line_width=1)
    return page_scrolls((bars * errors).opts(title=title))
