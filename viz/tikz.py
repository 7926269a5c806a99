"""Graphviz diagrams as TikZ, so a model diagram can go into a LaTeX paper as vector graphics whose
text is set by TeX in the paper's own fonts.

Graphviz does the layout (``dot -Tjson``); its xdot drawing operations (polygons, polylines, Béziers,
ellipses, text, pen/fill colours, fonts and line styles) are then translated one by one into TikZ
paths and nodes, so the picture matches what Graphviz draws as SVG without re-implementing any of its
shapes, arrowheads, clusters or multi-colour edges. Coordinates stay in Graphviz points (y up), with
``x=1pt,y=1pt``. ``dot_to_tikz`` gives either a document that ``pdflatex`` compiles to one page of
exactly the diagram's size (only ``article``, ``geometry``, ``fix-cm`` and ``tikz`` needed) or a bare
``tikzpicture`` to ``\\input`` into a paper.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

import graphviz

PAD = 4.0                  # pt around the bounding box where the graph sets no ``pad`` (Graphviz's default)
PEN_SCALE = 1.0            # TikZ line width in pt per Graphviz penwidth (SVG draws penwidth N as N pt)
LEADING = 1.2              # baseline skip as a multiple of the font size
MAX_EXTENT = 14400.0       # pt: TeX's dimensions stop at 16383pt, PDF readers' pages at 200in
DASHED = "on 5pt off 2pt"  # Graphviz's SVG stroke-dasharray for style=dashed
DOTTED = "on 1pt off 5pt"  # ... and for style=dotted
DRAW_LISTS = ("_draw_", "_ldraw_", "_hdraw_", "_tdraw_", "_hldraw_", "_tldraw_")  # xdot op lists, in order
SNIPPET_HEADER = ("% TikZ picture drawn from a Graphviz layout by netatlas; needs \\usepackage{tikz} in the\n"
                  "% preamble (and \\usepackage{fix-cm} for exact font sizes with Computer Modern).\n")

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "#": r"\#", "$": r"$\$$", "%": r"\%", "&": r"\&", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    # In the OT1 encoding pdflatex uses by default these print as other glyphs (¡ ¿ —); a text
    # \$ in a sans or typewriter font comes from the TS1 encoding, a METAFONT bitmap, so math's $.
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}
UNICODE_MATH = {
    "·": r"\cdot", "×": r"\times", "÷": r"\div", "−": "-", "→": r"\to", "←": r"\leftarrow",
    "↑": r"\uparrow", "↓": r"\downarrow", "⊙": r"\odot", "⊕": r"\oplus", "⊗": r"\otimes",
    "±": r"\pm", "≤": r"\leq", "≥": r"\geq", "≈": r"\approx", "≠": r"\neq", "∞": r"\infty",
    "∑": r"\sum", "√": r"\surd", "°": r"^{\circ}",
    "α": r"\alpha", "β": r"\beta", "γ": r"\gamma", "δ": r"\delta", "ε": r"\epsilon",
    "η": r"\eta", "θ": r"\theta", "λ": r"\lambda", "μ": r"\mu", "π": r"\pi", "σ": r"\sigma",
    "τ": r"\tau", "ϕ": r"\phi", "φ": r"\phi", "ω": r"\omega", "Σ": r"\Sigma", "Δ": r"\Delta",
}
UNICODE_TEXT = {"…": r"\dots{}", "–": "--", "—": "---", "‘": "`", "’": "'", "“": "``", "”": "''"}
SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎", "0123456789+-=()"))
SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾", "0123456789+-=()"))
SCRIPT_RUN = re.compile(f"([{''.join(SUBSCRIPTS)}]+)|([{''.join(SUPERSCRIPTS)}]+)")
XCOLOR_NAMES = {"black", "white", "red", "green", "blue", "cyan", "magenta", "yellow", "gray",
                "darkgray", "lightgray", "brown", "lime", "olive", "orange", "pink", "purple",
                "teal", "violet"}
INVISIBLE = {"", "none", "transparent", "invis"}


def dot_to_tikz(dot_source: str, *, standalone: bool = True) -> str:
    """TikZ for the diagram that Graphviz lays out from ``dot_source``.

    ``standalone=True`` gives a LaTeX document that ``pdflatex`` compiles to a single page the size
    of the diagram (plus the graph's ``pad``); ``standalone=False`` gives only the ``tikzpicture``
    (colours defined inside it), for ``\\input`` into a paper that loads ``tikz``. Graphviz's own
    errors (bad DOT, no ``dot`` on PATH) propagate as the ``graphviz`` package raises them. A
    diagram over 200 inches across is scaled down whole, as TeX cannot draw it at full size.
    """
    layout = _fit(json.loads(graphviz.Source(dot_source).pipe(format="json", encoding="utf-8")))
    picture = _picture(layout)
    if not standalone:
        return SNIPPET_HEADER + picture
    left, bottom, right, top = _frame(layout)
    return "\n".join([
        r"\documentclass{article}",
        r"\usepackage{fix-cm}",
        f"\\usepackage[paperwidth={_num(right - left)}pt,paperheight={_num(top - bottom)}pt,"
        "margin=0pt]{geometry}",
        r"\usepackage{tikz}",
        r"\pagestyle{empty}",
        # The picture's height, summed by TeX from rounded parts, can exceed the page by a few sp,
        # which would push it to a second page: the box is given the text height exactly.
        r"\begin{document}\noindent\raisebox{0pt}[\textheight][0pt]{%",
        picture.rstrip("\n") + "}%",
        r"\end{document}", ""])


def escape_latex(text: str) -> str:
    """``text`` as LaTeX that pdflatex typesets with no extra packages: TeX's special characters
    escaped, the symbols model diagrams use (subscript digits, ·, ×, σ, →, ...) turned into math,
    and any other character pdflatex would stop on replaced by ``?``."""
    out: list[str] = []
    at = 0
    for match in SCRIPT_RUN.finditer(text):
        out.append(_escape_chars(text[at:match.start()]))
        sub, sup = match.groups()
        if sub:
            out.append("$_{" + "".join(SUBSCRIPTS[c] for c in sub) + "}$")
        else:
            out.append("$^{" + "".join(SUPERSCRIPTS[c] for c in sup) + "}$")
        at = match.end()
    out.append(_escape_chars(text[at:]))
    return "".join(out)


def _escape_chars(text: str) -> str:
    """Character-by-character part of ``escape_latex`` (script runs are merged before this)."""
    return "".join(_escape_char(c) for c in text)


def _escape_char(char: str) -> str:
    """One character as LaTeX; accents are dropped rather than relying on inputenc's coverage."""
    if char in LATEX_SPECIAL:
        return LATEX_SPECIAL[char]
    if char in UNICODE_MATH:
        return f"${UNICODE_MATH[char]}$"
    if char in UNICODE_TEXT:
        return UNICODE_TEXT[char]
    if char.isascii():
        return char if char.isprintable() else " "
    base = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
    return _escape_chars(base) if base.strip() else "?"


@dataclass(frozen=True)
class _Pen:
    """The xdot graphics state: colours as TikZ colour expressions with opacity, line style, font."""

    stroke: str | None = "black"
    stroke_opacity: float = 1.0
    fill: str | None = "black"
    fill_opacity: float = 1.0
    width: float = 1.0
    dash: str | None = None
    size: float = 14.0
    face: str = "Times-Roman"
    fontchar: int = 0


class _Canvas:
    """Collects TikZ lines and the colours they name, so each colour is defined once per picture."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.colors: dict[tuple[int, int, int], str] = {}

    def color(self, rgb: tuple[int, int, int]) -> str:
        """A name for ``rgb``, defined by ``\\definecolor`` at the top of the picture."""
        if rgb not in self.colors:
            self.colors[rgb] = f"gvcolor{len(self.colors)}"
        return self.colors[rgb]

    def definitions(self) -> list[str]:
        """The ``\\definecolor`` lines; inside the picture, so they stay local to it."""
        return [f"\\definecolor{{{name}}}{{RGB}}{{{r},{g},{b}}}" for (r, g, b), name in self.colors.items()]


def _picture(layout: dict[str, Any]) -> str:
    """The ``tikzpicture``: graph background and label, clusters, nodes, edges, in Graphviz's order
    (edges on top of nodes unless the graph asks for ``outputorder=edgesfirst``)."""
    canvas = _Canvas()
    left, bottom, right, top = _frame(layout)
    canvas.lines.append(f"\\useasboundingbox {_point((left, bottom))} rectangle {_point((right, top))};")
    if str(layout.get("bgcolor", "")).lower() not in INVISIBLE:
        _draw_object(canvas, "graph background", {"_draw_": layout.get("_draw_", [])})
    objects = layout.get("objects", [])
    n_subgraphs = int(layout.get("_subgraph_cnt", 0))
    for obj in objects[:n_subgraphs]:
        _draw_object(canvas, f"cluster {obj.get('name', '')}", obj)
    nodes = [(f"node {obj.get('name', '')}", obj) for obj in objects[n_subgraphs:]]
    arrow = "->" if layout.get("directed", True) else "--"
    edges = [(f"edge {_name(objects, e.get('tail'))} {arrow} {_name(objects, e.get('head'))}", e)
             for e in layout.get("edges", [])]
    edges_first = str(layout.get("outputorder", "")).lower() == "edgesfirst"
    for label, obj in (edges + nodes if edges_first else nodes + edges):
        _draw_object(canvas, label, obj)
    _draw_object(canvas, "graph label", {"_ldraw_": layout.get("_ldraw_", [])})
    body = canvas.definitions() + canvas.lines
    return "\\begin{tikzpicture}[x=1pt,y=1pt]\n" + "\n".join(body) + "\n\\end{tikzpicture}\n"


def _fit(layout: dict[str, Any]) -> dict[str, Any]:
    """``layout`` scaled down, coordinates, line widths and font sizes alike, where the padded
    picture would exceed ``MAX_EXTENT`` (TeX stops with "Dimension too large"); else unchanged."""
    x0, y0, x1, y1 = _bbox(layout)
    pad_x, pad_y = _pad(layout)
    scale = MAX_EXTENT / max(x1 - x0 + 2 * pad_x, y1 - y0 + 2 * pad_y, MAX_EXTENT)
    if scale == 1:
        return layout
    fitted = dict(layout, bb=",".join(str(v * scale) for v in (x0, y0, x1, y1)),
                  pad=f"{pad_x * scale / 72},{pad_y * scale / 72}")
    for key in ("objects", "edges"):
        fitted[key] = [_scale_lists(obj, scale) for obj in layout.get(key, [])]
    return _scale_lists(fitted, scale)


def _scale_lists(obj: dict[str, Any], scale: float) -> dict[str, Any]:
    """``obj`` with every drawing list scaled, each starting at the scaled default pen width."""
    scaled = dict(obj)
    for key in DRAW_LISTS:
        if obj.get(key):
            default = {"op": "S", "style": f"setlinewidth({scale})"}
            scaled[key] = [default] + [_scale_op(op, scale) for op in obj[key]]
    return scaled


def _scale_op(op: dict[str, Any], scale: float) -> dict[str, Any]:
    """One xdot operation with its lengths (points, radii, text position, font size, pen) scaled."""
    op = dict(op)
    if "points" in op:
        op["points"] = [[x * scale, y * scale] for x, y in op["points"]]
    for key in ("rect", "pt"):
        if key in op:
            op[key] = [v * scale for v in op[key]]
    if "size" in op:
        op["size"] = float(op["size"]) * scale
    if op.get("op") == "S":
        width = _line_width(str(op.get("style", "")))
        if width is not None:
            op["style"] = f"setlinewidth({width * scale})"
    return op


def _frame(layout: dict[str, Any]) -> tuple[float, float, float, float]:
    """The picture's corners: the bounding box plus the pad, rounded as written, so that the page
    made from them holds the picture to the last digit."""
    x0, y0, x1, y1 = _bbox(layout)
    pad_x, pad_y = _pad(layout)
    left, bottom, right, top = (float(_num(v)) for v in (x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y))
    return left, bottom, right, top


def _bbox(layout: dict[str, Any]) -> tuple[float, float, float, float]:
    """The graph's bounding box ``bb`` in points."""
    x0, y0, x1, y1 = (float(v) for v in str(layout.get("bb", "0,0,0,0")).split(","))
    return x0, y0, x1, y1


def _pad(layout: dict[str, Any]) -> tuple[float, float]:
    """The margin Graphviz leaves around the drawing: the graph's ``pad`` ("x" or "x,y", inches),
    so the picture and page come out the size of Graphviz's own SVG or PDF."""
    try:
        values = [float(v) * 72 for v in str(layout["pad"]).split(",")]
    except (KeyError, ValueError):
        return PAD, PAD
    return (values[0], values[-1]) if values else (PAD, PAD)


def _name(objects: list[dict[str, Any]], index: Any) -> str:
    """The node an edge end refers to (edges give indices into ``objects``)."""
    try:
        return str(objects[int(index)].get("name", index))
    except (TypeError, ValueError, IndexError):
        return str(index)


def _draw_object(canvas: _Canvas, label: str, obj: dict[str, Any]) -> None:
    """Every drawing list of one cluster, node or edge, under a comment naming it (so a reader, or
    a test, can find an object's paths); each list starts from a fresh graphics state, as Graphviz
    writes every list complete with its own colours and styles."""
    lists = [obj[key] for key in DRAW_LISTS if obj.get(key)]
    if not lists:
        return
    canvas.lines.append("% " + " ".join(label.split()))
    for ops in lists:
        pen = _Pen()
        for op in ops:
            pen = _apply(canvas, pen, op)


def _apply(canvas: _Canvas, pen: _Pen, op: dict[str, Any]) -> _Pen:
    """One xdot operation: a state change returns the new state, a drawing appends a TikZ line."""
    kind = op.get("op")
    if kind in ("c", "C"):
        color, opacity = _color(canvas, op)
        return replace(pen, stroke=color, stroke_opacity=opacity) if kind == "c" else \
            replace(pen, fill=color, fill_opacity=opacity)
    if kind == "S":
        return _style(pen, str(op.get("style", "")))
    if kind == "F":
        return replace(pen, size=float(op.get("size", pen.size)), face=str(op.get("face", pen.face)))
    if kind == "t":
        return replace(pen, fontchar=int(op.get("fontchar", 0)))
    drawing = _drawing(pen, op)
    if drawing:
        canvas.lines.append(drawing)
    return pen


def _drawing(pen: _Pen, op: dict[str, Any]) -> str | None:
    """TikZ for a drawing operation; None for one with nothing visible (or images, not supported)."""
    kind = op.get("op")
    if kind == "T":
        return _text(pen, op)
    command = _path_command(pen, filled=kind in ("P", "B", "E"))
    if command is None:
        return None
    points = [(float(x), float(y)) for x, y in op.get("points", [])]
    if kind in ("p", "P") and points:
        return f"{command} " + " -- ".join(map(_point, points)) + " -- cycle;"
    if kind == "L" and points:
        return f"{command} " + " -- ".join(map(_point, points)) + ";"
    if kind in ("b", "B") and len(points) >= 4:
        return f"{command} " + _bezier(points) + ";"
    if kind in ("e", "E") and op.get("rect"):
        cx, cy, rx, ry = (float(v) for v in op["rect"])
        return f"{command} {_point((cx, cy))} ellipse [x radius={_num(rx)}, y radius={_num(ry)}];"
    return None


def _bezier(points: list[tuple[float, float]]) -> str:
    """A piecewise cubic Bézier: the start point, then (control, control, end) triples."""
    parts = [_point(points[0])]
    for i in range(1, len(points) - 2, 3):
        c1, c2, end = points[i:i + 3]
        parts.append(f".. controls {_point(c1)} and {_point(c2)} .. {_point(end)}")
    return " ".join(parts)


def _path_command(pen: _Pen, filled: bool) -> str | None:
    """``\\draw``, ``\\fill`` or ``\\filldraw`` with the pen's options, as Graphviz strokes a shape's
    outline in the pen colour and fills it (filled operations only) in the fill colour; None when
    neither shows. Unitless ellipse radii and coordinates scale with the picture's ``x``/``y``."""
    options = []
    stroke = pen.stroke is not None
    fill = filled and pen.fill is not None
    if stroke:
        options += [f"draw={pen.stroke}", f"line width={_num(pen.width * PEN_SCALE)}pt"]
        if pen.dash:
            options.append(f"dash pattern={pen.dash}")
        if pen.stroke_opacity < 1:
            options.append(f"draw opacity={_num(pen.stroke_opacity)}")
    if fill:
        options.append(f"fill={pen.fill}")
        if pen.fill_opacity < 1:
            options.append(f"fill opacity={_num(pen.fill_opacity)}")
    if not options:
        return None
    command = "\\filldraw" if stroke and fill else "\\draw" if stroke else "\\fill"
    return f"{command}[{','.join(options)}]"


def _text(pen: _Pen, op: dict[str, Any]) -> str:
    """A text node at Graphviz's baseline point, anchored by its justification (left-justified text
    starts at the point, right-justified ends there). Always one node per text operation, so an
    invisible colour becomes zero opacity rather than a missing node."""
    x, y = (float(v) for v in op.get("pt", (0, 0)))
    align = str(op.get("align", "c"))
    anchor = {"l": "base west", "-1": "base west", "r": "base east", "1": "base east"}.get(align, "base")
    size = pen.size
    font = f"\\fontsize{{{_num(size)}}}{{{_num(size * LEADING)}}}\\selectfont{_family(pen.face)}"
    options = [f"anchor={anchor}", "inner sep=0pt", f"font={font}"]
    options.append(f"text={pen.stroke}" if pen.stroke is not None else "text opacity=0")
    if pen.stroke is not None and pen.stroke_opacity < 1:
        options.append(f"text opacity={_num(pen.stroke_opacity)}")
    return f"\\node[{','.join(options)}] at {_point((x, y))} {{{_styled_text(pen, str(op.get('text', '')))}}};"


def _family(face: str) -> str:
    """The TeX font family closest to a Graphviz font name (serif unless sans or monospace)."""
    face = face.lower()
    if any(word in face for word in ("courier", "mono", "consol", "menlo")):
        return r"\ttfamily"
    if any(word in face for word in ("helvetica", "arial", "sans", "verdana", "dejavu", "roboto")):
        return r"\sffamily"
    return ""


def _styled_text(pen: _Pen, text: str) -> str:
    """Escaped text, bold/italic/underlined from the font name or the ``t`` flags (1, 2, 4)."""
    face = pen.face.lower()
    body = escape_latex(text)
    if pen.fontchar & 4:
        body = f"\\underline{{{body}}}"
    if pen.fontchar & 2 or "italic" in face or "oblique" in face:
        body = f"\\textit{{{body}}}"
    if pen.fontchar & 1 or "bold" in face:
        body = f"\\textbf{{{body}}}"
    return body


def _style(pen: _Pen, style: str) -> _Pen:
    """An ``S`` operation: dash pattern, line width (``bold`` is Graphviz's width 2) or ``invis``."""
    style = style.strip()
    width = _line_width(style)
    if width is not None:
        return replace(pen, width=width)
    if style in ("dashed", "dotted", "solid"):
        return replace(pen, dash={"dashed": DASHED, "dotted": DOTTED}.get(style))
    if style == "invis":
        return replace(pen, stroke=None, fill=None)
    return pen


def _line_width(style: str) -> float | None:
    """The pen width an ``S`` style sets (``setlinewidth(N)``, or 2 for ``bold``), else None."""
    style = style.strip()
    if style == "bold":
        return 2.0
    width = re.fullmatch(r"setlinewidth\(\s*([-+0-9.eE]+)\s*\)", style)
    return float(width.group(1)) if width else None


def _color(canvas: _Canvas, op: dict[str, Any]) -> tuple[str | None, float]:
    """A ``c``/``C`` colour as a TikZ colour expression and opacity; None when fully transparent.
    Gradients have no flat equivalent: they are drawn in the even mix of their end colours."""
    if op.get("grad", "none") != "none" and op.get("stops"):
        stops = op["stops"]
        first, first_alpha = _parse_color(canvas, str(stops[0].get("color", "")))
        last, last_alpha = _parse_color(canvas, str(stops[-1].get("color", "")))
        if first is None or last is None:
            return (first or last), max(first_alpha, last_alpha)
        return f"{first}!50!{last}", (first_alpha + last_alpha) / 2
    return _parse_color(canvas, str(op.get("color", "")))


def _parse_color(canvas: _Canvas, value: str) -> tuple[str | None, float]:
    """``#rrggbb``/``#rrggbbaa`` (what Graphviz writes) or an xcolor base name; other names, which
    Graphviz itself would not know either, fall back to black as Graphviz does."""
    value = value.strip().lower()
    if value in INVISIBLE:
        return None, 0.0
    hexa = re.fullmatch(r"#([0-9a-f]{6})([0-9a-f]{2})?", value)
    if hexa:
        rgb = bytes.fromhex(hexa.group(1))
        alpha = int(hexa.group(2), 16) / 255 if hexa.group(2) else 1.0
        if alpha == 0:
            return None, 0.0
        return canvas.color((rgb[0], rgb[1], rgb[2])), round(alpha, 2)
    return (value if value in XCOLOR_NAMES else "black"), 1.0


def _point(point: tuple[float, float]) -> str:
    """A coordinate in Graphviz points, which the picture's ``x=1pt,y=1pt`` keeps as they are."""
    return f"({_num(point[0])},{_num(point[1])})"


def _num(value: float) -> str:
    """A number rounded to 2 decimals with no trailing zeros (and no ``-0``)."""
    if not math.isfinite(value):
        return "0"
    text = f"{round(value, 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
