"""Benchmark: extraction sharded over a 2-worker Dask LocalCluster vs one process, on the same data.

The data: the demo digits tiled to N images (default 20,000) in a temp .npz, through the demo model.
Both sides produce the same thing, activations of the chosen layers in Parquet:

* ``single_s``: ``extract_activations`` in this process (torch's default threads) + one Parquet write;
* ``dask_s``: ``extract_sharded`` on a running LocalCluster (2 workers x 1 thread), parts written by
  the workers; ``dask_cold_s`` is its first run (workers import torch, load the model and data);
* ``cluster_start_s``: starting the LocalCluster; ``read_back_s``: ``parts_to_activations``.

and prints ``name: value`` lines, ``speedup`` = single_s / dask_s (above 1: the cluster is faster),
and ``parts_equal_single``: whether the parts together equal the single-process arrays exactly.
Timings are the best of the repeats, alternating which side runs first. They never gate: the exit
code is 1 only when the parts differ from the single-process result.

    python bench/dask_extract.py [--quick] [--images N] [--repeats R]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine_load, also when imported

from netatlas.backend.activations import Activations, activation_table, extract_activations  # noqa: E402
from netatlas.backend.cache import write_parquet_atomic  # noqa: E402
from netatlas.backend.checkpoint import load_checkpoint  # noqa: E402
from netatlas.backend.datasets import npz_dataset  # noqa: E402
from netatlas.backend.demo import demo_checkpoint, demo_digits  # noqa: E402
from netatlas.backend.sharded import (ModelSpec, connect, extract_sharded,  # noqa: E402
                                      parts_to_activations, read_parts)
from machine_load import OtherLoad  # noqa: E402

LAYERS = ["stem", *(f"blocks.{i}" for i in range(6)), "fc"]
BATCH_SIZE = 256
OTHER_LOAD_WARN = 0.15


def tiled_digits(n: int, path: Path) -> Path:
    """The 5,000 demo digits repeated to n images, as an .npz the workers load by path."""
    images, labels, _ = demo_digits()
    reps = -(-n // len(images))
    np.savez(path, images=np.concatenate([images] * reps)[:n], labels=np.concatenate([labels] * reps)[:n])
    return path


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def same(a: Activations, b: Activations, layers: list[str]) -> bool:
    return (np.array_equal(a.logits, b.logits) and np.array_equal(a.predictions, b.predictions)
            and all(np.array_equal(a.layers[name], b.layers[name]) for name in layers))


def measure(n_images: int = 20_000, layers: list[str] | None = None, repeats: int = 1,
            batch_size: int = BATCH_SIZE) -> dict[str, Any]:
    """Single-process vs 2-worker LocalCluster extraction of ``n_images`` tiled demo digits (seconds)."""
    layers = list(layers or LAYERS)
    loaded = load_checkpoint(demo_checkpoint())
    spec = ModelSpec.from_loaded(loaded)
    with tempfile.TemporaryDirectory(prefix="netatlas-dask-bench-") as d:
        tmp = Path(d)
        npz = tiled_digits(n_images, tmp / "digits.npz")
        dataset = npz_dataset(npz)

        def single() -> Activations:
            acts = extract_activations(loaded.model, dataset, loaded.preprocessing, layers, "mean",
                                       batch_size, "cpu")
            write_parquet_atomic(tmp / "single.parquet", activation_table(dataset, acts),
                                 ("logits", *layers))
            return acts

        def sharded() -> dict[str, Any]:
            return extract_sharded(spec, npz, layers, "mean", tmp / "parts", client, batch_size)

        load = OtherLoad()
        extract_activations(loaded.model, dataset, loaded.preprocessing, layers, "mean", batch_size, "cpu",
                            rows=range(0, min(2 * batch_size, n_images)))             # warm-up
        with contextlib.ExitStack() as stack:
            cluster_start, client = timed(lambda: stack.enter_context(connect("local")))
            dask_cold, _ = timed(sharded)
            singles, dasks = [], []
            for r in range(repeats):
                for name, fn in (("single", single), ("dask", sharded))[::1 if r % 2 == 0 else -1]:
                    seconds, result = timed(fn)
                    (singles if name == "single" else dasks).append(seconds)
                    if name == "single":
                        reference = result
            # ids and labels first: that read also warms dask.dataframe up in the workers
            frame = read_parts(tmp / "parts")[["index", "id", "label"]].compute().sort_values("index")
            read_back, parts = timed(lambda: parts_to_activations(tmp / "parts", layers))
        equal = (same(parts, reference, layers) and frame["id"].tolist() == dataset.ids
                 and np.array_equal(frame["label"].to_numpy(), dataset.labels))
        single_s, dask_s = min(singles), min(dasks)
        return {"images": n_images, "layers": layers, "batch_size": batch_size, "repeats": repeats,
                "torch_threads_single": torch.get_num_threads(), "cluster_start_s": cluster_start,
                "single_s": single_s, "dask_s": dask_s, "dask_cold_s": dask_cold, "read_back_s": read_back,
                "speedup": single_s / dask_s, "parts_equal_single": bool(equal),
                "singles_s": singles, "dasks_s": dasks, "other_processes_cpu": load.share()}


def out(name: str, value: object, note: str = "") -> None:
    print(f"{name}: {value}" + (f"  ({note})" if note else ""), flush=True)


def fmt_list(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def report(r: dict[str, Any]) -> None:
    n = r["images"]
    out("images", n)
    out("layers", ",".join(r["layers"]))
    out("batch_size", r["batch_size"])
    out("repeats", r["repeats"])
    out("torch_threads_single", r["torch_threads_single"], "the single process; workers: 1 thread each")
    out("cluster_start_s", f"{r['cluster_start_s']:.2f}", "LocalCluster, 2 worker processes")
    out("single_s", f"{r['single_s']:.3f}", f"best of: {fmt_list(r['singles_s'])}; {n / r['single_s']:.0f} img/s")
    out("dask_s", f"{r['dask_s']:.3f}", f"best of: {fmt_list(r['dasks_s'])}; {n / r['dask_s']:.0f} img/s")
    out("dask_cold_s", f"{r['dask_cold_s']:.3f}", "first run: workers import torch, load model and data")
    out("read_back_s", f"{r['read_back_s']:.3f}", "parts -> numpy through dask.dataframe")
    out("speedup", f"{r['speedup']:.3f}", "single_s / dask_s; above 1: the 2-worker cluster is faster")
    out("parts_equal_single", r["parts_equal_single"], "np.array_equal on logits, predictions, every layer; "
                                                       "ids and labels")
    share = r["other_processes_cpu"]
    if share is not None:
        out("other_processes_cpu", f"{share:.2f}",
            "share of all cores used by other processes meanwhile; above ~0.15 the ratio is noise"
            + ("; THIS RUN WAS LOADED" if share > OTHER_LOAD_WARN else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 images, one repeat: a smoke run")
    ap.add_argument("--images", type=int, default=None, help="images (default 20,000; 2,000 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 2; 1 with --quick)")
    ap.add_argument("--layers", default=",".join(LAYERS), help="comma list of demo module names")
    args = ap.parse_args(argv)
    n = args.images or (2_000 if args.quick else 20_000)
    repeats = args.repeats or (1 if args.quick else 2)
    if n < 1 or repeats < 1:
        ap.error("--images and --repeats must be at least 1")
    out("torch", torch.__version__)
    out("quick", args.quick, "smoke run: fixed costs weigh more, the ratio is not meaningful" if args.quick else "")
    t0 = time.perf_counter()
    result = measure(n, [name for name in args.layers.split(",") if name], repeats)
    report(result)
    out("total_wall_s", f"{time.perf_counter() - t0:.1f}")
    return 0 if result["parts_equal_single"] else 1


if __name__ == "__main__":
    sys.exit(main())
