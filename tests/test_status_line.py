"""User and file text in the page's status line and toasts is shown literally: never Markdown, never HTML."""

from __future__ import annotations

import html
import re

import panel as pn
import pytest

from netatlas.app.config import AppConfig
from netatlas.app.state import AppState, left_out_message, literal, toast_html

MESSAGE = ("Input image size (224*224) doesn't match model (64*64) in my_model_v2/`weights`.pt "
           "<b>not bold</b> & $x$ [link](http://x) # 1. _a_ \\*")


def shown_text(pane: pn.pane.Markdown) -> tuple[str, str]:
    """(the HTML the browser receives, its visible text) for a Markdown pane."""
    sent = html.unescape(pane._transform_object(pane.object)["object"])   # Panel escapes it for transport
    return sent, html.unescape(re.sub(r"<[^>]+>", "", sent)).strip()


@pytest.fixture
def state():
    return AppState(AppConfig())


def test_an_error_reaches_the_status_line_unchanged_after_a_bold_prefix(state):
    state.error(MESSAGE)
    sent, text = shown_text(state.status)
    assert text == f"Error: {MESSAGE}"
    assert "<strong>Error:</strong>" in sent                  # our own formatting still works
    assert "<em>" not in sent and "<code>" not in sent and "<b>" not in sent and "<a " not in sent
    assert state.last_error == MESSAGE


def test_a_running_label_is_literal_too(state):
    label = "Loading my_model_*v2*.pt"
    state.status.object = f"{literal(label)}..."
    assert shown_text(state.status)[1] == f"{label}..."


def test_left_out_names_are_shown_as_code_whatever_they_hold(state):
    names = ["a*b_c*.png", "x`y`.png", "<img src=x>.png", "more.png"]
    state.status.object = left_out_message(names)
    sent, text = shown_text(state.status)
    assert sent.count("<code>") == 3 and "<img" not in sent and "<em>" not in sent
    assert all(name in text for name in names[:3])
    toast = toast_html(left_out_message(names))
    assert "<code>x`y`.png</code>" in toast and "<code>&lt;img src=x&gt;.png</code>" in toast
