"""The treemap in the page: server-rendered HTML, with clicks on tiles (zoom) and on a thumbnail's
details button sent back."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

import param
from panel.custom import JSComponent


class TreemapPane(JSComponent):
    """Shows ``html``; a click anywhere on a tile calls ``on_node(node)`` (zoom in), and the round "i"
    that appears on the thumbnail under the pointer calls ``on_image(index)`` (its details). Clicks on
    thumbnails zoom too: they fill the tiles, so a click that depended on landing between them would
    feel random. Only the HTML string travels on an update: thumbnails are URLs that the browser has
    cached, so a zoom loads only images it has not shown before."""

    html = param.String(default="")

    _esm = """
    export function render({ model, el }) {
      const wrap = document.createElement("div");
      wrap.style.position = "relative";
      const root = document.createElement("div");
      root.className = "na-treemap-root";
      root.innerHTML = model.html;
      const info = document.createElement("button");
      info.className = "na-info";
      info.textContent = "i";
      info.title = "Details of this image, with its nearest neighbours";
      wrap.append(root, info);
      const hide = () => { info.style.display = "none"; delete info.dataset.image; };
      model.on("html", () => { root.innerHTML = model.html; hide(); });
      root.addEventListener("mouseover", (event) => {
        const image = event.target.closest("[data-image]");
        if (!image) { hide(); return; }
        const box = image.getBoundingClientRect(), base = wrap.getBoundingClientRect();
        const size = Math.min(16, box.width, box.height);
        info.style.width = info.style.height = `${size}px`;
        info.style.left = `${box.right - base.left - size - 1}px`;
        info.style.top = `${box.top - base.top + 1}px`;
        info.dataset.image = image.dataset.image;
        info.dataset.node = image.closest("[data-node]").dataset.node;
        info.style.display = "block";
      });
      wrap.addEventListener("mouseleave", hide);
      info.addEventListener("click", (event) => {
        event.stopPropagation();
        if (info.dataset.image === undefined) return;
        model.send_msg({ node: Number(info.dataset.node), image: Number(info.dataset.image) });
      });
      root.addEventListener("click", (event) => {
        const tile = event.target.closest("[data-node]");
        if (tile) model.send_msg({ node: Number(tile.dataset.node), image: null });
      });
      return wrap;
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
