"""Benchmark: the Diagram tab — drawing and exporting resnet50 and vit_b_16 as neural circuit diagrams.

For each model, on a 1x3x224x224 input (each part runs one warm-up call, reported apart as the
"first call", then takes the median of N repeats, 5 or 2 with --quick; a total is the median of the
per-repeat totals):

1. netatlas from the architecture name, end to end: ``architecture_circuit`` (build on the meta device
   and trace), ``Circuit.view()`` (fold repeated blocks), then ``render`` to SVG, PDF, PNG (150 dpi) and
   TikZ, each stage timed. Target: "diagram + export SVG and PDF" (trace + fold + SVG + PDF) <= 5 s a
   model on this CPU. Its first call is the process's first meta-device forward ("cold").
2. netatlas on an already built model with real weights (``torchvision.models.<arch>()`` on CPU, then
   ``trace_circuit``), which is what the app does with a loaded checkpoint; same stages.
3. A cold process, as a command line user meets it: the wall time of ``netatlas diagram none --arch
   <model> -o m.svg -o m.pdf`` (interpreter start, imports, diagram, export); median of 3 (1 with
   --quick). Before the models, part 0 says what importing torch, torchvision, netatlas's diagram
   modules and torchview costs in a fresh interpreter.

Baseline in the same run, in each part: torchview (``draw_graph(..., expand_nested=True, depth=inf)``,
every leaf module drawn, as netatlas's open view does), its graph then ``visual_graph.pipe`` to SVG and
PDF. In 1 the model is built on the meta device and drawn with ``device="meta"``; in 2 with
``device="cpu"`` (a real forward: torchview calls ``model.to(device)``, so "meta" would strip the
model's own weights); in 3 a ``python -c`` script does what 1 does. Skipped if torchview cannot be
imported.

Sizes: boxes drawn (inputs and outputs excluded) by netatlas folded and unfolded, and by torchview
(its module and function nodes). Target: the folded vit_b_16 diagram has <= 40 boxes, its 12 encoder
layers folded into one run (``view.repeats``). Each part prints the load other processes put on the
machine; nothing gates, the exit code is 0 unless the benchmark itself fails.

    python bench/diagram.py [--quick] [--models resnet50,vit_b_16] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

from machine_load import OtherLoad, report_load  # bench/ is on sys.path when run as a script
from netatlas.backend.circuit.graph import CircuitView
from netatlas.backend.circuit.trace import architecture_circuit, trace_circuit
from netatlas.viz.circuit import render

SHAPE = (1, 3, 224, 224)
TOTAL_TARGET_S = 5.0
VIT_BOX_TARGET = 40
VIT_LAYERS = 12
EXPORTS = ("svg", "pdf", "png", "tex")
TOTAL_STAGES = ("trace", "fold", "svg", "pdf")          # what the target counts
TORCHVIEW_STAGES = ("graph", "svg", "pdf")
STAGE_NOTES = {"trace": "fx trace + meta shape pass", "fold": "Circuit.view()", "png": "150 dpi",
               "tex": "TikZ", "graph": "draw_graph"}

IMPORTS = {"torch": "torch", "torchvision": "torchvision", "netatlas's diagram modules":
           "netatlas.backend.circuit.trace, netatlas.viz.circuit", "torchview": "torchview"}
TORCHVIEW_SCRIPT = """
import torch, torchvision, torchview
with torch.device("meta"):
    model = torchvision.models.{arch}()
graph = torchview.draw_graph(model, input_size={shape}, device="meta", expand_nested=True, depth=float("inf"))
graph.visual_graph.pipe(format="svg"); graph.visual_graph.pipe(format="pdf")
"""

summary: dict[str, str] = {}


def out(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<46} {value:>10}  {note}", flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def medians(runs: list[dict[str, float]], total_of: tuple[str, ...]) -> dict[str, float]:
    """Median of each stage over the runs, and "total": the median of the runs' sums of ``total_of``."""
    result = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}
    result["total"] = statistics.median(sum(run[s] for s in total_of) for run in runs)
    return result


# ---- netatlas ----------------------------------------------------------------------------------
def netatlas_once(make_circuit: Callable[[], Any]) -> tuple[dict[str, float], CircuitView, dict[str, bytes]]:
    """One diagram: trace, fold, then every export format; seconds per stage, the view, the files."""
    circuit, trace_s = timed(make_circuit)
    view, fold_s = timed(circuit.view)
    seconds, files = {"trace": trace_s, "fold": fold_s}, {}
    for fmt in EXPORTS:
        files[fmt], seconds[fmt] = timed(lambda: render(view, fmt, dpi=150))
    return seconds, view, files


