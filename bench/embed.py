"""Benchmark: the Map tab (``viz.embedding``, ``backend.embedding``) and extraction on Dask.

1. Zoom: the server's whole work for one view of the map (``render``: datashader aggregate, shading,
   spreading, the HoloViews element) at 1M and 10M points, coloured by class, over a zoom sequence
   (whole map, then 4x and 32x in), median of the views; with a highlighted 10% subset too. Targets:
   <= 300 ms at 1M and <= 1.5 s at 10M. Baseline in the same run: ``np.histogram2d`` of the same
   points for the same view (the plain count a hand-written renderer would start from).
2. The Map tab on 100,000 x 512: time to the first picture (the PCA preview the tab shows while UMAP
   runs: the PCA map, ``MapPoints`` and one ``render``; target <= 5 s) and to the UMAP map (PCA to 50
   first, then the fit; reported, no target), as a ratio.
2b. numba's compilation in a fresh process (``--skip-numba`` skips it): a 2,000-row UMAP in new
   processes, each timing ``import umap``, the first fit and a second fit (the second is pure work, so
   first - second is compilation). Before: umap imported as it is (numba caches only the functions
   umap and pynndescent mark ``cache=True``); after: ``embedding.import_umap`` (numba caches all of
   them). Each on an empty cache (a fresh install) and again on the cache that run left.
3. A million points: UMAP fitted on a 200,000 sample, the other 800,000 placed by their 15 nearest
   fitted neighbours (target <= 5 minutes in all). Baseline: umap-learn's own ``transform`` on 20,000
   of those rows, timed and extrapolated; how far its positions are from ours (median distance over
   the map's spread) says what the faster placement costs.
4. Extraction on a 2-worker Dask LocalCluster against one process, on 20,000 demo digits (tiled):
   the time ratio and whether the Parquet parts equal the single-process result exactly
   (bench/dask_extract.py).

Data for 1-3: 10 classes of 5 sub-modes in a 32-D latent space embedded in 512-D with noise (the
mixture of bench/cluster.py); for 1, a 2-D map of 40 blobs (what a UMAP of 10 classes looks like).
Each part prints the load other processes put on the machine; nothing gates, the exit code is 0
unless the benchmark itself fails.

    python bench/embed.py [--quick] [--skip-umap] [--skip-numba] [--skip-dask]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from cluster import mixture  # bench/ is on sys.path when run as a script
from machine_load import OtherLoad, report_load
from netatlas.backend.embedding import EmbedSettings, embed, pca
from netatlas.viz.embedding import MapPoints, render

ZOOM_TARGETS_MS = {1_000_000: 300.0, 10_000_000: 1500.0}
FIRST_PICTURE_TARGET_S = 5.0
MILLION_TARGET_S = 300.0
WIDTH, HEIGHT = 640, 520

summary: dict[str, str] = {}


def out(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<44} {value:>16}  {note}", flush=True)


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def blob_map(n: int, seed: int = 0) -> MapPoints:
    """n points in 40 2-D blobs of varied size and spread, labelled by 10 classes."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, (40, 2))
    which = rng.integers(0, 40, n)
    xy = centres[which] + rng.normal(0, 1, (n, 2)) * rng.uniform(0.2, 1.0, 40)[which, None]
    labels = which % 10
    predictions = np.where(rng.random(n) < 0.9, labels, rng.integers(0, 10, n))
    return MapPoints.build(xy.astype(np.float32), labels, predictions, [str(i) for i in range(10)])


