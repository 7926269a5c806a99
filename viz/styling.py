"""Options that hold in both renderers: Bokeh in the page, Matplotlib for SVG/PDF/PNG export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the renderer used in the page
import holoviews.plotting.mpl  # noqa: F401 - registers the renderer used for files

EXPORT_FORMATS = ("svg", "pdf", "png")
WIDE = {"bokeh": {"responsive": True, "height": 300},
        "matplotlib": {"aspect": 2.0, "fig_size": 220, "legend_position": "right"}}
PANEL = {"bokeh": {"responsive": True, "height": 280}, "matplotlib": {"aspect": 1.2}}


def no_active_scroll(plot, _element) -> None:
    """Bokeh hook: no scroll tool is active, whatever HoloViews chose (wheel zoom stays in the toolbar)."""
    plot.state.toolbar.active_scroll = None


# Wheel zoom stays in the toolbar but off: a plot in a scrolling page must not catch the wheel of a user
# scrolling past it (HoloViews turns wheel_zoom on by default). Only the Map zooms on the wheel.
PAGE_SCROLLS = {"active_tools": ["pan"], "hooks": [no_active_scroll]}


def styled(element: hv.core.Dimensioned, common: dict[str, Any] | None = None,
           bokeh: dict[str, Any] | None = None, mpl: dict[str, Any] | None = None) -> hv.core.Dimensioned:
    """Apply ``common`` options to both backends plus each backend's own."""
    common = common or {}
    element = element.opts(**common, **(bokeh or {}), backend="bokeh")
    return element.opts(**common, **(mpl or {}), backend="matplotlib")


def page_scrolls(figure: hv.core.Dimensioned) -> hv.core.Dimensioned:
    """``figure`` with wheel zoom available but not active, so the wheel over it scrolls the page."""
    return figure.opts(**PAGE_SCROLLS, backend="bokeh")


def export(figure: hv.core.Dimensioned, path: str | Path, dpi: int = 150) -> Path:
    """Write ``figure`` as SVG, PDF or PNG (by suffix) through Matplotlib, for papers."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"dpi": dpi} if fmt == "png" else {}
    hv.save(figure, path, backend="matplotlib", fmt=fmt, **kwargs)
    return path
