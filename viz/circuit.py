"""Draw a ``CircuitView`` as a neural circuit diagram (Abbott 2024) with Graphviz, and export it.

Notation: a tensor is a stack of parallel wires, one per axis, labelled with the axes' size symbols;
operations are boxes, learned ones bold (L, L+, Conv, Norm, Attn); a residual add is a "+" circle fed
by a copy point; modules are fenced regions with their names, a folded run of identical blocks is one
region marked xN; a box whose output keeps some input axes says so ("over B·S"): it broadcasts over
them. Output: DOT, then SVG/PDF/PNG by Graphviz and TikZ by ``netatlas.viz.tikz``.
"""

from __future__ import annotations

import html
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import graphviz

from netatlas.backend.circuit.graph import CircuitView, Op
from netatlas.backend.circuit.symbols import SUBSCRIPTS, axis_symbols
from netatlas.backend.errors import NetatlasError

FORMATS = ("svg", "pdf", "png", "tex")
FONT = "Helvetica"
MUTED = "#6b7280"
FENCE = "#94a3b8"
REPEAT_FILL = "#eef2f8"
BROADCASTING = {"Linear", "LayerNorm", "RMSNorm", "Bilinear"}   # act on the last axis only


@dataclass
class DiagramStyle:
    """How to draw: layout direction, sizes on wires, and the user's names for axis symbols."""

    layout: str = "LR"                     # "LR" (composition left to right, as in the paper) or "TB"
    show_sizes: bool = False               # "C=64" on the wire instead of "C"; sizes are always in tooltips
    names: dict[str, str] = field(default_factory=dict)   # symbol -> name, e.g. {"D₂": "d_model"}
    show_broadcast: bool = True

    def name(self, symbol: str) -> str:
        return self.names.get(symbol, symbol)


def parse_names(pairs: list[str]) -> dict[str, str]:
    """``["D2=d_model", "S=seq"]`` -> {"D₂": "d_model", "S": "seq"}: a digit stands for its subscript."""
    names = {}
    for pair in pairs:
        symbol, sep, name = pair.partition("=")
        if not sep or not symbol.strip() or not name.strip():
            raise NetatlasError(f"rename {pair!r}: write SYMBOL=NAME, e.g. D2=d_model")
        names[symbol.strip().translate(SUBSCRIPTS)] = name.strip()
    return names


def to_dot(view: CircuitView, style: DiagramStyle | None = None) -> graphviz.Digraph:
    """The Graphviz graph of ``view``: fenced modules as nested clusters, wires as edge strands."""
    style = style or DiagramStyle()
    circuit = view.circuit
    symbols = axis_symbols(circuit)
    dot = graphviz.Digraph("circuit", graph_attr={
        "rankdir": style.layout, "fontname": FONT, "fontsize": "11", "nodesep": "0.18", "ranksep": "0.3",
        "newrank": "true", "splines": "spline", "pad": "0.15"},
        node_attr={"fontname": FONT, "fontsize": "11", "height": "0.3", "margin": "0.08,0.03"},
        edge_attr={"fontname": FONT, "fontsize": "9", "arrowsize": "0.5", "fontcolor": "#1f2937"})

    tree: dict[str | None, list[str]] = defaultdict(list)        # module -> child modules
    placed: dict[str | None, list[str]] = defaultdict(list)      # module -> op ids directly inside
    for op_id, op in circuit.ops.items():
        scope = [s for s in op.scope if s not in view.collapsed or s == op.target]
        parent: str | None = None
        for s in scope:
            if s not in tree[parent]:
                tree[parent].append(s)
            parent = s
        placed[parent].append(op_id)

    inputs: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for e in circuit.edges:
        inputs[e.dst].append(symbols[(e.src, e.dst)])

    key = {op_id: f"n{i}" for i, op_id in enumerate(circuit.ops)}   # DOT ids: op ids may hold ':'

    def fill(graph: graphviz.Digraph, module: str | None) -> None:
        for op_id in placed[module]:
            _node(graph, key[op_id], circuit.ops[op_id], inputs[op_id], style)
        for child in tree[module]:
            with graph.subgraph(name=f"cluster_{child}") as sub:
                _fence(sub, child, circuit.modules.get(child, ""), view.repeat_count(child))
                fill(sub, child)

    fill(dot, None)
    _wires(dot, key, view, symbols, style)
    return dot