def netatlas_part(make_circuit: Callable[[], Any], repeats: int,
                  first: str = "first call") -> tuple[dict[str, float], CircuitView, dict[str, bytes]]:
    """One warm-up call (reported as ``first``), then the medians of ``repeats`` calls."""
    cold, view, files = netatlas_once(make_circuit)
    out(first, f"{sum(cold[s] for s in TOTAL_STAGES):.2f} s",
        f"of which trace {cold['trace']:.2f} s; not counted below")
    runs = [netatlas_once(make_circuit)[0] for _ in range(repeats)]
    stages = medians(runs, TOTAL_STAGES)
    for stage in ("trace", "fold", *EXPORTS):
        out(f"  {stage}", f"{1000 * stages[stage]:.0f} ms", STAGE_NOTES.get(stage, ""))
    out("total: diagram + export SVG and PDF", f"{stages['total']:.2f} s",
        f"median of {repeats}; target <= {TOTAL_TARGET_S:.0f} s")
    return stages, view, files


def describe_view(view: CircuitView, unfolded: CircuitView) -> None:
    runs = ", ".join(f"{head} x{len(run)}" for head, run in sorted(view.repeats.items())) or "none"
    out("boxes: folded (unfolded)", f"{view.boxes} ({unfolded.boxes})", f"folded runs: {runs}")


# ---- torchview ---------------------------------------------------------------------------------
def torchview_once(make_model: Callable[[], torch.nn.Module], device: str) -> tuple[dict[str, float], Any]:
    import torchview

    def graph() -> Any:
        return torchview.draw_graph(make_model(), input_size=SHAPE, device=device, expand_nested=True,
                                    depth=float("inf"))

    drawn, graph_s = timed(graph)
    seconds = {"graph": graph_s}
    for fmt in ("svg", "pdf"):
        _, seconds[fmt] = timed(lambda: drawn.visual_graph.pipe(format=fmt))
    return seconds, drawn


def torchview_part(make_model: Callable[[], torch.nn.Module], device: str, repeats: int,
                   ours: dict[str, float]) -> tuple[dict[str, float], Any]:
    first, drawn = torchview_once(make_model, device)
    out("first call", f"{sum(first.values()):.2f} s", "not counted below")
    runs = [torchview_once(make_model, device)[0] for _ in range(repeats)]
    stages = medians(runs, TORCHVIEW_STAGES)
    for stage in TORCHVIEW_STAGES:
        out(f"  {stage}", f"{1000 * stages[stage]:.0f} ms", STAGE_NOTES.get(stage, ""))
    out("total: graph + SVG + PDF", f"{stages['total']:.2f} s", f"median of {repeats}")
    out("ratio netatlas / torchview (totals)", f"{ours['total'] / stages['total']:.2f}x")
    return stages, drawn


def torchview_boxes(drawn: Any) -> tuple[int, int]:
    """Module and function nodes in torchview's graph (tensor nodes excluded), and attention boxes."""
    nodes = [line for line in drawn.visual_graph.body
             if "fillcolor=darkseagreen1" in line or "fillcolor=aliceblue" in line]
    attention = [line for line in nodes if re.search(r"attention", line, re.IGNORECASE)]
    return len(nodes), len(attention)


def has_torchview() -> bool:
    try:
        importlib.import_module("torchview")
    except Exception as exc:  # not installed, or broken against this torch
        print(f"torchview cannot be imported ({type(exc).__name__}: {exc}); skipping the baseline")
        return False
    return True


# ---- cold processes ----------------------------------------------------------------------------
def import_times(baseline: bool) -> None:
    """Seconds to import each of ``IMPORTS`` in turn, in one fresh interpreter."""
    print("\n0. imports in a fresh process (each after the ones above it)")
    names = [name for name in IMPORTS if baseline or name != "torchview"]
    lines = ["import time", "t = time.perf_counter()"]
    for name in names:
        lines += [f"import {IMPORTS[name]}", "print(time.perf_counter() - t); t = time.perf_counter()"]
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, check=True)
    for name, seconds in zip(names, done.stdout.split()):
        out(f"import {name}", f"{1000 * float(seconds):.0f} ms")


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_process(arch: str, repeats: int, baseline: bool) -> None:
    print(f"\n{arch}: 3. a cold process, end to end (wall time, interpreter start included)")
    load = OtherLoad()
    with tempfile.TemporaryDirectory() as tmp:
        ours = wall([sys.executable, "-m", "netatlas.cli", "diagram", "none", "--arch", arch,
                     "-o", f"{tmp}/{arch}.svg", "-o", f"{tmp}/{arch}.pdf"], repeats)
    out("netatlas diagram none --arch ... -o .svg -o .pdf", f"{ours:.2f} s", f"median of {repeats}")
    note = f"{ours:.2f} s"
    if baseline:
        script = TORCHVIEW_SCRIPT.format(arch=arch, shape=SHAPE)
        theirs = wall([sys.executable, "-c", script], repeats)
        out("torchview script doing the same", f"{theirs:.2f} s", f"ratio netatlas / torchview {ours / theirs:.2f}x")
        note += f" vs torchview {theirs:.2f} s"
    report_load(load)
    summary[f"{arch} cold process (CLI)"] = note + f" ({'within' if ours <= TOTAL_TARGET_S else 'over'} 5 s)"


