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
