"""The KAN tab: open a KAN checkpoint, see its network, each layer's edge importance and edge curves,
fit formulas to an edge, export figures and curve values."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import holoviews as hv
import pandas as pd
import panel as pn
import param

from netatlas.app.layout import beside_inputs, field
from netatlas.app.state import AppState
from netatlas.backend.kan.analysis import KANAnalysis, analyze
from netatlas.backend.kan.checkpoint import is_kan_checkpoint, read_kan
from netatlas.backend.kan.demo import demo_kan, demo_samples
from netatlas.backend.kan.families import families, parse_options
from netatlas.backend.kan.symbolic import FormulaFit
from netatlas.backend.errors import NetatlasError
from netatlas.viz.kan import bokeh_small_multiples, curve_table, edge_curves, importance_heatmap, network_figure, top_edges
from netatlas.viz.styling import EXPORT_FORMATS, export

AUTO = "detect from the keys"
OWN_SAMPLE = "the checkpoint's own (pykan cache_data), else uniform"
SAMPLE_SUFFIXES = frozenset({".npy", ".npz", ".csv", ".pt"})
MAX_LISTED = 2000      # edges offered in the picker, most important first; a heatmap tap picks any other
ABOUT = ("A Kolmogorov-Arnold network computes y_j = Σ_i φ_ij(x_i) + c_j in every layer. The network "
         "draws each edge's learned function φ_ij with alpha = tanh(3 · importance), as pykan does "
         "(importance: the spread of φ_ij over the sample, over the spread of its input). Pick edges in "
         "the heatmap (tap a cell) or the list; under each curve, a grey strip is the histogram of its input "
         "over the sample and the ticks are the knots.")
PLACEHOLDER = ("**Nothing opened yet.** Press *Open KAN* to read the chosen checkpoint (or the pykan demo) and draw "
               "the network with every edge's learned function, each layer's edge importance as a heatmap, and the "
               "curves of its most important edges: about {seconds} on the demo, longer for a wide KAN. "
               "*Suggest formula* then fits a formula to every drawn edge (about 0.2 s per edge).")
DEMO_SECONDS = "2 s"


class KANView(pn.viewable.Viewer):
    """Reads one KAN per Open; every control change redraws from that analysis."""

    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        self.analysis: KANAnalysis | None = None
        self.fits: dict[tuple[int, int, int], FormulaFit] = {}
        self.checkpoint = pn.widgets.Select(name="KAN checkpoint", sizing_mode="stretch_width",
                                            css_classes=["na-kan-checkpoint"])
        self.family = pn.widgets.Select(name="Family", options=[AUTO, *families()], value=AUTO, width=220,
                                        css_classes=["na-kan-family"])
        self.options = pn.widgets.TextInput(name="Family options (what the keys do not store)",
                                            placeholder="e.g. k=3, g=5", sizing_mode="stretch_width",
                                            css_classes=["na-kan-options"])
        self.sample = pn.widgets.Select(name="Sample inputs", sizing_mode="stretch_width")
        self.open_button = pn.widgets.Button(name="Open KAN", button_type="primary", width=140,
                                             css_classes=["na-kan-open"])
        self.layer = pn.widgets.Select(name="Layer", options={}, width=260, css_classes=["na-kan-layer"])
        self.mode = pn.widgets.RadioButtonGroup(options=["top edges", "picked edges"], value="top edges",
                                                button_type="primary", button_style="outline")
        self.top = pn.widgets.IntSlider(name="Top edges", start=1, end=64, value=16, width=200,
                                        css_classes=["na-kan-top"])
        self.parts = pn.widgets.Checkbox(name="Show base and spline parts separately", value=False)
        self.picked = pn.widgets.MultiChoice(name="Picked edges (i → j)", options=[], sizing_mode="stretch_width",
                                             css_classes=["na-kan-picked"])
        self.suggest_button = pn.widgets.Button(name="Suggest formula", button_type="primary", width=160,
                                                css_classes=["na-kan-suggest"])
        self.fmt = pn.widgets.RadioButtonGroup(options=list(EXPORT_FORMATS), value="svg", button_type="primary",
                                               button_style="outline")
        self.summary = pn.pane.Markdown(ABOUT, sizing_mode="stretch_width", css_classes=["na-kan-summary"])
        self.placeholder = pn.pane.Alert(PLACEHOLDER.format(seconds=DEMO_SECONDS), alert_type="light",
                                         sizing_mode="stretch_width", css_classes=["na-kan-placeholder"])
        self.ranked: dict[tuple[int, int, int], list[FormulaFit]] = {}
        self.formulas = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["na-kan-formulas"])
        self.network_pane = pn.pane.HoloViews(None, css_classes=["na-kan-network"])
        self.heatmap_pane = pn.pane.HoloViews(None, css_classes=["na-kan-heatmap"])
        self.curves_pane = pn.pane.Bokeh(None, css_classes=["na-kan-curves"])
        self.downloads = [pn.widgets.FileDownload(callback=pn.bind(self._export, figure=name), filename=f"kan_{name}",
                                                  label=f"Download {name}", button_type="light", width=170,
                                                  css_classes=[f"na-kan-download-{name}"])
                          for name in ("network", "heatmap", "curves")]
        self.csv = pn.widgets.FileDownload(callback=self._csv, filename="kan_curves.csv", label="Curve values (CSV)",
                                           button_type="light", width=170, css_classes=["na-kan-download-csv"])
        for button in (*self.downloads, self.csv, self.suggest_button):   # nothing to save or fit before Open
            button.disabled = True
        self.controls = pn.Row(self.layer, field("Curves of", self.mode),
                               self.top, self.parts, sizing_mode="stretch_width", visible=False)
        self.edge_tools = pn.Column(self.picked, self.suggest_button, self.formulas, sizing_mode="stretch_width",
                                    visible=False)                      # shown with the KAN they act on
        self.open_button.on_click(self._on_open)
        self.suggest_button.on_click(self._on_suggest)
        self._updating = False
        self.picked.param.watch(self._on_picked, "value")     # first: it sets the mode the redraw reads
        self.layer.param.watch(lambda _e: self._updating or self._on_layer(), "value")
        for widget in (self.mode, self.top, self.parts, self.picked):
            widget.param.watch(lambda _e: self._updating or self.redraw_curves(), "value")
        self.checkpoint.param.watch(lambda _e: self._pair_sample(), "value")
        self.fmt.param.watch(lambda _e: self._name_downloads(), "value")
        state.param.watch(lambda e: setattr(self.open_button, "disabled", e.new), "busy")
        self._name_downloads()
        self.scan()

    # ---- choosing what to open -----------------------------------------------------------------
    def scan(self) -> None:
        """KAN checkpoints and sample files under the allowed roots (the demo KANs live in assets/)."""
        files = self.state.config.roots.files()
        kans = [p for p in files if (p.suffix in {".pt", ".pth", ".bin", ".ckpt", ".safetensors"}
                                     or p.name.endswith("_state")) and is_kan_checkpoint(p)]
        self.checkpoint.options = {_label(p): str(p) for p in kans}
        samples = [p for p in files if p.suffix in SAMPLE_SUFFIXES and p not in kans or p.name.endswith("_cache_data")]
        self.sample.options = {OWN_SAMPLE: "", **{_label(p): str(p) for p in samples}}
        demo = str(demo_kan().resolve())
        if demo in self.checkpoint.options.values():
            self.checkpoint.value = demo
        self._pair_sample()

    def _pair_sample(self) -> None:
        """A demo checkpoint without a sample of its own opens with the sample shipped beside it."""
        paired = {str(c.resolve()): str(s.resolve()) for c, s in demo_samples().items()}.get(self.checkpoint.value)
        self.sample.value = paired if paired in self.sample.options.values() else ""

    def _on_picked(self, event: param.parameterized.Event) -> None:
        """Picking an edge shows the picked edges; the picker's own watcher then redraws once."""
        if event.new and not self._updating:
            with self._quiet():
                self.mode.value = "picked edges"

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Widgets updated together redraw once, after: Panel still syncs each one to the page."""
        self._updating = True
        try:
            yield
        finally:
            self._updating = False

    async def _on_open(self, _event=None) -> None:
        if not self.checkpoint.value:
            self.state.error("No KAN checkpoint under the readable folders; start the server with --root")
            return
        try:
            roots = self.state.config.roots
            path = roots.check(self.checkpoint.value)
            sample = roots.check(self.sample.value) if self.sample.value else None
            family = None if self.family.value == AUTO else self.family.value
            options = parse_options(self.options.value.replace(";", ",").split(","))
        except NetatlasError as exc:
            self.state.error(str(exc))
            return
        analysis = await self.state.run(f"Opening {path.name}", lambda _progress: analyze(
            read_kan(path, family=family, options=options, sample=sample, trust_pickle=self.state.config.trust_pickle)))
        if analysis is None:
            return
        self.show(analysis, path)

    def show(self, analysis: KANAnalysis, path: Path) -> None:
        """Draw an analysed KAN read from ``path``: its network, the first layer's heatmap and curves."""
        self.analysis, self.fits, self.ranked = analysis, {}, {}
        self.placeholder.visible, self.controls.visible, self.edge_tools.visible = False, True, True
        for button in (*self.downloads, self.csv, self.suggest_button):
            button.disabled = False
        with self._quiet():
            self.layer.param.update(options={analysis.layer_label(i): i for i in range(len(analysis.network.layers))},
                                    value=0)
        self._on_layer()
        self.network_pane.object = network_figure(analysis.network, analysis.inputs, analysis.importance)
        network = analysis.network
        notes = "".join(f"\n\n*note: {n}*" for n in network.notes)
        self.summary.object = (f"{ABOUT}\n\n**{path.name}** · family **{network.family}** · widths "
                               f"{' → '.join(map(str, network.widths))} · {analysis.sample_note}{notes}")

    # ---- drawing -------------------------------------------------------------------------------
    def _on_layer(self) -> None:
        if self.analysis is None or self.layer.value is None:
            return
        index = self.layer.value
        layer, importance = self.analysis.network.layers[index], self.analysis.importance[index]
        with self._quiet():
            self.picked.param.update(options=[_edge_label(i, j) for i, j in top_edges(importance, MAX_LISTED)],
                                     value=[])
            self.mode.value = "top edges"
            self.top.param.update(end=max(1, min(64, layer.in_dim * layer.out_dim)),
                                  value=min(self.top.value, layer.in_dim * layer.out_dim))
        heatmap = importance_heatmap(importance, self.analysis.layer_label(index))
        tap = hv.streams.Tap(source=heatmap)
        tap.add_subscriber(self._on_tap)
        self.heatmap_pane.object = heatmap
        self.redraw_curves()

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        """A tap on heatmap cell (in = x, out = y) adds that edge to the picked ones."""
        if self.analysis is None or x is None or y is None:
            return
        layer = self.analysis.network.layers[self.layer.value]
        i, j = int(round(float(x))), int(round(float(y)))   # categorical axes give the labels
        label = _edge_label(i, j)
        if 0 <= i < layer.in_dim and 0 <= j < layer.out_dim and label not in self.picked.value:
            if label not in self.picked.options:      # beyond the listed top edges: list it too
                self.picked.options = [*self.picked.options, label]
            self.picked.value = [*self.picked.value, label]

    def edges(self) -> list[tuple[int, int]]:
        """The edges the curves show: the top ones by importance, or the picked ones."""
        if self.mode.value == "picked edges":
            return [_parse_edge(label) for label in self.picked.value]
        return top_edges(self.analysis.importance[self.layer.value], self.top.value)

    def curves_figure(self) -> hv.core.Dimensioned | None:
        if self.analysis is None or not self.edges():
            return None
        index = self.layer.value
        fits = {(i, j): fit for (l, i, j), fit in self.fits.items() if l == index}
        parts = tuple(p.name for p in self.analysis.network.layers[index].parts) if self.parts.value else ()
        return edge_curves(self.analysis.network.layers[index], self.edges(), self.analysis.inputs[index],
                           parts=parts, symbolic_fits=fits, index=index)

    def redraw_curves(self) -> None:
        if self.analysis is not None:
            figure = self.curves_figure()
            self.curves_pane.object = None if figure is None else bokeh_small_multiples(figure)
            self.formulas.object = self.formulas_text(self.layer.value, self.edges())   # the drawn edges' fits

    async def _on_suggest(self, _event=None) -> None:
        """Fit c·f(a·x+b)+d to every drawn edge (as the CLI's ``kan --suggest``) and list the best formulas."""
        if self.analysis is None or not self.edges():
            self.state.error("Open a KAN and pick an edge first")
            return
        analysis, index, edges = self.analysis, self.layer.value, self.edges()
        todo = [edge for edge in edges if (index, *edge) not in self.ranked]

        def fit_all(progress) -> dict[tuple[int, int], list[FormulaFit]]:
            ranked = {}
            for done, edge in enumerate(todo):
                progress(done, len(todo))
                ranked[edge] = analysis.suggest(index, edge)
            return ranked

        ranked = await self.state.run(f"Fitting formulas to {len(edges)} edge{'s' * (len(edges) != 1)}", fit_all)
        if ranked is None or analysis is not self.analysis:   # failed, or another KAN was opened meanwhile
            return
        for (i, j), fits in ranked.items():
            if fits:
                self.ranked[(index, i, j)], self.fits[(index, i, j)] = fits, fits[0]
        self.redraw_curves()

    def formulas_text(self, index: int, edges: list[tuple[int, int]]) -> str:
        """The best formula of every fitted edge in a table, each edge's full ranking folded below it."""
        fitted = [(i, j, self.ranked[(index, i, j)]) for i, j in edges if (index, i, j) in self.ranked]
        if not fitted:
            return ""
        best = [f"| {i} → {j} | `{r[0].expression()}` | {r[0].r2:.4f} | {r[0].complexity} | {r[0].note} |"
                for i, j, r in fitted]
        lines = [f"**Layer {index}: the best formula of each of its {len(fitted)} drawn edges**, ranked by fit and "
                 "simplicity (as pykan's auto_symbolic and `netatlas kan --suggest`):", "",
                 "| edge | formula | R² | complexity | note |", "|---|---|---|---|---|", *best, ""]
        for i, j, ranked in fitted:
            rows = "".join(f"<tr><td>{n + 1}</td><td><code>{f.expression()}</code></td><td>{f.r2:.4f}</td>"
                           f"<td>{f.complexity}</td><td>{f.note}</td></tr>" for n, f in enumerate(ranked))
            lines.append(f"<details><summary>Edge {i} → {j}: every formula tried</summary><table><thead><tr>"
                         "<th>rank</th><th>formula</th><th>R²</th><th>complexity</th><th>note</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table></details>")
        return "\n".join(lines)

    # ---- exports -------------------------------------------------------------------------------
    def _name_downloads(self) -> None:
        for button, name in zip(self.downloads, ("network", "heatmap", "curves")):
            button.filename = f"kan_{name}.{self.fmt.value}"

    def _export(self, figure: str) -> io.BytesIO | None:
        if self.analysis is None:
            self.state.error("Open a KAN first")
            return None
        objects = {"network": self.network_pane.object, "heatmap": self.heatmap_pane.object,
                   "curves": self.curves_figure()}
        if objects[figure] is None:
            self.state.error("Nothing to export: pick an edge first")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = export(objects[figure], Path(tmp) / f"kan_{figure}.{self.fmt.value}")
            return io.BytesIO(path.read_bytes())

    def _csv(self) -> io.StringIO | None:
        if self.analysis is None or not self.edges():
            self.state.error("Open a KAN and pick an edge first")
            return None
        index = self.layer.value
        table = curve_table(self.analysis.network.layers[index], self.edges(), inputs=self.analysis.inputs[index],
                            index=index)
        return io.StringIO(table.to_csv(index=False))

    def __panel__(self) -> pn.viewable.Viewable:
        opener = pn.Row(self.checkpoint, self.family, self.sample, sizing_mode="stretch_width")
        exports = pn.Row(field("Export as", self.fmt), *map(beside_inputs, (*self.downloads, self.csv)),
                         sizing_mode="stretch_width")
        return pn.Column(self.summary, opener, pn.Row(self.options, beside_inputs(self.open_button),
                                                      sizing_mode="stretch_width"),
                         self.placeholder, self.network_pane, self.controls,
                         pn.Row(self.heatmap_pane, self.edge_tools, sizing_mode="stretch_width"),
                         self.curves_pane, exports, sizing_mode="stretch_width")

    @property
    def data(self) -> pd.DataFrame:
        """The drawn curves' values (the CSV download's table): one row per (edge, x) of the chosen layer with
        layer, i, j, variable, x, each part and the total; empty before a KAN is open."""
        import pandas as pd

        if self.analysis is None or self.layer.value is None or not self.edges():
            return pd.DataFrame()
        index = self.layer.value
        return curve_table(self.analysis.network.layers[index], self.edges(), inputs=self.analysis.inputs[index],
                           index=index)


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _edge_label(i: int, j: int) -> str:
    return f"{i} → {j}"


def _parse_edge(label: str) -> tuple[int, int]:
    i, j = label.split("→")
    return int(i), int(j)

