"""2-D maps of a representation: PCA first, then UMAP; past ``fit_sample`` points UMAP is fitted on a
seeded sample and the rest are placed the way UMAP's ``transform`` starts: at the membership-weighted
mean of their nearest fitted neighbours (``place``). umap-learn's own transform then runs refinement
epochs: about 0.5 ms a row on a 2-core CPU (six minutes for 800,000 rows) against about 0.09 ms for
the placement alone; bench/embed.py measures both and how far apart their positions land (a median
of 0.045 of the map's spread on its mixture).

umap-learn is imported only here and only when a UMAP map is asked for: its first import compiles
numba kernels (tens of seconds), which the app and CLI must not pay for views that do not use it.
``import_umap`` has numba cache all of umap's and pynndescent's kernels on disk, not only the few they
mark ``cache=True``, so that only the first map on a machine compiles them, and makes umap's epoch
loop report to ``embed``'s progress callback. Up to ``EXACT_NEIGHBOURS_UP_TO`` fitted rows UMAP is
given the exact nearest neighbours (``exact_knn``, reported block by block): pynndescent, which it
would use instead, cannot be cached and compiles again in every process (27 s on 2 cores, the bar
empty meanwhile), and an exact search costs less than that up to 50,000 rows.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch

from netatlas.backend.cache import default_cache_dir
from netatlas.backend.cluster.kmeans import principal_components
from netatlas.backend.errors import NetatlasError

Progress = Callable[[int, int], None]
Method = Literal["umap", "pca"]
# A seeded UMAP runs on one core; above this many images the app and CLI ask for the parallel one
# (not bit-reproducible across runs, but cached, so reopening shows the same map).
PARALLEL_ABOVE = 50_000
# Up to this many fitted rows UMAP gets the exact nearest neighbours, found here block by block with
# progress (0.1 s at 5,000 rows, 6 s at 50,000 on 2 cores). umap-learn's own search, pynndescent,
# compiles its numba kernels again in every process (27 s of the demo's 31 s UMAP) and reports nothing.
EXACT_NEIGHBOURS_UP_TO = 50_000
# Share of a UMAP fit before its first epoch (nearest neighbours, fuzzy graph, spectral start): the
# exact search fills it block by block; the epochs, which report one by one, share the rest.
NEIGHBOURS_SHARE = 0.2
NO_UMAP = "umap-learn is not installed: pip install umap-learn (or use --method pca)"


@dataclass(frozen=True)
class EmbedSettings:
    """How a map is made. ``seed`` None lets UMAP run in parallel (not bit-reproducible)."""

    method: Method = "umap"
    pca_dims: int = 50
    n_neighbors: int = 15
    min_dist: float = 0.1
    fit_sample: int = 200_000
    seed: int | None = 0


@dataclass
class Embedding:
    """[N, 2] coordinates and how they were made (``fitted``: the rows UMAP was fitted on)."""

    xy: np.ndarray
    fitted: np.ndarray
    method: str
    model: object | None = None      # the fitted umap.UMAP when computed here (not cached)

    @property
    def n_fitted(self) -> int:
        return int(self.fitted.sum())


def default_seed(n: int) -> int | None:
    """Seed 0 (reproducible) up to ``PARALLEL_ABOVE`` images, None (parallel) above."""
    return 0 if n <= PARALLEL_ABOVE else None


def embed(x: np.ndarray, settings: EmbedSettings = EmbedSettings(), progress: Progress | None = None) -> Embedding:
    """Embed the rows of ``x`` in 2-D (see the module docstring); ``progress`` gets (rows placed, N),
    and during the UMAP fit its neighbour search and then its epochs as a share of the fitted rows."""
    if settings.method not in ("umap", "pca"):
        raise NetatlasError(f"unknown embedding method {settings.method!r}: use umap or pca")
    x = _checked(x)
    n = len(x)
    report = progress or (lambda done, total: None)
    report(0, n)
    reduced = pca(x, settings.pca_dims, settings.seed)
    # Every row the same (a dead layer): UMAP would scatter identical points at random (it falls back
    # to a random start), drawing differences that are not there. The map is one point, as PCA says.
    same = not np.ptp(x, axis=0).any()
    if settings.method == "pca" or n <= max(settings.n_neighbors, 4) or same:
        xy = pca(reduced, 2, settings.seed)
        report(n, n)
        return Embedding(_standardized(xy), np.ones(n, bool), "pca")
    fitted = _fit_rows(n, settings)
    xy = np.empty((n, 2), dtype=np.float32)
    xy[fitted], model = _fit_umap(reduced[fitted], settings, lambda done, _: report(done, n))
    report(len(fitted), n)
    rest = np.setdiff1d(np.arange(n), fitted, assume_unique=True)
    if len(rest):
        xy[rest] = place(reduced[rest], reduced[fitted], xy[fitted], settings.n_neighbors, settings.seed,
                         lambda done, _: report(len(fitted) + done, n))
    mask = np.zeros(n, bool)
    mask[fitted] = True
    return Embedding(xy, mask, "umap", model)


def place(new: np.ndarray, base: np.ndarray, base_xy: np.ndarray, k: int = 15, seed: int | None = 0,
          progress: Progress | None = None) -> np.ndarray:
    """2-D positions for ``new`` rows: the mean of their ``k`` nearest ``base`` rows' positions,
    weighted by UMAP's fuzzy membership (exp(-(d - rho) / sigma), sigma solved per row)."""
    neighbours, distances = approximate_knn(new, base, k, seed, progress)
    weights = membership(distances)
    return (weights[..., None] * base_xy[neighbours]).sum(1) / weights.sum(1, keepdims=True)


