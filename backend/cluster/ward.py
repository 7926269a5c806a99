"""Ward linkage: exact on points (scipy's merge heights) and weighted on cluster centroids.

Both return scipy's linkage format, ``Z[i] = (a, b, height, size)`` with leaves ``0..n-1`` and the
merge of row ``i`` numbered ``n + i``, so either can be checked against (and drawn with) scipy.

- ``ward_linkage`` computes the condensed Euclidean distances block by block with BLAS (far faster
  than ``pdist``) and hands them to scipy's nearest-neighbour-chain Ward in C: the same heights as
  ``linkage(x, "ward")``. It holds n(n-1)/2 float64 distances, so it is for n up to ~20k.
- ``weighted_ward`` runs Ward on centroids that stand for clusters of given sizes (Lance-Williams
  with initial sizes), which neither scipy nor fastcluster accepts. With clusters of identical
  points it gives exactly the merges above them that Ward on the expanded points gives.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# scipy is imported where it is used: a cached CLI run or --help imports this module and never clusters.


def condensed_distances(x: np.ndarray, block: int = 1024,
                        progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Euclidean distances of the rows of ``x`` in scipy's condensed order, computed in row blocks."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)                      # centring keeps the Gram identity well conditioned
    n = len(x)
    if n <= block:
        return distances_from_gram(x @ x.T)
    norms = np.einsum("ij,ij->i", x, x)
    out = np.empty(n * (n - 1) // 2)
    offset = 0
    for i0 in range(0, n - 1, block):
        i1 = min(i0 + block, n - 1)
        sq = norms[i0:i1, None] + norms[None, i0:] - 2.0 * (x[i0:i1] @ x[i0:].T)
        np.maximum(sq, 0.0, out=sq)
        np.sqrt(sq, out=sq)
        for r in range(i1 - i0):
            row = sq[r, r + 1:]
            out[offset:offset + len(row)] = row
            offset += len(row)
        if progress:
            progress(i1, n - 1)
    return out


def distances_from_gram(gram: np.ndarray) -> np.ndarray:
    """Condensed Euclidean distances from a Gram matrix of (centred) points."""
    from scipy.spatial.distance import squareform

    norms = np.diagonal(gram)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(sq, 0.0)
    return np.sqrt(squareform(sq, checks=False))


def ward_linkage(x: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Exact Ward linkage of the rows of ``x``: scipy's ``linkage(x, "ward")`` heights.

    ``progress(done, total)`` follows the distance blocks (the long part, and where a cancel
    raised from it stops the work); scipy's chain then runs without interruption.
    """
    n = len(x)
    if n < 2:
        return np.empty((0, 4))
    from scipy.cluster.hierarchy import linkage

    return linkage(condensed_distances(x, progress=progress), method="ward")


def ward_distances(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Squared Ward distances between clusters: 2 n_a n_b / (n_a + n_b) * |c_a - c_b|^2, [m, m]."""
    c = np.asarray(centroids, dtype=np.float64)
    c = c - c.mean(axis=0)
    w = np.asarray(sizes, dtype=np.float64)
    norms = np.einsum("ij,ij->i", c, c)
    sq = np.maximum(norms[:, None] + norms[None, :] - 2.0 * (c @ c.T), 0.0)
    sq *= 2.0 * np.outer(w, w) / (w[:, None] + w[None, :])
    return sq


def weighted_ward(centroids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward linkage of clusters given by their centroids and sizes (nearest-neighbour chain).

    Heights follow scipy's convention (the Ward distance, not its square); ``Z[:, 3]`` counts the
    underlying points, i.e. sums of ``sizes``.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    m = len(sizes)
    if m < 2:
        return np.empty((0, 4))
    d = ward_distances(centroids, sizes)
    np.fill_diagonal(d, np.inf)
    size = sizes.copy()
    active = np.ones(m, dtype=bool)
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.argmax(active)))
        a = chain[-1]
        b = int(np.argmin(np.where(active, d[a], np.inf)))
        # Keep the previous link on ties: the chain must not cycle (reducibility guarantees a stop).
        if len(chain) > 1 and d[a, chain[-2]] <= d[a, b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            merges.append((a, b, float(d[a, b])))
            _merge(d, size, active, a, b)
        else:
            chain.append(b)
    return _as_linkage(merges, sizes)


def _merge(d: np.ndarray, size: np.ndarray, active: np.ndarray, a: int, b: int) -> None:
    """Lance-Williams update for Ward on squared distances; the merged cluster takes index b.

    Only active entries are kept current (readers mask with ``active``): writing a whole column of
    a large matrix touches a cache line per row, and that, not arithmetic, is the cost here.
    """
    na, nb, nk = size[a], size[b], size
    row = ((na + nk) * d[a] + (nb + nk) * d[b] - nk * d[a, b]) / (na + nb + nk)
    active[a] = False
    row[b] = np.inf
    d[b, :] = row
    live = np.flatnonzero(active)
    d[live, b] = row[live]
    size[b] = na + nb


def _as_linkage(merges: list[tuple[int, int, float]], sizes: np.ndarray) -> np.ndarray:
    """Merges by (index, index, squared height) -> scipy's format, sorted by height, relabelled.

    As in scipy's own NN-chain: sort the merges by height (stable), then name each merged pair by
    the clusters its members currently belong to (union-find).
    """
    m = len(sizes)
    rows = np.array([(a, b, h) for a, b, h in merges], dtype=np.float64)
    rows = rows[np.argsort(rows[:, 2], kind="mergesort")]
    parent = np.arange(2 * m - 1)               # union-find over leaves and merges
    count = np.concatenate([sizes, np.zeros(m - 1)])
    z = np.empty((m - 1, 4))
    for i, (a, b, sq) in enumerate(rows):
        ca, cb = _find(parent, int(a)), _find(parent, int(b))
        new = m + i
        parent[ca] = parent[cb] = new
        count[new] = count[ca] + count[cb]
        z[i] = (min(ca, cb), max(ca, cb), np.sqrt(max(sq, 0.0)), count[new])
    return z


def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return int(root)
