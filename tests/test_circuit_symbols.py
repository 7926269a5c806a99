"""Diagram axis symbols follow roles, not sizes: inputs where sizes of different roles coincide.

The expected roles come from the models' own layouts (NCHW maps, [B, S, D] sequences, [B, D]
features), not from the namer: a 64-channel wire of a 64-pixel image must not call its channels H.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models import VisionTransformer

from netatlas.backend.circuit.symbols import axis_symbols
from netatlas.backend.circuit.trace import trace_circuit
from netatlas.backend.demo_model import DemoResNet
from tests.circuit_models import DictModel, TinyKAN, TinyTransformer, Untraceable, mlp

FEATURE, POSITION = "CD", "HWTS"


def small_vit() -> VisionTransformer:
    """A ViT whose 8x8 = 64 patches equal its width of 64: the flattened grid and d_model coincide."""
    return VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


# (model, example, layout): layout says which wires have a known role per axis
CASES = {
    "resnet18 64px 64ch": (torchvision.models.resnet18, torch.randn(2, 3, 64, 64), "image"),
    "resnet50 64px 64ch": (torchvision.models.resnet50, torch.randn(2, 3, 64, 64), "image"),
    "demo 32px 32ch": (lambda: DemoResNet(in_channels=3, widths=(32, 64)), torch.randn(2, 3, 32, 32), "image"),
    "vit 64 patches width 64": (small_vit, torch.randn(2, 3, 32, 32), "image"),
    "transformer seq 32 width 32": (lambda: TinyTransformer(d_model=32), torch.randn(2, 32, 8), "sequence"),
    "dict model 8px 8ch": (DictModel, {"image": torch.randn(2, 3, 8, 8)}, "image"),
    "mlp 8x8": (mlp, torch.randn(3, 8, 8), "flat"),
    "kan batch 5 width 5": (TinyKAN, torch.randn(5, 2), "flat"),
    "untraceable batch 6 width 6": (Untraceable, torch.randn(6, 6), "flat"),
}


def named_wires(build, example):
    torch.manual_seed(0)
    circuit = trace_circuit(build(), example)
    view = circuit.view(fold_repeats=False)
    symbols = axis_symbols(view.circuit)
    return view.circuit, [(view.circuit.ops[e.src], e.shape, symbols[(e.src, e.dst)]) for e in view.circuit.edges]


def expected_roles(layout: str, rank: int) -> list[str] | None:
    """The letters each position of a wire may have, where the layout fixes its roles."""
    return {("image", 4): ["B", FEATURE, POSITION, POSITION], ("image", 2): ["B", FEATURE],
            ("sequence", 3): ["B", POSITION, FEATURE], ("sequence", 2): ["B", FEATURE],
            ("flat", 2): ["B", FEATURE]}.get((layout, rank))


@pytest.mark.parametrize("case", list(CASES))
def test_every_axis_is_named_by_its_role(case):
    build, example, layout = CASES[case]
    _, wires = named_wires(build, example)
    sizes: dict[str, set[int]] = {}
    checked = 0
    for op, shape, symbols in wires:
        for sym, size in zip(symbols, shape):
            sizes.setdefault(sym, set()).add(size)
        roles = expected_roles(layout, len(shape))
        if op.kind == "param" or roles is None:
            continue
        for pos, (sym, allowed) in enumerate(zip(symbols, roles)):
            flattened = allowed == FEATURE and sum(ch.isalpha() for ch in sym) > 1   # [B, C, H, W] -> [B, CHW]
            assert sym == "1" and shape[pos] == 1 or sym[0] in allowed or flattened, (case, op.target, shape, symbols)
        checked += 1
    assert checked >= 3
    assert all(len(s) == 1 for sym, s in sizes.items() if sym != "1"), sizes   # one symbol, one size


def test_conv_channels_equal_to_the_image_height_are_not_called_h():
    _, wires = named_wires(torchvision.models.resnet18, torch.randn(2, 3, 64, 64))
    x = next(s for op, _, s in wires if op.kind == "input")
    conv1 = next(s for op, _, s in wires if op.target == "conv1")
    assert x == ("B", "C", "H", "W")
    assert conv1[1][0] == "C" and conv1[1] != x[2]            # 64 channels beside a 64-pixel H
    assert conv1[2][0] == "H" and conv1[3][0] == "W" and conv1[2] != x[2]   # 32 px: another H


def test_a_sequence_as_long_as_the_width_keeps_s_and_d_apart():
    _, wires = named_wires(lambda: TinyTransformer(d_model=32), torch.randn(2, 32, 8))
    embed = next(s for op, _, s in wires if op.target == "embed")
    pooled = next(s for op, shape, s in wires if op.target == "mean")
    assert embed[1] == "S" and embed[2][0] == "D" and embed[2] != "S"
    assert pooled == ("B", embed[2])          # the mean over the sequence keeps the features, not S


def test_a_transpose_of_equal_sizes_swaps_the_symbols():
    _, wires = named_wires(small_vit, torch.randn(2, 3, 32, 32))
    reshaped = next(s for op, _, s in wires if op.target == "reshape")
    permuted = next(s for op, _, s in wires if op.target == "permute")
    tokens = next(s for op, _, s in wires if op.target == "cat")
    width = reshaped[1]
    assert reshaped == ("B", width, reshaped[2]) and reshaped[2] != width      # [B, C, HW], both 64
    assert permuted == ("B", reshaped[2], width)
    assert tokens == ("B", "S", width)
    head_input = next(s for op, shape, s in wires if len(shape) == 2 and op.target != "heads.head")
    assert head_input == ("B", width)

