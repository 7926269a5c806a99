"""Benchmark: a `datasets` save_to_disk folder (Arrow) against Parquet shards and a PNG folder.

Images: the same N digits as bench/formats.py (default 20,000: the 5,000 demo MNIST digits upscaled to
64x64, repeats shifted so no two are equal), encoded once as PNG and written as

* Parquet shards in ``data/`` as the hub writes them (4 shards, 100 rows per row group): the baseline;
* a Dataset written by ``datasets.Dataset.save_to_disk`` (Image + ClassLabel features; the library's own
  record batches of 100 images), which netatlas reads memory-mapped with pyarrow;
* a PNG folder with class subfolders.

Three measurements, each with a ratio against the Parquet shards measured in this run:

0. ``decode``: every image's bytes read and decoded to pixels in one thread (``read.decode``), no
   model: what the format itself costs; best of ``--repeats``.
1. ``extract``: decode + preprocessing + the demo model's forward + cache writes, through
   ``Workspace.activations(["pool"])`` on a fresh cache; images/s, best of ``--repeats``, formats
   alternating order between repeats. Goal: Arrow >= 1.0x Parquet.
2. ``open``: ``load_dataset`` of a 100,000-image dataset (the N rows repeated), best of 2, warm page
   cache. Goal: Arrow <= 1 s.

Needs the `datasets` package (the test extra) to write the Arrow folder; netatlas does not need it to
read. ``--quick`` (2,000 images, 10,000 to open, 1 repeat) is a smoke run. Nothing gates: the exit code
is 0 unless the benchmark itself fails (a format decodes other pixels than the PNG folder).

    python bench/arrow.py [--quick] [--images N] [--open-images M] [--repeats R]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from formats import (SHARDS, extract_s, _head, link_png_folder, open_s, out, rel_path, run_benchmark,
                     write_parquet, write_png_folder)  # bench/ on sys.path
from machine_load import OtherLoad, report_load
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import ImageDataset, load_dataset
from netatlas.backend.demo import demo_checkpoint

FORMATS = ("parquet", "arrow", "png")
EXTRACT_TARGET = 1.0
OPEN_TARGET_S = 1.0


def write_arrow(root: Path, encoded: list[bytes], labels: np.ndarray, paths: list[str]) -> Path:
    """The folder ``datasets`` writes: it keeps the PNG bytes as they are (no re-encoding)."""
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    images = [{"bytes": b, "path": p} for b, p in zip(encoded, paths)]
    datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features).save_to_disk(str(root))
    return root


def check_same_pixels(datasets: dict[str, ImageDataset], rows: int = 50) -> None:
    """Rows of Arrow and Parquet decode to the PNG folder's image of the same file name (Parquet keeps the
    paths, `datasets` their base names: ``c3/0000012.png``, ``0000012.png``; both unique)."""
    png = datasets["png"]
    index = {Path(image_id).name: i for i, image_id in enumerate(png.ids)}
    for name in ("parquet", "arrow"):
        ds = datasets[name]
        for i in np.linspace(0, len(ds) - 1, rows).astype(int):
            if not np.array_equal(ds.read(int(i)), png.read(index[Path(ds.ids[i]).name])):
                raise RuntimeError(f"{name} row {i} ({ds.ids[i]}) decodes to other pixels than the PNG file")


def run_extract(tmp: Path, encoded: list[bytes], labels: np.ndarray, repeats: int) -> None:
    n = len(encoded)
    paths = [rel_path(i, int(l)) for i, l in enumerate(labels)]
    t0 = time.perf_counter()
    roots = {"parquet": write_parquet(tmp / "parquet", pa.array(encoded, pa.binary()), labels, paths, SHARDS),
             "arrow": write_arrow(tmp / "arrow", encoded, labels, paths),
             "png": write_png_folder(tmp / "png", encoded, labels)}
    out("build_s", f"{time.perf_counter() - t0:.1f}", f"{n} PNGs as Parquet shards, save_to_disk and a folder")
    for name, root in roots.items():
        out(f"{name}.bytes_on_disk", sum(p.stat().st_size for p in root.rglob("*") if p.is_file()))
    opened = {name: load_dataset(root) for name, root in roots.items()}
    check_same_pixels(opened)
    run_decode(roots, n, repeats)
    loaded = load_checkpoint(demo_checkpoint())
    for name, ds in opened.items():  # untimed warm-up: allocator, kernels, page cache
        extract_s(loaded, _head(ds, 512), tmp / f"warm-{name}")
    load = OtherLoad()
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(repeats):
        for name in (FORMATS if r % 2 == 0 else FORMATS[::-1]):
            fresh = load_dataset(roots[name])  # no maps or row groups cached, as a new session has
            times[name].append(extract_s(loaded, fresh, tmp / f"cache-{name}-{r}"))
    for name in FORMATS:
        best = min(times[name])
        out(f"extract.{name}.img_per_s", f"{n / best:.0f}",
            f"{best:.2f} s; best of {', '.join(f'{t:.2f}' for t in times[name])}")
    for name in ("arrow", "png"):
        ratio = min(times["parquet"]) / min(times[name])
        note = f"goal >= {EXTRACT_TARGET}; {'ok' if ratio >= EXTRACT_TARGET else 'MISSED'}" if name == "arrow" else ""
        out(f"extract.{name}_vs_parquet", f"{ratio:.2f}", note)
    report_load(load)


def run_decode(roots: dict[str, Path], n: int, repeats: int) -> None:
    """Decode alone: the reader of a freshly opened dataset over every row, in this thread."""
    load = OtherLoad()
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(repeats):
        for name in (FORMATS if r % 2 == 0 else FORMATS[::-1]):
            decode = load_dataset(roots[name]).read.decode
            start = time.perf_counter()
            for i in range(n):
                decode(i)
            times[name].append(time.perf_counter() - start)
    for name in FORMATS:
        out(f"decode.{name}.img_per_s", f"{n / min(times[name]):.0f}",
            f"best of {', '.join(f'{t:.2f}' for t in times[name])} s")
    for name in ("arrow", "png"):
        out(f"decode.{name}_vs_parquet", f"{min(times['parquet']) / min(times[name]):.2f}")
    report_load(load)


def run_open(tmp: Path, encoded: list[bytes], labels: np.ndarray, n_open: int) -> None:
    reps = -(-n_open // len(encoded))
    t0 = time.perf_counter()
    all_encoded = (encoded * reps)[:n_open]
    all_labels = np.concatenate([labels] * reps)[:n_open]
    paths = [rel_path(i, int(l)) for i, l in enumerate(all_labels)]
    roots = {"parquet": write_parquet(tmp / "parquet-open", pa.array(all_encoded, pa.binary()), all_labels, paths,
                                      max(1, n_open // 10_000)),
             "arrow": write_arrow(tmp / "arrow-open", all_encoded, all_labels, paths),
             "png": link_png_folder(tmp / "png-open", tmp / "png", labels, n_open)}
    out("open.build_s", f"{time.perf_counter() - t0:.1f}", f"{n_open} images: Parquet, save_to_disk, hard links")
    load = OtherLoad()
    seconds = {}
    for name, root in roots.items():
        seconds[name], dataset = open_s(root)
        out(f"open.{name}_s", f"{seconds[name]:.3f}", f"{len(dataset)} images")
        del dataset
    ok = "ok" if seconds["arrow"] <= OPEN_TARGET_S else "MISSED"
    out("open.arrow_vs_parquet", f"{seconds['parquet'] / seconds['arrow']:.1f}",
        f"times faster; goal: arrow <= {OPEN_TARGET_S} s, {ok}")
    out("open.png_vs_parquet", f"{seconds['parquet'] / seconds['png']:.2f}", "times faster")
    report_load(load)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(argv, "netatlas-bench-arrow-", run_extract, run_open)


if __name__ == "__main__":
    sys.exit(main())
