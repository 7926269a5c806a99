"""The rows behind a view's ``.data``: the numbers a view shows, as pandas tables a notebook can use."""

from __future__ import annotations

import numpy as np
import pandas as pd


def image_rows(dataset, predictions: np.ndarray | None, indices: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image (all, or ``indices`` in that order): index, id, label, class and, only for a model
    with a classifier head (``predictions`` not None), prediction and predicted class."""
    index = np.arange(len(dataset.ids)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = np.asarray(dataset.labels)[index]
    frame = pd.DataFrame({"index": index, "id": [dataset.ids[i] for i in index], "label": labels,
                          "class": [dataset.class_name(int(c)) for c in labels]})
    if predictions is not None:
        predicted = np.asarray(predictions)[index]
        frame["prediction"] = predicted
        frame["predicted class"] = [dataset.class_name(int(p)) for p in predicted]
    return frame
