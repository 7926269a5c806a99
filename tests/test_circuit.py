"""Neural circuit diagrams: tracing, shapes against a real forward, folding, notation, exports, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from netatlas.backend.circuit.symbols import axis_symbols
from netatlas.backend.circuit.trace import ATOMIC, architecture_circuit, trace_circuit
from netatlas.backend.demo_model import DemoResNet
from netatlas.cli import main
from netatlas.backend.errors import NetatlasError
from netatlas.viz.circuit import DiagramStyle, parse_names, render, symbol_table, to_dot
from tests.circuit_models import DictModel, TinyKAN, TinyTransformer, Untraceable, mlp

IMAGENET = (1, 3, 224, 224)


def leaf_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, list[tuple[int, ...]]]:
    """Output shapes of every leaf module call, from a real forward with hooks (the independent check)."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    def record(name: str, output) -> None:   # MultiheadAttention returns (output, weights)
        seen.setdefault(name, []).append(tuple((output[0] if isinstance(output, tuple) else output).shape))

    handles = [m.register_forward_hook(lambda mod, i, o, n=name: record(n, o))
               for name, m in model.named_modules() if name and (isinstance(m, ATOMIC) or not any(m.children()))]
    with torch.enable_grad():   # no fused inference fast path (nn.TransformerEncoder's skips its submodules)
        model.eval()(example)
    for h in handles:
        h.remove()
    return seen


def assert_shapes_match_real_forward(model: nn.Module, example: torch.Tensor) -> None:
    circuit = trace_circuit(model, example)
    real = leaf_shapes(model, example)
    modules = [op for op in circuit.ops.values() if op.kind == "module"]
    assert modules, "no module ops traced"
    for op in modules:
        assert op.shape in real[op.target], (op.target, op.shape, real[op.target])
        assert all(e.shape == op.shape for e in circuit.edges if e.src == op.id), op.target


@pytest.mark.parametrize("build, shape", [
    (lambda: DemoResNet(), (2, 1, 28, 28)),
    (lambda: torchvision.models.resnet18(), IMAGENET),
    (mlp, (3, 8, 8)),
    (TinyKAN, (4, 2)),
], ids=["demo", "resnet18", "mlp", "kan"])
def test_wire_shapes_equal_a_real_forward(build, shape):
    torch.manual_seed(0)
    assert_shapes_match_real_forward(build(), torch.randn(shape))


def test_transformer_encoder_inside_comes_from_torch_export_and_folds():
    model = TinyTransformer()
    circuit = trace_circuit(model, torch.zeros(1, 5, 8))
    assert circuit.method == "fx+export"
    assert any("encoder (TransformerEncoder)" in n and "torch.export" in n for n in circuit.notes)
    # each post-norm layer: x + sa(x), then + ff(x); fx alone cannot see these adds inside nn modules
    adds = [op for op in circuit.ops.values() if op.kind == "add"]
    assert len(adds) == 2 * 3 and all(op.scope[-1].startswith("encoder.layers.") for op in adds)
    view = circuit.view()
    assert {head: len(run) for head, run in view.repeats.items()} == {"encoder.layers.0": 3}
    real = leaf_shapes(model, torch.zeros(1, 5, 8))
    for op in circuit.ops.values():
        if op.kind == "module":
            assert op.shape in real[op.target]
    attention = [op for op in circuit.ops.values() if op.label == "Attn"]
    assert len(attention) == 3 and all(op.learned for op in attention)


def test_vit_b_16_folds_its_twelve_encoder_layers_into_few_boxes():
    circuit = architecture_circuit("vit_b_16", None, IMAGENET)
    view = circuit.view()
    assert {h: len(r) for h, r in view.repeats.items()} == {"encoder.layers.encoder_layer_0": 12}
    assert view.boxes <= 40
    unrolled = circuit.view(unroll={"encoder.layers.encoder_layer_0"})
    per_layer = len(circuit.members("encoder.layers.encoder_layer_1"))
    assert unrolled.boxes == view.boxes + 11 * per_layer
    assert max(op.shape[-1] for op in circuit.ops.values() if op.shape) == 3072   # the MLP width
    symbols = symbol_table(view)
    # the patch grid flattened is named for the axes it merges; d_model keeps one name through the
    # class token, the attention and the MLP's way back from 3072; the sequence is the 197 tokens
    assert symbols["H₂W₂"] == 196 and symbols["H₂"] == symbols["W₂"] == 14
    assert [s for s, n in symbols.items() if n == 768] == ["C₂"] and symbols["S"] == 197
    assert circuit.ops["output:output"].shape == (1, 1000)


