"""The Diagram tab: the loaded model as a neural circuit diagram, folded and opened at will, exported."""

from __future__ import annotations

import io
from pathlib import Path

import panel as pn
import param

from netatlas.app.layout import beside_inputs, field
from netatlas.app.state import AppState
from netatlas.backend.circuit.graph import Circuit, CircuitView
from netatlas.backend.workspace import Workspace
from netatlas.backend.errors import NetatlasError
from netatlas.viz.circuit import (FORMATS, DiagramStyle, export, parse_names, render, scrolling_svg, symbol_table,
                                  wrapped_svg)

ABOUT = ("Tensors are stacks of wires, one per axis, labelled with size symbols (hover a wire for sizes); "
         "boxes are operations, **bold** when learned (L+ = Linear with bias); a dot copies a tensor, "
         "**+** adds; fenced regions are modules, and a shaded fence marked **×N** stands for N identical "
         "blocks in a row (Abbott, *Neural Circuit Diagrams*, 2024).")


class DiagramView(pn.viewable.Viewer):
    """Traces the model once per workspace; every control change redraws from that circuit."""

    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        self.shown = False
        self.circuit: Circuit | None = None
        self.view: CircuitView | None = None
        self._tracing: Workspace | None = None
        self.depth = pn.widgets.IntSlider(name="Fold to depth (0: open every module)", start=0, end=4, value=0,
                                          width=240, css_classes=["na-fold-depth"])
        self.layout = pn.widgets.RadioButtonGroup(name="Layout", options={"left to right": "LR", "top down": "TB"},
                                                  value="LR", button_type="primary", button_style="outline")
        self.fold_repeats = pn.widgets.Checkbox(name="Fold repeated blocks (×N)", value=True)
        self.sizes = pn.widgets.Checkbox(name="Sizes on wires", value=False, css_classes=["na-sizes"])
        self.fit = pn.widgets.Checkbox(name="Fit to width (wrap into rows)", value=False, css_classes=["na-fit"])
        self.unfold = pn.widgets.MultiChoice(name="Open modules", options=[], sizing_mode="stretch_width",
                                             css_classes=["na-unfold"])
        self.unroll = pn.widgets.MultiChoice(name="Unroll folded blocks", options=[], sizing_mode="stretch_width",
                                             css_classes=["na-unroll"])
        self.names = pn.widgets.TextInput(name="Axis names", placeholder="D2=d_model, S=seq, C2=channels",
                                          sizing_mode="stretch_width", css_classes=["na-axis-names"])
        self.dpi = pn.widgets.IntInput(name="PNG dpi", value=200, start=50, end=1200, step=50, width=90,
                                      css_classes=["na-dpi"])
        self.downloads = [pn.widgets.FileDownload(
            callback=pn.bind(self._export, fmt=fmt), filename=f"diagram.{fmt}", button_type="light", width=130,
            label=f"Download {'TikZ' if fmt == 'tex' else fmt.upper()}", css_classes=[f"na-download-{fmt}"])
            for fmt in FORMATS]
        self.summary = pn.pane.Markdown(ABOUT, sizing_mode="stretch_width", css_classes=["na-diagram-summary"])
        self.legend = pn.pane.Markdown("", sizing_mode="stretch_width", css_classes=["na-diagram-legend"])
        # Natural size in a box with visible scrollbars (scrolling_svg), or wrapped into rows that fit the
        # pane's width at a readable scale (wrapped_svg), the pane scrolling down through them.
        self.figure = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-diagram"],
                                   styles={"overflow-y": "auto", "max-height": "80vh", "background": "white"})
        for widget in (self.depth, self.layout, self.fold_repeats, self.sizes, self.fit, self.unfold, self.unroll,
                       self.names):
            widget.param.watch(lambda _e: self.redraw(), "value")
        state.param.watch(self._on_workspace, "workspace")

    async def _on_workspace(self, _event: param.parameterized.Event) -> None:
        self.circuit = self.view = None
        self.figure.object = ""
        self.unfold.param.update(options=[], value=[])
        self.unroll.param.update(options=[], value=[])
        await self.activate()

    async def activate(self) -> None:
        """Trace the model the first time the tab is shown for a workspace."""
        ws = self.state.workspace
        if not self.shown or ws is None or self.circuit is not None or self._tracing is ws:
            return
        self._tracing = ws
        try:
            circuit = await self.state.run("Tracing the model", lambda _progress: ws.circuit)
        finally:
            self._tracing = None
        if circuit is None or ws is not self.state.workspace:
            return
        self.show(circuit)

    def show(self, circuit: Circuit) -> None:
        """Draw a traced circuit (the page traces off the event loop, a notebook in its cell)."""
        self.circuit = circuit
        modules = list(dict.fromkeys(s for op in circuit.ops.values() for s in op.scope))
        deepest = max((m.count(".") + 1 for m in modules), default=1)
        self.depth.param.update(end=max(deepest, 1))
        self.unfold.options = modules
        self.unroll.options = [run[0] for run in circuit.repeat_groups()]
        self.redraw()

    def style(self) -> DiagramStyle:
        return DiagramStyle(layout=self.layout.value, show_sizes=self.sizes.value,
                            names=parse_names([p for p in self.names.value.replace(";", ",").split(",") if p.strip()]))

    def redraw(self) -> None:
        if self.circuit is None:
            return
        try:
            style = self.style()
            self.view = self.circuit.view(self.depth.value or None, set(self.unfold.value), set(self.unroll.value),
                                          fold_repeats=self.fold_repeats.value)
            svg = render(self.view, "svg", style).decode()
        except NetatlasError as exc:
            self.state.error(str(exc))
            return
        self.figure.object = wrapped_svg(svg) if self.fit.value else scrolling_svg(svg)
        circuit, view = self.circuit, self.view
        runs = ", ".join(f"`{head}` ×{len(run)}" for head, run in view.repeats.items()) or "none"
        notes = "".join(f"\n\n*note: {n}*" for n in circuit.notes)
        self.summary.object = (f"{ABOUT}\n\n**{view.boxes} boxes** · graph from {circuit.method} · "
                               f"folded: {runs}{notes}")
        self.legend.object = "**Axes** " + " · ".join(
            f"{style.name(sym)} = {size:,}" for sym, size in symbol_table(view).items() if sym != "1")

    def _export(self, fmt: str) -> io.BytesIO | None:
        if self.view is None:
            self.state.error("Open the Diagram tab on a loaded model first")
            return None
        return io.BytesIO(render(self.view, fmt, self.style(), dpi=int(self.dpi.value)))

    def save(self, path: str | Path) -> Path:
        """Write the diagram as drawn now (fold, layout, names) to ``path``: .svg .pdf .png .tex."""
        if self.view is None:
            raise NetatlasError("no diagram drawn yet: show the Diagram view on a loaded model first")
        return export(self.view, path, self.style(), dpi=int(self.dpi.value))

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.Row(self.depth, field("Layout", self.layout), pn.Column(self.fold_repeats, self.sizes),
                          pn.Column(self.fit), sizing_mode="stretch_width")
        exports = pn.Row(*map(beside_inputs, self.downloads), self.dpi, sizing_mode="stretch_width")
        return pn.Column(self.summary, controls, pn.Row(self.unfold, self.unroll, sizing_mode="stretch_width"),
                         self.names, self.legend, self.figure, exports, sizing_mode="stretch_width")
