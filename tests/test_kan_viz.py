"""KAN figures: every drawn value checked against the toy layer's closed form, numpy or pykan's rule."""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import holoviews as hv
from bokeh.models import HoverTool, Legend, VArea, WheelZoomTool
import numpy as np
import pandas as pd
import pytest
import torch

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part, edge_importance
from netatlas.backend.errors import NetatlasError
from netatlas.viz import kan as figures
from netatlas.viz.styling import export
from tests.backend_support import run_coroutine

KNOTS = np.linspace(-2.0, 2.0, 6)


class SineSquare(EdgeLayer):
    """phi_ij(x) = w_ij sin(x) + v_ij x^2 (parts "base" and "spline"), edge (0, 1) fixed to sin."""

    parts = (Part("base"), Part("spline"))

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0) -> None:
        super().__init__(in_dim, out_dim)
        rng = np.random.default_rng(seed)
        self.w, self.v = rng.normal(size=(2, in_dim, out_dim))
        self.c = rng.normal(size=out_dim)

    def part_values(self, part: str, t: torch.Tensor) -> torch.Tensor:
        weights = torch.as_tensor(self.w if part == "base" else self.v, dtype=t.dtype)
        return (torch.sin(t) if part == "base" else t ** 2)[..., None] * weights

    @property
    def bias(self) -> torch.Tensor:
        return torch.as_tensor(self.c, dtype=torch.float32)

    def domain(self) -> torch.Tensor:
        return torch.tensor([[-2.0, 2.0]]).expand(self.in_dim, 2)

    def knots(self) -> torch.Tensor:
        return torch.as_tensor(KNOTS, dtype=torch.float32).expand(self.in_dim, len(KNOTS))

    def symbolic(self) -> dict[tuple[int, int], str]:
        return {(0, 1): "sin"}

    def closed_form(self, i: int, j: int, x: np.ndarray, part: str = "total") -> np.ndarray:
        x = x.astype(np.float64)
        base, spline = self.w[i, j] * np.sin(x), self.v[i, j] * x ** 2
        return {"base": base, "spline": spline, "total": base + spline}[part]


class SquashedSpline(SineSquare):
    """Its spline reads tanh(x), as FastKAN's RBFs read LayerNorm(x); the domain is that variable's."""

    parts = (Part("base"), Part("spline", "tanh(x)"))

    def variables(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x, "tanh(x)": torch.tanh(x)}

    def domain(self) -> torch.Tensor:
        return torch.tensor([[-0.5, 0.5]]).expand(self.in_dim, 2)


class AllSquashed(SquashedSpline):
    parts = (Part("base", "tanh(x)"), Part("spline", "tanh(x)"))


class Probed(SineSquare):
    separable = False


class Fit:
    """Stands in for backend.kan.symbolic.FormulaFit: 1.5*sin(x)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return 1.5 * np.sin(x)

    def expression(self, var: str = "x", digits: int = 3) -> str:
        return f"1.5*sin({var})"


@pytest.fixture(scope="module")
def layer() -> SineSquare:
    return SineSquare(3, 4)


@pytest.fixture(scope="module")
def sample() -> torch.Tensor:
    return torch.randn(500, 3, generator=torch.Generator().manual_seed(1)) * 1.5   # beyond [-2, 2]


def elements(overlay: hv.Overlay, kind: type) -> list:
    return [e for e in overlay if isinstance(e, kind)]


def style(element: hv.Element, backend: str) -> dict:
    return hv.Store.lookup_options(backend, element, "style").kwargs


def histogram(panel: hv.Overlay) -> hv.Area:
    """The inputs' histogram: a filled strip of its own below the curve."""
    (area,) = [a for a in elements(panel, hv.Area) if a.group == "Inputs"]
    return area


def knots(panel: hv.Overlay) -> hv.Curve:
    (curve,) = [c for c in elements(panel, hv.Curve) if c.group == "Knots"]
    return curve


def lines(panel: hv.Overlay) -> list[hv.Curve]:
    """The edge's own curves: total, parts, fit."""
    return [c for c in elements(panel, hv.Curve) if c.group not in ("Knots", "Inputs")]   # an Area is a Curve


