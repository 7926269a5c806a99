"""Multifaceted feature visualization for the unit chosen in the Neurons tab."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
import panel as pn

from netatlas.app.residual_view import rough_duration
from netatlas.app.state import AppState
from netatlas.backend.facets import FacetReport, FacetSettings
from netatlas.backend.featviz import FeatvizSettings
from netatlas.backend.neurons import top_bottom
from netatlas.viz.facets import facets_html, neuron_card, save_card

OPTIMIZERS = {"paper (normalized ascent, TV, jitter, growing canvas)": "paper",
              "Lucid-style (Fourier + decorrelated colour, transforms, Adam)": "lucid"}
STARTS = {"facet mean image (the paper)": "mean", "random noise (baseline)": "noise"}
# The demo's defaults (blocks.5), measured on two CPU cores: (facets, steps, seconds in all, of which setup). Measured
# 2.3-4.7 s through Workspace.facets and 6 s in the page while other work shared the cores; 50 steps took 1.7 s and
# 400 took 6.4 s. All facets are optimized as one batch, so the time grows with the steps far more than the facets.
DEMO = (4, 200, 5.0, 1.0)


def placeholder_text(k: int, steps: int, start: str) -> str:
    """What *Visualize facets* will show and roughly how long it takes: the demo's measured time, scaled by the
    steps."""
    d_k, d_steps, d_seconds, d_setup = DEMO
    guess = d_setup + (d_seconds - d_setup) * steps / d_steps
    origin = "the facet's mean image" if start == "mean" else "random noise"
    return (f"**Nothing visualized yet.** *Visualize facets* sorts this unit's {FacetSettings().top_n} most activating "
            f"images into {k} facet{'s' * (k != 1)} (groups of alike images) and draws one synthetic image per facet, "
            f"optimized for {steps} steps from {origin} to excite the unit, beside the facet's exemplars, with the "
            f"activation each reaches. The demo's defaults ({d_k} facets, {d_steps} steps) take about "
            f"{rough_duration(d_seconds)} on two CPU cores: expect roughly {rough_duration(guess)} on a model of the "
            "demo's size, longer in proportion to a larger model's forward and backward pass.")


class FacetsView(pn.viewable.Viewer):
    """Controls and results; ``unit()`` tells which layer ("" = logits) and unit to visualize."""

    def __init__(self, state: AppState, unit, values, **params) -> None:
        super().__init__(**params)
        self.state, self.current_unit, self.current_values = state, unit, values
        self.report: FacetReport | None = None
        self.k = pn.widgets.IntSlider(name="Facets k", start=1, end=10, value=4, width=160)
        self.optimizer = pn.widgets.Select(name="Optimizer", options=OPTIMIZERS, width=300)
        self.start = pn.widgets.Select(name="Start from", options=STARTS, width=220)
        self.steps = pn.widgets.IntInput(name="Steps", value=200, start=10, end=2000, step=10, width=90,
                                         css_classes=["na-steps"])
        self.diversity = pn.widgets.FloatInput(name="Diversity term", value=0.0, start=0.0, step=0.1, width=110)
        self.run_button = pn.widgets.Button(name="Visualize facets", button_type="primary", width=170)
        self.fmt = pn.widgets.Select(name="Neuron card", options=["png", "svg", "pdf"], width=80)
        self.download = pn.widgets.FileDownload(callback=self._card, filename="neuron_card.png",
                                                label="Download neuron card", button_type="light",
                                                width=200, disabled=True, css_classes=["na-card-download"])
        self.results = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-facets-pane"])
        self.placeholder = pn.pane.Alert("", alert_type="light", sizing_mode="stretch_width",
                                         css_classes=["na-facets-placeholder"])
        self.run_button.on_click(self._on_run)
        for widget in (self.k, self.steps, self.start):
            widget.param.watch(lambda _e: self._describe(), "value")
        self._describe()
        self.fmt.param.watch(lambda e: setattr(self.download, "filename", f"neuron_card.{e.new}"), "value")
        state.param.watch(lambda e: setattr(self.run_button, "disabled", e.new), "busy")

    def _describe(self) -> None:
        self.placeholder.object = placeholder_text(int(self.k.value), int(self.steps.value), self.start.value)

    def clear(self) -> None:
        """Back to no facets (another unit): the placeholder says again what the button will show."""
        self.report = None
        self.results.object = ""
        self.placeholder.visible = True
        self.download.disabled = True

    async def _on_run(self, _event=None) -> None:
        ws, (layer, unit) = self.state.workspace, self.current_unit()
        if ws is None or layer is None:
            return
        facet_settings = FacetSettings(k=int(self.k.value), start=self.start.value)
        featviz_settings = FeatvizSettings(optimizer=self.optimizer.value, steps=int(self.steps.value),
                                           diversity=float(self.diversity.value))
        report = await self.state.run(
            f"Facets of {layer or output_name(ws)} unit {unit}",
            lambda progress: ws.facets(layer, unit, facet_settings, featviz_settings, progress))
        if report is None or (layer, unit) != self.current_unit() or ws is not self.state.workspace:
            return
        self.show(report)

    def show(self, report: FacetReport) -> None:
        """Show the synthetic images beside their exemplars, and offer the card."""
        self.report = report
        self.placeholder.visible = False
        self.results.object = facets_html(report, self._exemplar_images(report))
        self.download.disabled = False

    def _exemplar_images(self, report: FacetReport) -> list[list]:
        dataset = self.state.workspace.dataset
        return [[dataset.read(int(i)) for i in members] for members in report.exemplars]

    def _card(self) -> io.BytesIO:
        report, dataset, values = self.report, self.state.workspace.dataset, self.current_values()
        layer, unit = self.current_unit()
        top, bottom = top_bottom(values, 8)
        figure = neuron_card(report, self._exemplar_images(report), values,
                             [dataset.read(int(i)) for i in top], [dataset.read(int(i)) for i in bottom],
                             f"{layer or output_name(self.state.workspace)} · unit {unit}")
        with tempfile.TemporaryDirectory() as tmp:
            path = save_card(figure, Path(tmp) / f"neuron_card.{self.fmt.value}")
            return io.BytesIO(path.read_bytes())

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.FlexBox(self.k, self.optimizer, self.start, self.steps, self.diversity,
                              pn.Column(pn.Spacer(height=18), self.run_button), sizing_mode="stretch_width")
        export = pn.Row(self.fmt, pn.Column(pn.Spacer(height=18), self.download))
        return pn.Column("#### Facets: synthetic images, one per kind of input the unit responds to",
                         controls, self.placeholder, self.results, export, sizing_mode="stretch_width")

    @property
    def data(self) -> pd.DataFrame:
        """The facet table, one row per facet: its size (top images in it), the ids of the exemplars shown beside
        it, the activation its synthetic image reaches and where it started, its rank among the dataset's images
        and how many standard deviations above the dataset's maximum it lies (NaN when every activation is
        equal); empty before a run."""
        import numpy as np
        import pandas as pd

        report = self.report
        if report is None or self.state.workspace is None:
            return pd.DataFrame()
        ids = self.state.workspace.dataset.ids
        above = report.above_max_sd
        frame = pd.DataFrame({
            "facet": np.arange(len(report.images)), "size": np.asarray(report.sizes),
            "exemplar ids": [[ids[int(i)] for i in members] for members in report.exemplars],
            "activation": np.asarray(report.activation), "start activation": np.asarray(report.start_activation),
            "rank": np.asarray(report.rank),
            "sd above dataset max": np.full(len(report.images), np.nan) if above is None else above})
        frame.attrs.update(layer=report.layer, unit=report.unit, dataset_max=report.dataset_max,
                           dataset_std=report.dataset_std, diversity=report.diversity)
        return frame


def output_name(ws) -> str:
    """The model's output in words: "logits" only for a classifier (a backbone's output is its features)."""
    return "model output" if ws.predictions_note else "logits"
