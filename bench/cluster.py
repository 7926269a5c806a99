"""Benchmark: the DendroMap cluster tree (``backend.cluster_tree``) and one zoom step of its view.

1. Scale: ``build_cluster_tree`` on 100,000 and 1,000,000 x 512 float32 points (targets: <= 10 s and
   <= 60 s on CPU) and its peak memory over the input array (target <= 3x). Each size runs in a fresh
   child process that imports torch (~3 s, ~0.4 GB: not the algorithm's), loads the data from a
   .npy, and only then takes its peak resident memory (VmHWM) as the baseline. scipy's Ward cannot
   run at these sizes (its pdist alone is N^2/2 float64), so here the baseline is that formula;
   the time against scipy comes from part 2.
2. Against scipy on 10k and 20k points of the same mixture, and on the demo model's penultimate
   code of 5,000 real MNIST digits: ``linkage(x, "ward")`` against our exact mode (time ratio, max
   relative height difference, expected ~1e-12) and our scaled mode forced on (time ratio; quality
   as cophenetic correlation and purity of the top 10 clusters, target within 2% of scipy's).
3. Zoom step on the largest tree of part 1: ``dendromap_frame`` at the root (k = 8), in one of the
   clusters it returns and one level further, coloured by accuracy and by a neuron (``node_means``,
   its one-off prefix sums reported apart), plus the side panel's class table and top units of a
   512-unit layer: the server's whole work for a zoom (target <= 100 ms), against one
   ``np.bincount`` over all N labels, the cost of a naive per-frame recount.

Data: 10 classes of 5 sub-modes each in a 32-D latent space, embedded in 512-D with noise, so the
classes overlap somewhat (scipy's top-10 purity ~0.8). Timings are single runs for the heavy builds
and medians for the frames; each part prints the load other processes put on the machine meanwhile.
Nothing gates: the exit code is 0 unless the benchmark itself fails.

    python bench/cluster.py [--sizes 100000 1000000] [--compare 10000 20000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.spatial.distance import pdist

from machine_load import OtherLoad  # bench/ is on sys.path when run as a script
from netatlas.backend.cluster.tree import ClusterTree, TreeSettings, build_cluster_tree

DIMS, LATENT, CLASSES, MODES = 512, 32, 10, 5
CLASS_SPREAD, MODE_SPREAD, NOISE = 0.6, 0.5, 0.5
WRONG = 0.1                 # share of synthetic predictions that differ from the label
CHUNK = 50_000
TOP = 10                    # clusters compared for purity
FRAME = dict(k=8, cols=16, rows=13, cell_px=40)   # the page's 640 x 520 map at the default size
SIDE_UNITS = 512            # units of the layer whose top units the side panel lists
FRAME_REPEATS = 7
TIME_TARGETS = {100_000: 10.0, 1_000_000: 60.0}
MEMORY_TARGET = 3.0
FRAME_TARGET_MS = 100.0
QUALITY_TARGET = 0.02

summary: dict[str, str] = {}


def out(name: str, value: object, note: str = "", keep: bool = False) -> None:
    """Print one ``name: value`` line; ``keep`` also puts it in the final summary block."""
    line = f"{name}: {value}" + (f"  ({note})" if note else "")
    print(line, flush=True)
    if keep:
        summary[name] = line.split(": ", 1)[1]


# ---------------------------------------------------------------------------------------------- data

def mixture(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, 512] float32, labels [n]) of the fixed mixture."""
    x = np.empty((n, DIMS), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i0, rows, row_labels in mixture_chunks(n, seed):
        x[i0:i0 + len(rows)], labels[i0:i0 + len(rows)] = rows, row_labels
    return x, labels


def mixture_chunks(n: int, seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, x, labels) of n points of the mixture, ``CHUNK`` rows at a time."""
    for i0 in range(0, n, CHUNK):
        yield (i0, *mixture_rows(min(CHUNK, n - i0), seed, i0))


def mixture_rows(rows: int, seed: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` points of the mixture; the same seed gives the same centres, offset new draws."""
    rng = np.random.default_rng(seed)
    classes = rng.normal(0, CLASS_SPREAD, (CLASSES, LATENT))
    modes = classes[:, None, :] + rng.normal(0, MODE_SPREAD, (CLASSES, MODES, LATENT))
    projection = rng.normal(0, 1 / np.sqrt(LATENT), (LATENT, DIMS)).astype(np.float32)
    draw = np.random.default_rng([seed, offset])
    labels = draw.integers(0, CLASSES, rows)
    latent = modes[labels, draw.integers(0, MODES, rows)] + draw.normal(0, 1, (rows, LATENT))
    x = latent.astype(np.float32) @ projection
    x += NOISE * draw.standard_normal((rows, DIMS), dtype=np.float32)
    return x, labels


def predictions_for(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Labels with a share ``WRONG`` replaced by another class: something for accuracy to show."""
    rng = np.random.default_rng([seed, 1])
    wrong = rng.random(len(labels)) < WRONG
    shift = rng.integers(1, CLASSES, len(labels))
    return np.where(wrong, (labels + shift) % CLASSES, labels)


def write_mixture(folder: Path, n: int) -> Path:
    """The mixture as ``x.npy`` (written chunk by chunk, never whole in memory), labels, predictions."""
    path = folder / f"mixture-{n}"
    path.mkdir(exist_ok=True)
    x = np.lib.format.open_memmap(path / "x.npy", mode="w+", dtype=np.float32, shape=(n, DIMS))
    labels = np.empty(n, dtype=np.int64)
    for i0, rows, row_labels in mixture_chunks(n, 0):
        x[i0:i0 + len(rows)], labels[i0:i0 + len(rows)] = rows, row_labels
    x.flush()
    del x
    np.save(path / "labels.npy", labels)
    np.save(path / "predictions.npy", predictions_for(labels))
    return path


# ------------------------------------------------------------------------------------------ machine

def report_load(load: OtherLoad, name: str) -> None:
    share = load.share()
    if share is not None:
        out(f"{name}.other_processes_cpu", f"{share:.2f}",
            f"share of all {os.cpu_count()} cores used by other processes meanwhile; load avg "
            + " ".join(f"{v:.2f}" for v in os.getloadavg()), keep=True)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM on Linux, else ru_maxrss.

    Not ru_maxrss on Linux: it carries the parent's peak over fork and exec, so a child started by
    this (by then multi-GB) process would report the parent's figure as its own.
    """
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        scale = 1 if sys.platform == "darwin" else 1024              # bytes on macOS, KiB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# --------------------------------------------------------------------------------------------- scale

def child(folder: Path, table: Path | None) -> None:
    """Run in a fresh process: load one mixture, build its tree, print time and peak memory."""
    import torch  # before the baseline: its import time and memory are not the algorithm's

    x = np.load(folder / "x.npy")
    labels, predictions = np.load(folder / "labels.npy"), np.load(folder / "predictions.npy")
    baseline = peak_rss_bytes()
    tree, seconds = timed(lambda: build_cluster_tree(x, labels, predictions, CLASSES))
    peak = peak_rss_bytes()
    print(f"torch_threads: {torch.get_num_threads()}")
    print(f"method: {tree.meta['method']}")
    print(f"micro_clusters: {tree.meta['micro_clusters']}")
    print(f"seconds: {seconds:.2f}")
    print(f"input_bytes: {x.nbytes}")
    print(f"baseline_rss_bytes: {baseline}")
    print(f"peak_rss_bytes: {peak}")
    if table is not None:
        pq.write_table(tree.to_table(), table)


def scale(n: int, tmp: Path, table: Path | None) -> Path:
    """Part 1 for one size: write the data, build in a child process, print time and memory.

    Returns the data's folder, its vectors deleted, its labels and predictions kept for part 3."""
    p = f"scale.{n}"
    load = OtherLoad()
    folder, write_s = timed(lambda: write_mixture(tmp, n))
    out(f"{p}.data_write_s", f"{write_s:.1f}", "untimed for the tree: generated once, then np.load in the child")
    command = [sys.executable, __file__, "--child", str(folder)] + (["--table", str(table)] if table else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{p}: child failed\n{done.stderr}")
    got = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    seconds, input_bytes = float(got["seconds"]), int(got["input_bytes"])
    baseline, peak = int(got["baseline_rss_bytes"]), int(got["peak_rss_bytes"])
    target = TIME_TARGETS.get(n)
    out(f"{p}.method", f"{got['method']}, {got['micro_clusters']} micro-clusters, "
        f"{got['torch_threads']} torch threads")
    out(f"{p}.tree_s", f"{seconds:.1f}",
        (f"target <= {target:.0f} s; {'ok' if seconds <= target else 'MISSED'}; " if target else "")
        + "torch imported before the clock and the memory baseline", keep=True)
    out(f"{p}.input_gb", f"{input_bytes / 1e9:.3f}")
    out(f"{p}.rss_after_load_gb", f"{baseline / 1e9:.3f}", "baseline: torch + the loaded input")
    out(f"{p}.peak_rss_gb", f"{peak / 1e9:.3f}")
    extra = (peak - baseline) / input_bytes
    out(f"{p}.extra_memory_over_input", f"{extra:.2f}",
        f"(peak - baseline) / input; target <= {MEMORY_TARGET:g}; "
        f"{'ok' if extra <= MEMORY_TARGET else 'MISSED'}", keep=True)
    out(f"{p}.peak_over_input", f"{peak / input_bytes:.2f}", "whole process, torch and the input included",
        keep=True)
    pdist_bytes = n * (n - 1) // 2 * 8
    out(f"{p}.scipy_pdist_bytes", f"{pdist_bytes:.3g}",
        f"N^2/2 float64 that scipy's Ward needs: {pdist_bytes / input_bytes:.0f}x the input", keep=True)
    report_load(load, p)
    (folder / "x.npy").unlink()
    return folder


# ---------------------------------------------------------------------------------- against scipy

def purity(groups: list[np.ndarray], labels: np.ndarray) -> float:
    """Sum over clusters of the majority class count, over N."""
    return sum(int(np.bincount(labels[g]).max()) for g in groups if len(g)) / len(labels)


def compare(name: str, x: np.ndarray, labels: np.ndarray, micro_size: int) -> None:
    """Part 2 on one data set: scipy's Ward against our exact and our forced scaled mode."""
    p = f"compare.{name}"
    load = OtherLoad()
    out(f"{p}.points", f"{len(x)}x{x.shape[1]}")
    z_scipy, scipy_s = timed(lambda: linkage(x, "ward"))
    exact_settings = TreeSettings(exact_threshold=len(x))
    exact, exact_s = timed(lambda: build_cluster_tree(x, labels, n_classes=CLASSES, settings=exact_settings))
    scaled_settings = TreeSettings(exact_threshold=0, micro_size=micro_size)
    scaled, scaled_s = timed(lambda: build_cluster_tree(x, labels, n_classes=CLASSES, settings=scaled_settings))
    out(f"{p}.scipy_ward_s", f"{scipy_s:.2f}", "linkage(x, 'ward'): pdist + NN-chain")
    out(f"{p}.exact_s", f"{exact_s:.2f}", f"{exact.meta['method']}, with the tree's arrays and medoids")
    out(f"{p}.exact_speedup_vs_scipy", f"{scipy_s / exact_s:.2f}", keep=True)
    ours, theirs = np.sort(exact.linkage()[:, 2]), np.sort(z_scipy[:, 2])
    rel = np.abs(ours - theirs) / np.maximum(theirs, 1e-12 * theirs.max())
    out(f"{p}.exact_max_rel_height_diff", f"{rel.max():.2e}", "expected ~1e-12", keep=True)
    out(f"{p}.scaled_s", f"{scaled_s:.2f}", f"{scaled.meta['micro_clusters']} micro-clusters of ~{micro_size}")
    out(f"{p}.scaled_speedup_vs_scipy", f"{scipy_s / scaled_s:.2f}", keep=True)

    distances = pdist(x)
    coph_scipy = cophenet(z_scipy, distances)[0]
    coph_scaled = cophenet(scaled.linkage(), distances)[0]
    del distances
    flat = fcluster(z_scipy, TOP, "maxclust")
    pur_scipy = purity([np.flatnonzero(flat == c) for c in np.unique(flat)], labels)
    pur_scaled = purity([scaled.images(node) for node in scaled.frontier(scaled.root, TOP)], labels)
    for metric, a, b in (("cophenetic", coph_scipy, coph_scaled), (f"purity_top{TOP}", pur_scipy, pur_scaled)):
        diff = (b - a) / a
        out(f"{p}.{metric}_scipy", f"{a:.4f}")
        out(f"{p}.{metric}_scaled", f"{b:.4f}")
        out(f"{p}.{metric}_rel_diff", f"{diff:+.2%}",
            f"scaled vs scipy; target within {QUALITY_TARGET:.0%}; "
            f"{'ok' if abs(diff) <= QUALITY_TARGET else 'MISSED' if diff < 0 else 'better than scipy'}",
            keep=True)
    report_load(load, p)


def mnist_representation(tmp: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(layer, [5000, D] penultimate code, labels) of the demo model on the real demo digits."""
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.checkpoint import load_checkpoint
    from netatlas.backend.datasets import demo_dataset
    from netatlas.backend.demo import demo_checkpoint
    from netatlas.backend.workspace import Workspace

    workspace = Workspace(load_checkpoint(demo_checkpoint()), demo_dataset(), ResultCache(tmp / "cache"), "cpu")
    layer, vectors, _ = workspace.representation(None)
    return layer, np.asarray(vectors, dtype=np.float32), workspace.dataset.labels


# ---------------------------------------------------------------------------------------- zoom step

def median_ms(fn: Callable[[], object], repeats: int = FRAME_REPEATS) -> float:
    times = [timed(fn)[1] for _ in range(repeats)]
    return float(np.median(times)) * 1e3


def zoom(table: Path, folder: Path) -> None:
    """Part 3: frames at three depths of an N-leaf tree, by accuracy and by a neuron."""
    from netatlas.backend.class_stats import class_stats
    from netatlas.backend.neurons import top_units, unit_baseline
    from netatlas.viz.dendromap import MapData, dendromap_frame, node_means

    load = OtherLoad()
    tree, read_s = timed(lambda: ClusterTree.from_table(pq.read_table(table)))
    labels, predictions = np.load(folder / "labels.npy"), np.load(folder / "predictions.npy")
    n = len(labels)
    p = f"zoom.{n}"
    ids = [f"img{i:07d}" for i in range(n)]
    data, setup_s = timed(lambda: MapData(tree, labels, predictions, ids, [str(c) for c in range(CLASSES)]))
    _, caches_s = timed(lambda: (tree.order, tree.accuracy))
    out(f"{p}.tree_read_s", f"{read_s:.2f}", f"Parquet, {len(tree.left):,} nodes")
    out(f"{p}.one_off_setup_s", f"{setup_s + caches_s:.2f}", "MapData + the tree's leaf order and accuracy")

    def frame(node: int, **colour: object) -> list[int]:
        return dendromap_frame(data, node, **FRAME, image_src=lambda i: f"/thumb/x/{i}.png", **colour)[1]

    nodes = [tree.root]
    for _ in range(2):                   # zoom into the largest cluster shown, twice
        nodes.append(max(frame(nodes[-1]), key=lambda c: tree.count[c]))
    baseline = median_ms(lambda: np.bincount(labels, minlength=CLASSES))
    out(f"{p}.baseline_bincount_ms", f"{baseline:.2f}", f"np.bincount over all {n:,} labels: a naive recount")
    values = np.random.default_rng(0).random(n, dtype=np.float32)
    unit_mean, prefix_s = timed(lambda: node_means(tree, values))
    out(f"{p}.neuron_prefix_sums_s", f"{prefix_s:.3f}", "one-off per neuron, excluded from the frames")
    units = np.random.default_rng(1).random((n, SIDE_UNITS), dtype=np.float32)
    unit_stats, baseline_s = timed(lambda: unit_baseline(units))
    out(f"{p}.unit_baseline_s", f"{baseline_s:.2f}", f"one-off per layer: mean and sd of {SIDE_UNITS} units")

    def side(node: int) -> None:
        """The side panel's work on a zoom: the class table and the cluster's top units."""
        images = tree.images(node)
        class_stats(labels[images], predictions[images], data.class_names)
        top_units(units, images, 10, unit_stats)

    worst = 0.0
    for depth, node in enumerate(nodes):
        for colour, kwargs in (("accuracy", {}),
                               ("neuron", dict(color_by="neuron", unit_mean=unit_mean, unit_range=(0.0, 1.0)))):
            ms = median_ms(lambda: frame(node, **kwargs))
            out(f"{p}.depth{depth}.{colour}_frame_ms", f"{ms:.1f}",
                f"node {node} ({tree.count[node]:,} images), median of {FRAME_REPEATS}; "
                f"{ms / baseline:.1f}x the bincount")
        side_ms = median_ms(lambda: side(node))
        step = median_ms(lambda: (frame(node), side(node)))
        worst = max(worst, step)
        out(f"{p}.depth{depth}.side_panel_ms", f"{side_ms:.1f}", "class table + top units")
        out(f"{p}.depth{depth}.zoom_step_ms", f"{step:.1f}", "frame + side panel")
    out(f"{p}.worst_zoom_step_ms", f"{worst:.1f}",
        f"frame + side panel; target <= {FRAME_TARGET_MS:.0f}; {'ok' if worst <= FRAME_TARGET_MS else 'MISSED'}; "
        f"{worst / baseline:.1f}x one bincount over all labels", keep=True)
    report_load(load, p)


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="part 1 (default 100000 1000000)")
    ap.add_argument("--compare", type=int, nargs="+", default=None, help="part 2 (default 10000 20000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30k/60k trees, 2k/5k comparisons")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.table)
        return 0
    sizes = args.sizes or ([30_000, 60_000] if args.quick else [100_000, 1_000_000])
    compares = args.compare or ([2_000, 5_000] if args.quick else [10_000, 20_000])
    out("cpu_count", os.cpu_count())
    out("quick", args.quick, "smoke run: small sizes, targets not meaningful" if args.quick else "")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="netatlas-bench-cluster-") as d:
        tmp = Path(d)
        build_cluster_tree(*mixture(2_000, seed=1), settings=TreeSettings(exact_threshold=0))  # warm-up
        for n in compares:
            x, labels = mixture(n)
            compare(str(n), x, labels, TreeSettings().micro_size)
        layer, vectors, labels = mnist_representation(tmp)
        out("compare.mnist.layer", f"{layer!r}", "the demo model's penultimate code of the real demo digits")
        compare("mnist", vectors, labels, micro_size=50)
        table = tmp / "tree.parquet"
        folders = [scale(n, tmp, table if n == max(sizes) else None) for n in sorted(sizes)]
        zoom(table, folders[-1])
    out("total_wall_s", f"{time.perf_counter() - started:.0f}")
    print("\n# summary")
    for name, value in summary.items():
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