def test_toy_layer_is_a_kan_layer(layer, sample):
    """The test's layer obeys the interface the figures rely on: forward == sum of its edges + bias."""
    x = sample.double().numpy()
    expected = np.stack([sum(layer.closed_form(i, j, x[:, i]) for i in range(3)) for j in range(4)], 1) + layer.c
    assert np.allclose(layer.forward(sample).numpy(), expected, atol=1e-4)


def test_top_edges_are_an_argsort(layer, sample):
    importance = edge_importance(layer, sample).numpy()
    pairs = [(i, j) for j in range(4) for i in range(3)]
    expected = sorted(pairs, key=lambda e: -importance[e[1], e[0]])[:5]
    assert figures.top_edges(importance, 5) == expected
    assert figures.top_edges(torch.as_tensor(importance), 100) == sorted(pairs, key=lambda e: -importance[e[1], e[0]])


def test_heatmap_holds_the_importance(layer, sample):
    importance = edge_importance(layer, sample).numpy()
    heatmap = figures.importance_heatmap(importance, "layers.0")
    table = heatmap.dframe()
    assert len(table) == importance.size
    assert np.array_equal(table["importance"], importance[table["j"], table["i"]])
    tips = hv.renderer("bokeh").get_plot(heatmap).handles["hover"].tooltips
    assert [name for name, _ in tips] == ["input i", "output j", "importance"]


def test_curve_table_is_the_closed_form(layer, sample):
    edges = [(2, 3), (0, 1)]
    table = figures.curve_table(layer, edges, points=50, inputs=sample, index=1)
    assert list(table.columns) == ["layer", "i", "j", "variable", "x", "base", "spline", "total"]
    assert len(table) == 100 and (table["layer"] == 1).all() and (table["variable"] == "x").all()
    for (i, j), rows in table.groupby(["i", "j"], sort=False):
        x = rows["x"].to_numpy()
        low, high = min(-2.0, sample[:, i].min().item()), max(2.0, sample[:, i].max().item())
        assert np.isclose(x[0], low) and np.isclose(x[-1], high) and np.all(np.diff(x) > 0)
        for part in ("base", "spline", "total"):
            assert np.allclose(rows[part], layer.closed_form(i, j, x, part), atol=1e-5)


def test_curve_panels_draw_the_edge_functions(layer, sample):
    figure = figures.edge_curves(layer, [(1, 2), (0, 1)], sample, parts=("base", "spline"), index=0)
    assert len(figure) == 2
    for panel, (i, j) in zip(figure.values(), [(1, 2), (0, 1)]):
        curves = {c.label: c for c in lines(panel)}
        assert set(curves) == {"total", "base", "spline"}
        for part, curve in curves.items():
            x = curve.dimension_values(0)
            assert np.allclose(curve.dimension_values(1), layer.closed_form(i, j, x, part), atol=1e-5)
    first, symbolic = figure.values()
    assert (first.label, symbolic.label) == ("phi[0](1 -> 2)", "phi[0](0 -> 1), symbolic: sin")
    for backend in ("bokeh", "matplotlib"):
        assert style(lines(first)[0], backend)["color"] == figures.COLORS["numeric"]
        assert style(lines(symbolic)[0], backend)["color"] == figures.COLORS["symbolic"]


