"""The Map tab: a UMAP of a representation, one point per image, rendered by datashader on the server.
A UMAP takes minutes at 100,000 images: until it is cached the tab shows a PCA preview of the same
representation (a second or two), which works like the map and is replaced when the UMAP is ready.

Pan and zoom re-aggregate the points for the new view (the browser only ever gets an image); hover
shows the image under the pointer, a tap its details and nearest neighbours, and box or lasso select
shows the selected images with per-class counts and highlights them in the DendroMap tab. A cluster
opened in the DendroMap is highlighted here in turn. A model without predictions (no classifier head)
offers no colouring by them, and no hover, grid or summary names one.
"""

from __future__ import annotations

import html
from dataclasses import replace

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from netatlas.app.dendromap_view import DendroMapView
from netatlas.backend.class_stats import class_stats
from netatlas.app.neurons_view import LOGITS, NeuronsView, layer_name, layer_options
from netatlas.app.state import AppState
from netatlas.app.thumbnails import thumbnail_src
from netatlas.backend.embedding import EmbedSettings, Embedding, default_seed
from netatlas.backend.neighbors import nearest_neighbors
from netatlas.backend.workspace import Workspace
from netatlas.viz.embedding import MapPoints, legend_html, render
from netatlas.viz.images import image_detail_html, image_grid_html

WIDTH, HEIGHT = 640, 520
HOVER_PX = 8                 # hover and tap pick the nearest image within this many pixels
GRID_IMAGES = 48
COLOR_BY = {"Class": "class", "Predicted class": "predicted", "Correct / misclassified": "correct",
            "Cluster (DendroMap tree)": "cluster", "Neuron (from the Neurons tab)": "value", "Density": "density"}
NEEDS_PREDICTIONS = ("Predicted class", "Correct / misclassified")
METHODS = {"UMAP": "umap", "PCA (fast)": "pca"}


def color_options(has_predictions: bool) -> list[str]:
    """The Map's colourings: by prediction only when the model predicts the dataset's classes."""
    return [name for name in COLOR_BY if has_predictions or name not in NEEDS_PREDICTIONS]