def views(points: MapPoints) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The whole map, then 4x and 32x zooms around a busy point."""
    x0, y0, x1, y1 = points.bounds
    cx, cy = points.xy[0]
    out_ = [((x0, x1), (y0, y1))]
    for factor in (4, 32):
        hw, hh = (x1 - x0) / factor / 2, (y1 - y0) / factor / 2
        out_.append(((cx - hw, cx + hw), (cy - hh, cy + hh)))
    return out_


def zoom(n: int) -> None:
    print(f"\n1. zoom at {n:,} points (render = aggregate + shade + spread + HoloViews element)")
    points = blob_map(n)
    load = OtherLoad()
    highlight = np.arange(0, n, 10)
    render(points, "class", width=WIDTH, height=HEIGHT)             # numba compiles once
    render(points, "class", width=WIDTH, height=HEIGHT, highlight=highlight[:10])
    ours, lit, base = [], [], []
    for x_range, y_range in views(points):
        ours.append(median_ms(lambda: render(points, "class", x_range, y_range, WIDTH, HEIGHT)))
        lit.append(median_ms(lambda: render(points, "class", x_range, y_range, WIDTH, HEIGHT, highlight), 3))
        base.append(median_ms(lambda: np.histogram2d(points.xy[:, 1], points.xy[:, 0], (HEIGHT, WIDTH),
                                                     (y_range, x_range)), 3))
    med, med_lit, med_base = np.median(ours), np.median(lit), np.median(base)
    target = ZOOM_TARGETS_MS[n] if n in ZOOM_TARGETS_MS else None
    out("render, coloured by class (median of views)", f"{med:.0f} ms",
        f"views {', '.join(f'{t:.0f}' for t in ours)} ms" + (f"; target <= {target:.0f} ms" if target else ""))
    out("  with 10% highlighted", f"{med_lit:.0f} ms")
    out("baseline: np.histogram2d count only", f"{med_base:.0f} ms", f"ratio ours/baseline {med / med_base:.2f}x")
    report_load(load)
    if target:
        summary[f"zoom {n:,}"] = f"{med:.0f} ms ({'meets' if med <= target else 'MISSES'} <= {target:.0f} ms)"


def umap_100k(n: int) -> None:
    print(f"\n2. the Map tab on {n:,} x 512: first picture (PCA preview) and the UMAP map")
    x, labels = mixture(n)
    start = time.perf_counter()
    embed(x[:500], EmbedSettings(seed=None))                       # numba compiles umap's kernels once
    out("warm-up: numba compiling umap (500 rows)", f"{time.perf_counter() - start:.1f} s", "not counted below")
    load = OtherLoad()
    start = time.perf_counter()
    preview = embed(x, EmbedSettings(method="pca"))
    points = MapPoints.build(preview.xy, labels, labels, [str(i) for i in range(10)])
    render(points, "class", width=WIDTH, height=HEIGHT)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    result = embed(x, EmbedSettings(seed=None, fit_sample=n))
    umap_s = time.perf_counter() - start
    out("first picture: PCA preview, points, render", f"{first_s:.2f} s",
        f"target <= {FIRST_PICTURE_TARGET_S:.0f} s: {'meets' if first_s <= FIRST_PICTURE_TARGET_S else 'MISSES'}")
    out("UMAP map (PCA to 50 + fit on all rows, parallel)", f"{umap_s:.1f} s",
        f"{result.n_fitted:,} fitted; ratio UMAP / first picture {umap_s / first_s:.0f}x")
    report_load(load)
    summary[f"first picture {n:,}"] = f"{first_s:.2f} s (UMAP {umap_s:.0f} s)"


FRESH_PROCESS = """
import sys, time
import numpy as np
from netatlas.backend.embedding import EmbedSettings, embed, import_umap
start = time.perf_counter()
umap = __import__("umap") if sys.argv[1] == "before" else import_umap()
imported = time.perf_counter() - start
rng = np.random.default_rng(0)
x = (rng.normal(size=(10, 64))[rng.integers(0, 10, 2000)] * 4 + rng.normal(size=(2000, 64))).astype(np.float32)
times = []
for _ in range(2):
    start = time.perf_counter()
    embed(x, EmbedSettings(seed=0))
    times.append(time.perf_counter() - start)