def _fence(sub: graphviz.Digraph, module: str, type_name: str, repeat: int) -> None:
    """A module's region: its name and class; a folded run gets a heavier fence and "xN"."""
    times = f"  <B>×{repeat}</B>" if repeat > 1 else ""
    label = f'<{html.escape(module)} <FONT COLOR="{MUTED}">{html.escape(type_name)}</FONT>{times}>'
    sub.attr(label=label, labeljust="l", fontsize="10", style="rounded" + (",filled" if repeat > 1 else ""),
             color=FENCE if repeat == 1 else "#3b4f6b", penwidth="1" if repeat == 1 else "2",
             fillcolor=REPEAT_FILL, margin="10")


def _node(graph: graphviz.Digraph, node: str, op: Op, inputs: list[tuple[str, ...]], style: DiagramStyle) -> None:
    tip, kind = _tooltip(op), "op learned" if op.learned else "op"
    if op.kind in ("input", "output"):
        graph.node(node, label=f"<<I>{html.escape(op.label)}</I>>", shape="plaintext", tooltip=tip, **{"class": op.kind})
    elif op.kind == "add":
        graph.node(node, label="+", shape="circle", width="0.26", fixedsize="true", fontsize="14", tooltip=tip,
                   **{"class": "op add"})
    elif op.kind == "block":
        times = f" ×{op.repeat}" if op.repeat > 1 else ""
        text = f"{html.escape(op.label)}{times}"
        label = (f'<{_bold(text, op.learned)}<BR/><FONT POINT-SIZE="8" COLOR="{MUTED}">'
                 f'{html.escape(op.type_name)}</FONT>>')
        graph.node(node, label=label, shape="box", style="rounded,bold" if op.learned else "rounded",
                   peripheries="2" if op.repeat > 1 else "1", tooltip=tip, **{"class": kind + " block"})
    else:
        over = _broadcast(op, inputs, style) if style.show_broadcast else ""
        label = f"<{_bold(html.escape(op.label), op.learned)}{over}>"
        graph.node(node, label=label, shape="box", penwidth="2.2" if op.learned else "1", tooltip=tip,
                   **{"class": kind})


def _wires(dot: graphviz.Digraph, key: dict[str, str], view: CircuitView, symbols: dict,
           style: DiagramStyle) -> None:
    """Each tensor as parallel strands, one per axis; a tensor used twice splits at a copy point."""
    circuit = view.circuit
    consumers: dict[tuple[str, tuple[int, ...]], list[str]] = defaultdict(list)
    for e in circuit.edges:
        consumers[(e.src, e.shape)].append(e.dst)
    for (src, shape), dsts in consumers.items():
        axes = symbols[(src, dsts[0])]
        attrs = _wire_attrs(axes, shape, style)
        inferred = any(e.inferred for e in circuit.edges if e.src == src and e.dst in dsts)
        if inferred:
            attrs["style"] = "dashed"
        if len(dsts) == 1:
            dot.edge(key[src], key[dsts[0]], **attrs)
            continue
        copy = f"{key[src]}_copy_{len(dot.body)}"
        dot.node(copy, label="", shape="point", width="0.07", tooltip="copy", **{"class": "copy"})
        dot.edge(key[src], copy, arrowhead="none", **attrs)
        strands = {k: v for k, v in attrs.items() if k in ("color", "style", "tooltip")}
        for dst in dsts:
            dot.edge(copy, key[dst], **strands)


def _wire_attrs(axes: tuple[str, ...], shape: tuple[int, ...], style: DiagramStyle) -> dict[str, str]:
    """Strands, one per axis, and their symbols; the label sits above the strands, not on them."""
    names = [style.name(a) for a in axes]
    text = " ".join(f"{n}={s}" if style.show_sizes else n for n, s in zip(names, shape))
    strands = ":white:".join(["black"] * max(len(axes), 1))
    tooltip = " × ".join(f"{n}={s}" for n, s in zip(names, shape)) or "scalar"
    label = (f'<<TABLE BORDER="0" CELLPADDING="0" CELLSPACING="0"><TR><TD>{html.escape(text)}</TD></TR>'
             f'<TR><TD HEIGHT="{2 * len(axes) + 1}"></TD></TR></TABLE>>')
    return {"label": label, "color": strands, "tooltip": tooltip}


def _broadcast(op: Op, inputs: list[tuple[str, ...]], style: DiagramStyle) -> str:
    """The axes a Linear or LayerNorm broadcasts over: every axis but the last passes through."""
    if op.type_name not in BROADCASTING or not inputs or op.shape is None or len(inputs[0]) < 2:
        return ""
    text = "·".join(html.escape(style.name(a)) for a in inputs[0][:-1] if a != "1")
    return f'<BR/><FONT POINT-SIZE="8" COLOR="{MUTED}">over {text}</FONT>' if text else ""


