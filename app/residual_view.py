"""The Residual tab: confirm the residual units, compute the path analyses, see and export the plots."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import holoviews as hv
import panel as pn
import param

from netatlas.app.layout import beside_inputs, field
from netatlas.app.state import AppState
from netatlas.backend.residual.paths import EXACT_MAX_UNITS, PathSettings, ResidualReport, _gradient_passes
from netatlas.backend.workspace import Workspace
from netatlas.viz.residual import residual_figures
from netatlas.viz.styling import EXPORT_FORMATS, PANEL, export

TITLES = {"blocks": "Per residual unit", "paths": "Paths, gradients and effective paths (Veit et al.)",
          "orders": "Order-k decomposition (Dherin & Munn)", "lesions": "Lesions"}
ABOUT = ("For a batch of held-out images: each unit's branch against its skip; Veit et al.'s path "
         "counts, gradient per path length (k branches carry the gradient, the other skips) and their "
         "product; the exact order-k decomposition over all 2^n branch masks (n <= 14) and the "
         "Jacobian-gain estimate, beside idealised C(n,k) lambda^k curves; and lesions.")
DEMO = (6, 256, 190, 10)    # the demo model: units, images, passes, seconds on two CPU cores (measured)


def placeholder_text(units: int, settings: PathSettings) -> str:
    """What Compute will draw and roughly how long it takes: the passes it runs for these units and images,
    beside the demo's measured time."""
    if units == 0:
        return "**Nothing to compute**: choose at least one residual unit above."
    exact = units <= EXACT_MAX_UNITS
    passes = (2 + _gradient_passes(units, settings.samples) + (2 ** units if exact else 0) + units
              + units * settings.lesion_draws + settings.reorder_trials)
    d_units, d_images, d_passes, d_seconds = DEMO
    guess = d_seconds * passes / d_passes * settings.images / d_images
    orders = f"exact over 2^{units} branch masks" if exact else f"estimate only: more than {EXACT_MAX_UNITS} units"
    return (f"**Nothing computed yet.** *Compute path plots* draws four plots here: each unit's branch against "
            f"its skip, Veit et al.'s paths by length with their gradients, the order-k decomposition ({orders}), "
            f"and lesions. With {units} units and {settings.images} images it runs the model about {passes} times "
            f"(up to {settings.images} images each): the demo ({d_units} units, {d_images} images, {d_passes} passes) "
            f"takes about {d_seconds} s on a CPU, so expect roughly {rough_duration(guess)} on a model of the demo's "
            "size, longer in proportion to a larger model's forward pass.")


def rough_duration(seconds: float) -> str:
    """A time estimate in the unit a reader expects: whole seconds, minutes from a minute and a half."""
    return f"{max(1, round(seconds))} s" if seconds < 90 else f"{round(seconds / 60)} min"


