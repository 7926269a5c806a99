"""Benchmark: activation extraction + Parquet write vs a bare forward loop over the same batches.

For each model, times

* ``bare_loop_s``: ``torch.no_grad()``, iterate ``dataset.batches(preprocessing, batch_size)`` and call
  ``model(x)``; nothing else (the floor any extraction has to pay);
* ``extract_write_s``: ``Workspace.activations(layers)`` on a fresh ``ResultCache`` in a temp dir, i.e.
  hooks + reductions + host copies (``extract_activations``) and the Parquet writes;
* ``cache_read_s``: a second ``Workspace.activations`` call on that same cache (nothing recomputed).

and prints ``name: value`` lines plus two ratios against the baselines measured in this process:

* ``throughput_ratio`` = bare_loop_s / extract_write_s   (target >= 0.9)
* ``cache_read_fraction`` = cache_read_s / extract_write_s  (target <= 0.05)

Models: ``demo`` (the bundled residual CNN on the 5,000 demo digits, 28x28 grayscale),
``resnet18`` (torchvision, untrained, 10 classes, on the demo digits made 64x64 RGB and tinted,
loaded from a temp .npz) and ``hf_vit`` (a ViT-Tiny-shaped Hugging Face ViTForImageClassification
saved with save_pretrained and opened as a folder, on the same 64x64 digits). Each timing is the best (min) of a few repeats after an untimed warm-up;
baseline and extraction alternate order between repeats so machine noise hits both alike.
On CPU it also prints ``throughput_ratio_batchwise``: both runs timed per batch (through the
progress callback), each batch's best across repeats summed, which is steadier when other processes
load the machine. ``--breakdown`` additionally times the pieces of an extraction (hooks and
reductions, host copies, Parquet writes) to show where it loses time. Timings never gate: the exit
code is 0 unless the benchmark itself fails (e.g. the cache reads back other values).

    python bench/extract.py [--device auto] [--quick] [--models demo,resnet18,hf_vit] [--repeats N]
                            [--breakdown]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from netatlas.backend.activations import (Activations, extract_activations, first_tensor,
                                          reduce_output, resolve_device)
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import LoadedModel, load_checkpoint
from netatlas.backend.datasets import ImageDataset, demo_dataset, npz_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from netatlas.backend.workspace import Workspace
from netatlas.backend.errors import NetatlasError
from machine_load import OtherLoad  # bench/ is on sys.path when run as a script

THROUGHPUT_TARGET = 0.9
CACHE_READ_TARGET = 0.05
BATCH_SIZE = 256  # Workspace's default
WARMUP_IMAGES = 512
BREAKDOWN_REPEATS = 5
OTHER_LOAD_WARN = 0.15


@dataclass
class Case:
    name: str
    loaded: LoadedModel
    dataset: ImageDataset
    layers: list[str]
    repeats: int


# --------------------------------------------------------------------------------------------- cases

def demo_case(n: int | None, repeats: int) -> Case:
    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    if n is not None and n < len(dataset):
        dataset = subset(dataset, n, "demo-sub")
    layers = ["stem", *(f"blocks.{i}" for i in range(6)), "fc"]
    return Case("demo", loaded, dataset, layers, repeats)


def resnet18_case(n: int, repeats: int, tmp: Path) -> Case:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    weights = tmp / "resnet18_untrained.pt"
    torch.save(model.state_dict(), weights)
    pre = Preprocessing(size=(64, 64), grayscale=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    loaded = load_checkpoint(weights, "resnet18", {"num_classes": 10}, preprocessing=pre)
    npz = tmp / "digits64_rgb.npz"
    np.savez(npz, **rgb_digits(n, size=64))
    dataset = npz_dataset(npz)
    layers = ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    return Case("resnet18", loaded, dataset, layers, repeats)


def hf_vit_case(n: int, repeats: int, tmp: Path) -> Case:
    """A ViT-Tiny-shaped ViTForImageClassification (12 layers, width 192, 16 px patches at 64 px: 17
    tokens) saved with save_pretrained and opened as a Hugging Face folder, with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp / "hf-vit"
    config = ViTConfig(image_size=64, patch_size=16, num_hidden_layers=12, hidden_size=192, num_attention_heads=3,
                       intermediate_size=768, num_labels=10)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    loaded = load_checkpoint(folder)
    npz = tmp / "digits64_rgb_vit.npz"
    np.savez(npz, **rgb_digits(n, size=64))
    layers = [f"vit.layers.{i}" for i in range(0, 12, 3)] + ["vit.layernorm"]
    return Case("hf_vit", loaded, npz_dataset(npz), layers, repeats)


