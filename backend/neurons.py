"""Statistics of one unit over a dataset: extreme examples, distribution, per-class means."""

from __future__ import annotations

import numpy as np
import pandas as pd


def top_bottom(values: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k highest (descending) and k lowest (ascending) values; ties keep data order.
    A NaN activation is neither high nor low: those images are in neither list."""
    values = np.asarray(values)
    valid = np.flatnonzero(~np.isnan(values))
    order = valid[np.argsort(values[valid], kind="stable")]
    k = min(k, len(order))
    return order[::-1][:k] if k else order[:0], order[:k]


def class_means(values: np.ndarray, labels: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Mean, std and count of ``values`` per labelled class (unlabelled images are left out, and so
    are NaN or infinite activations, which have no mean: ``count`` is the images averaged)."""
    rows = []
    values = np.asarray(values)
    for c, name in enumerate(classes):
        v = values[(labels == c) & np.isfinite(values)]
        if len(v):
            rows.append({"class": name, "mean": float(v.mean()), "std": float(v.std()), "count": len(v)})
    return pd.DataFrame(rows, columns=["class", "mean", "std", "count"])


def unit_baseline(values: np.ndarray, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's mean and standard deviation over the dataset (float64, two passes in row blocks)."""
    def blocks():
        for start in range(0, len(values), block):
            yield np.asarray(values[start:start + block], dtype=np.float64)
    mean = sum(chunk.sum(0) for chunk in blocks()) / len(values)
    variance = sum(((chunk - mean) ** 2).sum(0) for chunk in blocks()) / len(values)
    return mean, np.sqrt(variance)


def highest_mean_units(baseline: tuple[np.ndarray, np.ndarray], k: int = 10) -> pd.DataFrame:
    """The ``k`` units with the highest mean over the dataset, with that mean and standard deviation (from
    ``unit_baseline``); a unit whose mean is NaN or infinite ranks last. What the whole dataset's top units are:
    ``top_units``' excess over the dataset mean is 0 for every unit there, by definition."""
    mean, spread = baseline
    rank = np.where(np.isfinite(mean), mean, -np.inf)
    best = np.argsort(-rank, kind="stable")[:k]
    return pd.DataFrame({"unit": best, "dataset mean": mean[best], "dataset sd": spread[best]})


def top_units(values: np.ndarray, members: np.ndarray, k: int = 10,
              baseline: tuple[np.ndarray, np.ndarray] | None = None, sample: int = 10_000,
              seed: int = 0) -> pd.DataFrame:
    """The units whose mean over ``members`` most exceeds their mean over the dataset.

    Ranked by the excess in units of the dataset's standard deviation, so that units of very
    different scales compare; the raw means are in the table too. ``baseline`` (from
    ``unit_baseline``) saves a pass over the dataset per call; a cluster larger than ``sample``
    is averaged over a seeded sample of that many members (a standard error of about 1% of a
    standard deviation), so the cost does not grow with the cluster.
    """
    members = np.asarray(members)
    if len(members) > sample:
        members = np.random.default_rng(seed).choice(members, sample, replace=False)
    overall, spread = baseline if baseline is not None else unit_baseline(values)
    inside = np.asarray(values[np.sort(members)], dtype=np.float64).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(spread > 0, (inside - overall) / spread, 0.0)   # constant unit: no excess at all
    # A unit with NaN or infinite activations has no excess to rank: NaN (shown as absent), ranked last.
    score = np.where(np.isfinite(inside) & np.isfinite(overall) & np.isfinite(spread), score, np.nan)
    best = np.argsort(-score, kind="stable")[:k]
    return pd.DataFrame({"unit": best, "in cluster": inside[best], "dataset": overall[best],
                         "excess (sd)": score[best]})
