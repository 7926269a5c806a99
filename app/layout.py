"""Line up controls that have no title of their own (button groups, buttons) with Panel's titled inputs.

A Bokeh input draws its title on a 20 px line and its 40 px box right under it, inside a 5 px margin. A
Markdown label sits inside a paragraph's margins, so it and the buttons under it came out lower than the
titles and boxes beside them; a lone button sat level with the titles, above the boxes. Here a label takes
the title line, and buttons are centred on the boxes' line."""

from __future__ import annotations

import html

import panel as pn

TITLE_LINE = 20                       # px: a Bokeh input's title (14 px text)
INPUT_BOX = 40                        # px: the input's box under it
BUTTON = 34                           # px: a button's or button group's height
NUDGE = (INPUT_BOX - BUTTON) // 2     # how much lower a button sits to share the box's vertical centre


def field(label: str, widget: pn.widgets.Widget) -> pn.Column:
    """``widget`` under ``label``, the label on the title line of the titled inputs beside it and the widget
    centred on their boxes (the column is exactly as tall as a titled input). A widget without a width of its
    own keeps its content's, and so does the column: the page's stretch_width default would spread a button group
    over the rest of the row, and push the buttons beside it apart."""
    title = pn.pane.HTML(html.escape(label), height=TITLE_LINE, margin=(5, 10, 0, 10), sizing_mode=None,
                         styles={"line-height": f"{TITLE_LINE}px", "white-space": "nowrap"},
                         css_classes=["na-field-label"])
    widget.param.update(margin=(NUDGE, 10, 5 + NUDGE, 10), **({"sizing_mode": None} if widget.width is None else {}))
    return pn.Column(title, widget, margin=0, sizing_mode=None)


def beside_inputs(button: pn.widgets.Widget) -> pn.widgets.Widget:
    """``button`` in a row of titled inputs: at the row's foot, centred on the inputs' boxes rather than
    level with their titles."""
    button.param.update(align="end", margin=(5, 10, 5 + NUDGE, 10))
    return button