def approximate_knn(queries: np.ndarray, base: np.ndarray, k: int, seed: int | None = 0,
                    progress: Progress | None = None, probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each query's ``k`` nearest base rows, searched in an inverted file:
    base rows are split into m ~ sqrt(n) k-means cells; the queries of a cell are compared with the
    rows of that cell and its nearest cells (``probes`` in all, default max(8, sqrt(m))), one small
    matrix product per cell."""
    from netatlas.backend.cluster.kmeans import assign, kmeans

    generator = torch.Generator().manual_seed(seed or 0)
    b, q = torch.from_numpy(np.ascontiguousarray(base)), torch.from_numpy(np.ascontiguousarray(queries))
    m = max(1, min(len(b) // max(k, 1), round(np.sqrt(len(b)))))
    centroids = kmeans(b, m, iters=10, sample=min(len(b), 64 * m), generator=generator, plus_plus=False)
    cell_of_base, cell_of_query = assign(b, centroids).numpy(), assign(q, centroids).numpy()
    probes = probes or max(8, round(np.sqrt(m)))
    near_cells = torch.cdist(centroids, centroids).topk(min(probes, len(centroids)), largest=False).indices.numpy()
    members = np.split(np.argsort(cell_of_base, kind="stable"), np.cumsum(np.bincount(cell_of_base, minlength=m))[:-1])
    queries_by_cell = np.argsort(cell_of_query, kind="stable")
    bounds = np.cumsum(np.bincount(cell_of_query, minlength=m))
    index = np.empty((len(q), k), dtype=np.int64)
    dist = np.empty((len(q), k), dtype=np.float32)
    b_norms = (b * b).sum(1)
    for cell in range(m):
        rows = queries_by_cell[(bounds[cell - 1] if cell else 0):bounds[cell]]
        if not len(rows):
            continue
        candidates = np.concatenate([members[c] for c in near_cells[cell]])
        kk = min(k, len(candidates))
        qx = q[rows]
        d2 = (qx * qx).sum(1, keepdim=True) - 2 * qx @ b[candidates].T + b_norms[candidates][None, :]
        top = d2.topk(kk, largest=False)
        index[rows, :kk] = candidates[top.indices.numpy()]
        dist[rows, :kk] = top.values.clamp_min(0).sqrt().numpy()
        if kk < k:                                   # fewer candidates than k: repeat the farthest
            index[rows, kk:] = index[rows, kk - 1:kk]
            dist[rows, kk:] = dist[rows, kk - 1:kk]
        if progress:
            progress(int(bounds[cell]), len(q))
    return index, dist


def membership(distances: np.ndarray, bandwidth: float = 1.0, iters: int = 64) -> np.ndarray:
    """UMAP's fuzzy membership of each row's neighbours: exp(-(d - rho) / sigma) with rho the nearest
    distance and sigma found by bisection so that the memberships sum to log2(k) (smooth_knn_dist)."""
    d = distances.astype(np.float64)
    rho = d[:, :1]
    excess = np.maximum(d - rho, 0)
    target = np.log2(d.shape[1]) * bandwidth
    lo, hi = np.zeros(len(d)), np.full(len(d), np.inf)
    sigma = np.ones(len(d))
    for _ in range(iters):
        total = np.exp(-excess / sigma[:, None]).sum(1)
        too_big = total > target
        hi = np.where(too_big, sigma, hi)
        lo = np.where(too_big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2, (lo + hi) / 2)
    return np.exp(-excess / np.maximum(sigma, 1e-12)[:, None]).astype(np.float32)


def pca(x: np.ndarray, dims: int, seed: int | None = 0) -> np.ndarray:
    """``x`` on its top ``dims`` principal axes (fitted on a 20k sample), float32."""
    generator = torch.Generator().manual_seed(seed or 0)
    with warnings.catch_warnings():          # a read-only (cached, memory-mapped) array: never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if points.shape[1] <= dims:
        return (points - points.mean(0)).numpy()
    with _one_torch_thread():
        return principal_components(points, dims, generator=generator).numpy()


_threads_lock = threading.Lock()


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread (all of torch, briefly: its thread count is per process). The PCA fit's
    eigendecomposition of a 512 x 512 matrix takes 0.06 s on one thread, and on two up to 7 s when
    other processes load the cores (MKL's threads wait on each other at every step): the Map's
    first picture at 100,000 images came in 1 s instead of 8-11 s on a busy 2-core machine."""
    with _threads_lock:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _checked(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or len(x) == 0:
        raise NetatlasError(f"cannot embed an array of shape {x.shape}: need [images, features]")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(1)).sum())
        raise NetatlasError(f"{bad} images have NaN or infinite activations in this layer; "
                            "a map needs finite values (check the checkpoint's numerics)")
    return x


