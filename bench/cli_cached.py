"""Benchmark: a fully cached ``netatlas extract demo demo -o x.parquet`` against importing its libraries.

A second run on the same cache computes nothing: it opens the model and the demo digits, reads the
logits back from the cache and writes the Parquet file. What it cannot avoid is importing torch,
pandas and pyarrow, so the baseline is a bare ``python -c "import torch, pandas, pyarrow.parquet"``.
Both run as fresh subprocesses (the import cost is the point), alternating, best of ``--repeats``:

* ``baseline_import_s``: the bare imports;
* ``cached_extract_s``: the cached extraction (one untimed run first fills the cache);
* ``ratio`` = cached_extract_s / baseline_import_s  (target <= 1.3).

The cache lives in a temp folder, removed afterwards. Nothing gates: the exit code is 0 unless a
run itself fails.

    python bench/cli_cached.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine_load import OtherLoad, report_load  # bench/ is on sys.path when run as a script

TARGET = 1.3
BASELINE = [sys.executable, "-c", "import torch, pandas, pyarrow.parquet"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def out(name: str, value: object, note: str = "") -> None:
    print(f"{name}: {value}" + (f"  ({note})" if note else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5); the best counts")
    ap.add_argument("--device", default="cpu", help="--device of the extraction (default cpu)")
    args = ap.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="netatlas-bench-cli-"))
    try:
        extract = [sys.executable, "-m", "netatlas.cli", "extract", "demo", "demo", "-o", str(folder / "x.parquet"),
                   "--cache-dir", str(folder / "cache"), "--device", args.device]
        out("first_extract_s", f"{timed(extract):.3f}", "fills the cache, not part of the ratio")
        load = OtherLoad()
        baseline, cached = [], []
        for i in range(args.repeats):
            pair = [(baseline, BASELINE), (cached, extract)]
            for times, command in pair if i % 2 == 0 else pair[::-1]:   # alternate: noise hits both alike
                times.append(timed(command))
        out("baseline_import_s", f"{min(baseline):.3f}", "python -c 'import torch, pandas, pyarrow.parquet'")
        out("cached_extract_s", f"{min(cached):.3f}", "netatlas extract demo demo -o x.parquet, second run")
        out("baseline_import_all_s", ", ".join(f"{t:.3f}" for t in baseline))
        out("cached_extract_all_s", ", ".join(f"{t:.3f}" for t in cached))
        ratio = min(cached) / min(baseline)
        out("ratio", f"{ratio:.3f}", f"target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}")
        report_load(load)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
