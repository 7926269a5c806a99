"""Nearest neighbours in a representation, found by scanning it in blocks (never an N x N matrix)."""

from __future__ import annotations

import numpy as np

BLOCK = 65_536


def nearest_neighbors(x: np.ndarray, query: int, k: int = 8, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of the k rows of ``x`` nearest row ``query``, itself excluded, nearest first."""
    target = np.asarray(x[query], dtype=np.float64)
    k = min(k, len(x) - 1)
    best_i = np.empty(0, dtype=np.int64)
    best_d = np.empty(0)
    for start in range(0, len(x), block):
        chunk = np.asarray(x[start:start + block], dtype=np.float64)
        dist = np.sqrt(((chunk - target) ** 2).sum(1))
        idx = np.arange(start, start + len(chunk))
        keep = idx != query
        best_i = np.concatenate([best_i, idx[keep]])
        best_d = np.concatenate([best_d, dist[keep]])
        if len(best_d) > k:
            top = np.argpartition(best_d, k - 1)[:k]
            best_i, best_d = best_i[top], best_d[top]
    order = np.lexsort((best_i, best_d))
    return best_i[order], best_d[order]