def rgb_digits(n: int, size: int) -> dict[str, np.ndarray]:
    """The demo digits resized to size x size, as 3 channels tinted by class (uint8 [n, size, size, 3])."""
    base = demo_dataset()
    reps = -(-n // len(base))
    gray = np.concatenate([base.array] * reps)[:n]
    labels = np.concatenate([base.labels] * reps)[:n]
    x = torch.from_numpy(gray).float().unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)                       # [n, 1, s, s]
    tints = torch.tensor(np.random.default_rng(0).uniform(0.4, 1.0, (10, 3)), dtype=torch.float32)
    rgb = x * tints[torch.from_numpy(labels)].view(n, 3, 1, 1)                      # [n, 3, s, s]
    images = rgb.permute(0, 2, 3, 1).round().clamp_(0, 255).to(torch.uint8).numpy()
    return {"images": np.ascontiguousarray(images), "labels": labels}


def subset(dataset: ImageDataset, n: int, name: str) -> ImageDataset:
    """The first n images of an in-memory dataset, with its own manifest hash (its own cache keys)."""
    assert dataset.array is not None
    array = dataset.array[:n]
    return ImageDataset(name, dataset.ids[:n], dataset.labels[:n], dataset.classes,
                        f"{dataset.manifest_hash}:{name}:{n}", array.__getitem__, array=array)


# ------------------------------------------------------------------------------------------- timings

@dataclass
class Timing:
    """One timed run: total seconds and the cumulative time at the end of each batch."""

    total: float
    marks: list[float]

    def segments(self) -> list[float]:
        """Per-batch seconds, then the tail after the last batch (the Parquet write, for extraction)."""
        ends = [*self.marks, self.total]
        return [b - a for a, b in zip([0.0, *ends[:-1]], ends)]


