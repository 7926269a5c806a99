"""The treemap in the page: server-rendered HTML, with clicks on tiles and thumbnails sent back."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

import param
from panel.custom import JSComponent


class TreemapPane(JSComponent):
    """Shows ``html``; a click on a thumbnail calls ``on_image(index)``, elsewhere on a tile
    ``on_node(node)``. Only the HTML string travels on an update: thumbnails are URLs that the
    browser has cached, so a zoom loads only images it has not shown before."""

    html = param.String(default="")

    _esm = """
    export function render({ model, el }) {
      const root = document.createElement("div");
      root.className = "na-treemap-root";
      root.innerHTML = model.html;
      model.on("html", () => { root.innerHTML = model.html; });
      root.addEventListener("click", (event) => {
        const image = event.target.closest("[data-image]");
        const tile = event.target.closest("[data-node]");
        if (!tile) return;
        model.send_msg({ node: Number(tile.dataset.node),
                         image: image ? Number(image.dataset.image) : null });
      });
      return root;
    }
    """

    def __init__(self, on_node: Callable[[int], Any], on_image: Callable[[int], Any], **params: Any) -> None:
        super().__init__(**params)
        self._on_node, self._on_image = on_node, on_image

    def _handle_msg(self, msg: Any) -> None:
        if not isinstance(msg, dict) or not isinstance(msg.get("node"), int):
            return                                    # not from our render(): ignore
        if isinstance(msg.get("image"), int):
            result = self._on_image(msg["image"])
        else:
            result = self._on_node(msg["node"])
        if inspect.isawaitable(result):               # async handlers run on the session's event loop
            asyncio.ensure_future(result)
