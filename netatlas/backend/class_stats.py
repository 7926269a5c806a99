"""Per-class counts and error rates of a set of images (a cluster, a selection, the dataset)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def class_stats(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per class present: count, accuracy (recall), FNR and FPR within these images.

    FNR = images of the class predicted as another / images of the class; FPR = images of other
    classes predicted as this one / images of other classes (NaN where a denominator is zero).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    known = labels >= 0
    labels, predictions = labels[known], predictions[known]
    rows = []
    for c in np.unique(labels):
        mine = labels == c
        others = ~mine
        hit = int((predictions[mine] == c).sum())
        false_pos = int((predictions[others] == c).sum())
        rows.append({"class": class_names[c] if c < len(class_names) else str(c), "label": int(c),
                     "count": int(mine.sum()), "accuracy": hit / mine.sum(),
                     "FNR": 1 - hit / mine.sum(),
                     "FPR": false_pos / others.sum() if others.any() else np.nan})
    return pd.DataFrame(rows, columns=["class", "label", "count", "accuracy", "FNR", "FPR"]).sort_values(
        "count", ascending=False, kind="stable").reset_index(drop=True)