def _fit_rows(n: int, settings: EmbedSettings) -> np.ndarray:
    """All rows up to ``fit_sample``; a uniform sample (sorted, seeded even when UMAP is not) above it."""
    if n <= settings.fit_sample:
        return np.arange(n)
    rng = np.random.default_rng(settings.seed or 0)
    return np.sort(rng.choice(n, settings.fit_sample, replace=False))


def _fit_umap(x: np.ndarray, settings: EmbedSettings, progress: Progress) -> tuple[np.ndarray, Any]:
    """(UMAP's 2-D positions of the rows of ``x``, the fitted umap.UMAP); ``progress`` gets (work done,
    len(x)): the exact neighbours block by block (up to ``EXACT_NEIGHBOURS_UP_TO`` rows, before umap is
    even imported), then the epochs one by one."""
    n, k, start = len(x), min(settings.n_neighbors, len(x) - 1), int(len(x) * NEIGHBOURS_SHARE)
    knn = None
    if n <= EXACT_NEIGHBOURS_UP_TO:
        knn = exact_knn(x, k, lambda done, total: progress(int(start * done / total), n))
    else:
        progress(max(1, start // 10), n)          # pynndescent reports nothing: the bar at least starts
    model = import_umap().UMAP(n_components=2, n_neighbors=k, min_dist=settings.min_dist,
                               random_state=settings.seed, low_memory=True,
                               precomputed_knn=(None, None, None) if knn is None else (*knn, None))

    def epoch_done(epoch: int, epochs: int) -> None:
        progress(int(start + (n - start) * epoch / epochs), n)

    with warnings.catch_warnings(), _epochs_reported(epoch_done):
        warnings.filterwarnings("ignore", message=".*n_jobs.*")  # umap: a seed disables parallelism
        warnings.filterwarnings("ignore", message="Cannot cache compiled function")  # see import_umap
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")  # no search index: we never transform
        return model.fit_transform(x), model


def exact_knn(x: np.ndarray, k: int, progress: Progress | None = None,
              block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances) of each row's ``k`` nearest rows, itself first at distance 0, nearest first:
    what umap-learn's search returns, but exact. The ``k`` smallest squared distances of one matrix
    product per block of rows (``block`` entries at most), then their distances computed directly: the
    product's rounding would leave a row a small distance from itself, and UMAP measures each row's
    neighbours from the first one farther than 0."""
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n = len(points)
    norms = (points * points).sum(1)
    rows = max(1, min(block // n, -(-n // 20)))      # 20 reports at least
    index = np.empty((n, k), dtype=np.int64)
    distance = np.empty((n, k), dtype=np.float32)
    for i0 in range(0, n, rows):
        chunk = torch.arange(i0, min(i0 + rows, n))
        d2 = torch.addmm(norms[None, :], points[chunk], points.T, alpha=-2)
        d2[torch.arange(len(chunk)), chunk] = -torch.inf    # itself first, whatever the rounding
        near = d2.topk(k, largest=False).indices
        exact = torch.linalg.vector_norm(points[near] - points[chunk, None, :], dim=2)
        exact[:, 0] = 0
        order = torch.cat([torch.zeros(len(chunk), 1, dtype=torch.int64),
                           exact[:, 1:].argsort(dim=1, stable=True) + 1], dim=1)
        index[i0:i0 + len(chunk)] = near.gather(1, order).numpy()
        distance[i0:i0 + len(chunk)] = exact.gather(1, order).numpy()
        if progress:
            progress(i0 + len(chunk), n)
    return index, distance


# ----------------------------------------------------------------------------- umap-learn, once per machine
_import_lock = threading.Lock()
_fitting = threading.local()     # .report: the epoch callback of the UMAP being fitted on this thread


def import_umap():
    """umap-learn, imported so that numba caches every function it and pynndescent define.

    Most of them are plain ``numba.njit`` without ``cache=True``, compiled again by every process on its
    first map (tens of seconds on a 2-core machine, each time). While umap is first imported,
    numba's decorators default to ``cache=True`` and write to ``numba_cache_dir`` (the functions
    decorated then keep both; nothing defined later is touched). The cached code is the code numba
    compiles; the maps are bit-identical. The few functions numba cannot cache (pynndescent's
    ``nn_descent``: dynamic globals) compile as before, their warning silenced in ``embed``.
    umap's epoch loop is wrapped in tqdm, its only hook: ``_epochs`` stands in for it to report progress.
    """
    with _import_lock:
        if "umap" in sys.modules:
            return sys.modules["umap"]
        try:
            import numba
            from numba.core import config
        except ImportError as exc:  # declared in pyproject; a broken install should say what is missing
            raise NetatlasError(NO_UMAP) from exc
        saved = numba.njit, numba.jit, config.CACHE_DIR
        folder = numba_cache_dir()
        if folder is not None:
            numba.njit, numba.jit = _caching(numba.njit), _caching(numba.jit)
            if Path(folder) != _in_tree_cache():
                config.CACHE_DIR = folder
        try:
            import umap
            import umap.layouts
        except ImportError as exc:
            raise NetatlasError(NO_UMAP) from exc
        finally:
            numba.njit, numba.jit, config.CACHE_DIR = saved
        if hasattr(umap.layouts, "tqdm"):
            umap.layouts.tqdm = _epochs(umap.layouts.tqdm)
        return umap


def numba_cache_dir(root: Path | None = None) -> str | None:
    """The folder numba caches umap's functions in: ``$NUMBA_CACHE_DIR`` when set; else numba's default,
    ``__pycache__`` beside umap's sources (shared by every process and every netatlas cache on the
    machine), when writable; else (a read-only install) ``numba/`` in the netatlas cache when writable;
    else None: only what umap itself marks is cached, where numba finds room."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    for folder in (_in_tree_cache(), Path(root or default_cache_dir()) / "numba"):
        if _writable(folder):
            return str(folder)
    return None