class MapView(pn.viewable.Viewer):
    def __init__(self, state: AppState, neurons: NeuronsView, dendromap: DendroMapView, **params) -> None:
        super().__init__(**params)
        self.state, self.neurons, self.dendromap = state, neurons, dendromap
        self.points: MapPoints | None = None
        self.vectors: np.ndarray | None = None
        self.predictions: np.ndarray | None = None
        self.selection: np.ndarray | None = None       # image indices chosen by box or lasso
        self.shown = False
        self._building: tuple | None = None
        self._colouring: tuple | None = None           # what the colour columns were last set for
        self._view_ranges: tuple = (None, None)        # the plot's current x and y ranges
        self._pending: list[tuple[str, object]] = []   # box or lasso selections not yet applied
        self.layer = pn.widgets.Select(name="Representation", width=250, css_classes=["na-map-rep"])
        self.method = pn.widgets.Select(name="Method", options=list(METHODS), value="UMAP", width=120)
        self.color_by = pn.widgets.Select(name="Colour by", options=list(COLOR_BY), value="Class", width=220,
                                          css_classes=["na-map-color"])
        self.follow = pn.widgets.Checkbox(name="highlight the DendroMap cluster", value=True, width=240,
                                          margin=(30, 10, 5, 10))
        self.clear = pn.widgets.Button(name="Clear selection", button_type="light", width=130,
                                       margin=(22, 10, 5, 10), css_classes=["na-map-clear"])
        self.legend = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-map-legend-pane"])
        self.summary = pn.pane.Markdown("Open this tab to map the dataset.", sizing_mode="stretch_width",
                                        css_classes=["na-map-summary"])
        self.plot = pn.pane.HoloViews(None, width=WIDTH + 20, height=HEIGHT + 20, css_classes=["na-map"])
        self.hover = pn.pane.HTML("", width=220, min_height=120, css_classes=["na-map-hover"])
        self.selected = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-map-selection"])
        self.counts = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=220,
                                           hidden_columns=["label"], layout="fit_data_fill",
                                           sizing_mode="stretch_width", css_classes=["na-map-counts"])
        self.detail = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["na-map-detail"])
        self._refresh = hv.streams.Stream.define("Refresh", version=0)()
        state.param.watch(self._on_workspace, "workspace")
        self.layer.param.watch(self._on_source, "value")
        self.method.param.watch(self._on_source, "value")
        self.color_by.param.watch(self._on_color_by, "value")
        self._chosen_color = self.color_by.value      # the user's colouring, back when it is offered again
        self.follow.param.watch(lambda _: self.redraw(), "value")
        self.clear.on_click(lambda _: self.select(None))
        neurons.rendered.append(self._on_neuron)
        dendromap.navigated.append(self._on_dendromap)
        self._quiet = False

    # ----------------------------------------------------------------------------- data
    async def _on_workspace(self, event: param.parameterized.Event) -> None:
        ws: Workspace | None = event.new
        self.points = self.vectors = self.predictions = self.selection = None
        self.plot.object = None
        if ws is None:
            return
        predicts = not ws.predictions_note
        self._quiet = True
        try:
            self.layer.param.update(options=layer_options(ws.modules, "logits (model output)" if predicts
                                                          else "model output"),
                                    value=ws.representation_layer() or LOGITS)
            self._offer_predictions(predicts)
        finally:
            self._quiet = False
        self.summary.object = "Open this tab to map the dataset."
        await self.activate()

    async def _on_source(self, _event=None) -> None:
        if not self._quiet:
            self.points = None
            await self.activate()

    async def activate(self) -> None:
        """Compute the map when the tab is on screen and has none (first visit, new model or layer)."""
        ws, key = self.state.workspace, (self.state.workspace, self.layer.value, self.method.value)
        if self.shown and self.points is not None:
            self.redraw()
        if not self.shown or self.points is not None or ws is None or self._building == key:
            return
        self._building = key
        try:
            await self._build(ws, self.layer.value, METHODS[self.method.value])
        finally:
            if self._building == key:
                self._building = None

    async def _build(self, ws: Workspace, layer: str, method: str) -> None:
        """Show the cached map, else (UMAP) a PCA preview of the same representation at once and the
        UMAP map when its minutes of work are done, the progress bar following them meanwhile."""
        name = "" if layer == LOGITS else layer
        settings = EmbedSettings(method=method, seed=default_seed(len(ws.dataset)))

        def first(progress):
            embedding = ws.embedding(name, settings=settings, progress=progress, cached_only=method == "umap")
            preview = embedding is None
            if preview:
                embedding = ws.embedding(name, settings=replace(settings, method="pca"), progress=progress)
            _, vectors, acts = ws.representation(name)
            return embedding, vectors, acts.predictions, preview

        label = f"Mapping {len(ws.dataset):,} images on {layer_name(layer, ws)} ({method.upper()})"
        result = await self.state.run(label, first)
        if result is None or not self._current(ws, layer, method):
            return
        embedding, vectors, predictions, preview = result
        self.show(embedding, vectors, predictions, preview=preview)
        if not preview:
            return
        embedding = await self.state.run(f"{label}; the PCA preview is shown meanwhile",
                                         lambda progress: ws.embedding(name, settings=settings, progress=progress))
        if embedding is None or not self._current(ws, layer, method):
            return
        selection = self.selection                    # same images, new positions: keep it
        self.show(embedding, vectors, predictions)
        if selection is not None:
            self.select(selection)

    def _current(self, ws: Workspace, layer: str, method: str) -> bool:
        """Whether a map computed for these is still the one asked for."""
        return ws is self.state.workspace and layer == self.layer.value and method == METHODS[self.method.value]

    def show(self, embedding: Embedding, vectors: np.ndarray, predictions: np.ndarray | None,
             preview: bool = False) -> None:
        """Show a computed map (the page computes off the event loop, a notebook in its cell);
        ``preview``: a PCA map shown while the UMAP one is computed; ``predictions`` None: the model has
        none, and nothing about them is offered or shown."""
        ws, name = self.state.workspace, "" if self.layer.value == LOGITS else self.layer.value
        self.vectors, self.predictions = vectors, predictions
        self.points = MapPoints.build(embedding.xy, ws.dataset.labels, self.predictions, ws.dataset.classes)
        self.selection, self._colouring, self._pending = None, None, []
        self._quiet = True
        try:
            self._offer_predictions(predictions is not None)
        finally:
            self._quiet = False
        what = "PCA preview" if preview else f"{embedding.method.upper()} map"
        self.summary.object = (
            f"**{what}** of {len(ws.dataset):,} images on `{name or self._output_name}`"
            + (f" (fitted on {embedding.n_fitted:,}, the rest placed by their nearest fitted neighbours)"
               if embedding.n_fitted < len(ws.dataset) else "")
            # not "UMAP map": that names the map itself, which a page (and its tests) waits for
            + ("; UMAP replaces it when ready (progress bar in the sidebar)" if preview else "")
            + ". Scroll to zoom, drag to pan; the toolbar's box and lasso select images.")
        self.plot.object = self._dynamic_map()
        self._show_selection()
        self.redraw()

    def _offer_predictions(self, offered: bool) -> None:
        """Offer the colourings by prediction only when the model has predictions (the colouring the user
        chose, where offered; else by class)."""
        options = color_options(offered)
        self.color_by.param.update(options=options, value=self._chosen_color if self._chosen_color in options
                                   else "Class")

    def _on_color_by(self, _event=None) -> None:
        if not self._quiet:
            self._chosen_color = self.color_by.value
        self.redraw()

    @property
    def _output_name(self) -> str:
        """The model's output, as the page names it: logits only when they are a classifier's."""
        return "logits" if self.predictions is not None else "model output"

    def _dynamic_map(self) -> hv.DynamicMap:
        """The plot: re-rendered on the server for every view (RangeXY) and for every change of
        colouring or highlight (the Refresh stream); hover, tap, box and lasso streams on top."""
        # Box and lasso are streams of the map itself, so HoloViews re-renders it with the selection
        # highlighted in the same update (a refresh raised from their subscribers never reaches the page).
        # Transient: HoloViews drops an event equal to the last one unless the stream is transient,
        # and the same box again after a lasso is a new selection. Subscribers run before the
        # re-render and note which tool fired.
        box, lasso = hv.streams.BoundsXY(transient=True), hv.streams.Lasso(transient=True)
        box.add_subscriber(lambda bounds=None: self._pending.append(("box", bounds)))
        lasso.add_subscriber(lambda geometry=None: self._pending.append(("lasso", geometry)))
        dmap = hv.DynamicMap(self._view, streams=[hv.streams.RangeXY(), self._refresh, box, lasso])
        x0, y0, x1, y1 = self.points.bounds
        dmap = dmap.opts(hv.opts.RGB(
            width=WIDTH, height=HEIGHT, xlim=(x0, x1), ylim=(y0, y1), xaxis=None, yaxis=None,
            tools=["box_select", "lasso_select", "tap"], active_tools=["pan", "wheel_zoom"],
            default_tools=["pan", "wheel_zoom", "reset"]))
        hv.streams.PointerXY(source=dmap).add_subscriber(self._on_pointer)
        hv.streams.Tap(source=dmap).add_subscriber(self._on_tap)
        return dmap

    def _view(self, x_range=None, y_range=None, version=0, bounds=None, geometry=None) -> hv.RGB:
        """One view of the map (the DynamicMap's callback): datashader on the points in range, with a
        new box or lasso selection (noted by the streams' subscribers) applied first."""
        points = self.points
        self._view_ranges = (x_range, y_range)
        while self._pending:
            tool, value = self._pending.pop(0)
            if value is None:
                continue
            if tool == "box":
                self._on_box(value)
            else:
                self._on_lasso(np.asarray(value, float))
        return render(points, COLOR_BY[self.color_by.value], x_range, y_range, WIDTH, HEIGHT, self._highlight())

    # ----------------------------------------------------------------------------- colour and highlight
    def redraw(self) -> None:
        if self.points is None or self._quiet:
            return
        color_by = COLOR_BY[self.color_by.value]
        title = self._prepare_colouring(color_by)
        if title is None:                              # fell back to another colouring, drawn already
            return
        self.legend.object = legend_html(self.points, color_by, title)
        self._refresh.event(version=self._refresh.version + 1)

    def _prepare_colouring(self, color_by: str) -> str | None:
        """Fill the cluster or value column the colouring needs; the legend's title (None: not
        possible, and the colouring went back to class)."""
        if color_by == "cluster":
            tree = self.dendromap.tree
            if tree is None or tree.n_images != len(self.points):
                where = self.state.where("DendroMap")
                self.state.error(f"Colour by cluster needs the DendroMap tree: open {where} first")
                self.color_by.value = "Class"
                return None
            k = int(self.dendromap.k.value)
            key = ("cluster", id(tree), k)
            if self._colouring != key:
                cluster = np.empty(tree.n_images, np.int64)
                nodes = tree.frontier(tree.root, k)
                for i, node in enumerate(nodes):
                    cluster[tree.images(node)] = i
                self.points.set_clusters(cluster, [f"#{node}" for node in nodes])
                self._colouring = key
            return f"top {len(self.points.categories['cluster'])} DendroMap clusters"
        if color_by == "value":
            values = self.neurons.current_values()
            if values is None or len(values) != len(self.points):
                self.points.set_values(np.zeros(len(self.points), np.float32))
                self._colouring = None
                return f"no unit chosen in {self.state.where('Neurons')}"
            layer, unit = self.neurons.current_unit()
            key = ("value", id(self.neurons.values), unit)
            if self._colouring != key:                # once per unit, not per redraw
                self.points.set_values(values)
                self._colouring = key
            return f"activation of unit {unit} of {layer or 'the ' + self._output_name}"
        return {"class": "true class", "predicted": "predicted class", "correct": "prediction",
                "density": "images per pixel"}[color_by]

    def _highlight(self) -> np.ndarray | None:
        """The selection when there is one; else the DendroMap's open cluster (when followed)."""
        if self.selection is not None:
            return self.selection
        tree, path = self.dendromap.tree, self.dendromap.path
        if self.follow.value and tree is not None and path and path[-1] != tree.root \
                and tree.n_images == len(self.points):
            return tree.images(path[-1])
        return None

    def _on_neuron(self) -> None:
        if self.shown and COLOR_BY[self.color_by.value] == "value":
            self.redraw()

    def _on_dendromap(self) -> None:
        """The DendroMap opened another cluster or was rebuilt: follow it, and give it our selection."""
        if self.points is None:
            return
        if self.selection is not None and self.dendromap.external is None:
            self.dendromap.highlight_images(self.selection)
        if self.shown:
            self.redraw()

    # ----------------------------------------------------------------------------- pointer and selection
    def _pixel(self) -> float:
        """Data units per screen pixel in the current view."""
        x_range = self._view_ranges[0] or self.points.bounds[::2]
        return abs(x_range[1] - x_range[0]) / WIDTH

    def _on_pointer(self, x=None, y=None) -> None:
        if self.points is None or x is None or y is None:
            return
        index = self.points.nearest(x, y, HOVER_PX * self._pixel())
        if index is None:
            return
        ws = self.state.workspace
        label = int(ws.dataset.labels[index])
        predicted = ("" if self.predictions is None else
                     f" · predicted {html.escape(ws.dataset.class_name(int(self.predictions[index])))}")
        self.hover.object = (
            f"<div class='na-hovered'><img src='{thumbnail_src(ws.dataset, index)}' width='120' height='120' "
            f"style='image-rendering:pixelated;border:1px solid #ccc'><br><b>{html.escape(ws.dataset.ids[index])}"
            f"</b><br>label {html.escape(ws.dataset.class_name(label))}{predicted}</div>")

    def _on_tap(self, x=None, y=None) -> None:
        if self.points is None or x is None or y is None:
            return
        index = self.points.nearest(x, y, HOVER_PX * self._pixel())
        if index is not None:
            async def show() -> None:
                await self.show_image(index)
            pn.state.execute(show)

    async def show_image(self, index: int) -> None:
        """Details of a tapped image and its nearest neighbours in the mapped representation."""
        ws, vectors = self.state.workspace, self.vectors
        found = await self.state.run("Finding nearest neighbours", lambda _: nearest_neighbors(vectors, index, 8))
        if found is None or ws is not self.state.workspace:
            return
        self.detail.object = image_detail_html(
            ws.dataset.read, ws.dataset.ids, ws.dataset.class_name, ws.dataset.labels, self.predictions, index,
            *found, "Nearest neighbours (distance in the mapped representation, not on the map)")

    def _on_box(self, bounds) -> None:
        self._set_selection(self.points.in_box(*bounds))

    def _on_lasso(self, geometry: np.ndarray) -> None:
        if len(geometry) >= 3:
            self._set_selection(self.points.in_polygon(geometry[:, 0], geometry[:, 1]))

    def select(self, images: np.ndarray | None) -> None:
        """Select images (None clears) and redraw the map with them highlighted."""
        self._set_selection(images)
        self.redraw()

    def _set_selection(self, images: np.ndarray | None) -> None:
        """Set the selection (None or empty clears): grid, class counts, highlight here and in DendroMap."""
        if images is not None and len(images) == 0:
            images = None
        self.selection = None if images is None else np.asarray(images, np.int64)
        self._show_selection()
        self.dendromap.highlight_images(self.selection)

    def _show_selection(self) -> None:
        ws, chosen = self.state.workspace, self.selection
        if chosen is None or ws is None:
            self.selected.object = "<p class='na-map-empty'>No images selected: use the box or lasso tool.</p>"
            self.counts.value = pd.DataFrame()
            return
        shown = chosen[np.linspace(0, len(chosen) - 1, min(GRID_IMAGES, len(chosen))).astype(int)]
        labels, preds = ws.dataset.labels, self.predictions
        if preds is None:               # no classifier: no prediction to name, no accuracy
            wrong = np.zeros(len(labels), bool)
            titles = [ws.dataset.ids[i] for i in shown]
        else:
            wrong = (labels >= 0) & (labels != preds)
            titles = [f"{ws.dataset.ids[i]} · predicted {ws.dataset.class_name(int(preds[i]))}" for i in shown]
        grid = image_grid_html([ws.dataset.read(int(i)) for i in shown],
                               [ws.dataset.class_name(int(labels[i])) for i in shown], titles=titles,
                               flagged=[bool(wrong[i]) for i in shown], size=48, css_class="na-map-grid")
        accuracy = "" if preds is None or not (labels[chosen] >= 0).any() else \
            f", accuracy {1 - wrong[chosen].sum() / (labels[chosen] >= 0).sum():.1%}"
        self.selected.object = (f"<p class='na-map-count'><b>{len(chosen):,} images selected</b>{accuracy}"
                                f"{f' (showing {len(shown)})' if len(shown) < len(chosen) else ''}; "
                                f"highlighted in {self.state.where('DendroMap')}</p>{grid}")
        self.counts.value = class_stats(labels[chosen], None if preds is None else preds[chosen],
                                        ws.dataset.classes).round(4)

    def __panel__(self) -> pn.viewable.Viewable:
        controls = pn.FlexBox(self.layer, self.method, self.color_by, self.follow, self.clear)
        side = pn.Column("#### Under the pointer", self.hover, "#### Selected classes", self.counts, width=380)
        return pn.Column(controls, self.summary, self.legend, pn.Row(self.plot, side),
                         self.selected, self.detail, sizing_mode="stretch_width")

    @property
    def data(self) -> pd.DataFrame:
        """The points on the map, one row per image: index, id, label, class, prediction (only when the model
        has a classifier), x, y and whether it is selected; empty before a map is shown."""
        from netatlas.app.view_data import image_rows

        ws = self.state.workspace
        if self.points is None or ws is None:
            return pd.DataFrame()
        frame = image_rows(ws.dataset, self.predictions)
        frame["x"] = self.points.frame["x"].to_numpy()
        frame["y"] = self.points.frame["y"].to_numpy()
        selected = np.zeros(len(frame), bool)
        if self.selection is not None:
            selected[self.selection] = True
        frame["selected"] = selected
        return frame