class ResidualView(pn.viewable.Viewer):
    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        self.report: ResidualReport | None = None
        self.units = pn.widgets.MultiChoice(name="Residual units (remove any you do not want)",
                                            sizing_mode="stretch_width", css_classes=["na-units"])
        self.images = pn.widgets.IntInput(name="Images", value=256, start=16, end=4096, step=16, width=110,
                                          css_classes=["na-images"])
        self.samples = pn.widgets.IntInput(name="Subsets per path length", value=8, start=1, end=64, width=170)
        self.compute = pn.widgets.Button(name="Compute path plots", button_type="primary", width=200)
        self.fmt = pn.widgets.RadioButtonGroup(name="Export format", options=list(EXPORT_FORMATS),
                                               value="svg", button_type="primary", button_style="outline")
        self.summary = pn.pane.Markdown(ABOUT, sizing_mode="stretch_width")
        self.placeholder = pn.pane.Alert("", alert_type="light", sizing_mode="stretch_width",
                                         css_classes=["na-residual-placeholder"])
        self.plots = pn.Column(self.placeholder, sizing_mode="stretch_width", css_classes=["na-residual-plots"])
        self.compute.on_click(self._on_compute)
        for widget in (self.units, self.images, self.samples):
            widget.param.watch(lambda _e: self._describe(), "value")
        self._describe()
        state.param.watch(self._on_workspace, "workspace")
        state.param.watch(lambda e: setattr(self.compute, "disabled", e.new), "busy")

    def _on_workspace(self, event: param.parameterized.Event) -> None:
        ws: Workspace | None = event.new
        self.report = None
        self.plots.objects = [self.placeholder]
        if ws is None:
            return
        units = ws.residual_units
        self.units.param.update(options={u.label: u.key for u in units}, value=[u.key for u in units])
        self.summary.object = ABOUT if units else (
            "**No residual units found** in this model: no `x + f(x)` add that netatlas can trace.")

    def settings(self) -> PathSettings:
        return PathSettings(images=int(self.images.value), samples=int(self.samples.value))

    def _describe(self) -> None:
        self.placeholder.object = placeholder_text(len(self.units.value), self.settings())

    async def _on_compute(self, _event=None) -> None:
        ws, keys = self.state.workspace, list(self.units.value)
        if ws is None:
            return
        settings = self.settings()
        report = await self.state.run(f"Residual paths over {len(keys)} units",
                                      lambda progress: ws.residual_paths(keys, settings, progress))
        if report is None or ws is not self.state.workspace:
            return
        self.report = report
        self.show(report)

    def show(self, report: ResidualReport) -> None:
        meta = report.meta
        check = meta.get("decomposition_rel_error")
        self.summary.object = (
            f"{ABOUT}\n\n**{meta['n_units']} units, {meta['images']} images**, {measured(meta)}"
            + (f" · exact decomposition sums to the output within {check:.1e} (relative)"
               if check is not None else " · n > 14: the order-k plot shows the Jacobian-gain estimate only"))
        cards = []
        for name, figure in residual_figures(report).items():
            download = pn.widgets.FileDownload(
                callback=pn.bind(self._export, figure=figure, name=name, fmt=self.fmt),
                filename=f"residual_{name}.{self.fmt.value}", label=f"Download {name}",
                button_type="light", width=180, css_classes=[f"na-download-{name}"])
            self.fmt.param.watch(lambda e, d=download, n=name: setattr(d, "filename", f"residual_{n}.{e.new}"),
                                 "value")
            cards.append(pn.Card(_pane(figure), download, title=TITLES[name], sizing_mode="stretch_width",
                                 css_classes=["na-residual-plot"]))
        self.plots.objects = cards

    @staticmethod
    def _export(figure, name: str, fmt: str) -> io.BytesIO:
        with tempfile.TemporaryDirectory() as tmp:
            path = export(figure, Path(tmp) / f"residual_{name}.{fmt}")
            return io.BytesIO(path.read_bytes())

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.Row(self.images, self.samples, beside_inputs(self.compute), pn.Spacer(width=20),
                          field("Export as", self.fmt), sizing_mode="stretch_width")
        return pn.Column(self.summary, self.units, controls, self.plots, sizing_mode="stretch_width")

    @property
    def data(self) -> dict:
        """The report's tables behind the plots, by name: units, paths, orders, lesions, lesions_k, reorder
        (pandas DataFrames; the report's scalars are in each one's ``attrs``); empty before a run."""
        report = self.report
        if report is None:
            return {}
        tables = {name: getattr(report, name).copy() for name in report.SECTIONS}
        for table in tables.values():
            table.attrs.update(report.meta)
        return tables


def measured(meta: dict) -> str:
    """What the report's lesions and gradients were measured against, in words: a classifier's accuracy,
    or (no classifier head, ``meta["mode"] == "output"``) the model's own output; never an accuracy there."""
    if meta.get("mode") == "output":
        return ("no classifier head, so no predictions: lesions and reorders are scored by the cosine similarity "
                "of each image's output to the intact model's output (1 = unchanged), and the gradient per path "
                "length is that of the output's norm ||y||")
    return f"baseline accuracy {meta['baseline_accuracy']:.1%} (targets: {meta['targets']})"


def _pane(figure) -> pn.viewable.Viewable:
    """A layout's panels side by side (Bokeh grids of responsive plots collapse in a Panel pane)."""
    if isinstance(figure, hv.Layout):
        return pn.Row(*[pn.pane.HoloViews(panel, backend="bokeh", sizing_mode="stretch_width",
                                          height=PANEL["bokeh"]["height"] + 10) for panel in figure],
                      sizing_mode="stretch_width")
    return pn.pane.HoloViews(figure, sizing_mode="stretch_width", backend="bokeh")
