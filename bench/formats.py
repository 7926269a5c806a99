"""Benchmark: the same images as a PNG folder, Parquet shards (the hub's layout) and WebDataset tar shards.

Images: N real MNIST digits (default 20,000: the 5,000 demo digits, upscaled to 64x64 and, past the
first 5,000, shifted by a few pixels so no two files are equal), encoded once as PNG and written as

* a PNG folder with class subfolders (the baseline: what netatlas opened before);
* Parquet shards in ``data/`` as the hub writes them (Image struct {bytes, path}, ClassLabel
  metadata, 100 rows per row group), 4 shards;
* WebDataset .tar shards (``KEY.png`` + ``KEY.cls``), 4 shards.

Two measurements, each with a ratio against the PNG folder measured in this run:

1. ``extract``: decode + preprocessing + the demo model's forward + cache writes, through
   ``Workspace.activations(["pool"])`` on a fresh cache; images/s, best of ``--repeats``, formats
   alternating order between repeats. Goal: Parquet >= 1.0x the PNG folder.
2. ``open``: ``load_dataset`` of a 100,000-image dataset (the N rows repeated): Parquet (goal <= 1 s)
   and tar shards against the 100,000-file PNG folder (hard links to the N files, so it is quick to
   build), best of 2.

``--quick`` (2,000 images, 10,000 to open, 1 repeat) is a smoke run. Nothing gates: the exit code is
0 unless the benchmark itself fails (a format decodes other pixels than the PNG folder).

    python bench/formats.py [--quick] [--images N] [--open-images M] [--repeats R]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from machine_load import OtherLoad, report_load  # bench/ is on sys.path when run as a script
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import LoadedModel, load_checkpoint
from netatlas.backend.datasets import ImageDataset, load_dataset
from netatlas.backend.demo import demo_checkpoint, demo_digits
from netatlas.backend.workspace import Workspace

SIZE = 64
SHARDS = 4
ROW_GROUP = 100  # the hub's row-group size for image datasets
OPEN_SHARD_ROWS = 10_000
BATCH_SIZE = 256
LAYERS = ["pool"]
EXTRACT_TARGET = 1.0
OPEN_TARGET_S = 1.0
FORMATS = ("png", "parquet", "tar")


def out(name: str, value: object, note: str = "") -> None:
    print(f"{name}: {value}" + (f"  ({note})" if note else ""), flush=True)


# -------------------------------------------------------------------------------------------- data

def digits(n: int) -> tuple[list[bytes], np.ndarray]:
    """n PNG-encoded 64x64 digits and their labels; repeats of the 5,000 are shifted, so all differ."""
    images, labels, _ = demo_digits()
    encoded = []
    for i in range(n):
        image = Image.fromarray(images[i % len(images)]).resize((SIZE, SIZE), Image.BILINEAR)
        shift = i // len(images)
        array = np.roll(np.asarray(image), (shift, -shift), axis=(0, 1))
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded, labels[np.arange(n) % len(labels)]


def rel_path(i: int, label: int) -> str:
    return f"c{label}/{i:07d}.png"


def write_png_folder(root: Path, encoded: list[bytes], labels: np.ndarray) -> Path:
    for i, (data, label) in enumerate(zip(encoded, labels)):
        path = root / rel_path(i, int(label))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def link_png_folder(root: Path, source: Path, labels: np.ndarray, n: int) -> Path:
    """An n-file PNG folder of hard links to ``source``'s files (copies where links are refused)."""
    base = len(labels)
    for i in range(n):
        label = int(labels[i % base])
        target = root / rel_path(i, label)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source / rel_path(i % base, label), target)
        except OSError:
            shutil.copyfile(source / rel_path(i % base, label), target)
    return root