print(imported, *times)
"""


def numba_fresh_process() -> None:
    print("\n2b. a fresh process's first UMAP (2,000 rows): numba compilation before/after import_umap")
    load = OtherLoad()
    totals = {}
    for when in ("before", "after"):
        with tempfile.TemporaryDirectory() as cache:
            for run in ("empty cache", "warm cache"):
                env = {**os.environ, "NUMBA_CACHE_DIR": cache}
                done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, when], env=env, check=True,
                                      capture_output=True, text=True)
                imported, first, second = map(float, done.stdout.split()[-3:])
                totals[when, run] = imported + first
                out(f"{when}, {run}: import + first fit", f"{imported + first:.1f} s",
                    f"import {imported:.1f} s, first fit {first:.1f} s, second fit {second:.1f} s "
                    f"(compiling ~{max(first - second, 0):.0f} s)")
    ratio = totals["before", "warm cache"] / totals["after", "warm cache"]
    out("a later process, before / after", f"{ratio:.1f}x")
    report_load(load)
    summary["fresh process's first UMAP (warm cache)"] = (f"{totals['before', 'warm cache']:.0f} s before, "
                                                          f"{totals['after', 'warm cache']:.0f} s after")


def million(n: int, fit: int, compare: int) -> None:
    print(f"\n3. {n:,} x 512: UMAP fitted on {fit:,}, the rest placed")
    x, labels = mixture(n)
    load = OtherLoad()
    timings: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:     # the fit ends when progress first reaches `fit`
        if done >= fit and "fit" not in timings:
            timings["fit"] = time.perf_counter() - last[0]
    start = time.perf_counter()
    settings = EmbedSettings(seed=None, fit_sample=fit)
    result = embed(x, settings, progress)
    total = time.perf_counter() - start
    placed = total - timings.get("fit", 0.0)
    out("total (PCA + fit + placement)", f"{total:.1f} s", f"target <= {MILLION_TARGET_S:.0f} s")
    out("  of which placing the rest", f"{placed:.1f} s", f"{1e6 * placed / (n - fit):.1f} us a row")
    summary[f"UMAP {n:,} (sample {fit:,})"] = (f"{total:.0f} s "
                                               f"({'meets' if total <= MILLION_TARGET_S else 'MISSES'} <= 300 s)")
    _against_umap_transform(x, result, settings, compare)
    report_load(load)


def _against_umap_transform(x: np.ndarray, result, settings: EmbedSettings, compare: int) -> None:
    """umap-learn's own transform (the fitted model) of some placed rows: its time and positions."""
    from netatlas.backend.embedding import place

    fitted = np.flatnonzero(result.fitted)
    rest = np.flatnonzero(~result.fitted)[:compare]
    reduced = pca(x, settings.pca_dims, settings.seed)
    start = time.perf_counter()
    theirs = result.model.transform(reduced[rest])
    theirs_s = time.perf_counter() - start
    start = time.perf_counter()
    mine = place(reduced[rest], reduced[fitted], result.xy[fitted], settings.n_neighbors)
    mine_s = time.perf_counter() - start
    spread = float(np.linalg.norm(result.xy[fitted].std(0)))
    gap = float(np.median(np.linalg.norm(mine - theirs, axis=1)) / spread)
    per_row = theirs_s / len(rest)
    out(f"baseline: umap-learn transform of {len(rest):,} rows", f"{theirs_s:.1f} s",
        f"ours {mine_s:.1f} s on the same rows ({theirs_s / mine_s:.0f}x faster; includes our index build); "
        f"umap for all {len(x) - len(fitted):,}: ~{per_row * (len(x) - len(fitted)) / 60:.0f} min")
    out("median distance ours vs umap transform", f"{gap:.3f}", "in units of the map's spread")
    summary["placement vs umap transform"] = f"{theirs_s / mine_s:.0f}x faster, median gap {gap:.3f} spread"


def dask_part(n: int) -> None:
    print(f"\n4. extraction of {n:,} demo digits: 2-worker Dask LocalCluster vs one process")
    from dask_extract import measure

    load = OtherLoad()
    r = measure(n_images=n)
    out("one process", f"{r['single_s']:.1f} s")
    out("2-worker LocalCluster", f"{r['dask_s']:.1f} s", f"speed-up {r['speedup']:.2f}x")
    out("Parquet parts equal the single-process result", str(r["parts_equal_single"]))
    report_load(load)
    summary["dask extraction"] = f"{r['speedup']:.2f}x, parts equal: {r['parts_equal_single']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every part")
    parser.add_argument("--skip-umap", action="store_true", help="skip parts 2 and 3")
    parser.add_argument("--skip-numba", action="store_true", help="skip part 2b (fresh processes)")
    parser.add_argument("--skip-dask", action="store_true", help="skip part 4")
    args = parser.parse_args(argv)
    for n in ((100_000,) if args.quick else (1_000_000, 10_000_000)):
        zoom(n)
    if not args.skip_umap:
        umap_100k(10_000 if args.quick else 100_000)
    if not args.skip_numba:
        numba_fresh_process()
    if not args.skip_umap:
        million(*((60_000, 20_000, 2_000) if args.quick else (1_000_000, 200_000, 20_000)))
    if not args.skip_dask:
        dask_part(2_000 if args.quick else 20_000)
    print("\nsummary")
    for name, value in summary.items():
        print(f"  {name:<40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