def test_histogram_and_knots_behind_each_curve(layer, sample):
    panel = figures.edge_curves(layer, [(2, 0)], sample, bins=12).values()[0]
    area = histogram(panel)
    x, tops, floor, count = (area.dimension_values(d) for d in range(4))
    data = sample[:, 2].numpy()
    counts, edges = np.histogram(data, bins=12, range=(min(-2, data.min()), max(2, data.max())))
    assert np.array_equal(count[::2], counts) and np.array_equal(count[1::2], counts)   # a step per bin
    assert (count >= 0).all()                                                  # a distribution: never below 0
    assert np.allclose(x, np.repeat(edges, 2)[1:-1], atol=1e-5)
    phi = lines(panel)[0].dimension_values(1)
    low, high = phi.min(), phi.max()
    span = high - low
    # its own strip below the curve: the floor flat, every bar between the floor and the strip's top,
    # which lies below the knot ticks, which lie below the curve: nothing of it reads as a phi value
    assert np.allclose(floor, low - 0.42 * span) and (tops >= floor).all()
    assert np.isclose(tops.max(), low - 0.12 * span) and tops.max() < low - 0.06 * span
    assert np.allclose((tops - floor) / (tops.max() - floor[0]), count / counts.max())
    tick_x, tick_y = (knots(panel).dimension_values(d).reshape(-1, 3) for d in (0, 1))   # (k, below), (k, low)
    assert np.allclose(tick_x[:, 0], KNOTS) and np.allclose(tick_x[:, 1], KNOTS) and np.isnan(tick_x[:, 2]).all()
    assert np.allclose(tick_y[:, 0], low - 0.06 * span) and np.allclose(tick_y[:, 1], low)
    # the phi axis ticks stay on the curve's range, never on the strip
    for backend in ("bokeh", "matplotlib"):
        options = hv.Store.lookup_options(backend, panel, "plot").kwargs
        assert all(low - 1e-9 <= t <= high + 1e-9 for t in options["yticks"]) and len(options["yticks"]) >= 2
        assert options["ylim"][0] < floor[0] and options["ylim"][1] > high
    assert style(area, "bokeh")["line_alpha"] == 0 and style(area, "matplotlib")["linewidth"] == 0


def test_no_sample_draws_an_empty_strip(layer):
    panel = figures.edge_curves(layer, [(0, 0)]).values()[0]
    assert len(histogram(panel)) == 0
    figures.bokeh_small_multiples(figures.edge_curves(layer, [(0, 0)]))
    export(figures.edge_curves(layer, [(0, 0)]), Path(tempfile.mkdtemp()) / "curves.svg", dpi=60)


def test_symbolic_fit_is_dashed_over_the_curve(layer, sample):
    panel = figures.edge_curves(layer, [(0, 1)], sample, symbolic_fits={(0, 1): Fit()}).values()[0]
    total, fit = lines(panel)
    assert fit.label == "1.5*sin(x)" and total.label == "total"
    expected, drawn_fit = 1.5 * np.sin(fit.dimension_values(0).astype(float)), fit.dimension_values(1)
    phi = total.dimension_values(1)
    margin = 0.05 * (phi.max() - phi.min())                 # the fit is cut where it leaves the panel
    inside = (expected >= phi.min() - margin) & (expected <= phi.max() + margin)
    assert 0 < inside.sum() < len(inside) and np.array_equal(np.isfinite(drawn_fit), inside)
    assert np.allclose(drawn_fit[inside], expected[inside])
    assert style(fit, "bokeh")["line_dash"] == "dashed" and style(fit, "matplotlib")["linestyle"] == "--"


def test_other_variables_name_the_axis():
    layer, x = SquashedSpline(2, 2), torch.linspace(-3, 3, 200)[:, None].repeat(1, 2)
    panel = figures.edge_curves(layer, [(1, 0)], x, bins=10).values()[0]
    base, spline = lines(panel)                 # parts on different axes are drawn apart, with no total
    assert (base.label, spline.label) == ("base", "spline")
    assert base.kdims[0].label == "x (base), tanh(x) (spline)"
    t = base.dimension_values(0)
    edge = np.tanh(3.0)                         # the domain [-0.5, 0.5] widened to the sample's tanh(x)
    assert np.isclose(t[0], -edge) and np.isclose(t[-1], edge)
    assert np.allclose(base.dimension_values(1), layer.w[1, 0] * np.sin(t), atol=1e-5)
    assert np.allclose(spline.dimension_values(1), layer.v[1, 0] * t ** 2, atol=1e-5)
    count = histogram(panel).dimension_values("count")
    squashed = torch.tanh(x[:, 1]).numpy()
    counts = np.histogram(squashed, bins=10, range=(min(-0.5, squashed.min()), max(0.5, squashed.max())))[0]
    assert np.array_equal(count[::2], counts)
    squashed_only = AllSquashed(2, 2)
    assert lines(figures.edge_curves(squashed_only, [(0, 0)]).values()[0])[0].kdims[0].label == "tanh(x)"
    assert set(figures.curve_table(squashed_only, [(0, 0)], points=5)["variable"]) == {"tanh(x)"}