def test_resnet50_folds_each_stage_after_its_downsampling_block():
    circuit = architecture_circuit("resnet50", None, IMAGENET)
    view = circuit.view()
    # torchvision's resnet50 has [3, 4, 6, 3] bottlenecks; each stage's first one downsamples.
    assert {h: len(r) for h, r in view.repeats.items()} == {
        "layer1.1": 2, "layer2.1": 3, "layer3.1": 5, "layer4.1": 2}
    adds = [op for op in circuit.ops.values() if op.kind == "add"]
    assert len(adds) == 16


def test_fold_depth_and_unfold():
    model = DemoResNet()
    circuit = trace_circuit(model, torch.zeros(1, 1, 28, 28))
    top = [name for name, _ in model.named_children()]
    assert circuit.view(fold_depth=1).boxes == len(top)
    blocks = len(model.blocks)
    opened = circuit.view(fold_depth=1, unfold={"blocks"}, fold_repeats=False)
    assert opened.boxes == len(top) - 1 + blocks
    assert opened.collapsed == {"stem"} | {f"blocks.{i}" for i in range(blocks)}
    inner = circuit.view(fold_depth=1, unfold={"blocks.2"}, fold_repeats=False)   # opens blocks too
    assert "blocks.2.downsample" in inner.collapsed and "blocks" not in inner.collapsed
    with pytest.raises(NetatlasError, match="did you mean"):
        circuit.view(unfold={"blokcs"})


def test_axis_symbols_name_one_size_each_and_follow_the_wires():
    circuit = architecture_circuit("resnet18", None, IMAGENET)
    view = circuit.view()
    symbols = axis_symbols(view.circuit)
    sizes: dict[str, set[int]] = {}
    for e in view.circuit.edges:
        assert len(symbols[(e.src, e.dst)]) == len(e.shape)
        for sym, size in zip(symbols[(e.src, e.dst)], e.shape):
            sizes.setdefault(sym, set()).add(size)
    assert all(len(s) == 1 for sym, s in sizes.items() if sym != "1"), sizes
    table = symbol_table(view)
    assert table["B"] == 1 and table["C"] == 3 and {64, 128, 256, 512} <= set(table.values())
    assert parse_names(["C2=channels", "S=seq"]) == {"C₂": "channels", "S": "seq"}
    with pytest.raises(NetatlasError):
        parse_names(["nonsense"])


def test_dict_inputs_and_outputs():
    circuit = trace_circuit(DictModel(), {"image": torch.zeros(2, 3, 16, 16)})
    outputs = {op.label: op.shape for op in circuit.ops.values() if op.kind == "output"}
    inputs = {op.label: op.shape for op in circuit.ops.values() if op.kind == "input"}
    assert outputs == {"logits": (2, 5), "features": (2, 8)}
    assert inputs == {"batch['image']": (2, 3, 16, 16)}
    conv = next(op for op in circuit.ops.values() if op.target == "conv")
    assert any(e.src == "input:batch['image']" and e.dst == conv.id for e in circuit.edges)


def test_untraceable_model_falls_back_to_hooks_with_a_note():
    circuit = trace_circuit(Untraceable(), torch.zeros(2, 6))
    assert circuit.method == "hooks"
    assert any("module hooks" in n and "torch.export failed too" in n for n in circuit.notes)
    assert [op.target for op in circuit.ops.values() if op.kind == "module"] == ["a", "b"]
    assert ("a" in {circuit.ops[e.src].target for e in circuit.edges if circuit.ops[e.dst].target == "b"})
    assert circuit.ops["output:output"].shape == (2, 3)


def test_tracing_leaves_the_model_untouched():
    model = DemoResNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace_circuit(model, torch.zeros(1, 1, 28, 28))
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
    assert all(not m._forward_hooks for m in model.modules())


def test_wrong_input_and_torchscript_are_clear_errors():
    with pytest.raises(NetatlasError, match="DemoResNet failed on a 1x3x28x28 batch of zeros"):
        trace_circuit(DemoResNet(), torch.zeros(1, 3, 28, 28))
    scripted = torch.jit.script(mlp())
    with pytest.raises(NetatlasError, match="TorchScript"):
        trace_circuit(scripted, torch.zeros(1, 8, 8))


def test_notation_in_the_dot_source():
    circuit = trace_circuit(DemoResNet(), torch.zeros(1, 1, 28, 28))
    dot = to_dot(circuit.view(), DiagramStyle(names={"C₂": "ch"})).source
    assert dot.count('class="op add"') == 5          # six blocks, one folded away
    assert dot.count("shape=point") == 5             # each block's input is copied to its skip
    # convs and norms: four in each of the five drawn blocks, two in the two downsamples, two in the stem; fc
    assert dot.count('class="op learned"') == 5 * 4 + 2 * 2 + 2 + 1
    assert "×2" in dot and "B ch H W" in dot
    assert "color=\"black:white:black:white:black:white:black\"" in dot   # four axes, four strands