def batchwise_best(timings: list[Timing]) -> float | None:
    """Sum over batches (and the tail) of each one's best time across repeats.

    A burst of load from another process slows a few batches of one repeat; this keeps the other
    repeats' time for those batches, so it is steadier than the best whole run on a shared machine.
    """
    segs = [t.segments() for t in timings]
    if len({len(s) for s in segs}) != 1:
        return None
    return float(np.min(np.array(segs), axis=0).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(case: Case, device: torch.device, dataset: ImageDataset | None = None) -> Timing:
    """A plain no-grad forward over the same batches: the baseline."""
    dataset = dataset or case.dataset
    model = case.loaded.model.to(device).eval()
    marks: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _indices, x in dataset.batches(case.loaded.preprocessing, BATCH_SIZE):
            model(x.to(device, non_blocking=True))
            marks.append(time.perf_counter() - t0)  # on CUDA: launch time only (no per-batch sync)
    sync(device)
    return Timing(time.perf_counter() - t0, marks)


def extract_and_read(case: Case, device: torch.device, root: Path,
                     dataset: ImageDataset | None = None) -> tuple[Timing, float]:
    """(extraction + Parquet write, cache re-read seconds) on a fresh cache under ``root``."""
    dataset = dataset or case.dataset
    cache = ResultCache(root)
    marks: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    fresh = Workspace(case.loaded, dataset, cache, device=str(device), batch_size=BATCH_SIZE) \
        .activations(case.layers, progress=lambda done, n: marks.append(time.perf_counter() - t0))
    sync(device)
    extract = Timing(time.perf_counter() - t0, marks)
    t0 = time.perf_counter()
    again = Workspace(case.loaded, dataset, cache, device=str(device),
                      batch_size=BATCH_SIZE).activations(case.layers)
    read_s = time.perf_counter() - t0
    check_same(fresh, again, case.layers)
    return extract, read_s


def check_same(a: Activations, b: Activations, layers: list[str]) -> None:
    if not (np.array_equal(a.logits, b.logits) and np.array_equal(a.predictions, b.predictions)
            and all(np.array_equal(a.layers[n], b.layers[n]) for n in layers)):
        raise RuntimeError("cache read returned different values than the extraction wrote")


def run_case(case: Case, device: torch.device, tmp: Path, breakdown: bool) -> None:
    p = case.name
    out(f"{p}.images", len(case.dataset))
    out(f"{p}.input", "x".join(map(str, case.loaded.input_shape[1:])))
    out(f"{p}.batch_size", BATCH_SIZE)
    out(f"{p}.layers", ",".join(case.layers))
    out(f"{p}.repeats", case.repeats)

    load = OtherLoad()
    # Untimed warm-up on a small slice: allocator, kernels, pyarrow/zstd, hook code paths.
    warm = subset(case.dataset, min(WARMUP_IMAGES, len(case.dataset)), f"{p}-warmup")
    bare_loop(case, device, warm)
    extract_and_read(case, device, tmp / f"{p}-warmup", warm)

    bares: list[Timing] = []
    extracts: list[Timing] = []
    reads: list[float] = []
    for r in range(case.repeats):
        def do_bare() -> None:
            bares.append(bare_loop(case, device))

        def do_extract() -> None:
            e, c = extract_and_read(case, device, tmp / f"{p}-cache-{r}")
            extracts.append(e)
            reads.append(c)
            shutil.rmtree(tmp / f"{p}-cache-{r}", ignore_errors=True)

        for step in ((do_bare, do_extract) if r % 2 == 0 else (do_extract, do_bare)):
            gc.collect()
            step()

    bare, extract = min(t.total for t in bares), min(t.total for t in extracts)
    read = min(reads)
    n = len(case.dataset)
    out(f"{p}.bare_loop_s", f"{bare:.3f}", f"best of: {fmt_list([t.total for t in bares])}")
    out(f"{p}.extract_write_s", f"{extract:.3f}", f"best of: {fmt_list([t.total for t in extracts])}")
    out(f"{p}.bare_loop_img_per_s", f"{n / bare:.0f}")
    out(f"{p}.extract_write_img_per_s", f"{n / extract:.0f}")
    ratio = bare / extract
    out(f"{p}.throughput_ratio", f"{ratio:.3f}",
        f"target >= {THROUGHPUT_TARGET}; {'ok' if ratio >= THROUGHPUT_TARGET else 'MISSED'}")
    if device.type == "cpu" and case.repeats > 1:
        b, e = batchwise_best(bares), batchwise_best(extracts)
        if b and e:
            out(f"{p}.throughput_ratio_batchwise", f"{b / e:.3f}",
                f"{b:.3f}s / {e:.3f}s: each batch's best across repeats, summed; steadier under load")
            out(f"{p}.parquet_tail_s", f"{min(t.segments()[-1] for t in extracts):.3f}",
                "after the last batch: building tables + Parquet writes")
    out(f"{p}.cache_read_s", f"{read:.4f}", f"best of: {fmt_list(reads, 4)}")
    frac = read / extract
    out(f"{p}.cache_read_fraction", f"{frac:.4f}",
        f"target <= {CACHE_READ_TARGET}; {'ok' if frac <= CACHE_READ_TARGET else 'MISSED'}")
    share = load.share()
    if share is not None:
        out(f"{p}.other_processes_cpu", f"{share:.2f}",
            "share of all cores used by other processes meanwhile; above ~0.15 the ratios are noise"
            + ("; THIS RUN WAS LOADED" if share > OTHER_LOAD_WARN else ""))
    if breakdown:
        run_breakdown(case, device, tmp)


# ----------------------------------------------------------------------------------------- breakdown

def run_breakdown(case: Case, device: torch.device, tmp: Path) -> None:
    """Where an extraction's time goes beyond the bare loop.

    The forward passes are timed batch by batch, interleaving the bare and the hooked forward on
    the same batch so that load from other processes hits both alike; the Parquet writes are timed
    on their own (best of ``BREAKDOWN_REPEATS``).
    """
    p = f"{case.name}.breakdown"
    pre, model, ds = case.loaded.preprocessing, case.loaded.model.to(device).eval(), case.dataset
    modules = dict(model.named_modules())
    reps = max(2, case.repeats)

    t0 = time.perf_counter()
    batches = [x for _i, x in ds.batches(pre, BATCH_SIZE)]
    out(f"{p}.batches_only_s", f"{time.perf_counter() - t0:.3f}",
        "dataset.batches + preprocessing, no model")

    # Same per-batch work as extract_activations: hooks reduce on the device, then copy to host.
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: torch.nn.Module, _inputs: object, output: object) -> None:
            captured[name] = reduce_output(first_tensor(output), module, "mean").float()
        return hook

    def bare(x: torch.Tensor) -> None:
        with torch.no_grad():
            model(x.to(device))

    def hooked(x: torch.Tensor) -> None:
        with torch.inference_mode():
            first_tensor(model(x.to(device))).float().cpu().numpy()
            for name in case.layers:
                captured[name].cpu().numpy()

    per_batch: dict[str, np.ndarray] = {k: np.full((reps, len(batches)), np.inf)
                                        for k in ("bare", "hooked")}
    for r in range(reps):
        for b, x in enumerate(batches):
            for mode, fn in (("bare", bare), ("hooked", hooked))[::1 if (r + b) % 2 == 0 else -1]:
                handles = [modules[n].register_forward_hook(hook_for(n))
                           for n in case.layers] if mode == "hooked" else []
                sync(device)
                t0 = time.perf_counter()
                fn(x)
                sync(device)
                per_batch[mode][r, b] = time.perf_counter() - t0
                for h in handles:
                    h.remove()
    fwd = {k: float(v.min(0).sum()) for k, v in per_batch.items()}
    out(f"{p}.forward_bare_s", f"{fwd['bare']:.3f}", "per-batch best, summed; no_grad")
    out(f"{p}.forward_hooked_s", f"{fwd['hooked']:.3f}",
        "inference_mode + hooks + reductions + .cpu() copies")
    out(f"{p}.hooks_reductions_copies_s", f"{fwd['hooked'] - fwd['bare']:+.3f}",
        f"{(fwd['hooked'] - fwd['bare']) / fwd['bare']:+.1%} of the forward")

    # Each layer's reduction + host copy, on that layer's real output for one full batch.
    raw: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    handles = [modules[n].register_forward_hook(
        lambda m, _i, o, n=n: raw.__setitem__(n, (m, first_tensor(o)))) for n in case.layers]
    try:
        with torch.inference_mode():
            model(batches[0].to(device))
    finally:
        for h in handles:
            h.remove()
    n_batches = len(batches)
    for name, (module, output) in raw.items():
        best = np.inf
        for _ in range(10):
            sync(device)
            t0 = time.perf_counter()
            reduce_output(output, module, "mean").float().cpu().numpy()
            best = min(best, time.perf_counter() - t0)
        out(f"{p}.reduce_copy[{name}]_s", f"{best * n_batches:.4f}",
            f"{tuple(output.shape)} -> {reduce_output(output, module, 'mean').shape[1]} units; "
            f"{best * 1e3:.2f} ms/batch")

    # Parquet: Workspace._write of one extraction's results, with and without the fsyncs.
    fresh = extract_activations(model, ds, pre, case.layers, "mean", BATCH_SIZE, device)
    counter = iter(range(10_000))

    def write_s() -> float:
        root = tmp / f"{case.name}-write-{next(counter)}"
        ws = Workspace(case.loaded, ds, ResultCache(root), device=str(device), batch_size=BATCH_SIZE)
        gc.collect()
        t0 = time.perf_counter()
        ws._write(fresh, case.layers, "mean")
        elapsed = time.perf_counter() - t0
        shutil.rmtree(root, ignore_errors=True)
        return elapsed

    write = min(write_s() for _ in range(BREAKDOWN_REPEATS))
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # type: ignore[assignment]  # restored below; bench-only probe
    try:
        write_nofsync = min(write_s() for _ in range(BREAKDOWN_REPEATS))
    finally:
        os.fsync = real_fsync
    mb = (fresh.logits.nbytes + sum(v.nbytes for v in fresh.layers.values())) / 1e6
    out(f"{p}.parquet_write_s", f"{write:.3f}",
        f"{1 + len(case.layers)} files, {mb:.1f} MB float32, zstd + byte-stream-split + fsync")
    out(f"{p}.parquet_write_no_fsync_s", f"{write_nofsync:.3f}")