# ---- one model ---------------------------------------------------------------------------------
def meta_model(arch: str) -> torch.nn.Module:
    with torch.device("meta"):
        return getattr(torchvision.models, arch)()


def from_name(arch: str, repeats: int, baseline: bool, out_dir: Path | None) -> None:
    print(f"\n{arch}, {'x'.join(map(str, SHAPE))}: 1. from the architecture name (meta device)")
    load = OtherLoad()
    print("  netatlas: architecture_circuit (build on meta + trace), view(), render")
    stages, view, files = netatlas_part(lambda: architecture_circuit(arch, None, SHAPE), repeats,
                                        "cold: first call")
    describe_view(view, architecture_circuit(arch, None, SHAPE).view(fold_repeats=False))
    attention = sum(op.label == "Attn" for op in view.circuit.ops.values())
    if baseline:
        print("  baseline: torchview.draw_graph(device='meta', expand_nested=True, depth=inf)")
        theirs, drawn = torchview_part(lambda: meta_model(arch), "meta", repeats, stages)
        boxes, their_attention = torchview_boxes(drawn)
        folds = (f"attention boxes: torchview {their_attention}, netatlas {attention}: torchview folds nothing"
                 if their_attention > attention else "")
        out("boxes: torchview (netatlas folded)", f"{boxes} ({view.boxes})", folds)
        summary[f"{arch} vs torchview"] = (f"{stages['total'] / theirs['total']:.2f}x its time, "
                                           f"{view.boxes} boxes vs its {boxes}")
        if out_dir:
            for fmt in ("svg", "pdf"):
                (out_dir / f"{arch}.torchview.{fmt}").write_bytes(drawn.visual_graph.pipe(format=fmt))
    if out_dir:
        for fmt, data in files.items():
            (out_dir / f"{arch}.{fmt}").write_bytes(data)
    report_load(load)
    target_met = stages["total"] <= TOTAL_TARGET_S
    summary[f"{arch} diagram + SVG + PDF"] = (f"{stages['total']:.2f} s "
                                              f"({'PASS' if target_met else 'FAIL'}: <= {TOTAL_TARGET_S:.0f} s)")
    if arch == "vit_b_16":
        vit_checks(view)


def built_model(arch: str, repeats: int, baseline: bool) -> None:
    print(f"\n{arch}: 2. an already built model with real weights (CPU), as the app has it")
    load = OtherLoad()
    model, build_s = timed(lambda: getattr(torchvision.models, arch)().eval())
    out("build torchvision model (not counted)", f"{build_s:.2f} s")
    example = torch.zeros(SHAPE)
    print("  netatlas: trace_circuit (meta clone + trace), view(), render")
    stages, _, _ = netatlas_part(lambda: trace_circuit(model, example), repeats)
    if baseline:
        print("  baseline: torchview.draw_graph(device='cpu') on the same model (a real forward)")
        theirs, _ = torchview_part(lambda: model, "cpu", repeats, stages)
        summary[f"{arch} built model vs torchview"] = f"{stages['total']:.2f} s vs {theirs['total']:.2f} s"
    report_load(load)


def vit_checks(view: CircuitView) -> None:
    runs = [len(run) for run in view.repeats.values()]
    boxes_ok = view.boxes <= VIT_BOX_TARGET
    fold_ok = VIT_LAYERS in runs
    summary["vit_b_16 folded boxes"] = f"{view.boxes} ({'PASS' if boxes_ok else 'FAIL'}: <= {VIT_BOX_TARGET})"
    summary["vit_b_16 encoder layers folded"] = (f"runs {runs} ({'PASS' if fold_ok else 'FAIL'}: "
                                                 f"a run of {VIT_LAYERS})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 repeats instead of 5")
    parser.add_argument("--models", default="resnet50,vit_b_16")
    parser.add_argument("--out", type=Path, help="write the exported diagrams (and torchview's) here")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else 5
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; repeats {repeats}")
    baseline = has_torchview()
    import_times(baseline)
    for arch in args.models.split(","):
        from_name(arch, repeats, baseline, args.out)
        built_model(arch, repeats, baseline)
        cold_process(arch, 1 if args.quick else 3, baseline)
    print("\nsummary")
    for name, value in summary.items():
        print(f"  {name:<40} {value}")
    if args.out:
        print(f"\ndiagrams written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