@pytest.mark.parametrize("build, example", [
    (DemoResNet, torch.zeros(1, 1, 28, 28)), (TinyTransformer, torch.zeros(1, 5, 8)),
    (mlp, torch.zeros(1, 8, 8)), (TinyKAN, torch.zeros(1, 2)),
], ids=["demo", "transformer", "mlp", "kan"])
def test_every_format_exports(build, example, tmp_path):
    view = trace_circuit(build(), example).view()
    svg = ET.fromstring(render(view, "svg"))
    assert svg.tag.endswith("svg")
    assert render(view, "pdf").startswith(b"%PDF")
    assert render(view, "png", dpi=72).startswith(b"\x89PNG")
    tex = render(view, "tex").decode()
    assert tex.count("\\begin{tikzpicture}") == 1


def png_width(data: bytes) -> int:
    return int.from_bytes(data[16:20], "big")


def test_png_dpi_scales_the_image():
    view = trace_circuit(mlp(), torch.zeros(1, 8, 8)).view()
    low, high = png_width(render(view, "png", dpi=72)), png_width(render(view, "png", dpi=144))
    assert abs(high / low - 2) < 0.05


def test_wide_diagram_wraps_into_rows_at_one_scale_cut_between_nodes():
    import re

    from netatlas.viz.circuit import _node_spans, scrolling_svg, wrapped_svg

    view = trace_circuit(DemoResNet(), torch.zeros(1, 1, 28, 28)).view()
    svg = render(view, "svg").decode()
    width = float(re.search(r'viewBox="[-\d.]+ [-\d.]+ ([\d.]+)', svg).group(1))
    assert width > 3000                                         # the demo: a long strip
    html = wrapped_svg(svg, row_units=1000, overlap=20)
    rows = re.findall(r'<svg class="na-diagram-row" viewBox="([-\d.]+) ([-\d.]+) ([\d.]+) ([\d.]+)"[^>]*'
                      r'width:([\d.]+)%', html)
    assert len(rows) == int(np.ceil(width / 1000))
    starts = [float(r[0]) for r in rows]
    widths = [float(r[2]) for r in rows]
    css = [float(r[4]) for r in rows]
    assert starts == sorted(starts) and starts[0] <= 0.0 + 1e-6
    assert abs(starts[-1] + widths[-1] - width) < 0.5          # together they cover the whole drawing
    assert max(css) == 100 and np.allclose(np.array(css) / np.array(widths), 100 / max(widths))   # one scale
    spans = _node_spans(svg)
    for start in starts[1:]:                                    # each cut (the row's start + overlap)
        cut = start + 20
        assert not any(a < cut < b for a, b in spans)
    assert "na-diagram-scroll" in scrolling_svg(svg) and "overflow:auto" in scrolling_svg(svg)
    narrow = render(trace_circuit(mlp(), torch.zeros(1, 8, 8)).view(), "svg", DiagramStyle(layout="TB")).decode()
    assert wrapped_svg(narrow).count("<svg") == 1              # a narrow diagram is drawn once


def test_tikz_of_a_real_diagram_compiles(tmp_path):
    assert shutil.which("pdflatex"), "pdflatex is installed by `make test` (texlive-latex-base, texlive-pictures)"
    view = trace_circuit(DemoResNet(), torch.zeros(1, 1, 28, 28)).view(fold_depth=2)
    (tmp_path / "fig.tex").write_bytes(render(view, "tex"))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "fig.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")


def test_cli_diagram(tmp_path, capsys):
    out = [tmp_path / "demo.svg", tmp_path / "demo.pdf", tmp_path / "demo.png", tmp_path / "demo.tex"]
    args = ["diagram", "demo", "--fold-depth", "2", "--layout", "TB", "--rename", "C2=ch", "--dpi", "96"]
    assert main(args + [a for p in out for a in ("-o", str(p))]) == 0
    said = capsys.readouterr().out
    assert "folded: blocks.0 x2" in said and all(f"wrote {p}" in said for p in out)
    assert ET.parse(out[0]).getroot().tag.endswith("svg")
    assert out[1].read_bytes().startswith(b"%PDF") and out[2].read_bytes().startswith(b"\x89PNG")
    assert main(["diagram", "none", "--arch", "resnet18", "-o", str(tmp_path / "r18.svg"), "--no-fold"]) == 0
    assert "folded: none" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["demo", "-o", "x.docx"], "suffix must be one of"),
    (["demo", "-o", "x.svg", "--unfold", "nope"], "no module 'nope'"),
    (["none", "-o", "x.svg"], "give it with --arch"),
    (["missing.pt", "-o", "x.svg"], "checkpoint not found"),
    (["none", "--arch", "resnet18", "--size", "8", "-o", "x.svg", "--rename", "C2"], "SYMBOL=NAME"),
])
def test_cli_diagram_errors(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["diagram", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()