# ------------------------------------------------------------------------------------------- output

def out(name: str, value: object, note: str = "") -> None:
    print(f"{name}: {value}" + (f"  ({note})" if note else ""), flush=True)


def fmt_list(values: list[float], digits: int = 3) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--quick", action="store_true", help="small N and one repeat: a smoke run")
    ap.add_argument("--models", default="demo,resnet18,hf_vit", help="comma list of demo, resnet18, hf_vit")
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per timing (default: 3 for demo, 2 for resnet18, 1 with --quick)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the pieces of an extraction (hooks, copies, Parquet)")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"demo", "resnet18", "hf_vit"})
    if unknown or not models:
        ap.error(f"unknown model(s) {', '.join(unknown) or '(none)'}: use demo, resnet18, hf_vit")
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be at least 1")
    try:
        device = resolve_device(args.device)
    except NetatlasError as exc:
        ap.error(str(exc))
    out("device", torch.cuda.get_device_name(device) if device.type == "cuda" else device)
    out("torch", torch.__version__)
    out("torch_threads", torch.get_num_threads())
    out("quick", args.quick,
        "smoke run: small N, 1 repeat; fixed costs weigh more, ratios not meaningful" if args.quick else "")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="netatlas-bench-") as d:
        tmp = Path(d)
        for m in models:
            t0 = time.perf_counter()
            if m == "demo":
                case = demo_case(1000 if args.quick else None, args.repeats or (1 if args.quick else 3))
            elif m == "resnet18":
                case = resnet18_case(500 if args.quick else 5000,
                                     args.repeats or (1 if args.quick else 2), tmp)
            else:
                case = hf_vit_case(500 if args.quick else 3000, args.repeats or (1 if args.quick else 2), tmp)
            run_case(case, device, tmp, args.breakdown)
            out(f"{m}.bench_wall_s", f"{time.perf_counter() - t0:.1f}")
            del case
            gc.collect()
    out("total_wall_s", f"{time.perf_counter() - t_start:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())  # 0: timings never gate; a crash or a cache mismatch still fails loudly