def _bold(text: str, learned: bool) -> str:
    return f"<B>{text}</B>" if learned else text


def _tooltip(op: Op) -> str:
    parts = [op.target or op.label, op.type_name]
    if op.shape is not None:
        parts.append("out " + "×".join(map(str, op.shape)))
    if op.params:
        parts.append(f"{op.params:,} parameters")
    if op.repeat > 1:
        parts.append(f"repeated ×{op.repeat}")
    return " · ".join(p for p in parts if p)


def symbol_table(view: CircuitView) -> dict[str, int]:
    """Every axis symbol in the diagram with its size (the legend; what users rename)."""
    symbols, sizes = axis_symbols(view.circuit), {}
    for e in view.circuit.edges:
        for sym, size in zip(symbols[(e.src, e.dst)], e.shape):
            sizes.setdefault(sym, size)
    return sizes


def render(view: CircuitView, fmt: str, style: DiagramStyle | None = None, dpi: int = 150) -> bytes:
    """The diagram as SVG, PDF, PNG (``dpi``) or TikZ/LaTeX ("tex") bytes."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"diagram format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    dot = to_dot(view, style)
    if fmt == "tex":
        from netatlas.viz.tikz import dot_to_tikz

        return dot_to_tikz(dot.source).encode()
    if fmt == "png":
        dot.attr(dpi=str(dpi))
    return _pipe(dot, fmt)


def _pipe(dot: graphviz.Digraph, fmt: str) -> bytes:
    """``dot`` laid out by Graphviz. ``newrank`` keeps a module's ops in rank order across its fence, but
    Graphviz 2.43 (Debian 12's) crashes on it for some nested fences (a CLIP vision tower opened to every
    module): the diagram is then laid out without it, as Graphviz did before newrank existed."""
    try:
        return dot.pipe(format=fmt)
    except graphviz.CalledProcessError as first:
        if dot.graph_attr.get("newrank") != "true":
            raise NetatlasError(f"Graphviz could not draw the diagram ({_dot_failure(first)})") from first
    dot.graph_attr.pop("newrank")
    try:
        return dot.pipe(format=fmt)
    except graphviz.CalledProcessError as second:
        raise NetatlasError(f"Graphviz could not draw the diagram ({_dot_failure(second)}): fold it to a smaller "
                            "depth") from second


def _dot_failure(exc: graphviz.CalledProcessError) -> str:
    said = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
    return said[0] if said else f"dot exited with {exc.returncode}"


def export(view: CircuitView, path: str | Path, style: DiagramStyle | None = None, dpi: int = 150) -> Path:
    """Write the diagram to ``path``; the suffix picks the format (.svg .pdf .png .tex)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render(view, path.suffix, style, dpi))
    return path


# ----------------------------------------------------------------------------- on the page
ROW_UNITS = 1000.0     # a wrapped row's width in SVG units (pt): at a ~1000 px pane, about natural size
OVERLAP_UNITS = 24.0   # each row repeats this much of its neighbours' ends, so wires visibly continue
_VIEWBOX = re.compile(r'viewBox="([-\d.]+) ([-\d.]+) ([-\d.]+) ([-\d.]+)"')
_TRANSLATE = re.compile(r'class="graph" transform="[^"]*translate\(([-\d.]+) ([-\d.]+)\)"')
_NODE = re.compile(r'<g id="[^"]*" class="node[^"]*">(.*?)</g>\s*</g>', re.S)


def _node_spans(svg: str) -> list[tuple[float, float]]:
    """Each node's horizontal extent in viewBox units (boxes, dots, labels), from Graphviz's SVG."""
    shift = _TRANSLATE.search(svg)
    dx = float(shift.group(1)) if shift else 0.0
    spans = []
    for body in _NODE.findall(svg):
        xs = [float(x) for points in re.findall(r'points="([^"]*)"', body)
              for x in re.findall(r'([-\d.]+),[-\d.]+', points)]
        for cx, rx in re.findall(r'cx="([-\d.]+)"[^>]*rx="([-\d.]+)"', body):
            xs += [float(cx) - float(rx), float(cx) + float(rx)]
        xs += [float(x) for x in re.findall(r'<text[^>]* x="([-\d.]+)"', body)]
        if xs:
            spans.append((min(xs) + dx - 4, max(xs) + dx + 4))
    return spans


