"""Compose the views into one page for one browser session."""

from __future__ import annotations

import holoviews as hv
import panel as pn

from netatlas.app.config import AppConfig
from netatlas.app.dendromap_view import DendroMapView
from netatlas.app.diagram_view import DiagramView
from netatlas.app.kan_view import KANView
from netatlas.app.loader_view import LoaderView
from netatlas.app.map_view import MapView
from netatlas.app.model_view import ModelView
from netatlas.app.neurons_view import NeuronsView
from netatlas.app.residual_view import ResidualView
from netatlas.app.state import AppState

_extension_loaded = False


def load_extensions() -> None:
    global _extension_loaded
    if not _extension_loaded:
        pn.extension("tabulator", notifications=True, sizing_mode="stretch_width")
        hv.extension("bokeh", logo=False)
        _extension_loaded = True


def create_app(config: AppConfig) -> pn.template.base.BasePage:
    """The page: sidebar to choose what to open; tabs for the views. Opens the configured model."""
    load_extensions()
    state = AppState(config)
    loader = LoaderView(state)
    neurons = NeuronsView(state)
    dendromap = DendroMapView(state, neurons)
    embedding_map = MapView(state, neurons, dendromap)
    diagram = DiagramView(state)
    views = [("Model", ModelView(state)), ("Diagram", diagram), ("Neurons", neurons), ("DendroMap", dendromap),
             ("Map", embedding_map), ("Residual", ResidualView(state)), ("KAN", KANView(state))]
    tabs = pn.Tabs(*views, dynamic=False, sizing_mode="stretch_width")

    async def on_tab(event) -> None:  # the diagram, tree and map are computed when their tab is first shown
        for view in (diagram, dendromap, embedding_map):
            view.shown = views[event.new][1] is view
            await view.activate()
    tabs.param.watch(on_tab, "active")
    template = pn.template.FastListTemplate(
        title="netatlas", sidebar=[loader], main=[tabs], sidebar_width=320,
        accent_base_color="#3b6ea8", header_background="#2c4f7c")
    pn.state.onload(loader.load)
    return template
