"""Benchmark: the KAN tab's figures for one wide layer, against plain matplotlib and pykan's plot().

Target (issue 8): for a 64x64-edge layer, building its importance heatmap and the small multiples of
its top 16 edge curves and rendering both to Bokeh models takes <= 1 s of server time. Measured as
the median of N repeats after one warm-up call (reported apart as "first call"):

- ``importance``: ``edge_importance`` on the sample (what picks the top edges);
- ``heatmap``: building the HoloViews figure and ``hv.renderer("bokeh").get_plot`` on it;
- ``curves``: building the small multiples and drawing them as the page does (``bokeh_small_multiples``),
  with HoloViews' own Bokeh rendering of the same figure reported beside it;
- ``total``: the three together, the number the target is about; ``page_total`` the same with Panel's
  ``pn.panel(fig).get_root()`` instead of ``get_plot`` (what the server really does per view).

Baselines in the same run: (1) plain matplotlib drawing the same 16 curves with their histograms
(``plt.subplots`` 4x4, Agg ``canvas.draw()``), the cheapest honest static picture; (2) 16 bare
``hv.Curve`` panels rendered by HoloViews to Bokeh ("curves_over_floor": ours, with histograms, knots
and styling, over what the plainest HoloViews small multiples cost), and HoloViews' rendering of our
own figure ("holoviews_curves", what the page drew before ``bokeh_small_multiples``); (3) pykan's own
``model.plot()`` on a KAN of 16 edges ([4, 4]: the same number of curves; it writes one 400-dpi PNG
per edge, so a 64x64 layer's 4096 PNGs is out of reach), skipped with ``--no-pykan``.

The layer is synthetic: this script's Gaussian-RBF + SiLU layer, and the efficient-kan family read
from a random state_dict of the same shape when that reader is available. Each case prints the share
of the CPU other processes used meanwhile; nothing gates, the exit code is 0 unless the bench fails.

    python bench/kan.py [--repeats 5] [--width 64] [--top 16] [--no-pykan]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any, Callable

import holoviews as hv
import matplotlib
import panel as pn
import torch
import torch.nn.functional as F

from machine_load import BUSY_NOTE, BUSY_SHARE, OtherLoad  # bench/ is on sys.path when run as a script
from netatlas.backend.kan.base import EdgeLayer, Part, edge_importance
from netatlas.viz.kan import bokeh_small_multiples, curve_ranges, edge_curves, importance_heatmap, top_edges

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

TARGET_S = 1.0
STAGES = ("importance", "heatmap", "curves")


class RBFLayer(EdgeLayer):
    """FastKAN-like synthetic layer: SiLU base plus Gaussian RBFs on x, random coefficients."""

    parts = (Part("base"), Part("spline"))

    def __init__(self, in_dim: int, out_dim: int, grid: int = 8, seed: int = 0) -> None:
        super().__init__(in_dim, out_dim)
        g = torch.Generator().manual_seed(seed)
        self.base = torch.randn(in_dim, out_dim, generator=g) / in_dim ** 0.5
        self.coef = torch.randn(in_dim, out_dim, grid, generator=g) * 0.3
        self.centres = torch.linspace(-2, 2, grid)

    def part_values(self, part: str, t: torch.Tensor) -> torch.Tensor:
        if part == "base":
            return F.silu(t)[..., None] * self.base
        basis = torch.exp(-((t[..., None] - self.centres) / 0.5) ** 2)             # [B, in, K]
        return torch.einsum("bik,iok->bio", basis, self.coef)

    def domain(self) -> torch.Tensor:
        return torch.tensor([[-2.0, 2.0]]).expand(self.in_dim, 2)

    def knots(self) -> torch.Tensor:
        return self.centres.expand(self.in_dim, len(self.centres))


def efficient_kan_layer(width: int) -> tuple[EdgeLayer | None, str]:
    """A random efficient-kan KANLinear of the same shape, read by netatlas's reader, if it exists yet."""
    grid, order = 5, 3
    g = torch.Generator().manual_seed(1)
    knots = torch.linspace(-1 - order * 0.4, 1 + order * 0.4, grid + 2 * order + 1)
    state = {"layers.0.grid": knots.expand(width, -1).contiguous(),
             "layers.0.base_weight": torch.randn(width, width, generator=g) / width ** 0.5,
             "layers.0.spline_weight": torch.randn(width, width, grid + order, generator=g) * 0.1,
             "layers.0.spline_scaler": torch.ones(width, width)}
    try:
        from netatlas.backend.kan.families import read_network
        return read_network(state, "efficient-kan").layers[0], ""
    except Exception as error:  # noqa: BLE001 - a reader still being written must not stop the bench
        return None, f"{type(error).__name__}: {error}"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def figures_once(layer: EdgeLayer, x: torch.Tensor, top: int, page: bool) -> dict[str, float]:
    """One pass of what the KAN view does for a layer: importance, heatmap, top curves, each rendered
    to Bokeh models (the curves as the page draws them, by ``bokeh_small_multiples``)."""
    render = (lambda fig: pn.panel(fig).get_root()) if page else hv.renderer("bokeh").get_plot
    draw = (lambda grid: pn.pane.Bokeh(grid).get_root()) if page else (lambda grid: grid)
    importance, t_importance = timed(lambda: edge_importance(layer, x))
    _, t_heatmap = timed(lambda: render(importance_heatmap(importance, "layer")))
    edges = top_edges(importance, top)
    _, t_curves = timed(lambda: draw(bokeh_small_multiples(edge_curves(layer, edges, x))))
    return {"importance": t_importance, "heatmap": t_heatmap, "curves": t_curves}


