"""Benchmark: extraction written as it runs (resumable chunks) against one write at the end, and the cost
of a re-run after the extraction was killed at 60%.

For each model, on a fresh cache each time:

* ``single_write_s`` (the baseline, what the Workspace did before chunks): ``extract_activations`` over
  every image, then the same cache entries written once at the end (outputs + one per layer);
* ``resumable_s``: ``Workspace.activations(layers)``: the pass writes chunks as it runs (a writer
  thread), then the same entries, then removes the chunks;
* ``resume_after_kill_s``: a child process runs the same ``Workspace.activations`` and is SIGKILLed
  once its progress callback has seen 60% of the images; this process then times the re-run, which
  reuses the chunks the child finished and computes the rest. Its result is checked bit for bit
  against the uninterrupted run's.

Ratios against the baselines measured in this run:

* ``throughput_ratio`` = single_write_s / resumable_s          (target >= 0.95)
* ``resume_ratio``     = resume_after_kill_s / resumable_s     (target <= 0.6)

Baseline and resumable runs alternate over the repeats and the best of each counts. Models: ``demo``
(the bundled CNN on the 5,000 demo digits) and ``resnet18`` (torchvision, untrained, on the digits at
64x64 RGB), both from bench/extract.py. Timings never gate: the exit code is 0 unless a result differs.

    python bench/resume.py [--quick] [--models demo,resnet18] [--repeats N]
"""

from __future__ import annotations

import argparse
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from netatlas.backend.activations import extract_activations
from netatlas.backend.cache import ResultCache
from netatlas.backend.workspace import Workspace
from extract import BATCH_SIZE, Case, demo_case, out, resnet18_case  # bench/ is on sys.path as a script
from machine_load import BUSY_NOTE, BUSY_SHARE, OtherLoad

THROUGHPUT_TARGET, RESUME_TARGET, KILL_AT = 0.95, 0.6, 0.6

# The child: the same Workspace pass, which writes its progress so that the parent kills it at 60%.
CHILD = """
import pickle, sys
sys.path.insert(0, sys.argv[3])
from netatlas.backend.cache import ResultCache
from netatlas.backend.workspace import Workspace
with open(sys.argv[1], "rb") as f:
    loaded, dataset, layers, batch = pickle.load(f)
mark = sys.argv[4]
def progress(done, total):
    with open(mark, "w") as f:
        f.write(f"{done} {total}")
Workspace(loaded, dataset, ResultCache(sys.argv[2]), "cpu", batch).activations(layers, progress=progress)
"""


def single_write(case: Case, root: Path) -> float:
    """The baseline: one pass in memory, then every entry written at the end (the Workspace before chunks)."""
    began = time.perf_counter()
    acts = extract_activations(case.loaded.model, case.dataset, case.loaded.preprocessing, case.layers,
                               batch_size=BATCH_SIZE, device="cpu")
    ws = Workspace(case.loaded, case.dataset, ResultCache(root), "cpu", BATCH_SIZE)
    ws._found_unreadable(acts.rows())
    ws._write(acts, case.layers, "mean")
    return time.perf_counter() - began


def resumable(case: Case, root: Path):
    began = time.perf_counter()
    acts = Workspace(case.loaded, case.dataset, ResultCache(root), "cpu", BATCH_SIZE).activations(case.layers)
    return time.perf_counter() - began, acts


def killed_at(case: Case, root: Path, tmp: Path, fraction: float) -> int:
    """Run the pass in a child and SIGKILL it once it has passed ``fraction`` of the images; returns how many."""
    state = tmp / "case.pkl"
    with open(state, "wb") as f:
        pickle.dump((case.loaded, case.dataset, case.layers, BATCH_SIZE), f)
    script, mark = tmp / "child.py", tmp / "progress.txt"
    script.write_text(CHILD)
    mark.unlink(missing_ok=True)
    child = subprocess.Popen([sys.executable, str(script), str(state), str(root), str(Path(__file__).parent),
                              str(mark)])
    target = int(fraction * len(case.dataset))
    while True:
        try:
            done = int(mark.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            done = 0
        if done >= target or child.poll() is not None:
            break
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return done


def run_case(case: Case, tmp: Path) -> bool:
    n = len(case.dataset)
    out(f"{case.name}.images", n)
    out(f"{case.name}.layers", ",".join(case.layers))
    load = OtherLoad()
    baseline, chunked, reference = [], [], None
    for repeat in range(case.repeats):
        order = (0, 1) if repeat % 2 == 0 else (1, 0)
        for which in order:
            root = Path(tempfile.mkdtemp(dir=tmp))
            if which == 0:
                baseline.append(single_write(case, root))
            else:
                seconds, reference = resumable(case, root)
                chunked.append(seconds)
    killed_root = Path(tempfile.mkdtemp(dir=tmp))
    done = killed_at(case, killed_root, tmp, KILL_AT)
    kept = sum(int(p.stem.split("-")[1]) - int(p.stem.split("-")[0])
               for p in killed_root.glob("activations-pass/*/[0-9]*.arrow"))
    resume_s, resumed = resumable(case, killed_root)
    same = np.array_equal(resumed.logits, reference.logits) and all(
        np.array_equal(resumed.layers[name], reference.layers[name]) for name in case.layers)
    single_s, resumable_s = min(baseline), min(chunked)
    out(f"{case.name}.single_write_s", f"{single_s:.3f}", "best of " + ", ".join(f"{t:.3f}" for t in baseline))
    out(f"{case.name}.resumable_s", f"{resumable_s:.3f}", "best of " + ", ".join(f"{t:.3f}" for t in chunked))
    out(f"{case.name}.throughput_ratio", f"{single_s / resumable_s:.3f}", f"target >= {THROUGHPUT_TARGET}")
    out(f"{case.name}.killed_at_images", done, f"{done / n:.0%} of the pass; chunks kept {kept} images")
    out(f"{case.name}.resume_after_kill_s", f"{resume_s:.3f}")
    out(f"{case.name}.resume_ratio", f"{resume_s / resumable_s:.3f}", f"target <= {RESUME_TARGET}")
    out(f"{case.name}.resumed_equals_uninterrupted", same)
    share = load.share()
    if share is not None:
        out(f"{case.name}.other_load", f"{share:.2f}", BUSY_NOTE if share > BUSY_SHARE else "")
    return same


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small N, one repeat: a smoke run")
    ap.add_argument("--models", default="demo,resnet18", help="comma list of demo, resnet18")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 5, 1 with --quick)")
    args = ap.parse_args(argv)
    out("device", "cpu")
    out("torch_threads", torch.get_num_threads())
    ok = True
    with tempfile.TemporaryDirectory(prefix="netatlas-bench-resume-") as d:
        tmp = Path(d)
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            repeats = args.repeats or (1 if args.quick else 5)
            if name == "demo":
                case = demo_case(1000 if args.quick else None, repeats)
            elif name == "resnet18":
                case = resnet18_case(500 if args.quick else 2000, repeats, tmp)
            else:
                ap.error(f"unknown model {name}: use demo, resnet18")
            ok &= run_case(case, tmp)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
