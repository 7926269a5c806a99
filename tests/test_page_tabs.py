"""The page's tabs: a view is rendered when its tab is first opened, and the lazy views are told when
they are shown (so the diagram, tree and map are computed only then)."""

from __future__ import annotations

import asyncio

import panel as pn

from netatlas.app.page import view_tabs
from tests.backend_support import run_coroutine

NAMES = ["Model", "Diagram", "Neurons", "DendroMap", "Map", "Residual", "KAN"]


class FakeView(pn.viewable.Viewer):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.label, self.shown, self.activated = name, False, 0

    async def activate(self) -> None:
        self.activated += int(self.shown)

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.pane.Markdown(self.label)


def shown_views(tabs: pn.Tabs) -> list[str]:
    """The labels of the views the tabs hold (an unopened tab holds an empty placeholder)."""
    return [tab.object for tab in tabs.objects if isinstance(tab, pn.pane.Markdown)]


def test_a_tab_holds_its_view_from_when_it_is_first_opened():
    views = {name: FakeView(name) for name in NAMES}
    tabs = view_tabs(views)
    assert shown_views(tabs) == ["Model"] and tabs._names == NAMES
    assert all(isinstance(tab, pn.Column) and not tab.objects for tab in tabs.objects[1:])

    async def open_tabs(*indices: int) -> None:
        for index in indices:
            tabs.active = index
            await asyncio.sleep(0.05)                   # the tab watcher is a coroutine
    run_coroutine(open_tabs(3, 0, 3))
    assert shown_views(tabs) == ["Model", "DendroMap"] and tabs.objects[3].object == "DendroMap"
    assert tabs.active == 3 and tabs._names == NAMES
    assert views["DendroMap"].activated == 2 and views["DendroMap"].shown
    assert views["Diagram"].activated == 0 and views["Map"].activated == 0 and not views["Map"].shown