def holoviews_curves(layer: EdgeLayer, x: torch.Tensor, top: int) -> float:
    """The same small multiples rendered by HoloViews' own Bokeh plotting (what the page did before)."""
    edges = top_edges(edge_importance(layer, x), top)
    return timed(lambda: hv.renderer("bokeh").get_plot(edge_curves(layer, edges, x)))[1]


def matplotlib_baseline(layer: EdgeLayer, x: torch.Tensor, edges: list[tuple[int, int]]) -> float:
    """The same curves and histograms drawn by hand with matplotlib (Agg), for scale."""
    start = time.perf_counter()
    ranges = curve_ranges(layer, x)
    with torch.no_grad():
        frac = torch.linspace(0, 1, 200)[:, None]
        t = torch.as_tensor(ranges[:, 0] + frac.numpy() * (ranges[:, 1] - ranges[:, 0]), dtype=torch.float32)
        values = layer.curves(t).numpy()
    columns = 4
    fig, axes = plt.subplots((len(edges) + columns - 1) // columns, columns, figsize=(12, 10))
    for ax, (i, j) in zip(axes.ravel(), edges):
        twin = ax.twinx()
        twin.hist(x[:, i].numpy(), bins=30, color="#e6e6e6")
        twin.set_yticks([])
        ax.plot(t[:, i].numpy(), values[:, i, j], color="black")
        ax.set_title(f"phi({i} -> {j})", fontsize=8)
    fig.canvas.draw()
    plt.close(fig)
    return time.perf_counter() - start


def _pykan() -> Any:
    """pykan's package is ``kan``, which this file shadows while bench/ is first on sys.path."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("kan")
    finally:
        sys.path[:] = saved


def holoviews_floor(layer: EdgeLayer, edges: list[tuple[int, int]]) -> float:
    """The least a Bokeh page of these small multiples can cost: one bare hv.Curve per panel, rendered."""
    t = torch.linspace(-2, 2, 200)[:, None].expand(200, layer.in_dim)
    with torch.no_grad():
        values = layer.curves(t).numpy()
    start = time.perf_counter()
    panels = [hv.Curve((t[:, i].numpy(), values[:, i, j])).opts(title=f"phi({i} -> {j})") for i, j in edges]
    hv.renderer("bokeh").get_plot(hv.Layout(panels).cols(4).opts(shared_axes=False))
    return time.perf_counter() - start


def pykan_baseline(edges: int) -> float:
    """pykan's own plot() of a [sqrt(e), sqrt(e)] KAN: its one-PNG-per-edge drawing plus the layout."""
    KAN = _pykan().KAN
    side = int(round(edges ** 0.5))
    with redirect_stdout(StringIO()):
        model = KAN(width=[side, side], grid=5, k=3, seed=0, auto_save=False)
        model(torch.randn(200, side))
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            model.plot(folder=folder)
            plt.gcf().canvas.draw()
            seconds = time.perf_counter() - start
    plt.close("all")
    return seconds


def out(name: str, value: float | str, note: str = "") -> None:
    text = f"{value:.3f}" if isinstance(value, float) else value
    print(f"{name}: {text}" + (f"  ({note})" if note else ""), flush=True)


def report_load(name: str, load: OtherLoad) -> None:
    share = load.share()
    if share is not None:
        flag = BUSY_NOTE if share > BUSY_SHARE else ""
        out(f"{name}.other_load", f"{share:.0%}", flag)


def median_runs(fn: Callable[[], dict[str, float]], repeats: int) -> dict[str, float]:
    runs = [fn() for _ in range(repeats)]
    result = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}
    result["total"] = statistics.median(sum(run.values()) for run in runs)
    return result


