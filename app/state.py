"""Per-session state and the one way long work runs: in a thread, with a progress bar and errors
shown as notifications, so the page never freezes and a failure never takes the server down."""

from __future__ import annotations

import asyncio
import html
import logging
import re
import string
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import panel as pn
import param

from netatlas.app.config import AppConfig
from netatlas.backend.errors import NetatlasError
from netatlas.backend.pool import Handle, SharedPool
from netatlas.backend.workspace import Workspace

log = logging.getLogger(__name__)
# Shared by all sessions: torch already parallelizes inside one job; more jobs would just contend.
EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="netatlas")
# Shared by all sessions: one model, dataset and Workspace per distinct content (its budget: --max-memory).
POOL = SharedPool()
ERROR = "**Error:**"   # how the status line starts after a failure (the notebook raises it instead)
_PUNCTUATION = frozenset(string.punctuation)


def literal(text: str) -> str:
    """``text`` as Markdown that shows it character for character: every ASCII punctuation mark
    backslash-escaped (CommonMark allows it for all of them), so a message's ``224*224``, ``a_b``,
    backticks, ``<tags>`` or ``$x$`` stay text, never emphasis, code, HTML or math."""
    return "".join(f"\\{c}" if c in _PUNCTUATION else c for c in text)


def code_span(text: str) -> str:
    """``text`` as one Markdown code span, shown literally whatever backticks it holds (the fence is one
    backtick longer than its longest run of them)."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def toast_html(markdown: str) -> str:
    """One line of our own Markdown (bold, code spans of names) as a toast's HTML; raw HTML in it stays text."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).renderInline(markdown)


class Cancelled(NetatlasError):
    """Raised from a progress callback when the user pressed Cancel; shown like any user error."""


class AppState(param.Parameterized):
    """What one browser session has open, and the status line and progress bar of its work.

    The Workspace itself may be shared with other sessions (``POOL``); what the user selects, zooms
    and filters lives in this session's views, never in the Workspace."""

    workspace = param.ClassSelector(class_=Workspace, allow_None=True)
    busy = param.Boolean(default=False)

    def __init__(self, config: AppConfig, **params: Any) -> None:
        super().__init__(**params)
        self.config = config
        self.progress = pn.indicators.Progress(name="progress", value=0, max=100, active=False,
                                               sizing_mode="stretch_width", visible=False)
        self.status = pn.pane.Markdown("", css_classes=["na-status"], sizing_mode="stretch_width")
        self.cancelled = threading.Event()
        self.cancel_button = pn.widgets.Button(name="Cancel", button_type="warning", visible=False,
                                               sizing_mode="stretch_width", css_classes=["na-cancel"])
        self.cancel_button.on_click(lambda _: self.cancelled.set())
        self._held: Handle[Workspace] | None = None
        self._running: list[str] = []         # labels of the runs in flight, oldest first
        self._closed = False
        self._skipped_told = 0                # unreadable images the user has been told about
        self.last_error: str | None = None    # the last error's own text (the notebook raises it)
        self.tabs = True                      # the views sit in the page's tabs (False: a notebook's cells)
        # This session's toasts, taken while its document is current: after an await (AppState.run) Panel may
        # look them up under another document and make a new area that is on no page (no toast showed).
        self.notifications = pn.state.notifications

    def where(self, view: str) -> str:
        """How a message points at another view: "the DendroMap tab" on the page, "the DendroMap view" in
        a notebook, which has no tabs."""
        return f"the {view} {'tab' if self.tabs else 'view'}"

    def hold(self, handle: Handle[Workspace]) -> None:
        """Open ``handle``'s Workspace in this session and give back the one it had open."""
        if self._closed:                   # the page closed while its Workspace was loading
            handle.release()
            return
        previous, self._held = self._held, handle
        self._skipped_told = 0
        self.workspace = handle.value
        if previous is not None:
            previous.release()

    def release(self) -> None:
        """Give back the session's Workspace (the page closed): the pool frees what nobody holds."""
        self._closed = True
        if self._held is not None:
            self._held.release()
            self._held = None

    async def run(self, label: str, work: Callable[[Callable[[int, int], None]], Any]) -> Any:
        """Run ``work(progress)`` off the event loop; return its result, or None after an error.

        ``busy`` stays True until every run in flight has ended: a short run started meanwhile (opening the
        Diagram tab traces the model) must not re-enable Load, Compute and Open while the first pass still runs."""
        self._running.append(label)
        self.busy = True
        self.cancelled.clear()
        self.status.object = f"{literal(label)}..."
        self.progress.param.update(value=0, visible=True, active=True)
        self.cancel_button.visible = True

        def progress(done: int, total: int) -> None:
            if self.cancelled.is_set():
                raise Cancelled(f"{label}: cancelled")
            self.progress.param.update(value=int(100 * done / max(total, 1)), active=False)

        try:
            result = await asyncio.wrap_future(EXECUTOR.submit(work, progress))
        except NetatlasError as exc:
            self.error(str(exc))
            return None
        except Exception as exc:  # a bug, not a user error: keep serving, log the traceback
            log.error("%s failed:\n%s", label, traceback.format_exc())
            self.error(f"{label} failed unexpectedly ({type(exc).__name__}: {exc}); "
                       "the server log has the traceback")
            return None
        finally:
            self._end(label)
        self.status.object = f"{literal(self._running[-1])}..." if self._running else ""
        self.report_skipped()
        return result

    def _end(self, label: str) -> None:
        """One run has ended: the page is idle again, its progress bar and Cancel hidden, once none is left."""
        self._running.remove(label)
        if not self._running:
            self.busy = False
            self.progress.param.update(visible=False, active=False)
            self.cancel_button.visible = False

    def report_skipped(self) -> None:
        """Tell the user about images found unreadable since they were last told: found when decoded
        (a folder opens without reading its images), they are left out of every result."""
        skipped = self.workspace.dataset.skipped if self.workspace is not None else []
        if skipped:
            self.status.object = left_out_message(skipped)   # stays while this dataset is open
        if len(skipped) > self._skipped_told and self.notifications is not None:
            self.notifications.warning(toast_html(left_out_message(skipped)), duration=8000)
        self._skipped_told = len(skipped)

    def error(self, message: str) -> None:
        """Show ``message`` (user and file text: shown literally, never as Markdown or HTML) in the status
        line after a bold "Error:", and as a toast."""
        self.last_error = message
        self.status.object = f"{ERROR} {literal(message)}"
        if self.notifications is not None:   # Notyf sets a toast's message as HTML
            self.notifications.error(html.escape(message), duration=10000)


def left_out_message(skipped: list[str]) -> str:
    """What the status line says about unreadable images: how many, the first few, and that no result has them."""
    names = ", ".join(code_span(name) for name in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return (f"Left out {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''} ({names}): they are in no "
            "result, count or view")
