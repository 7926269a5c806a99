"""Compose the views into one page for one browser session."""

from __future__ import annotations

import re
from typing import Any

import holoviews as hv
import panel as pn
from panel.io.resources import parse_template

from netatlas.app.config import AppConfig
from netatlas.app.dendromap_view import DendroMapView
from netatlas.app.diagram_view import DiagramView
from netatlas.app.kan_view import KANView
from netatlas.app.loader_view import LoaderView
from netatlas.app.map_view import MapView
from netatlas.app.model_view import ModelView
from netatlas.app.neurons_view import NeuronsView
from netatlas.app.offline_resources import inline_cdn_stylesheets
from netatlas.app.residual_view import ResidualView
from netatlas.app.state import POOL, AppState

_extension_loaded = False
SYSTEM_FONTS = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# Toasts (Notyf, in the page's light DOM): Notyf paints the colour with a ripple circle that does not cover a
# tall toast, on a 300 px toast, and fades white text in over a light red. Paint the toast itself in colours
# that read (white on dark red: 7:1; dark text on amber), let long messages wrap, and keep the text opaque.
TOAST_CSS = """
.notyf__toast { max-width: min(520px, calc(100vw - 40px)); }
.notyf__ripple { display: none; }
.notyf__wrapper { align-items: flex-start; padding-top: 12px; padding-bottom: 12px; }
.notyf__message { white-space: normal; overflow-wrap: anywhere; line-height: 1.45; font-size: 14px; }
.notyf__toast--error { background: #a4161a !important; }
.notyf__toast--error .notyf__message, .notyf__toast--error .notyf__dismiss-btn { color: #ffffff; }
.notyf__toast--warning { background: #ffc107 !important; }
.notyf__toast--warning .notyf__message { color: #1f1f1f; }
.notyf__message code { background: rgba(0, 0, 0, 0.15); padding: 0 3px; border-radius: 2px; }
"""
# The header's controls: Panel's tooltip for each, the element it is anchored to, and what the control does.
# Panel's tooltips name the control ("Toggle the Theme", "Busy Indicator") rather than what it does, and the
# controls have no accessible name for a screen reader.
HEADER_CONTROLS = (
    ("Toggle the Sidebar", "sidebar-button", "Show or hide the sidebar, where the model and dataset are chosen"),
    ("Toggle the Theme", "theme-switch", "Light or dark theme"),    # under the switch at the edge: short
    ("Busy Indicator", "busy-container", "Spins while the server works: the sidebar says on what, and can cancel it"),
)


def labelled_header(source: str) -> str:
    """Panel's Fast template ``source`` with each header control's tooltip saying what it does, and the same
    words as the control's accessible name (aria-label)."""
    for tooltip, element, text in HEADER_CONTROLS:
        source = re.sub(rf">\s*{re.escape(tooltip)}\s*</fast-tooltip>", f">{text}</fast-tooltip>", source)
        source = source.replace(f'id="{element}"', f'id="{element}" aria-label="{text}"')
    return source


def load_extensions(inline: bool = False) -> None:
    """Panel's and HoloViews' extensions, once per process. ``inline`` (the notebook) puts BokehJS, Panel and
    their extensions' JS and CSS into the cell's output instead of linking them from CDNs that an offline
    JupyterLab cannot reach; HoloViews' own load would link them again unless told too. A notebook has no
    toasts: its errors are raised in the cell (and inlined, Notyf's script would not define its global)."""
    global _extension_loaded
    if not _extension_loaded:
        offline_fonts()
        if inline:
            pn.config.inline = True
            inline_cdn_stylesheets()
        pn.extension("tabulator", notifications=not inline, sizing_mode="stretch_width")
        hv.extension("bokeh", logo=False, inline=pn.config.inline)
        _extension_loaded = True


def offline_fonts() -> None:
    """Keep Panel's Fast design from linking its web font from another host (an air-gapped cluster cannot
    reach it, and the request would tell that host who opened the page); the page uses system fonts."""
    pn.theme.Fast._resources = {key: value for key, value in pn.theme.Fast._resources.items() if key != "font"}


def build_views(state: AppState) -> dict[str, Any]:
    """The page's views by tab name, linked as the page links them (the notebook shows these same objects)."""
    neurons = NeuronsView(state)
    dendromap = DendroMapView(state, neurons)
    return {"Model": ModelView(state), "Diagram": DiagramView(state), "Neurons": neurons, "DendroMap": dendromap,
            "Map": MapView(state, neurons, dendromap), "Residual": ResidualView(state), "KAN": KANView(state)}


def create_app(config: AppConfig) -> pn.template.base.BasePage:
    """The page: sidebar to choose what to open; tabs for the views. Opens the configured model."""
    load_extensions()
    POOL.max_bytes = config.max_memory
    # Per session: pn.extension's notifications=True runs once per process (load_extensions), and a setting made
    # inside one session applies to that session only, so the other sessions had no toasts at all.
    pn.config.notifications = True
    state = AppState(config)
    pn.state.on_session_destroyed(lambda _context: state.release())
    loader = LoaderView(state)
    template = pn.template.FastListTemplate(
        title="netatlas", sidebar=[loader], main=[view_tabs(build_views(state))], sidebar_width=320,
        accent_base_color="#3b6ea8", header_background="#2c4f7c", font=SYSTEM_FONTS)
    template.config.raw_css.append(TOAST_CSS)
    template.template = parse_template(labelled_header(template._template.read_text(encoding="utf-8")))
    pn.state.onload(loader.load)
    return template


def view_tabs(views: dict[str, Any]) -> pn.Tabs:
    """The views as tabs. A tab is rendered when it is first opened and then kept: a session pays only for
    the views it looks at (on the demo, rendering every tab at load was half the server's work per page).
    The diagram, tree and map are also computed only when their tab is first shown.

    Panel's own ``dynamic`` tabs are not used: they detach a hidden tab's models, and a pane updated while
    detached links its stylesheets from Panel's CDN (a request to another host when the tab shows again)."""
    names = list(views)
    tabs = pn.Tabs(*[(name, views[name] if i == 0 else pn.Column(name=name)) for i, name in enumerate(names)],
                   sizing_mode="stretch_width")
    rendered = {names[0]}
    lazy = [views[name] for name in ("Diagram", "DendroMap", "Map")]

    async def on_tab(event) -> None:
        name = names[event.new]
        if name not in rendered:
            rendered.add(name)
            tabs[event.new] = (name, views[name])
        for view in lazy:
            view.shown = views[name] is view
            await view.activate()
    tabs.param.watch(on_tab, "active")
    return tabs
