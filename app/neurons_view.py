"""The Neurons tab: pick a layer and a unit; see its top and bottom dataset images, its activation
histogram and its mean activation per class."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param

from netatlas.app.facets_view import FacetsView, output_name
from netatlas.app.state import AppState
from netatlas.backend.activations import Activations
from netatlas.backend.neurons import class_means, top_bottom
from netatlas.backend.workspace import Workspace
from netatlas.viz.images import image_grid_html
from netatlas.viz.neurons import activation_histogram, class_mean_bars

EXAMPLES = 16
LOGITS = "(logits)"  # the model's output: one unit per class; readable even without hooks


def default_layer(modules: pd.DataFrame) -> str | None:
    """The last block (non-leaf module) with a spatial output: the deepest convolutional features."""
    spatial = modules[(modules["output_shape"].str.count("x") == 3) & ~modules["leaf"] & (modules["depth"] > 0)]
    if len(spatial):
        return str(spatial["name"].iloc[-1])
    named = modules[(modules["depth"] > 0) & (modules["units"] > 0)]
    return str(named["name"].iloc[-1]) if len(named) else None


def layer_name(layer: str, ws: Workspace) -> str:
    """A layer as the page names it in words: the model's output is "logits" only for a classifier."""
    return layer if layer != LOGITS else output_name(ws)


def layer_options(modules: pd.DataFrame, logits_label: str) -> dict[str, str]:
    """Select options for every module with units, the model's output (the logits) first."""
    usable = modules[(modules["depth"] > 0) & (modules["units"] > 0)]
    return {logits_label: LOGITS,
            **{f"{r.name}  ({r.type}, {r.units} units)": r.name for r in usable.itertuples()}}


