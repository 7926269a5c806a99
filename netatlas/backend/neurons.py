"""Statistics of one unit over a dataset: extreme examples, distribution, per-class means."""

from __future__ import annotations

import numpy as np
import pandas as pd


def top_bottom(values: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k highest (descending) and k lowest (ascending) values; ties keep data order."""
    order = np.argsort(values, kind="stable")
    k = min(k, len(values))
    return order[::-1][:k] if k else order[:0], order[:k]


def class_means(values: np.ndarray, labels: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Mean, std and count of ``values`` per labelled class (unlabelled images are left out)."""
    rows = []
    for c, name in enumerate(classes):
        v = values[labels == c]
        if len(v):
            rows.append({"class": name, "mean": float(v.mean()), "std": float(v.std()), "count": len(v)})
    return pd.DataFrame(rows, columns=["class", "mean", "std", "count"])


def top_units(values: np.ndarray, members: np.ndarray, k: int = 10) -> pd.DataFrame:
    """The units whose mean over ``members`` most exceeds their mean over the dataset.

    Ranked by the excess in units of the dataset's standard deviation, so that units of very
    different scales compare; the raw means are in the table too.
    """
    values = np.asarray(values, dtype=np.float64)
    overall, spread = values.mean(0), values.std(0)
    inside = values[np.asarray(members)].mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(spread > 0, (inside - overall) / spread, 0.0)
    best = np.argsort(-score, kind="stable")[:k]
    return pd.DataFrame({"unit": best, "in cluster": inside[best], "dataset": overall[best],
                         "excess (sd)": score[best]})
