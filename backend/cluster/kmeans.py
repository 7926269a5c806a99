"""k-means in torch (on the GPU when there is one), for splitting large sets into micro-clusters.

Lloyd iterations run on a sample; every point is then assigned once, in blocks, so memory stays
O(N*D + block*k). ``micro_clusters`` works in the top principal components (micro-clusters only need
to be local; the tree is built on the full vectors) and nests two levels (about sqrt(m) coarse
clusters, each split in proportion to its size), so assigning N points costs O(N * sqrt(m) * d)
instead of O(N * m * D).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

ASSIGN_BLOCK = 65_536


def kmeans(x: torch.Tensor, k: int, iters: int = 15, sample: int | None = None,
           generator: torch.Generator | None = None, plus_plus: bool = True) -> torch.Tensor:
    """Centroids [k', D] (k' <= k: empty clusters are dropped) from Lloyd iterations on a sample,
    seeded by k-means++ (or, with ``plus_plus=False``, by k distinct random points: k sequential
    seeding passes cost more than the iterations when k is large)."""
    n = len(x)
    k = min(k, n)
    if sample is not None and n > sample:
        x = x[torch.randperm(n, generator=generator, device="cpu")[:sample].to(x.device)]
    if plus_plus:
        centroids = _kmeanspp(x, k, generator)
    else:
        centroids = x[torch.randperm(len(x), generator=generator, device="cpu")[:k].to(x.device)]
    for _ in range(iters):
        labels = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centroids)).to(x.dtype)
        keep = counts > 0
        moved = sums[keep] / counts[keep, None]
        if len(moved) == len(centroids) and torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


def _kmeanspp(x: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling), one new centre per step, distances by matrix-vector products."""
    norms = (x * x).sum(1)
    first = int(torch.randint(len(x), (1,), generator=generator))
    chosen = [first]
    nearest = (norms - 2.0 * x @ x[first] + norms[first]).clamp_min_(0)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0:
            break                                # fewer distinct points than k
        pick = int(torch.multinomial((nearest / total).double().cpu(), 1, generator=generator))
        chosen.append(pick)
        torch.minimum(nearest, (norms - 2.0 * x @ x[pick] + norms[pick]).clamp_min_(0), out=nearest)
    return x[chosen]


def assign(x: torch.Tensor, centroids: torch.Tensor, block: int = ASSIGN_BLOCK) -> torch.Tensor:
    """Index of the nearest centroid for every row of ``x``, computed ``block`` rows at a time."""
    c_norms = (centroids * centroids).sum(1)
    out = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), block):
        chunk = x[i:i + block]
        out[i:i + block] = (c_norms[None, :] - 2.0 * chunk @ centroids.T).argmin(1)
    return out


def principal_components(x: torch.Tensor, dims: int, sample: int = 20_000,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` projected on its top ``dims`` principal axes (fitted on a sample), in blocks."""
    if x.shape[1] <= dims:
        return x
    fit = x[torch.randperm(len(x), generator=generator, device="cpu")[:sample].to(x.device)]
    mean = fit.mean(0)
    centred = (fit - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)    # D x D: far cheaper than an SVD of the sample
    axes = vectors[:, -dims:].flip(1).to(x.dtype).contiguous()
    out = torch.empty(len(x), dims, dtype=x.dtype, device=x.device)
    for i in range(0, len(x), ASSIGN_BLOCK):
        out[i:i + ASSIGN_BLOCK] = (x[i:i + ASSIGN_BLOCK] - mean) @ axes
    return out


def micro_clusters(x: np.ndarray, m: int, seed: int = 0, device: str | torch.device = "cpu",
                   sample_per_cluster: int = 32, dims: int = 64) -> np.ndarray:
    """Labels 0..m'-1 (every label used) splitting the rows of ``x`` into ~m micro-clusters.

    m' is m give or take rounding: each of the ~sqrt(m) coarse clusters gets a rounded share (at least
    one), so m' can exceed m by up to round(sqrt(m)); it is below m when k-means drops empty clusters."""
    n = len(x)
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():  # a read-only (cached, memory-mapped) array: we never write to it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    points = principal_components(points, dims, generator=generator)
    k1 = max(1, min(n, round(math.sqrt(m))))
    coarse = assign(points, kmeans(points, k1, sample=sample_per_cluster * k1, generator=generator))
    coarse = coarse.cpu().numpy()
    labels = np.empty(n, dtype=np.int64)
    order = np.argsort(coarse, kind="stable")
    bounds = np.searchsorted(coarse[order], np.arange(k1 + 1))
    next_label = 0
    for j in range(k1):
        members = order[bounds[j]:bounds[j + 1]]
        if not len(members):
            continue
        k2 = max(1, min(len(members), round(m * len(members) / n)))
        if k2 == 1:
            labels[members] = next_label
            next_label += 1
            continue
        idx = torch.from_numpy(members).to(device)
        sub = points[idx]
        local = assign(sub, kmeans(sub, k2, iters=10, sample=sample_per_cluster * k2, generator=generator,
                                   plus_plus=False))
        local = np.unique(local.cpu().numpy(), return_inverse=True)[1]
        labels[members] = next_label + local
        next_label += int(local.max()) + 1
    return labels