def _in_tree_cache() -> Path:
    spec = importlib.util.find_spec("umap")
    if spec is None or not spec.origin:
        raise NetatlasError(NO_UMAP)
    return Path(spec.origin).parent / "__pycache__"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _caching(decorator: Callable) -> Callable:
    def cached(*args: Any, **options: Any) -> Any:
        options.setdefault("cache", True)
        return decorator(*args, **options)
    return cached


def _epochs(tqdm: Callable) -> Callable:
    """umap's ``tqdm(range(n_epochs))``: epoch by epoch to the callback of the UMAP fitting on this
    thread, if any (it may raise to cancel); other uses get tqdm itself."""
    def epochs(iterable: Iterable, *args: Any, **kwargs: Any) -> Iterable:
        report = getattr(_fitting, "report", None)
        return tqdm(iterable, *args, **kwargs) if report is None else _counted(iterable, report)
    return epochs


def _counted(epochs: range, report: Progress) -> Iterable:
    for epoch in epochs:
        yield epoch
        report(epoch + 1, len(epochs))


@contextlib.contextmanager
def _epochs_reported(report: Progress) -> Iterator[None]:
    """Within the block, the epochs of a UMAP fitted on this thread go to ``report(epoch, epochs)``."""
    _fitting.report = report
    try:
        yield
    finally:
        _fitting.report = None


def _standardized(xy: np.ndarray) -> np.ndarray:
    """PCA maps scaled to unit spread, so that the map's default view frames them like UMAP's (a
    one-feature representation gets y = 0)."""
    xy = np.asarray(xy, dtype=np.float32)
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros((len(xy), 2 - xy.shape[1]), np.float32)])
    spread = xy.std(0)
    return xy / np.where(spread > 0, spread, 1)