def test_non_separable_layers_show_conditional_curves():
    panel = figures.edge_curves(Probed(2, 2), [(0, 0)]).values()[0]
    assert panel.label == "conditional curve phi[0](0 -> 0)"


def test_bad_choices_say_what_to_do(layer):
    with pytest.raises(NetatlasError, match="choose i < 3"):
        figures.edge_curves(layer, [(3, 0)])
    with pytest.raises(NetatlasError, match="choose among base, spline"):
        figures.edge_curves(layer, [(0, 0)], parts=("rbf",))
    with pytest.raises(NetatlasError, match="at least one edge"):
        figures.curve_table(layer, [])


def network(*widths: int) -> KANNetwork:
    layers = [SineSquare(a, b, seed=k) for k, (a, b) in enumerate(zip(widths, widths[1:]))]
    return KANNetwork("toy", layers, [f"layers.{k}" for k in range(len(layers))])


def drawn(overlay: hv.Overlay) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, hv.Points]:
    (edges, curves), (boxes,), (nodes,) = (elements(overlay, t) for t in (hv.Segments, hv.Rectangles, hv.Points))
    return edges.dframe(), curves.dframe(), boxes.dframe(), nodes


def importances(net: KANNetwork, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [edge_importance(layer, x) for layer, x in zip(net.layers, inputs)]


def test_network_is_drawn_as_pykan_draws_it(sample):
    net = network(3, 4, 2)
    inputs = net.layer_inputs(sample)
    importance = importances(net, inputs)
    edges, curves, boxes, nodes = drawn(figures.network_figure(net, inputs, importance, points=30))
    assert len(nodes) == 3 + 4 + 2 and set(nodes.dimension_values("y")) == {0, 1, 2}
    assert len(edges) == 2 * (12 + 8) and len(boxes) == 20 and len(curves) == 20 * 29
    for (level, i, j), segments in curves.groupby(["layer", "i", "j"]):
        layer, score = net.layers[level], importance[level][j, i].item()
        assert np.allclose(segments["alpha"], np.tanh(3 * score))
        assert (segments["color"] == figures.COLORS["symbolic" if (i, j) == (0, 1) else "numeric"]).all()
        # the drawing in the box is the edge's curve over its range, rescaled: an exact affine image
        x, y = (np.append(segments[f"{a}0"], segments[f"{a}1"].iloc[-1]) for a in "xy")
        low, high = min(-2, inputs[level][:, i].min().item()), max(2, inputs[level][:, i].max().item())
        phi = layer.closed_form(i, j, low + (x - x[0]) / (x[-1] - x[0]) * (high - low))
        affine = np.polyfit(phi, y, 1)
        assert affine[0] > 0 and np.allclose(np.polyval(affine, phi), y, atol=1e-6)
        box = boxes.query(f"layer == {level} and i == {i} and j == {j}").iloc[0]
        assert box.x0 < x.min() < x.max() < box.x1 and box.y0 < y.min() < y.max() < box.y1
        wires = edges.query(f"layer == {level} and i == {i} and j == {j}")   # node i -> box -> node j
        assert np.allclose(wires[["y0", "y1"]].to_numpy().ravel(), [level, box.y0, box.y1, level + 1])
        assert np.isclose(wires.x0.iloc[0], (i + 0.5) / layer.in_dim)
        assert np.isclose(wires.x1.iloc[1], (j + 0.5) / layer.out_dim)


def test_wide_layers_draw_only_their_top_edges():
    net = network(10, 12, 1)
    inputs = net.layer_inputs(torch.randn(64, 10, generator=torch.Generator().manual_seed(2)))
    importance = importances(net, inputs)
    figure = figures.network_figure(net, inputs, importance, max_edges=16, points=10)
    edges, curves, boxes, _ = drawn(figure)
    assert boxes.groupby("layer").size().tolist() == [16, 12]           # 120 edges capped, 12 all drawn
    assert len(curves) == 28 * 9 and len(edges) == 56
    chosen = set(zip(boxes.query("layer == 0").i, boxes.query("layer == 0").j))
    scores = importance[0].numpy()
    best = np.argsort(-scores.ravel())[:16]
    assert chosen == {(i, j) for j, i in zip(*np.unravel_index(best, scores.shape))}
    assert "top 16 edges" in figure.opts.get().kwargs["title"]


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_every_figure_exports(fmt, layer, sample, tmp_path):
    net = network(3, 4, 2)
    inputs = net.layer_inputs(sample)
    importance = importances(net, inputs)
    built = {"network": figures.network_figure(net, inputs, importance),
             "heatmap": figures.importance_heatmap(importance[0], "layers.0"),
             "curves": figures.edge_curves(layer, [(0, 1), (2, 3), (1, 0)], sample, parts=("base",),
                                           symbolic_fits={(0, 1): Fit()}, columns=2)}
    for name, figure in built.items():
        data = export(figure, tmp_path / f"{name}.{fmt}", dpi=60).read_bytes()
        if fmt == "svg":
            assert ET.fromstring(data).tag.endswith("svg")
        else:
            assert data.startswith(b"%PDF" if fmt == "pdf" else b"\x89PNG\r\n\x1a\n")


def test_figures_render_in_the_page(layer, sample):
    net = network(3, 4, 2)
    importance = importances(net, net.layer_inputs(sample))
    renderer = hv.renderer("bokeh")
    plot = renderer.get_plot(figures.network_figure(net, None, importance))
    boxes = next(r.data_source.data for r in plot.state.renderers if "importance" in r.data_source.data)
    assert np.allclose(boxes["line_alpha"], np.tanh(3 * np.asarray(boxes["importance"])))
    assert plot.state.frame_width > 0
    renderer.get_plot(figures.edge_curves(layer, [(0, 0), (1, 1)], sample))


@pytest.mark.parametrize("backend", ["bokeh", "matplotlib"])
def test_each_panel_keeps_its_own_axes(backend, layer, sample):
    """Panels differ in range (x: each input's, y: each curve's); neither renderer may share them."""
    figure = figures.edge_curves(layer, [(0, 0), (2, 3)], sample, bins=8)
    plot = hv.renderer(backend).get_plot(figure)
    subplots = [p.subplots["main"] for p in plot.subplots.values()]
    for panel, subplot in zip(figure.values(), subplots):
        x, phi = lines(panel)[0].dimension_values(0), lines(panel)[0].dimension_values(1)
        if backend == "bokeh":
            xlim = subplot.handles["x_range"].start, subplot.handles["x_range"].end
            ylim = subplot.handles["y_range"].start, subplot.handles["y_range"].end
        else:
            xlim, ylim = subplot.handles["axis"].get_xlim(), subplot.handles["axis"].get_ylim()
        assert np.allclose(xlim, (x[0], x[-1]), atol=1e-5)
        tick_bottom = phi.min() - 0.06 * (phi.max() - phi.min())
        assert ylim[0] < tick_bottom < phi.max() < ylim[1] < phi.max() + 0.1 * (phi.max() - tick_bottom)



def test_the_page_draws_the_same_small_multiples_with_bokeh(layer, sample):
    figure = figures.edge_curves(layer, [(1, 2), (0, 1)], sample, parts=("base",), symbolic_fits={(0, 1): Fit()})
    grid = figures.bokeh_small_multiples(figure, columns=1)
    plots = [plot for plot, _row, _col in grid.children]
    assert [p.title.text for p in plots] == ["phi[0](1 -> 2)", "phi[0](0 -> 1), symbolic: sin"]
    for plot, panel, (i, j) in zip(plots, figure.values(), [(1, 2), (0, 1)]):
        (strip,) = [r for r in plot.renderers if isinstance(r.glyph, VArea)]
        drawn = {r.glyph.line_color: r for r in plot.renderers if r is not strip}
        assert len(drawn) + 1 == len(panel.values())                   # histogram, knots, total, base (, fit)
        area = histogram(panel)
        for name, d in (("x", 0), ("y2", 1), ("y1", 2)):
            np.testing.assert_array_equal(strip.data_source.data[name], area.dimension_values(d))
        for curve in [knots(panel), *lines(panel)]:
            line = drawn[figures._LINES[curve.group][0]].data_source.data
            np.testing.assert_array_equal(line["x"], curve.dimension_values(0))
            np.testing.assert_array_equal(line["y"], curve.dimension_values(1))
        options = hv.Store.lookup_options("bokeh", panel, "plot").kwargs     # the same axes as the files
        assert (plot.y_range.start, plot.y_range.end) == options["ylim"]
        assert plot.yaxis[0].ticker.ticks == options["yticks"]
        # the wheel scrolls the page: wheel zoom in the toolbar, not active
        assert plot.toolbar.active_scroll is None and any(isinstance(t, WheelZoomTool) for t in plot.tools)
        total = next(c for c in panel.values() if c.label == "total")
        x = total.dimension_values(0)
        assert np.allclose(total.dimension_values(1), layer.closed_form(i, j, x, "total"), atol=1e-5)
        assert (plot.x_range.start, plot.x_range.end) == (x[0], x[-1])
        hovered = [r for tool in plot.tools if isinstance(tool, HoverTool) for r in tool.renderers]
        assert [r.glyph.line_color for r in hovered] == [figures._LINES[total.group][0]]
    fit = drawn[figures.COLORS["fit"]]
    assert fit.glyph.line_dash == [6] or fit.glyph.line_dash == "dashed"
    # the legend (total, base, the fit) sits below the panel, never over the curves
    assert not [r for r in plots[1].center if isinstance(r, Legend)]
    (legend,) = [r for r in plots[1].below if isinstance(r, Legend)]
    assert [item.label.value for item in legend.items] == ["total", "base", "1.5*sin(x)"]
    assert grid.toolbar.active_scroll is None


# ----------------------------------------------------------------------------- defined numbers only

class Reciprocal(SineSquare):
    """phi_ij(x) = w_ij / x: no value at x = 0 (torch gives inf there)."""

    parts = (Part("base"),)

    def part_values(self, part: str, t: torch.Tensor) -> torch.Tensor:
        return (1 / t)[..., None] * torch.as_tensor(self.w, dtype=t.dtype)

    def closed_form(self, i: int, j: int, x: np.ndarray, part: str = "total") -> np.ndarray:
        with np.errstate(divide="ignore"):
            return self.w[i, j] / x.astype(np.float64)


def test_curve_table_leaves_a_pole_empty_never_inf():
    layer = Reciprocal(2, 2)
    table = figures.curve_table(layer, [(0, 1), (1, 0)], points=201)   # x = -2 .. 2 passes through 0
    at_pole = table["x"] == 0
    assert at_pole.sum() == 2 and table.loc[at_pole, "total"].isna().all()
    elsewhere = table[~at_pole]
    want = [layer.closed_form(int(r.i), int(r.j), np.array([r.x]))[0] for r in elsewhere.itertuples()]
    np.testing.assert_allclose(elsewhere["total"], want, rtol=1e-5)
    text = table.to_csv(index=False)
    assert "inf" not in text.lower() and "nan" not in text.lower()


def test_one_input_sample_is_replaced_for_importance_and_said_so():
    """A standard deviation over one input is undefined (torch: NaN); the analysis says so and measures
    the spread on the uniform sample instead, which the importance then matches."""
    from netatlas.backend.kan.analysis import UNIFORM_SAMPLE, analyze

    net = network(2, 3, 1)
    analysis = analyze(net, torch.tensor([[0.3, -0.2]]))
    assert "the sample has 1 input, too few to measure a spread" in analysis.sample_note
    assert len(analysis.inputs[0]) == UNIFORM_SAMPLE
    for layer, x, scores in zip(net.layers, analysis.inputs, analysis.importance):
        assert torch.isfinite(scores).all()
        np.testing.assert_allclose(scores.numpy(), edge_importance(layer, x).numpy())
    uniform = analyze(net, None)
    for ours, theirs in zip(analysis.importance, uniform.importance):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy())