def _cuts(width: float, spans: list[tuple[float, float]], rows: int) -> list[float]:
    """Where to cut ``width`` into ``rows`` rows: near equal shares, but between nodes, never through one."""
    cuts = [0.0]
    for k in range(1, rows):
        target = width * k / rows
        x = target
        for _ in range(len(spans) + 1):         # step out of any node the cut falls in, rightward
            inside = [end for start, end in spans if start < x < end]
            if not inside:
                break
            x = max(inside) + 0.5
        left = target
        for _ in range(len(spans) + 1):         # ... or leftward, whichever is nearer
            inside = [start for start, end in spans if start < left < end]
            if not inside:
                break
            left = min(inside) - 0.5
        x = left if target - left < x - target and left > cuts[-1] else x
        if cuts[-1] < x < width:
            cuts.append(x)
    return cuts + [width]


def wrapped_svg(svg: str, row_units: float = ROW_UNITS, overlap: float = OVERLAP_UNITS) -> str:
    """Graphviz's SVG as HTML that fits any width at a readable scale: a diagram wider than ``row_units``
    is cut between its nodes into rows, stacked like lines of text, each the same drawing seen through its
    own viewBox and all at one scale (a row's CSS width is its share of the widest row); a narrow one
    is drawn once, at most its natural size. Rows overlap by ``overlap`` units, so wires visibly go on."""
    svg = svg[svg.index("<svg"):]
    box = _VIEWBOX.search(svg)
    if box is None:
        return svg
    x0, y0, width, height = map(float, box.groups())
    natural = re.search(r'<svg width="([\d.]+)pt"', svg)
    natural_px = float(natural.group(1)) * 4 / 3 if natural else width * 4 / 3
    body = re.sub(r'^<svg width="[^"]*" height="[^"]*"\s*viewBox="[^"]*"', "<svg", svg)
    if width <= row_units:
        return ("<div class='na-diagram-rows'>" + body.replace(
            "<svg", f'<svg viewBox="{x0} {y0} {width} {height}" '
                    f'style="display:block;width:100%;max-width:{natural_px:.0f}px;height:auto"', 1) + "</div>")
    rows = math.ceil(width / row_units)
    cuts = _cuts(width, _node_spans(svg), rows)
    spans = [(max(a - overlap, 0.0), min(b + overlap, width)) for a, b in zip(cuts, cuts[1:])]
    widest = max(b - a for a, b in spans)
    parts = []
    for i, (a, b) in enumerate(spans):
        border = "border-top:1px dashed #cbd5e1;" if i else ""
        parts.append(body.replace(
            "<svg", f'<svg class="na-diagram-row" viewBox="{x0 + a:.2f} {y0} {b - a:.2f} {height}" '
                    f'preserveAspectRatio="xMinYMid meet" '
                    f'style="display:block;width:{100 * (b - a) / widest:.3f}%;height:auto;{border}"', 1))
    return f"<div class='na-diagram-rows'>{''.join(parts)}</div>"


SCROLLBARS = ("<style>.na-diagram-scroll::-webkit-scrollbar{width:12px;height:12px}"
              ".na-diagram-scroll::-webkit-scrollbar-track{background:#eef2f8}"
              ".na-diagram-scroll::-webkit-scrollbar-thumb{background:#94a3b8;border-radius:6px;"
              "border:2px solid #eef2f8}.na-diagram-scroll::-webkit-scrollbar-corner{background:#eef2f8}</style>")


def scrolling_svg(svg: str) -> str:
    """Graphviz's SVG at natural size in a box that scrolls both ways, its scrollbars styled so that they
    always show (not overlay scrollbars that appear only while scrolling), and a line saying how wide
    the diagram is and how to see the rest."""
    svg = svg[svg.index("<svg"):]
    box = _VIEWBOX.search(svg)
    width = float(box.group(3)) * 4 / 3 if box else 0
    return (f"{SCROLLBARS}<div class='na-diagram-hint' style='color:#6b7280;font-size:12px;margin:2px 0 4px'>"
            f"Natural size, {width:,.0f} px wide: scroll sideways (the scrollbar below, or shift + wheel), "
            "or tick <i>Fit to width</i> to wrap it into rows.</div>"
            "<div class='na-diagram-scroll' style='overflow:auto;max-height:70vh;border:1px solid #e5e7eb'>"
            f"{svg}</div>")
