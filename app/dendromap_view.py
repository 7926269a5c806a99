"""The DendroMap tab: the dataset as a zoomable treemap of hierarchical clusters of its images.

Click a cluster to zoom in, a breadcrumb to go back; colour by accuracy, a class's share or the
Neurons tab's unit; filter and search to see where matches sit; a side panel describes the current
cluster (classes, top units) and the clicked image (with its nearest neighbours). A model without
predictions (a backbone, no classifier head) gets no accuracy colouring, prediction filter, misclassified
outline or prediction column anywhere: the tab colours by a class's share instead.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import panel as pn
import param

from netatlas.app.layout import field
from netatlas.app.neurons_view import LOGITS, NeuronsView, layer_name, layer_options
from netatlas.app.state import AppState
from netatlas.app.thumbnails import thumbnail_src
from netatlas.app.treemap_pane import TreemapPane
from netatlas.backend.class_stats import class_stats
from netatlas.backend.cluster.tree import ClusterTree
from netatlas.backend.neighbors import nearest_neighbors
from netatlas.backend.neurons import highest_mean_units, top_units, unit_baseline
from netatlas.backend.workspace import Workspace
from netatlas.viz.dendromap import MapData, dendromap_frame, node_means
from netatlas.viz.images import image_detail_html
from netatlas.viz.treemap import legend_html

MAP_WIDTH, MAP_HEIGHT = 640, 520
# "{neurons}": where the layer is chosen, "the Neurons tab" on the page and "the Neurons view" in a notebook.
UNITS_TITLE = "#### Top units (the layer of {neurons}; choose to colour)"
# The whole dataset has no excess over its own mean: its table lists the units most active overall instead.
ROOT_UNITS_TITLE = ("#### Most active units (the layer of {neurons}; choose to colour)\n\nHighest mean activation over "
                    "the whole dataset. Zoom into a cluster to rank units by how much more they fire in it.")
CLUSTER_UNITS_TITLE = ("#### Top units of this cluster (the layer of {neurons}; choose to colour)\n\nRanked by how much "
                       "more they fire in it than over the dataset (excess, in the dataset's standard deviations).")
ANY = "(any)"
COLOR_BY = {"Accuracy": "accuracy", "Share of a class": "class share", "Neuron (from the Neurons tab)": "neuron"}
NEEDS_PREDICTIONS = ("Accuracy",)
def color_options(has_predictions: bool) -> list[str]:
    """The DendroMap's colourings: accuracy only when the model predicts the dataset's classes."""
    return [name for name in COLOR_BY if has_predictions or name not in NEEDS_PREDICTIONS]


def default_color(has_predictions: bool) -> str:
    return "Accuracy" if has_predictions else "Share of a class"


class DendroMapView(pn.viewable.Viewer):
    def __init__(self, state: AppState, neurons: NeuronsView, **params) -> None:
        super().__init__(**params)
        self.state, self.neurons = state, neurons
        self.tree: ClusterTree | None = None
        self.map_data: MapData | None = None
        self.vectors: np.ndarray | None = None       # the clustered representation, for neighbours
        self.path: list[int] = []                    # zoom history: root first, current last
        self.image: int | None = None
        self._search_keys: np.ndarray | None = None
        self._filter: tuple = (None, None)            # (widget values, their match mask)
        self._side_key: tuple | None = None           # what the side tables show now
        self._baseline: tuple = (None, None)          # (values, their per-unit mean and sd)
        self._unit_means: tuple = (None, None, None)  # (key, node -> mean, value range) of the colouring unit
        self.layer = pn.widgets.Select(name="Representation", width=250, css_classes=["na-rep"])
        self.k = pn.widgets.IntSlider(name="Clusters", start=2, end=20, value=8, width=170)
        self.cell = pn.widgets.IntSlider(name="Thumbnail size", start=16, end=96, step=4, value=40, width=170)
        self.color_by = pn.widgets.Select(name="Colour by", options=list(COLOR_BY), value="Accuracy", width=220,
                                          css_classes=["na-color-by"])
        self.color_class = pn.widgets.Select(name="Class", options=[], width=110, visible=False)
        self.misclassified = pn.widgets.RadioButtonGroup(name="Misclassified", options=["outline", "fade", "none"],
                                                         value="outline", button_type="primary",
                                                         button_style="outline", width=240)
        self.misclassified_box = field("Misclassified images", self.misclassified)
        self.true_label = pn.widgets.Select(name="True label", options=[ANY], width=120, css_classes=["na-true"])
        self.predicted = pn.widgets.Select(name="Predicted", options=[ANY], width=120, css_classes=["na-pred"])
        self.wrong_only = pn.widgets.Checkbox(name="misclassified only", width=140, margin=(30, 10, 5, 10),
                                              css_classes=["na-wrong-only"])
        self.search = pn.widgets.TextInput(name="Search ids and metadata", placeholder="e.g. 0042 or test",
                                           width=200, css_classes=["na-search"])
        # Breadcrumbs and legend hold their height from the first frame: the map must not move under
        # the pointer when they fill in after the tree is built.
        self.breadcrumbs = pn.Row(sizing_mode="stretch_width", height=42, css_classes=["na-breadcrumbs"])
        self.reset = pn.widgets.Button(name="Reset", button_type="light", width=80, css_classes=["na-reset"])
        self.legend = pn.pane.HTML("", sizing_mode="stretch_width", height=22)
        self.treemap = TreemapPane(self.zoom_to, self.show_image, width=MAP_WIDTH, height=MAP_HEIGHT,
                                   css_classes=["na-dendromap"])
        self.summary = pn.pane.Markdown("Open this tab to cluster the dataset.", sizing_mode="stretch_width",
                                        css_classes=["na-cluster-summary"])
        self.classes = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, show_index=False,
                                            hidden_columns=["label"], height=240, sizing_mode="stretch_width",
                                            titles={"accuracy": "acc"}, layout="fit_data_fill",
                                            css_classes=["na-classes"])
        self.units_title = pn.pane.Markdown(UNITS_TITLE.format(neurons=state.where("Neurons")),
                                            sizing_mode="stretch_width", css_classes=["na-units-title"])
        self.units = pn.widgets.Tabulator(pd.DataFrame(), selectable=1, disabled=True, show_index=False,
                                          height=200, sizing_mode="stretch_width", css_classes=["na-top-units"],
                                          titles={"excess (sd)": "excess"}, layout="fit_data_fill")
        self.detail = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-image-detail"])
        self.close_detail = pn.widgets.Button(name="✕ Close image", button_type="light", width=120,
                                              css_classes=["na-close-detail"])
        self.close_detail.on_click(lambda _: self.hide_image())
        # Beside the map, above the cluster's tables: where the user is looking when they ask for it.
        self.detail_box = pn.Column(self.close_detail, self.detail, visible=False, sizing_mode="stretch_width",
                                    styles={"border-bottom": "1px solid #ddd"})
        self.export = pn.widgets.FileDownload(callback=self._export_csv, filename="cluster.csv",
                                              label="Export images as CSV", button_type="light",
                                              sizing_mode="stretch_width", css_classes=["na-export"])
        state.param.watch(self._on_workspace, "workspace")
        self.layer.param.watch(self._on_layer, "value")
        self.has_predictions = True                  # whether the model predicts the dataset's classes
        self._chosen_color = self.color_by.value      # the user's colouring, back when it is offered again
        for widget in (self.k, self.cell, self.color_class, self.misclassified):
            widget.param.watch(lambda _: self.render(), "value")
        self.color_by.param.watch(self._on_color_by, "value")
        for widget in (self.true_label, self.predicted, self.wrong_only, self.search):
            widget.param.watch(lambda _: self._apply_filter(), "value")
        self.classes.param.watch(lambda _: self._quiet or self._apply_filter(), "selection")
        self.units.param.watch(self._on_unit_row, "selection")
        self.reset.on_click(lambda _: self.zoom_back(0))
        neurons.rendered.append(self._on_neuron)
        self.external: np.ndarray | None = None     # images selected in another view (the Map)
        self.navigated: list = []                    # callbacks after a zoom: views that follow the cluster
        self._quiet = False
        self.shown = False                           # whether the tab is the one on screen
        self._building: tuple | None = None          # (workspace, layer) of the tree being built

    # ----------------------------------------------------------------------------- data
    async def _on_workspace(self, event: param.parameterized.Event) -> None:
        ws: Workspace | None = event.new
        self.tree = self.map_data = self.vectors = None
        self.path, self._search_keys = [], None
        self.hide_image()
        self.treemap.html = ""
        if ws is None:
            return
        predicts = not ws.predictions_note
        options = layer_options(ws.modules, "logits (model output)" if predicts else "model output")
        classes = [ANY, *ws.dataset.classes]
        self._quiet = True
        try:
            self.layer.param.update(options=options, value=ws.representation_layer() or LOGITS)
            self.true_label.param.update(options=classes, value=ANY)
            self.predicted.param.update(options=classes, value=ANY)
            self.color_class.param.update(options=ws.dataset.classes,
                                          value=ws.dataset.classes[0] if ws.dataset.classes else None)
            self._offer_predictions(predicts)
        finally:
            self._quiet = False
        self.summary.object = "Open this tab to cluster the dataset."
        await self.activate()

    async def activate(self) -> None:
        """Build the tree when the tab is on screen and has none (first visit, new model or layer)."""
        ws, layer = self.state.workspace, self.layer.value
        busy = self._building == (ws, layer)
        if self.shown and self.tree is not None:
            self._apply_filter()                      # what changed in other tabs meanwhile
        if not self.shown or self.tree is not None or ws is None or self._quiet or busy:
            return
        self._building = (ws, layer)                 # a second click on the tab waits for this build
        try:
            await self._build(ws, layer)
        finally:
            if self._building == (ws, layer):
                self._building = None

    async def _on_layer(self, _event=None) -> None:
        if self._quiet:
            return
        self.tree = None
        await self.activate()

    async def _build(self, ws: Workspace, layer: str) -> None:
        name = "" if layer == LOGITS else layer

        def work(progress):
            tree = ws.cluster_tree(name, progress=progress)
            _, vectors, acts = ws.representation(name)
            return tree, vectors, acts.predictions

        result = await self.state.run(f"Clustering {len(ws.dataset):,} images on {layer_name(layer, ws)}", work)
        if result is None or ws is not self.state.workspace or layer != self.layer.value:
            return
        self.show(*result)

    def show(self, tree: ClusterTree, vectors: np.ndarray, predictions: np.ndarray | None) -> None:
        """Show a built tree from its root (the page builds off the event loop, a notebook in its cell);
        ``predictions`` None: the model has none, and nothing about them is offered or shown."""
        self.tree, self.vectors = tree, vectors
        dataset = self.state.workspace.dataset
        self.map_data = MapData(self.tree, dataset.labels, predictions, dataset.ids, dataset.classes)
        self._quiet = True
        try:
            self._offer_predictions(predictions is not None)
        finally:
            self._quiet = False
        self._filter, self._side_key, self._unit_means = (None, None), None, (None, None, None)
        self.path, self.external = [self.tree.root], None
        self.hide_image()
        self._apply_filter()
        for callback in self.navigated:
            callback()

    def _offer_predictions(self, offered: bool) -> None:
        """Offer the accuracy colouring, the predicted-class filter and the misclassified outline only when
        the model has predictions (the colouring the user chose, where offered; else the default)."""
        self.has_predictions = offered
        options = color_options(offered)
        value = self._chosen_color if self._chosen_color in options else default_color(offered)
        self.color_by.param.update(options=options, value=value)
        self.color_class.visible = value == "Share of a class"
        if not offered:
            self.predicted.value, self.wrong_only.value = ANY, False
        for widget in (self.predicted, self.wrong_only, self.misclassified_box):
            widget.visible = offered

    # ----------------------------------------------------------------------------- navigation
    async def zoom_to(self, node: int) -> None:
        """Zoom into a clicked cluster (a single image opens its details instead)."""
        if self.tree is None or not 0 <= node < len(self.tree.left):
            return
        if not self.tree.children(node):
            await self.show_image(int(node))
            return
        self._navigate([*self.path, int(node)])

    def zoom_back(self, depth: int) -> None:
        """Go back to the ``depth``-th cluster of the zoom path (0: the whole dataset)."""
        if self.tree is not None:
            self._navigate(self.path[:depth + 1] or [self.tree.root])

    def _navigate(self, path: list[int]) -> None:
        """Show another cluster; a class-table row chosen in the previous one no longer applies."""
        self.path = path
        for callback in self.navigated:
            callback()
        if self.classes.selection:
            self._quiet = True                        # no render for the cleared row: one below
            try:
                self.classes.selection = []
            finally:
                self._quiet = False
        self._apply_filter()

    @property
    def node(self) -> int:
        return self.path[-1]

    # ----------------------------------------------------------------------------- filters
    def _apply_filter(self) -> None:
        """Images matching the filters (and a chosen class-table row); None when nothing filters."""
        if self.map_data is None:
            return
        masks = [mask for mask in (self._filter_mask(), self.external) if mask is not None]
        row = self._selected_class()
        if row is not None:
            masks.append(self.map_data.labels == row)
        self.map_data.set_hits(np.logical_and.reduce(masks) if masks else None)
        self.render()

    def highlight_images(self, images: np.ndarray | None) -> None:
        """Highlight images chosen in another view (None clears): matches show first, other tiles fade.
        Drawn now when this tab is on screen, else by ``activate`` when it comes back."""
        if self.tree is None:
            return
        if images is None:
            self.external = None
        else:
            self.external = np.zeros(self.tree.n_images, bool)
            self.external[np.asarray(images, np.int64)] = True
        if self.shown:
            self._apply_filter()

    def _filter_mask(self) -> np.ndarray | None:
        """The filter widgets' matches (None: no filter), kept until a widget changes: a search
        scans every image's text, and zooming must not repeat it."""
        query = self.search.value.strip().lower()
        key = (id(self.map_data), self.true_label.value, self.predicted.value, self.wrong_only.value, query)
        if self._filter[0] == key:
            return self._filter[1]
        classes, masks = self.map_data.class_names, []
        if self.true_label.value != ANY:
            masks.append(self.map_data.labels == classes.index(self.true_label.value))
        if self.map_data.has_predictions and self.predicted.value != ANY:
            masks.append(self.map_data.predictions == classes.index(self.predicted.value))
        if self.map_data.has_predictions and self.wrong_only.value:
            masks.append(self.map_data.wrong)
        if query:
            masks.append(np.char.find(self._keys(self.state.workspace.dataset), query) >= 0)
        self._filter = (key, np.logical_and.reduce(masks) if masks else None)
        return self._filter[1]

    def _keys(self, dataset) -> np.ndarray:
        """Lower-case id plus metadata of every image, joined once, for substring search."""
        if self._search_keys is None:
            table = dataset.table().drop(columns=["index", "label"])
            self._search_keys = np.array(table.astype(str).agg(" ".join, axis=1).str.lower(), dtype=str)
        return self._search_keys

    def _selected_class(self) -> int | None:
        frame = self.classes.value
        if not self.classes.selection or frame is None or frame.empty:
            return None
        return int(frame.iloc[self.classes.selection[0]]["label"])

    # ----------------------------------------------------------------------------- colour
    def _on_color_by(self, _event=None) -> None:
        if not self._quiet:
            self._chosen_color = self.color_by.value
        self.color_class.visible = self.color_by.value == "Share of a class"
        self.render()

    def _on_neuron(self) -> None:
        """The Neurons tab's unit changed: its colouring and the top-units table follow (when this
        tab is on screen; ``activate`` catches up when it comes back)."""
        if self.tree is not None and self.shown:
            self.render()

    def _unit_colouring(self):
        values = self.neurons.current_values()
        if values is None or self.tree is None or len(values) != self.tree.n_images:
            return None, None, f"no unit chosen in {self.state.where('Neurons')}"
        layer, unit = self.neurons.current_unit()
        key = (id(self.tree), layer, unit, self.neurons.reduction.value)
        if self._unit_means[0] != key:                # prefix sums once per unit, not per frame
            self._unit_means = (key, node_means(self.tree, values), (float(values.min()), float(values.max())))
        _, means, value_range = self._unit_means
        return means, value_range, f"mean activation of unit {unit} of {layer or self._output_name}"

    @property
    def _output_name(self) -> str:
        """The model's output, as the page names it: logits only when they are a classifier's."""
        return "the logits" if self.has_predictions else "the model output"

    # ----------------------------------------------------------------------------- render
    def render(self) -> None:
        if self.map_data is None or not self.path or self._quiet:
            return
        cell = int(self.cell.value)
        color_by = COLOR_BY[self.color_by.value]
        unit_mean = unit_range = None
        legend_title = {"accuracy": "accuracy",
                        "class share": f"share of class {self.color_class.value}"}.get(color_by)
        if color_by == "neuron":
            unit_mean, unit_range, legend_title = self._unit_colouring()
        classes = self.map_data.class_names
        class_index = classes.index(self.color_class.value) if self.color_class.value in classes else 0
        dataset = self.state.workspace.dataset
        frame, _ = dendromap_frame(
            self.map_data, self.node, int(self.k.value), MAP_WIDTH // cell, MAP_HEIGHT // cell, cell,
            lambda i: thumbnail_src(dataset, i), color_by, class_index, unit_mean, unit_range,
            self.misclassified.value)
        self.treemap.html = frame
        kind = {"accuracy": "accuracy", "class share": "share"}.get(color_by, "activation")
        lo, hi = unit_range or (None, None)
        self.legend.object = legend_html(kind, lo, hi, legend_title)
        self._render_breadcrumbs()
        self._render_side()

    def _render_breadcrumbs(self) -> None:
        buttons = []
        for depth, node in enumerate(self.path):
            name = f"All {self.tree.count[node]:,}" if depth == 0 else f"› {self.tree.count[node]:,} (#{node})"
            current = depth == len(self.path) - 1
            button = pn.widgets.Button(name=name, button_type="primary" if current else "light",
                                       css_classes=["na-crumb"], width=130)
            button.on_click(lambda _, d=depth: self.zoom_back(d))
            buttons.append(button)
        self.breadcrumbs.objects = [*buttons, self.reset]

    def _render_side(self) -> None:
        tree, data, node = self.tree, self.map_data, self.node
        images = tree.images(node)
        acc = tree.accuracy[node] if data.has_predictions else np.nan
        matches = data.hits_in(node) if data.hits is not None else None
        self.summary.object = (
            f"**Cluster #{node}**: {tree.count[node]:,} images ({tree.count[node] / tree.n_images:.1%} of the "
            f"dataset){'' if np.isnan(acc) else f', accuracy {acc:.1%}'}, merge height {tree.height[node]:.4g}, "
            f"zoom depth {len(self.path) - 1}"
            + (f" · **{len(matches):,} match the filter** ({len(data.hits_in(tree.root)):,} in all"
               f"{', selected on the Map' if self.external is not None else ''})"
               if matches is not None else "")
            + f"  \n{tree.meta.get('method', '')} tree on "
              f"`{tree.meta.get('layer') or self._output_name.removeprefix('the ')}`")
        self.export.filename = f"cluster_{node}.csv"
        values = self.neurons.values
        key = (id(tree), node, id(values))
        if key == self._side_key:                     # a filter changed, not the cluster or the layer
            return
        if key[:2] != (self._side_key or (None, None))[:2]:
            stats = class_stats(data.labels[images], None if data.predictions is None else data.predictions[images],
                                data.class_names)
            self.classes.value = stats.round(4)
        self._side_key = key
        if values is not None and len(values) == tree.n_images:
            if self._baseline[0] is not values:          # once per layer, not per zoom
                self._baseline = (values, unit_baseline(values))
            self._show_units(values, node, images)

    def _show_units(self, values: np.ndarray, node: int, images: np.ndarray) -> None:
        """The cluster's top units by their excess over the dataset; at the root, where every unit's excess is 0,
        the units with the highest mean activation, titled as such."""
        baseline = self._baseline[1]
        if node == self.tree.root:
            title, table = ROOT_UNITS_TITLE, highest_mean_units(baseline, 10)
        else:
            title, table = CLUSTER_UNITS_TITLE, top_units(values, images, 10, baseline)
        self.units_title.object = title.format(neurons=self.state.where("Neurons"))
        self.units.value = table.round(4)

    # ----------------------------------------------------------------------------- side panel actions
    async def show_image(self, index: int) -> None:
        """Details of one image and its nearest neighbours in the clustered representation (the
        neighbour search scans every vector, so it runs off the event loop)."""
        ws, vectors = self.state.workspace, self.vectors
        if ws is None or self.map_data is None or not 0 <= index < len(ws.dataset):
            return
        found = await self.state.run("Finding nearest neighbours", lambda _: nearest_neighbors(vectors, index, 8))
        if found is None or ws is not self.state.workspace:
            return
        self.image, self.detail_box.visible = index, True
        neighbours, distances = found
        self.detail.object = image_detail_html(
            ws.dataset.read, ws.dataset.ids, ws.dataset.class_name, self.map_data.labels, self.map_data.predictions,
            index, neighbours, distances, "Nearest neighbours (distance in the clustered representation)")

    def hide_image(self) -> None:
        """Close the image details (a new model, or the user's close button)."""
        self.image, self.detail_box.visible, self.detail.object = None, False, ""

    def _on_unit_row(self, event) -> None:
        """Choosing a top unit sets it in the Neurons tab and colours the map by it."""
        frame = self.units.value
        if not event.new or frame is None or frame.empty:
            return
        self.neurons.unit.value = int(frame.iloc[event.new[0]]["unit"])
        self.color_by.value = "Neuron (from the Neurons tab)"

    def _export_csv(self) -> io.BytesIO:
        """The current cluster's images (only the matches when a filter is on) as CSV."""
        if self.map_data is None:
            return io.BytesIO(b"")
        data, node = self.map_data, self.node
        images = data.hits_in(node) if data.hits is not None else self.tree.images(node)
        frame = pd.DataFrame({
            "index": images, "id": [data.ids[i] for i in images], "label": data.labels[images],
            "class": [data.class_name(int(l)) for l in data.labels[images]]})
        if data.has_predictions:
            frame["prediction"] = data.predictions[images]
            frame["predicted_class"] = [data.class_name(int(p)) for p in data.predictions[images]]
            frame["correct"] = pd.array(~data.wrong[images], dtype="boolean")
            frame.loc[data.labels[images] < 0, "correct"] = pd.NA   # unlabeled: neither right nor wrong
        frame["cluster"] = node
        return io.BytesIO(frame.to_csv(index=False).encode())

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.FlexBox(self.layer, self.k, self.cell, self.color_by, self.color_class, self.misclassified_box)
        filters = pn.FlexBox(self.true_label, self.predicted, self.wrong_only, self.search)
        side = pn.Column(self.detail_box, self.summary, "#### Classes (choose a row to highlight)", self.classes,
                         self.units_title, self.units, self.export,
                         width=370)
        return pn.Column(controls, filters, self.breadcrumbs, self.legend,
                         pn.Row(pn.Column(self.treemap, width=MAP_WIDTH + 10), side),
                         sizing_mode="stretch_width")

    @property
    def data(self) -> pd.DataFrame:
        """The clusters on screen (the current cluster's frontier of ``k``), one row each: cluster (node id),
        size, share of the dataset, accuracy (only with predictions), merge height, medoid id and the count
        of each class; empty before the tree is built."""
        if self.tree is None or self.map_data is None or not self.path:
            return pd.DataFrame()
        tree, dataset = self.tree, self.state.workspace.dataset
        nodes = tree.frontier(self.node, int(self.k.value))
        frame = pd.DataFrame({"cluster": nodes, "size": tree.count[nodes],
                              "share": tree.count[nodes] / tree.n_images})
        if self.map_data.has_predictions:
            frame["accuracy"] = tree.accuracy[nodes]
        frame["height"] = tree.height[nodes]
        frame["medoid id"] = [dataset.ids[int(tree.medoid[n])] for n in nodes]
        counts = np.stack([tree.classes_of(n, dataset.labels, len(dataset.classes)) for n in nodes])
        for c, name in enumerate(dataset.classes):       # a column per class, named by the class
            frame[name if name not in frame.columns else f"class {name}"] = counts[:, c]
        frame.attrs.update(parent=self.node, k=int(self.k.value))
        return frame