# ----------------------------------------------------------------------------- what the page shows

def test_heatmap_ticks_are_edge_indices_and_its_title_fits(layer, sample):
    importance = edge_importance(layer, sample).numpy()                # 4 outputs x 3 inputs
    heatmap = figures.importance_heatmap(importance, "layer 0 (act_fun.0: 2 -> 1)")
    plot = hv.renderer("bokeh").get_plot(heatmap).state
    assert plot.xaxis[0].ticker.ticks == [0, 1, 2] and plot.yaxis[0].ticker.ticks == [0, 1, 2, 3]
    assert plot.title.text == "Edge importance, layer 0 (act_fun.0: 2 -> 1)"
    assert plot.toolbar.active_scroll is None and any(isinstance(t, WheelZoomTool) for t in plot.tools)
    wide = figures.importance_heatmap(np.zeros((64, 100)), "a.very.long.module.path.inside.a.model (100 -> 64)")
    options = hv.Store.lookup_options("bokeh", wide, "plot").kwargs
    assert len(options["xticks"]) <= 10 and all(isinstance(t, int) for t in options["xticks"] + options["yticks"])
    assert len(options["title"]) <= 48 and options["title"].endswith("…")
    assert figures.integer_ticks(1) == [0] and figures.integer_ticks(25) == [0, 3, 6, 9, 12, 15, 18, 21, 24]