def run_case(name: str, layer: EdgeLayer, x: torch.Tensor, args: argparse.Namespace,
             baseline: float, floor: float, pykan: float | None) -> None:
    load = OtherLoad()
    first = figures_once(layer, x, args.top, page=False)
    out(f"{name}.first_call_s", sum(first.values()), "warm-up: HoloViews and Bokeh first-use costs")
    plots = median_runs(lambda: figures_once(layer, x, args.top, page=False), args.repeats)
    for stage in STAGES:
        out(f"{name}.{stage}_s", plots[stage])
    out(f"{name}.curves_over_floor", f"{plots['curves'] / floor:.2f}x", "our small multiples / bare curves")
    rendered_by_holoviews = statistics.median(holoviews_curves(layer, x, args.top) for _ in range(args.repeats))
    out(f"{name}.holoviews_curves_s", rendered_by_holoviews,
        f"the same figure through HoloViews' Bokeh plotting: {rendered_by_holoviews / plots['curves']:.1f}x ours")
    verdict = "meets" if plots["total"] <= TARGET_S else "misses"
    out(f"{name}.total_s", plots["total"], f"{verdict} the <= {TARGET_S:.0f} s target; "
        f"{plots['total'] / baseline:.1f}x the matplotlib baseline")
    page = median_runs(lambda: figures_once(layer, x, args.top, page=True), args.repeats)
    out(f"{name}.page_total_s", page["total"], "same, through pn.panel(fig).get_root()")
    if pykan is not None:
        out(f"{name}.pykan_over_ours", f"{pykan / plots['total']:.1f}x",
            f"pykan plot() of {args.top} edges / our total")
    report_load(name, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=64, help="the layer is width x width edges")
    parser.add_argument("--top", type=int, default=16, help="edges drawn as small multiples")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--no-pykan", action="store_true", help="skip pykan's plot() baseline")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.samples, args.width)
    print(f"torch_threads: {torch.get_num_threads()}\nlayer: {args.width}x{args.width} edges, "
          f"{args.samples} samples, top {args.top} curves, median of {args.repeats}")

    layer = RBFLayer(args.width, args.width)
    edges = top_edges(edge_importance(layer, x), args.top)
    load = OtherLoad()
    matplotlib_baseline(layer, x, edges)                                   # warm-up
    baseline = statistics.median(matplotlib_baseline(layer, x, edges) for _ in range(args.repeats))
    out("baseline.matplotlib_curves_s", baseline, f"plain matplotlib, the same {args.top} curves")
    holoviews_floor(layer, edges)                                          # warm-up
    floor = statistics.median(holoviews_floor(layer, edges) for _ in range(args.repeats))
    out("baseline.bare_curves_bokeh_s", floor, f"{args.top} bare hv.Curve panels rendered by HoloViews")
    pykan = None
    if not args.no_pykan:
        pykan = pykan_baseline(args.top)
        out("baseline.pykan_plot_s", pykan, f"pykan plot() of a KAN with {args.top} edges")
    report_load("baseline", load)

    run_case("rbf", layer, x, args, baseline, floor, pykan)
    efficient, why = efficient_kan_layer(args.width)
    if efficient is None:
        out("efficient_kan", "skipped", f"the reader is not available: {why}")
    else:
        run_case("efficient_kan", efficient, x, args, baseline, floor, pykan)


if __name__ == "__main__":
    main()