class NeuronsView(pn.viewable.Viewer):
    def __init__(self, state: AppState, **params) -> None:
        super().__init__(**params)
        self.state = state
        self.values: np.ndarray | None = None  # [N, units] for the current layer and reduction
        self.predictions: np.ndarray | None = None   # None: the model has no classifier for these classes
        self.layer = pn.widgets.Select(name="Layer", sizing_mode="stretch_width")
        self.reduction = pn.widgets.RadioButtonGroup(name="Reduction", options=["mean", "max"], value="mean",
                                                   button_type="primary", button_style="outline")
        self.unit = pn.widgets.EditableIntSlider(name="Unit", start=0, end=1, value=0, css_classes=["na-unit"],
                                                 sizing_mode="stretch_width")
        self.stats = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.top = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-top"])
        self.bottom = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-bottom"])
        self.histogram = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=280, css_classes=["na-histogram"])
        self.class_means = pn.pane.HoloViews(None, sizing_mode="stretch_width", height=280,
                                             css_classes=["na-class-means"])
        self.facets = FacetsView(state, self.current_unit, self.current_values)
        self.rendered: list = []  # callbacks after each render: other views that follow the unit
        state.param.watch(self._on_workspace, "workspace")
        self.layer.param.watch(self._on_choice, "value")
        self.reduction.param.watch(self._on_choice, "value")
        self.unit.param.watch(lambda _: self._quiet or self.render(), "value")
        self._quiet = False

    def current_unit(self) -> tuple[str | None, int]:
        """(layer, unit) shown now, with the logits as layer "" (how the backend names the output)."""
        if self.values is None:
            return None, 0
        return ("" if self.layer.value == LOGITS else self.layer.value), int(self.unit.value)

    def current_values(self) -> np.ndarray | None:
        return None if self.values is None else self.values[:, int(self.unit.value)]

    @property
    def workspace(self) -> Workspace | None:
        return self.state.workspace

    async def _on_workspace(self, event: param.parameterized.Event) -> None:
        ws: Workspace | None = event.new
        if ws is None:
            return
        modules = ws.modules
        options = layer_options(modules, "model output" if ws.predictions_note else
                                "logits (model output, a unit per class)")
        self.values = None
        self._quiet = True  # one extraction for the new workspace, not one per widget change
        try:
            self.layer.param.update(options=options, value=default_layer(modules) or LOGITS)
        finally:
            self._quiet = False
        await self._on_layer(with_representation=True)

    def _on_choice(self, _event) -> None:
        """A layer or reduction the user chose. Checked when the change happens: an async watcher would
        run after ``_quiet`` is lifted, and extract the layer a newly opened workspace sets on its own."""
        if not self._quiet:
            pn.state.execute(self._on_layer)

    async def _on_layer(self, with_representation: bool = False) -> None:
        """Show ``layer``'s activations. The first pass on a newly opened model (``with_representation``)
        also captures the representation the DendroMap and Map cluster: those tabs then open without a
        second pass over the dataset."""
        ws, layer, reduction = self.workspace, self.layer.value, self.reduction.value
        if ws is None or not layer:
            return
        layers = [] if layer == LOGITS else [layer]
        if with_representation and reduction == "mean":
            layers += [name for name in [ws.representation_layer()] if name and name not in layers]
        acts = await self.state.run(f"Computing activations of {layer_name(layer, ws)}",
                                    lambda progress: ws.activations(layers, reduction, progress))
        if acts is None or (ws, layer, reduction) != (self.workspace, self.layer.value, self.reduction.value):
            return  # failed, or the user moved on while it ran
        self.show(acts)

    def show(self, acts: Activations) -> None:
        """Show the chosen layer's units from its activations (computed off the event loop by the page)."""
        layer = self.layer.value
        self.values = acts.logits if layer == LOGITS else acts.layers[layer]
        self.predictions = acts.predictions
        units = self.values.shape[1]
        self._quiet = True
        try:
            self.unit.param.update(end=max(units - 1, 1), value=min(self.unit.value, units - 1),
                                   disabled=units == 1)
        finally:
            self._quiet = False
        self.render()

    def render(self) -> None:
        ws, values = self.workspace, self.values
        self.facets.clear()
        if ws is None or values is None:
            return
        unit, dataset = int(self.unit.value), ws.dataset
        column = values[:, unit]
        top, bottom = top_bottom(column, EXAMPLES)
        self.top.object = self._grid(top, column, "na-grid-top")
        self.bottom.object = self._grid(bottom, column, "na-grid-bottom")
        title = f"{self.layer.value} · unit {unit}"
        if self.layer.value == LOGITS and self.predictions is None:
            title = f"model output · unit {unit}"      # a backbone's features: no unit is a class
        elif self.layer.value == LOGITS and unit < len(dataset.classes):
            title = f"logit of class {dataset.classes[unit]} · unit {unit}"
        marks = {"16th highest": float(column[top[-1]]), "16th lowest": float(column[bottom[-1]])} \
            if len(top) and len(bottom) else {}
        self.histogram.object = activation_histogram(
            column, f"{title}: activations over {len(column):,} images", marks=marks)
        if dataset.labeled:
            self.class_means.object = class_mean_bars(
                class_means(column, dataset.labels, dataset.classes), f"{title}: mean per class")
        self.stats.object = f"**{title}** ({self.reduction.value} over space) · {unit_statistics(column)}"
        for callback in self.rendered:
            callback()

    def _grid(self, indices: np.ndarray, column: np.ndarray, css_class: str) -> str:
        dataset = self.workspace.dataset
        preds = self.predictions
        images = [dataset.read(int(i)) for i in indices]
        captions = [f"{column[i]:.3g}" for i in indices]
        if preds is None:          # no classifier: no prediction to name, nothing misclassified
            titles = [f"{dataset.ids[i]} · label {dataset.class_name(int(dataset.labels[i]))} · "
                      f"activation {column[i]:.4g}" for i in indices]
            return image_grid_html(images, captions, titles=titles, css_class=css_class)
        titles = [f"{dataset.ids[i]} · label {dataset.class_name(int(dataset.labels[i]))} · "
                  f"predicted {dataset.class_name(int(preds[i]))} · activation {column[i]:.4g}"
                  for i in indices]
        flagged = [bool(dataset.labels[i] >= 0 and preds[i] != dataset.labels[i]) for i in indices]
        return image_grid_html(images, captions, titles=titles, flagged=flagged, css_class=css_class)

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.Row(self.layer, self.reduction, self.unit, sizing_mode="stretch_width")
        return pn.Column(
            controls, self.stats,
            pn.Row(pn.Column("#### Top 16 images", self.top, sizing_mode="stretch_width"),
                   pn.Column("#### Bottom 16 images", self.bottom, sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            pn.Row(self.histogram, self.class_means, sizing_mode="stretch_width"),
            self.facets, sizing_mode="stretch_width")

    @property
    def data(self) -> dict[str, pd.DataFrame]:
        """The numbers shown: "activations" (one row per image: index, id, label, class, prediction when the
        model has a classifier, and the unit's activation), "top" and "bottom" (its 16 highest and lowest
        rows, as in the grids); empty before a layer is shown."""
        from netatlas.app.view_data import image_rows

        if self.values is None or self.workspace is None:
            return {}
        column = self.current_values()
        frame = image_rows(self.workspace.dataset, self.predictions)
        frame["activation"] = column
        layer, unit = self.current_unit()
        frame.attrs.update(layer=layer, unit=unit, reduction=self.reduction.value)
        top, bottom = top_bottom(column, EXAMPLES)
        return {"activations": frame, "top": frame.iloc[top].reset_index(drop=True),
                "bottom": frame.iloc[bottom].reset_index(drop=True)}


def unit_statistics(column: np.ndarray) -> str:
    """Mean, sd, min, max and share above zero of the finite activations; how many are not finite, if any."""
    finite = column[np.isfinite(column)]
    if not len(finite):
        return f"no finite activation on any of the {len(column):,} images"
    text = (f"mean {finite.mean():.4g} · sd {finite.std():.4g} · min {finite.min():.4g} · max {finite.max():.4g} · "
            f"{(finite > 0).mean():.1%} of images > 0")
    left_out = len(column) - len(finite)
    return text + (f" · {left_out:,} images with a non-finite activation left out" if left_out else "")
