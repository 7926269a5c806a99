"""Graphviz to TikZ: the document compiles with pdflatex to one page of the diagram's size, and the
picture carries every text and stroke that Graphviz's own layout (its JSON output) draws."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import graphviz
import pytest

from netatlas.viz.tikz import PAD, dot_to_tikz, escape_latex

DOT = r"""
digraph G {
  fontname="Helvetica"; node [fontname="Helvetica"]; edge [fontname="Helvetica"];
  subgraph cluster_a {
    label="layer1 ×3"; style="rounded,filled"; fillcolor="#eef3ff"; color="#3355aa";
    subgraph cluster_b {
      label="block"; style=dashed; color=gray50;
      conv [shape=box, style=bold, label=<<B>L+</B>>];
      add [shape=circle, label="+"];
    }
  }
  junction [shape=point];
  spec [shape=box, style=filled, fillcolor="#ffcc0080", label="layer1_0 & 50% #x $y"];
  conv -> add [color="black:white:black:white:black", label="B C₂ H W"];
  add -> junction [label="B=1 · C=64", style=dashed, penwidth=2];
  junction -> spec;
}
"""
PT_PER_BP = 72.27 / 72  # TeX points per PDF (PostScript) point
DRAW_KEYS = ("_draw_", "_ldraw_", "_hdraw_", "_tdraw_", "_hldraw_", "_tldraw_")


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    """Graphviz's own layout of ``DOT``, the reference the TikZ is checked against."""
    return json.loads(graphviz.Source(DOT).pipe(format="json", encoding="utf-8"))


@pytest.fixture(scope="module")
def document() -> str:
    return dot_to_tikz(DOT)


@pytest.fixture(scope="module")
def snippet() -> str:
    return dot_to_tikz(DOT, standalone=False)


def pdflatex(folder: Path, name: str) -> Path:
    """Compile ``folder/name.tex`` as the docs say to; fails (not skips) where pdflatex is missing,
    since the Makefile installs it for the tests."""
    assert shutil.which("pdflatex"), "pdflatex is not installed (the Makefile's test target installs it)"
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
                         cwd=folder, capture_output=True, timeout=120)
    log = run.stdout.decode("utf-8", "replace")
    assert run.returncode == 0, log[-3000:]
    pdf = folder / f"{name}.pdf"
    assert pdf.is_file() and pdf.stat().st_size > 0, log[-3000:]
    return pdf


def pdf_objects(pdf: bytes) -> bytes:
    """The PDF with its Flate streams inflated, as pdfTeX keeps page and font dictionaries inside
    compressed object streams."""
    parts = [pdf]
    for stream in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        try:
            parts.append(zlib.decompressobj().decompress(stream.group(1)))
        except zlib.error:
            pass
    return b"\n".join(parts)