def test_network_hover_names_the_edge_not_the_drawing(sample):
    net = network(3, 4, 2)
    importance = importances(net, net.layer_inputs(sample))
    plot = hv.renderer("bokeh").get_plot(figures.network_figure(net, None, importance)).state
    tips = [tool.tooltips for tool in plot.tools if isinstance(tool, HoverTool)]
    assert figures.EDGE_TOOLTIPS in tips and figures.NODE_TOOLTIPS in tips
    assert len(tips) == 2                                    # the boxes (edges) and the nodes; nothing else
    shown = " ".join(f"{name} {value}" for tip in tips for name, value in tip)
    for internal in ("x0", "y0", "x1", "y1", "alpha", "color"):
        assert internal not in shown
    assert dict(figures.EDGE_TOOLTIPS) == {"layer": "@{layer}", "edge": "input @{i} → output @{j}",
                                            "importance": "@{importance}{0.000}"}
    assert plot.toolbar.active_scroll is None and any(isinstance(t, WheelZoomTool) for t in plot.tools)


def test_kan_tab_says_what_it_will_show_and_fits_every_drawn_edge_as_the_cli(tmp_path):
    """Before Open: a placeholder and no download; after: the drawing; Suggest formula fits every drawn
    edge, with the formulas ``netatlas kan --suggest`` finds for the same edges."""
    import csv

    from netatlas.app.config import AppConfig
    from netatlas.app.kan_view import KANView
    from netatlas.app.state import AppState
    from netatlas.backend.demo import assets_dir
    from netatlas.backend.roots import AllowedRoots
    from netatlas.cli import main

    view = KANView(AppState(AppConfig(roots=AllowedRoots.of(assets_dir()))))
    assert view.placeholder.visible and "Open KAN" in view.placeholder.object
    assert "about 2 s on the demo" in view.placeholder.object
    assert all(b.disabled for b in (*view.downloads, view.csv, view.suggest_button))
    assert not view.controls.visible and not view.edge_tools.visible     # no empty controls before Open
    run_coroutine(view._on_open())
    assert view.analysis is not None and not view.placeholder.visible
    assert view.controls.visible and view.edge_tools.visible
    assert not any(b.disabled for b in (*view.downloads, view.csv, view.suggest_button))

    for layer in (0, 1):
        view.layer.value = layer
        drawn = view.edges()
        run_coroutine(view._on_suggest())
        assert {(i, j) for (l, i, j) in view.fits if l == layer} == set(drawn)
        for i, j in drawn:
            assert f"| {i} → {j} | `{view.fits[(layer, i, j)].expression()}`" in view.formulas.object
    assert main(["kan", "demo", "-o", str(tmp_path), "--suggest", "--format", "svg"]) == 0
    best = {(int(r["layer"]), int(r["i"]), int(r["j"])): r["formula"]
            for r in csv.DictReader((tmp_path / "formulas.csv").open(encoding="utf-8")) if r["rank"] == "1"}
    assert best == {key: fit.expression() for key, fit in view.fits.items()}
