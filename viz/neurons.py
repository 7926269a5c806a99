"""Figures for one unit: its activation histogram and its mean activation per class."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd


def activation_histogram(values: np.ndarray, title: str, bins: int = 50,
                         marks: dict[str, float] | None = None) -> hv.Overlay:
    """Histogram of a unit's activations over the dataset, with optional vertical marks."""
    counts, edges = np.histogram(values, bins=bins)
    hist = hv.Histogram((edges, counts), kdims="activation", vdims="images").opts(
        title=title, color="#4c78a8", line_color=None, responsive=True, height=260, tools=["hover"])
    lines = [hv.VLine(x).opts(color="#d62728", line_dash="dashed", line_width=1)
             for x in (marks or {}).values()]
    return hv.Overlay([hist, *lines]).opts(title=title)


def class_mean_bars(means: pd.DataFrame, title: str) -> hv.Overlay:
    """Bar per class of the mean activation, with +-1 sd error bars."""
    bars = hv.Bars(means, kdims="class", vdims=["mean", "std", "count"]).opts(
        title=title, color="#72b7b2", responsive=True, height=260, tools=["hover"],
        ylabel="mean activation")
    errors = hv.ErrorBars(means, kdims="class", vdims=["mean", "std"]).opts(line_width=1)
    return (bars * errors).opts(title=title)
