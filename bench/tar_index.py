"""Benchmark: opening a WebDataset tar set of 100,000 samples (200,000 members: ``KEY.png`` + ``KEY.cls``)
the first time (its member index parsed and cached) and every later time (the index read from the cache).

Timed in one process, each open a full ``load_dataset`` of the folder of shards:

1. baseline: the previous open, headers walked with ``tarfile`` and nothing cached, once;
2. first open: the headers walked by netatlas' own reader, the index cached per shard, on an empty
   cache (``NETATLAS_CACHE_DIR`` is a temporary folder), once;
3. second open: the index read from the cache, best of 3. Goal: <= 1 s.

Ratios: baseline / first open and first open / second open (both measured in this run). The shards
hold the 5,000 demo digits as PNGs, repeated (opening decodes no image). All three opens read the
headers from the OS page cache, not from disk. The set is built once at ``--folder`` and reused; its
shard mtimes are set an hour back, as any set not written in the last 2 s would be (a fresher shard is
not cached: see ``backend.webdataset._store_index``). The cached open is checked to give the same ids,
labels, classes, manifest hash and images as the parse. Nothing gates: the exit code is 0 unless the
benchmark itself fails.

    python bench/tar_index.py [--folder /tmp/netatlas-bench/tar100k] [--samples 100000] [--shards 10]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from machine_load import OtherLoad, report_load  # bench/ is on sys.path when run as a script
from netatlas.backend import webdataset
from netatlas.backend.datasets import ImageDataset, load_dataset
from netatlas.backend.demo import demo_digits

TARGET_S = 1.0
DONE = ".complete"  # not a .tar: never taken for a shard
AN_HOUR_NS = 3600 * 10**9


def build_set(folder: Path, samples: int, shards: int) -> None:
    """``digits-00000k.tar`` shards of ``KEY.png`` + ``KEY.cls``; skipped when a complete one is there."""
    marker = folder / DONE
    if marker.exists() and marker.read_text() == f"{samples} {shards}":
        return
    start = time.perf_counter()
    images, labels, _ = demo_digits()
    encoded = [_png(image) for image in images]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.tar"):
        old.unlink()
    bounds = np.linspace(0, samples, shards + 1).astype(int)
    for k, (first, stop) in enumerate(itertools.pairwise(bounds)):
        with tarfile.open(folder / f"digits-{k:06d}.tar", "w") as tar:
            for i in range(first, stop):
                j = i % len(encoded)
                for ext, data in (("png", encoded[j]), ("cls", str(int(labels[j])).encode())):
                    info = tarfile.TarInfo(f"{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    marker.write_text(f"{samples} {shards}")
    print(f"  built {samples:,} samples in {shards} shards in {folder} in {time.perf_counter() - start:.0f} s")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def age_shards(folder: Path) -> None:
    """Set every shard's mtime an hour back: a shard modified in the last 2 s is never cached."""
    stamp = time.time_ns() - AN_HOUR_NS
    for shard in folder.glob("*.tar"):
        if shard.stat().st_mtime_ns > stamp:
            os.utime(shard, ns=(stamp, stamp))


@contextlib.contextmanager
def previous_open() -> Iterator[None]:
    """The open as it was before the index cache: tarfile walks the headers, nothing is cached."""
    walk, store = webdataset._walk_headers, webdataset._store_index
    webdataset._walk_headers = lambda f: None
    webdataset._store_index = lambda index, before: None
    try:
        yield
    finally:
        webdataset._walk_headers, webdataset._store_index = walk, store


def timed(fn: Callable[[], ImageDataset], repeats: int = 1) -> tuple[float, ImageDataset]:
    best, dataset = float("inf"), None
    for _ in range(repeats):
        dataset = None
        gc.collect()
        start = time.perf_counter()
        dataset = fn()
        best = min(best, time.perf_counter() - start)
    return best, dataset


def same(parsed: ImageDataset, cached: ImageDataset) -> None:
    """The cached open is the parsed one: ids, labels, classes, manifest hash and a sample of images."""
    assert cached.ids == parsed.ids and cached.classes == parsed.classes
    assert np.array_equal(cached.labels, parsed.labels)
    assert cached.manifest_hash == parsed.manifest_hash
    for i in np.linspace(0, len(parsed) - 1, 50).astype(int):
        assert np.array_equal(cached.read(int(i)), parsed.read(int(i)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "netatlas-bench" / "tar100k")
    ap.add_argument("--samples", type=int, default=100_000, help="samples (each a .png and a .cls member)")
    ap.add_argument("--shards", type=int, default=10)
    args = ap.parse_args(argv)
    if args.samples < 1 or not 1 <= args.shards <= args.samples:
        ap.error("--samples must be >= 1 and --shards between 1 and --samples")
    print(f"tar set: {args.samples:,} samples, {2 * args.samples:,} members, {args.shards} shards; "
          f"cpus: {os.cpu_count()}")
    build_set(args.folder, args.samples, args.shards)
    age_shards(args.folder)
    with tempfile.TemporaryDirectory(prefix="netatlas-bench-tar-cache-") as cache:
        os.environ["NETATLAS_CACHE_DIR"] = cache
        load = OtherLoad()
        with previous_open():
            baseline, _ = timed(lambda: load_dataset(args.folder))
        first, parsed = timed(lambda: load_dataset(args.folder))
        cached_files = len(list(Path(cache, webdataset.INDEX_KIND).glob("*.parquet")))
        second, cached = timed(lambda: load_dataset(args.folder), repeats=3)
        report_load(load)
        same(parsed, cached)
    print(f"  baseline (tarfile walk, no cache): {baseline:.3f} s")
    print(f"  first open (own walk + cache write): {first:.3f} s   {baseline / first:.1f}x faster than the baseline")
    print(f"  second open (cached index, best of 3): {second:.3f} s   {first / second:.1f}x faster than the first, "
          f"{baseline / second:.1f}x faster than the baseline; goal <= {TARGET_S} s: "
          f"{'ok' if second <= TARGET_S else 'MISSED'}")
    print(f"  {cached_files} index files cached for {args.shards} shards; the cached open equals the parsed one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