def hub_table(images: pa.Array, labels: np.ndarray, paths: list[str]) -> pa.Table:
    struct = pa.StructArray.from_arrays([images, pa.array(paths, pa.string())], names=["bytes", "path"])
    features = {"image": {"_type": "Image"}, "label": {"names": [str(d) for d in range(10)], "_type": "ClassLabel"}}
    table = pa.table({"image": struct, "label": pa.array(labels, pa.int64())})
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def write_parquet(root: Path, images: pa.Array, labels: np.ndarray, paths: list[str], shards: int) -> Path:
    table = hub_table(images, labels, paths)
    (root / "data").mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(table.slice(start, stop - start), root / "data" / f"train-{k:05d}-of-{shards:05d}.parquet",
                       row_group_size=ROW_GROUP)
    return root


def write_tars(root: Path, encoded: list[bytes], labels: np.ndarray, shards: int, repeat: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    n = len(encoded) * repeat
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        with tarfile.open(root / f"digits-{k:06d}.tar", "w") as tar:
            for i in range(start, stop):
                for ext, data in (("png", encoded[i % len(encoded)]), ("cls", str(labels[i % len(labels)]).encode())):
                    info = tarfile.TarInfo(f"{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


# ------------------------------------------------------------------------------------------ timing

def extract_s(loaded: LoadedModel, dataset: ImageDataset, cache: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    Workspace(loaded, dataset, ResultCache(cache), "cpu", BATCH_SIZE).activations(LAYERS)
    elapsed = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return elapsed


def open_s(path: Path, repeats: int = 2) -> tuple[float, ImageDataset]:
    best, dataset = float("inf"), None
    for _ in range(repeats):
        dataset = None
        gc.collect()
        start = time.perf_counter()
        dataset = load_dataset(path)
        best = min(best, time.perf_counter() - start)
    return best, dataset


def check_same_pixels(datasets: dict[str, ImageDataset], png_id_of_key: dict[str, str], rows: int = 50) -> None:
    """Rows of each format decode to the PNG folder's image of the same id (tar keys map to its paths)."""
    png = datasets["png"]
    index = {image_id: i for i, image_id in enumerate(png.ids)}
    for name in ("parquet", "tar"):
        ds = datasets[name]
        for i in np.linspace(0, len(ds) - 1, rows).astype(int):
            image_id = png_id_of_key[ds.ids[i]] if name == "tar" else ds.ids[i]
            if not np.array_equal(ds.read(int(i)), png.read(index[image_id])):
                raise RuntimeError(f"{name} row {i} ({ds.ids[i]}) decodes to other pixels than the PNG file")


def run_extract(tmp: Path, encoded: list[bytes], labels: np.ndarray, repeats: int) -> None:
    n = len(encoded)
    paths = [rel_path(i, int(l)) for i, l in enumerate(labels)]
    t0 = time.perf_counter()
    roots = {"png": write_png_folder(tmp / "png", encoded, labels),
             "parquet": write_parquet(tmp / "parquet", pa.array(encoded, pa.binary()), labels, paths, SHARDS),
             "tar": write_tars(tmp / "tar", encoded, labels, SHARDS)}
    out("build_s", f"{time.perf_counter() - t0:.1f}", f"{n} PNGs, then the folder, Parquet and tar shards")
    for name, root in roots.items():
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        out(f"{name}.bytes_on_disk", size)
    datasets = {name: load_dataset(root) for name, root in roots.items()}
    check_same_pixels(datasets, {f"{i:07d}": p for i, p in enumerate(paths)})
    loaded = load_checkpoint(demo_checkpoint())
    for name, ds in datasets.items():  # untimed warm-up: allocator, kernels, zstd, DataLoader start
        extract_s(loaded, _head(ds, 512), tmp / f"warm-{name}")
    load = OtherLoad()
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(repeats):
        for name in (FORMATS if r % 2 == 0 else FORMATS[::-1]):
            fresh = load_dataset(roots[name])  # an empty row-group cache, as a new session has
            times[name].append(extract_s(loaded, fresh, tmp / f"cache-{name}-{r}"))
    for name in FORMATS:
        best = min(times[name])
        out(f"extract.{name}.img_per_s", f"{n / best:.0f}",
            f"{best:.2f} s; best of {', '.join(f'{t:.2f}' for t in times[name])}")
    for name in ("parquet", "tar"):
        ratio = min(times["png"]) / min(times[name])
        note = f"goal >= {EXTRACT_TARGET}; {'ok' if ratio >= EXTRACT_TARGET else 'MISSED'}" if name == "parquet" else ""
        out(f"extract.{name}_vs_png", f"{ratio:.2f}", note)
    report_load(load)


def _head(dataset: ImageDataset, n: int) -> ImageDataset:
    from netatlas.backend.activations import row_slice

    return row_slice(dataset, range(min(n, len(dataset))))


def run_open(tmp: Path, encoded: list[bytes], labels: np.ndarray, n_open: int) -> None:
    base = len(encoded)
    reps = -(-n_open // base)
    t0 = time.perf_counter()
    png = link_png_folder(tmp / "png-open", tmp / "png", labels, n_open)
    images = pa.concat_arrays([pa.array(encoded, pa.binary())] * reps)[:n_open]
    all_labels = np.concatenate([labels] * reps)[:n_open]
    paths = [rel_path(i, int(l)) for i, l in enumerate(all_labels)]
    parquet = write_parquet(tmp / "parquet-open", images, all_labels, paths, max(1, n_open // OPEN_SHARD_ROWS))
    tar = write_tars(tmp / "tar-open", encoded, labels, max(1, n_open // OPEN_SHARD_ROWS), repeat=reps)
    out("open.build_s", f"{time.perf_counter() - t0:.1f}", f"{n_open} images: hard links, Parquet, tar shards")
    load = OtherLoad()
    results = {}
    for name, root in (("png", png), ("parquet", parquet), ("tar", tar)):
        seconds, dataset = open_s(root)
        results[name] = seconds
        out(f"open.{name}_s", f"{seconds:.3f}", f"{len(dataset)} images")
        del dataset
    out("open.parquet_vs_png", f"{results['png'] / results['parquet']:.1f}",
        f"times faster; goal: parquet <= {OPEN_TARGET_S} s, {'ok' if results['parquet'] <= OPEN_TARGET_S else 'MISSED'}")
    out("open.tar_vs_png", f"{results['png'] / results['tar']:.1f}", "times faster")
    report_load(load)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(argv, "netatlas-bench-formats-", run_extract, run_open)


def run_benchmark(argv: list[str] | None, prefix: str, extract: Callable, open_: Callable) -> int:
    """The command line both format benchmarks share (this one and bench/arrow.py): sizes, a header, then
    ``extract(tmp, encoded, labels, repeats)`` and ``open_(tmp, encoded, labels, n_open)`` in a temp folder."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 images, 10,000 to open, 1 repeat: a smoke run")
    ap.add_argument("--images", type=int, default=None, help="images for the extraction (default 20000)")
    ap.add_argument("--open-images", type=int, default=None, help="images for the open times (default 100000)")
    ap.add_argument("--repeats", type=int, default=None, help="extraction repeats per format (default 2)")
    args = ap.parse_args(argv)
    n = args.images or (2_000 if args.quick else 20_000)
    n_open = args.open_images or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (1 if args.quick else 2)
    if n < 1 or n_open < n or repeats < 1:
        ap.error("--images must be >= 1, --open-images >= --images and --repeats >= 1")
    out("device", "cpu")
    out("torch_threads", torch.get_num_threads())
    out("images", n)
    out("open_images", n_open)
    out("quick", args.quick, "smoke run: fixed costs weigh more, ratios not meaningful" if args.quick else "")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        tmp = Path(d)
        encoded, labels = digits(n)
        extract(tmp, encoded, labels, repeats)
        open_(tmp, encoded, labels, n_open)
    out("total_wall_s", f"{time.perf_counter() - start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