def ops(obj: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Every xdot operation of ``kind`` in all of an object's drawing lists."""
    return [op for key in DRAW_KEYS for op in obj.get(key, []) if op.get("op") == kind]


def all_objects(layout: dict[str, Any]) -> list[dict[str, Any]]:
    return [layout, *layout.get("objects", []), *layout.get("edges", [])]


def section(tikz: str, comment: str) -> list[str]:
    """The lines the TikZ writes for one object: from its ``% comment`` to the next comment."""
    lines = tikz.splitlines()
    start = lines.index(f"% {comment}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("%")), len(lines))
    return lines[start:end]


def test_standalone_compiles_to_one_page_the_size_of_the_layout(tmp_path, document, layout):
    (tmp_path / "figure.tex").write_text(document, encoding="utf-8")
    pdf = pdf_objects(pdflatex(tmp_path, "figure").read_bytes())

    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 1
    x0, y0, x1, y1 = (float(v) for v in layout["bb"].split(","))
    box = re.search(rb"/MediaBox\s*\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", pdf)
    assert box, "no /MediaBox in the PDF"
    left, bottom, right, top = (float(v) for v in box.groups())
    assert right - left == pytest.approx((x1 - x0 + 2 * PAD) / PT_PER_BP, abs=2)
    assert top - bottom == pytest.approx((y1 - y0 + 2 * PAD) / PT_PER_BP, abs=2)
    # Only outline fonts: a Type3 font is a METAFONT bitmap, built on first use and blurry in print.
    assert re.search(rb"/Subtype\s*/Type1", pdf)
    assert not re.search(rb"/Subtype\s*/Type3", pdf)


@pytest.mark.parametrize("pad", ["0.0555", "0.15"])
def test_standalone_is_one_page_whatever_the_pad(tmp_path, pad):
    """Regression: a page rounded apart from the picture left it a hair too tall, on page two."""
    document = dot_to_tikz(f'digraph {{ pad={pad}; a [shape=box, height=3.5, fixedsize=true] }}')
    (tmp_path / "figure.tex").write_text(document, encoding="utf-8")
    pdf = pdf_objects(pdflatex(tmp_path, "figure").read_bytes())
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 1


def test_snippet_is_only_the_picture_and_compiles_when_input(tmp_path, snippet):
    assert snippet.startswith("%") and r"\usepackage{tikz}" in snippet.splitlines()[0]
    assert snippet.count(r"\begin{tikzpicture}") == 1 and snippet.count(r"\end{tikzpicture}") == 1
    assert r"\documentclass" not in snippet and r"\begin{document}" not in snippet
    (tmp_path / "figure.tex").write_text(snippet, encoding="utf-8")
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{tikz}\n\\begin{document}\n"
        "Figure:\n\n\\input{figure}\n\\end{document}\n", encoding="utf-8")
    pdflatex(tmp_path, "paper")


def test_one_node_per_graphviz_text_operation(snippet, layout):
    texts = [op for obj in all_objects(layout) for op in ops(obj, "T")]
    assert len(texts) == 7  # 2 cluster labels, 4 node labels, 2 edge labels; the point has none
    assert len(re.findall(r"^\\node\[", snippet, re.M)) == len(texts)
    for op in texts:
        assert "{" + escape_latex(op["text"]) in snippet, op["text"]


def test_labels_keep_graphviz_fonts_and_anchors(snippet):
    conv = section(snippet, "node conv")
    label = next(line for line in conv if line.startswith(r"\node"))
    # An HTML label's text is placed by its left end ("align": "l"), and <B> is flag 1 of a "t" op.
    assert "anchor=base west" in label and r"{\textbf{L+}}" in label
    assert r"\draw[" in conv[0] and "line width=2pt" in conv[0]            # style=bold
    add_label = next(line for line in section(snippet, "node add") if line.startswith(r"\node"))
    assert "anchor=base," in add_label and r"\sffamily" in add_label and r"\fontsize{14}{16.8}" in add_label
    assert r"{layer1 $\times$3}" in snippet and r"{B C$_{2}$ H W}" in snippet
    assert r"{B=1 $\cdot$ C=64}" in snippet
    assert r"{layer1\_0 \& 50\% \#x $\$$y}" in snippet
    assert "fill opacity=0.5" in "\n".join(section(snippet, "node spec"))   # the 80 alpha of #ffcc0080


def test_parallel_strands_are_separate_bezier_paths(snippet, layout):
    names = [obj["name"] for obj in layout["objects"]]
    edge = next(e for e in layout["edges"] if (names[e["tail"]], names[e["head"]]) == ("conv", "add"))
    strands = [op for op in edge["_draw_"] if op["op"] == "b"]
    assert len(strands) == 5  # one per colour of black:white:black:white:black
    lines = section(snippet, "edge conv -> add")
    beziers = [line for line in lines if line.startswith(r"\draw[") and ".. controls" in line]
    assert len(beziers) == len(strands)
    colours = [re.search(r"draw=(\w+)", line).group(1) for line in beziers]
    assert colours[0] == colours[2] == colours[4] != colours[1] == colours[3]
    first = strands[0]["points"]
    assert beziers[0].endswith(f"({first[3][0]:g},{first[3][1]:g});")
    assert any(line.startswith(r"\filldraw[") for line in lines)               # the arrowhead


def test_clusters_and_styles(snippet):
    outer = section(snippet, "cluster cluster_a")
    assert outer[0].startswith(r"\filldraw[") and ".. controls" in outer[0]      # rounded, filled
    inner = section(snippet, "cluster cluster_b")
    assert inner[0].startswith(r"\draw[") and "dash pattern=on 5pt off 2pt" in inner[0]
    assert inner[0].endswith("-- cycle;")
    dashed = section(snippet, "edge add -> junction")[0]
    assert "dash pattern" in dashed and "line width=2pt" in dashed
    point = section(snippet, "node junction")
    assert len(point) == 1 and point[0].startswith(r"\filldraw[") and " ellipse [" in point[0]
    defined = set(re.findall(r"\\definecolor\{(\w+)\}", snippet))
    used = set(re.findall(r"(?:draw|fill|text)=(\w+)", snippet))
    assert used <= defined | {"black"}


def test_graph_pad_sets_the_margin():
    snippet = dot_to_tikz('digraph { pad="0.5,0.25"; a }', standalone=False)
    assert r"\useasboundingbox (-36,-18) rectangle (90,54);" in snippet   # a is 54 x 36 pt


def test_a_diagram_too_wide_for_tex_is_scaled_to_fit():
    chain = "digraph { rankdir=LR; " + " -> ".join(f"n{i}" for i in range(250)) + " }"
    layout = json.loads(graphviz.Source(chain).pipe(format="json", encoding="utf-8"))
    x0, _, x1, _ = (float(v) for v in layout["bb"].split(","))
    assert x1 - x0 > 16384                                  # past TeX's largest dimension
    scale = 14400 / (x1 - x0 + 2 * PAD)
    document = dot_to_tikz(chain)
    assert float(re.search(r"paperwidth=([\d.]+)pt", document).group(1)) == pytest.approx(14400, abs=0.1)
    numbers = [float(v) for v in re.findall(r"[(,](-?[\d.]+)[,)]", document)]
    assert max(numbers) <= 14400 and min(numbers) >= -14400
    sizes = [float(v) for v in re.findall(r"\\fontsize\{([\d.]+)\}", document)]
    assert len(sizes) == 250 and sizes == pytest.approx([14 * scale] * 250, abs=0.01)  # text scaled too


@pytest.mark.parametrize("text, latex", [
    ("C₁₂", "C$_{12}$"),
    ("a_b", r"a\_b"),
    ("50%", r"50\%"),
    ("x & y", r"x \& y"),
    ("#1 $2 {3} ~^", r"\#1 $\$$2 \{3\} \textasciitilde{}\textasciicircum{}"),
    ("back\\slash", r"back\textbackslash{}slash"),
    ("B=1 · C=64", r"B=1 $\cdot$ C=64"),
    ("3×3 σ(x) ⊙ y − z ÷ 2", r"3$\times$3 $\sigma$(x) $\odot$ y $-$ z $\div$ 2"),
    ("x→y…", r"x$\to$y\dots{}"),
    ("θ ϕ φ", r"$\theta$ $\phi$ $\phi$"),
    ("conv@2 a<b", r"conv@2 a\textless{}b"),
    ("★ 中", "? ?"),
])
def test_escape_latex(text, latex):
    assert escape_latex(text) == latex
