"""Views in a notebook with no internet: every resource inside the cell output, none from a CDN.

``pn.config.inline`` puts BokehJS, Panel and its extensions' JS and CSS into the output of the cell that loads
the extension. Panel's components still name their own stylesheets by CDN URL: a model made once the view is on
screen (a Markdown pane replaced, a spinner while computing, a design's theme) links ``cdn.holoviz.org``,
which an offline JupyterLab cannot reach, and the view shows unstyled. Panel inlines these only for the models
of a first render.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path

from bokeh.models import ImportedStyleSheet
from panel.io.resources import CDN_DIST, DIST_DIR, LOCAL_DIST

_patched = False


def local_css_url(url: str) -> str:
    """``url`` as a ``data:`` URL of Panel's own copy of the file when it names one of Panel's files, on its CDN
    (the same version: Panel ships its CDN's files) or on a Panel server's static route (which a notebook does
    not have), else unchanged."""
    if not isinstance(url, str):
        return url
    for prefix in (CDN_DIST, LOCAL_DIST):
        if url.startswith(prefix):
            path = DIST_DIR / url[len(prefix):].split("?")[0]
            if _inside(path, DIST_DIR) and path.is_file():
                return "data:text/css;base64," + base64.b64encode(path.read_bytes()).decode()
    return url


def inline_cdn_stylesheets() -> None:
    """Make every ImportedStyleSheet that names one of Panel's files carry the file itself, whenever its URL is
    set: when it is made, and when Panel rewrites it for the notebook (a stylesheet fixed after that would
    already be on its way to the browser, which would request it)."""
    global _patched
    if _patched:
        return
    original = ImportedStyleSheet.__setattr__

    @functools.wraps(original)
    def __setattr__(self, name: str, value) -> None:
        original(self, name, local_css_url(value) if name == "url" else value)

    ImportedStyleSheet.__setattr__ = __setattr__
    _patched = True


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
