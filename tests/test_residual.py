"""Residual-path analysis: unit detection, gating, the Moebius decomposition, Veit's path measurements,
lesions, reordering and the cached report.

Every expected value is computed here independently of netatlas: toy residual nets are run by hand
with explicit branch masks and detaches, linear nets are expanded with matrix products, counts and
rank statistics are brute-forced or taken from numpy/scipy.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import netatlas.backend.residual.paths as rp
import netatlas.backend.workspace as workspace_module
from netatlas.backend.cache import ResultCache
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.residual.blocks import find_residual_units, gated, parse_units
from netatlas.backend.residual.paths import (PathSettings, analyze_paths, elementary_symmetric, kendall_tau,
                                             mask_bits, moebius_terms)
from netatlas.backend.workspace import Workspace
from netatlas.backend.errors import NetatlasError
from tests.backend_support import SMALL_PRE, preprocess_by_hand, randomize_batchnorm

TINY = PathSettings(images=64, gradient_images=16, decomposition_images=4, samples=2, lesion_draws=2,
                    reorder_trials=4)


# --------------------------------------------------------------------------------------------------
# toy residual nets, written out


class Residual(nn.Module):
    """x + f(x), found by netatlas only through its fx-traced graph."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.f = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class ResidualFirst(Residual):
    """f(x) + x: the skip is the second operand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x) + x


class ResMLP(nn.Module):
    def __init__(self, branches: list[nn.Module], head: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Residual(f) for f in branches))
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def tanh_mlp(n: int, width: int = 6, hidden: int = 8, classes: int | None = None, seed: int = 0,
             gain: float = 1.0) -> ResMLP:
    """n blocks x + W2 tanh(W1 x + b1) + b2 (nonlinear branches), optional linear head."""
    torch.manual_seed(seed)
    branches = []
    for _ in range(n):
        branch = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width))
        with torch.no_grad():
            branch[2].weight.mul_(gain)
        branches.append(branch)
    head = nn.Linear(width, classes) if classes else None
    return ResMLP(branches, head).eval()


def linear_net(matrices: list[torch.Tensor]) -> ResMLP:
    """n blocks x + A_l x (bias-free), no head: the output is the last residual stream."""
    branches = []
    for a in matrices:
        layer = nn.Linear(a.shape[1], a.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(a)
        branches.append(layer)
    return ResMLP(branches).to(matrices[0].dtype).eval()


@torch.no_grad()
def masked_forward(model: ResMLP, x: torch.Tensor, mask) -> torch.Tensor:
    """x_l = x_{l-1} + m_l f_l(x_{l-1}), by hand (branches called directly, no gating)."""
    for m, block in zip(mask, model.blocks):
        x = x + float(m) * block.f(x)
    return model.head(x)


@torch.no_grad()
def all_mask_outputs(model: ResMLP, x: torch.Tensor, n: int) -> torch.Tensor:
    """h over all 2^n masks, [2^n, B, ...]; bit l of the mask index says branch l is on."""
    masks = torch.tensor([[(m >> l) & 1 for l in range(n)] for m in range(2 ** n)], dtype=x.dtype)
    rep = x.unsqueeze(0).expand(2 ** n, *x.shape).reshape(-1, *x.shape[1:])
    per_row = masks.repeat_interleave(len(x), dim=0)
    for l, block in enumerate(model.blocks):
        rep = rep + per_row[:, l:l + 1] * block.f(rep)
    return model.head(rep).reshape(2 ** n, len(x), -1)


def brute_moebius(h: torch.Tensor, n: int) -> torch.Tensor:
    """Delta_S = sum_{T subset S} (-1)^{|S|-|T|} h(T), the 3^n way."""
    out = torch.zeros_like(h)
    for s in range(2 ** n):
        for t in range(2 ** n):
            if t & s == t:
                out[s] += (-1) ** (bin(s).count("1") - bin(t).count("1")) * h[t]
    return out


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def no_patched_forward(model: nn.Module) -> bool:
    return all("forward" not in m.__dict__ for m in model.modules())


# --------------------------------------------------------------------------------------------------
# 1. the Moebius terms


def test_moebius_terms_match_brute_force_inclusion_exclusion():
    g = torch.Generator().manual_seed(1)
    n = 4
    h = torch.randn(2 ** n, 3, 5, generator=g, dtype=torch.float64)
    original = h.clone()
    expected = brute_moebius(h, n)
    assert torch.allclose(moebius_terms(h, n), expected, atol=1e-12)
    assert torch.allclose(expected.sum(0), h[-1], atol=1e-12)     # the identity the code relies on
    assert torch.equal(h, original)                                 # input not modified in place
    bits = [[(m >> l) & 1 for l in range(n)] for m in range(2 ** n)]
    assert mask_bits(n).tolist() == bits


@pytest.mark.parametrize("n", [8, 12])
def test_moebius_terms_sum_to_the_output_of_a_nonlinear_net(n):
    model = tanh_mlp(n, seed=n).double()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    h = all_mask_outputs(model, x, n)
    with torch.no_grad():
        full = model(x)
        first_branches = [block.f(x) for block in model.blocks]  # f_l at the input x
    assert rel(h[-1], full) < 1e-12
    terms = moebius_terms(h, n)
    assert rel(terms.sum(0), full) < 1e-4
    assert torch.allclose(terms[0], x, atol=1e-12)                # Delta_{} = h(no branch) = x
    for l in range(n):                                            # Delta_{l} = h({l}) - x = f_l(x)
        assert torch.allclose(terms[1 << l], first_branches[l], atol=1e-10)
    # the gated real model gives the same h as the hand-written masked forward
    units = find_residual_units(model)
    assert len(units) == n
    rng = np.random.default_rng(n)
    with gated(model, units) as gate, torch.no_grad():
        for m in [2 ** n - 1, 0, *rng.integers(0, 2 ** n, 5).tolist()]:
            gate.mask.copy_(torch.tensor([(m >> l) & 1 for l in range(n)], dtype=torch.float32))
            assert torch.allclose(model(x), h[m], atol=1e-12)


@pytest.mark.parametrize("n", [8, 12])
def test_analyze_paths_exact_decomposition_check(n):
    model = tanh_mlp(n, classes=3, seed=n)
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    report = analyze_paths(model, find_residual_units(model), x, torch.full((16,), -1),
                           PathSettings(gradient_images=4, decomposition_images=3, samples=1,
                                        lesion_draws=1, reorder_trials=2))
    assert report.meta["exact"] is True and report.meta["n_units"] == n
    assert report.meta["decomposition_rel_error"] < 1e-4
    assert list(report.orders["k"]) == list(range(n + 1))
    if n == 8:  # the order weights against a 3^n inclusion-exclusion on the hand-run net
        h = all_mask_outputs(model.double(), x[:3].double(), n)
        terms = brute_moebius(h, n)
        norms = terms.norm(dim=2).mean(1)
        expected = [sum(float(norms[m]) for m in range(2 ** n) if bin(m).count("1") == k) for k in range(n + 1)]
        np.testing.assert_allclose(report.orders["exact"], expected, rtol=1e-3, atol=1e-5 * sum(expected))


# --------------------------------------------------------------------------------------------------
# 2. linear residual nets: the binomial expansion


def test_linear_net_terms_are_ordered_matrix_products():
    n, d = 6, 5
    g = torch.Generator().manual_seed(3)
    mats = [0.4 * torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(n)]
    model = linear_net(mats)
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    units = find_residual_units(model)
    with gated(model, units) as gate, torch.no_grad():
        outputs = []
        for row in mask_bits(n):
            gate.mask.copy_(row)
            outputs.append(model(x))
    terms = moebius_terms(torch.stack(outputs), n)

    def product(subset) -> torch.Tensor:   # A_{s_k} ... A_{s_1} x, the earliest block applied first
        y = x
        for l in sorted(subset):
            y = y @ mats[l].T
        return y

    for subset in [(), (0,), (5,), (1, 3), (3, 1, 4), (0, 2, 4, 5), tuple(range(n))]:
        index = sum(1 << l for l in subset)
        assert torch.allclose(terms[index], product(subset), atol=1e-5, rtol=1e-5), subset
    assert not torch.allclose(product((1, 3)), x @ mats[3].T @ mats[1].T, atol=1e-3)  # order matters

    report = analyze_paths(model, units, x, torch.full((4,), -1),
                           PathSettings(samples=1, lesion_draws=1, reorder_trials=1, decomposition_images=4))
    expected = [sum(float(product(s).norm(dim=1).mean()) for s in itertools.combinations(range(n), k))
                for k in range(n + 1)]
    np.testing.assert_allclose(report.orders["exact"], expected, rtol=1e-6)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_scalar_linear_net_orders_gains_and_path_gradients(lam):
    n, d, b = 6, 4, 12
    model = linear_net([lam * torch.eye(d, dtype=torch.float64)] * n)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, d, (b,), generator=g)
    report = analyze_paths(model, find_residual_units(model), x, labels,
                           PathSettings(gradient_images=b, decomposition_images=b, samples=3,
                                        lesion_draws=1, reorder_trials=1))
    ks = list(range(n + 1))
    mean_norm = float(x.norm(dim=1).mean())
    binomial = [math.comb(n, k) * lam ** k for k in ks]
    np.testing.assert_allclose(report.orders["exact"], [c * mean_norm for c in binomial], rtol=1e-6)
    np.testing.assert_allclose(report.orders["ideal_1"], [math.comb(n, k) for k in ks], rtol=1e-12)
    # every branch is lam * its input: gain, ratio and cos are known; e_k(lam, ..., lam) = C(n,k) lam^k
    np.testing.assert_allclose(report.units["gain"], lam, rtol=1e-4)  # finite differences
    np.testing.assert_allclose(report.units["ratio"], lam, rtol=1e-9)
    np.testing.assert_allclose(report.units["cos"], 1.0, rtol=1e-9)
    np.testing.assert_allclose(report.orders["estimate"], binomial, rtol=1e-3)

    # gradient through k branches and n-k skips: lam^k dL/dy at the real output y = (1+lam)^n x
    y = (1 + lam) ** n * x
    dl_dy = torch.softmax(y, dim=1) - nn.functional.one_hot(labels, d).double()
    per_path = np.array([lam ** k * float(dl_dy.norm(dim=1).mean()) for k in ks])
    assert list(report.paths["count"]) == [math.comb(n, k) for k in ks]
    np.testing.assert_allclose(report.paths["grad_mean"], per_path, rtol=1e-4)
    np.testing.assert_allclose(report.paths["effective"], per_path * [math.comb(n, k) for k in ks], rtol=1e-4)
    assert report.meta["baseline_accuracy"] == accuracy(y, labels)


def test_path_gradients_of_a_nonlinear_net_match_hand_routed_backward():
    n, b = 4, 10
    model = tanh_mlp(n, classes=3, seed=7, gain=2.0).double()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(b, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (b,), generator=g)
    labels[::3] = -1                                           # unknown: the model's prediction is used
    with torch.no_grad():
        targets = torch.where(labels >= 0, labels, model(x).argmax(1))

    def routed_grad_norm(subset) -> float:
        xg = x.clone().requires_grad_(True)
        h = xg
        for l, block in enumerate(model.blocks):
            if l in subset:
                h = h.detach() + block.f(h)        # gradient through the branch only
            else:
                h = h + block.f(h).detach()        # gradient through the skip only
        loss = nn.functional.cross_entropy(model.head(h), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
        return float(grad.norm(dim=1).mean())

    expected = [np.mean([routed_grad_norm(set(s)) for s in itertools.combinations(range(n), k)])
                for k in range(n + 1)]
    flags = [p.requires_grad for p in model.parameters()]
    report = analyze_paths(model, find_residual_units(model), x, labels,
                           PathSettings(gradient_images=b, samples=6, lesion_draws=1, reorder_trials=1))
    np.testing.assert_allclose(report.paths["grad_mean"], expected, rtol=1e-6)
    assert list(report.paths["enumerated"]) == [1.0] * (n + 1)
    assert list(report.paths["grad_sem"]) == [0.0] * (n + 1)
    assert expected[1] != pytest.approx(expected[2], rel=1e-3)   # the routes really differ
    assert [p.requires_grad for p in model.parameters()] == flags
    with torch.no_grad():
        assert report.meta["baseline_accuracy"] == accuracy(model(x), targets)


# --------------------------------------------------------------------------------------------------
# 3. lesions, gating identity and restoration


def test_lesion_of_a_zero_branch_changes_nothing():
    n, b, dead = 4, 60, 2
    model = tanh_mlp(n, classes=3, seed=11, gain=2.0)
    with torch.no_grad():
        model.blocks[dead].f[2].weight.zero_()
        model.blocks[dead].f[2].bias.zero_()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(b, 6, generator=g)
    labels = torch.randint(0, 3, (b,), generator=g)
    with torch.no_grad():
        plain = model(x)
    baseline = accuracy(plain, labels)
    report = analyze_paths(model, find_residual_units(model), x, labels, TINY)
    assert report.meta["baseline_accuracy"] == baseline
    assert report.lesions.loc[dead, "accuracy"] == baseline
    for l in range(n):   # each lesion = the net with block l's branch removed, run by hand
        assert report.lesions.loc[l, "accuracy"] == accuracy(masked_forward(model, x, [i != l for i in range(n)]),
                                                             labels)
    all_removed = report.lesions_k.set_index("k").loc[n]
    with torch.no_grad():
        assert all_removed["mean"] == accuracy(model.head(x), labels) and all_removed["sd"] == 0
    units = find_residual_units(model)
    with gated(model, units) as gate, torch.no_grad():
        gate.mask[dead] = 0
        assert torch.equal(model(x), plain)
        gate.mask.fill_(1)
        assert torch.equal(model(x), plain)


def test_gate_all_ones_reproduces_demo_and_resnet18():
    torch.manual_seed(0)
    cases = [(randomize_batchnorm(DemoResNet()).eval(), torch.randn(2, 1, 28, 28)),
             (randomize_batchnorm(torchvision.models.resnet18()).eval(), torch.randn(2, 3, 64, 64))]
    for model, x in cases:
        with torch.no_grad():
            before = model(x)
            units = find_residual_units(model)
            with gated(model, units) as gate:
                assert gate.mask.tolist() == [1.0] * len(units) and gate.route == ["both"] * len(units)
                inside = model(x)
                assert all("forward" in model.get_submodule(u.module).__dict__ for u in units)
            after = model(x)
        assert torch.allclose(inside, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))
        assert no_patched_forward(model)
        assert torch.equal(after, before)


def test_gate_removes_the_branch_not_the_projected_shortcut():
    model = DemoResNet(in_channels=1, num_classes=5, widths=(4, 8), blocks_per_stage=1)
    model = randomize_batchnorm(model).eval()
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    units = find_residual_units(model)
    assert [u.key for u in units] == ["blocks.0#0", "blocks.1#0"]
    with torch.no_grad():
        block = model.blocks[1]
        h = model.blocks[0](model.stem(x))
        expected = model.fc(model.flatten(model.pool(torch.relu(block.downsample(h)))))
        with gated(model, units) as gate:
            gate.mask[1] = 0
            lesioned = model(x)
    assert torch.allclose(lesioned, expected, atol=1e-6)


def test_gated_restores_the_model_when_the_body_raises():
    model = tanh_mlp(3)
    with pytest.raises(ZeroDivisionError):
        with gated(model, find_residual_units(model)):
            1 / 0
    assert no_patched_forward(model)


@pytest.mark.parametrize("helper", ["_path_gradients", "_reorder"])
def test_analyze_paths_restores_the_model_when_it_raises(monkeypatch, helper):
    model = tanh_mlp(4, classes=3, seed=2)
    params = list(model.parameters())
    for p in params[::3]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in params]
    assert True in flags and False in flags
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)

    def boom(*args, **kwargs):
        raise RuntimeError("helper failed")

    monkeypatch.setattr(rp, helper, boom)
    with pytest.raises(RuntimeError, match="helper failed"):
        analyze_paths(model, find_residual_units(model), x, torch.full((8,), -1), TINY)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert no_patched_forward(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_analyze_paths_leaves_the_model_as_it_was():
    model = tanh_mlp(4, classes=3, seed=2)
    model.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    places = [(name, id(m)) for name, m in model.named_modules()]
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    analyze_paths(model, find_residual_units(model), x, torch.full((8,), -1), TINY)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [(name, id(m)) for name, m in model.named_modules()] == places
    assert no_patched_forward(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)


# --------------------------------------------------------------------------------------------------
# 4. detection


def test_detects_torchvision_and_demo_blocks():
    cases = [(DemoResNet(), 6, "ResidualBlock"), (torchvision.models.resnet18(), 8, "BasicBlock"),
             (torchvision.models.resnet50(), 16, "Bottleneck")]
    for model, count, kind in cases:
        units = find_residual_units(model)
        assert len(units) == count
        assert {u.kind for u in units} == {kind}
        assert all(u.index == 0 and isinstance(model.get_submodule(u.module), type(model.get_submodule(
            units[0].module))) for u in units)
    r18 = [u.module for u in find_residual_units(torchvision.models.resnet18())]
    assert r18 == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_units_and_gating(norm_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    units = find_residual_units(model)
    assert [u.key for u in units] == [f"layers.{i}#{j}" for i in range(3) for j in range(2)]
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x)
        with gated(model, units) as gate:
            gated_out = model(x)
            gate.mask.zero_()          # every branch off: pre-norm layers pass x through untouched
            no_branches = model(x)
        expected = x
        if not norm_first:             # post-norm: each layer is norm2(norm1(x))
            for lay in model.layers:
                expected = lay.norm2(lay.norm1(expected))
    assert torch.allclose(gated_out, plain, atol=1e-5)
    assert torch.allclose(no_branches, expected, atol=1e-6)
    assert no_patched_forward(model)


def test_transformer_units_can_be_gated_one_at_a_time():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    units = parse_units(model, ["layers.0#0", "layers.1"])
    assert [u.key for u in units] == ["layers.0#0", "layers.1#0", "layers.1#1"]
    l0, l1, l2 = model.layers
    with torch.no_grad():
        y = l0(x)                                   # layers.1's self-attention branch removed by hand
        y = y + l1.linear2(torch.relu(l1.linear1(l1.norm2(y))))
        expected = l2(y)
        with gated(model, units) as gate:
            gate.mask[1] = 0
            out = model(x)
    assert torch.allclose(out, expected, atol=1e-5)


def test_vit_b_16_has_two_units_per_encoder_block():
    model = torchvision.models.vit_b_16()
    units = find_residual_units(model)
    assert len(units) == 24
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert [u.key for u in units] == [f"{b}#{j}" for b in blocks for j in range(2)]


def test_generic_fx_detection_and_skip_operand():
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    for cls in (Residual, ResidualFirst):
        model = cls(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))).eval()
        units = find_residual_units(model)
        assert [(u.module, u.index) for u in units] == [("", 0)]
        with torch.no_grad(), gated(model, units) as gate:
            assert torch.allclose(model(x), x + model.f(x), atol=1e-7)
            gate.mask[0] = 0
            assert torch.equal(model(x), x)         # only the branch goes, the skip stays
        nested = nn.Sequential(nn.Linear(6, 6), cls(nn.Linear(6, 6)), nn.ReLU())
        assert [u.module for u in find_residual_units(nested)] == ["1"]


class BiasAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.offset = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.lin(x) + self.offset            # only one operand depends on the input


def test_models_without_skips_have_no_units():
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for model in (plain, nn.Sequential(BiasAdd(), nn.ReLU())):
        assert find_residual_units(model) == []
    with pytest.raises(NetatlasError):
        analyze_paths(plain, find_residual_units(plain), torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(NetatlasError):
        parse_units(plain, ["0"])
    model = tanh_mlp(3, classes=2)
    with pytest.raises(NetatlasError):
        parse_units(model, ["head"])
    with pytest.raises(NetatlasError):
        parse_units(model, ["blocks.0#1"])
    assert [u.key for u in parse_units(model, ["blocks.1#0", "blocks.0"])] == ["blocks.0#0", "blocks.1#0"]


# --------------------------------------------------------------------------------------------------
# 5. counts and statistics


def test_path_counts_are_binomial():
    n = 5
    model = tanh_mlp(n, classes=2)
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    report = analyze_paths(model, find_residual_units(model), x, torch.full((6,), -1), TINY)
    counts = [sum(1 for m in range(2 ** n) if bin(m).count("1") == k) for k in range(n + 1)]
    assert list(report.paths["count"]) == counts
    assert sum(counts) == 2 ** n
    assert list(report.paths["samples"]) == [min(c, TINY.samples) for c in counts]


def brute_kendall(order: list[int]) -> float:
    n = len(order)
    pairs = list(itertools.combinations(range(n), 2))
    concordant = sum(order[i] < order[j] for i, j in pairs)
    return (2 * concordant - len(pairs)) / len(pairs)


def test_kendall_tau_against_scipy_and_brute_force():
    try:
        from scipy.stats import kendalltau
    except ImportError:   # scipy comes with scikit-learn; without it the brute-force count still checks
        kendalltau = None
    rng = np.random.default_rng(0)
    orders = [list(range(6)), list(range(6))[::-1], [1, 0, 2, 3], [2, 0, 3, 1]]
    orders += [rng.permutation(n).tolist() for n in (2, 3, 7, 12) for _ in range(4)]
    for order in orders:
        if kendalltau is not None:
            expected = kendalltau(np.arange(len(order)), order).statistic
            assert kendall_tau(order) == pytest.approx(expected, abs=1e-12)
        assert kendall_tau(order) == pytest.approx(brute_kendall(order), abs=1e-12)
    assert kendall_tau([0]) == 1.0


def test_elementary_symmetric_against_poly_and_subset_sums():
    rng = np.random.default_rng(4)
    for g in (rng.uniform(0.1, 2, 7), rng.normal(size=5), np.array([0.5] * 6), np.array([3.0])):
        e = elementary_symmetric(g)
        np.testing.assert_allclose(e, np.poly(-g), rtol=1e-10)        # prod (t + g_l) = sum e_k t^(n-k)
        brute = [sum(math.prod(c) for c in itertools.combinations(g, k)) for k in range(len(g) + 1)]
        np.testing.assert_allclose(e, brute, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(elementary_symmetric(np.array([0.5] * 6)),
                               [math.comb(6, k) * 0.5 ** k for k in range(7)])


# --------------------------------------------------------------------------------------------------
# 6. reordering


def permuted(model: ResMLP, order: list[int]) -> nn.Module:
    """The same blocks in a new order (place i holds block order[i]), built by hand."""
    blocks = [copy.deepcopy(model.blocks[j]) for j in order]
    return nn.Sequential(*blocks, copy.deepcopy(model.head)).eval()


def test_reorder_table_against_hand_built_permutations():
    n, b = 4, 300
    model = tanh_mlp(n, classes=3, seed=21, gain=3.0)
    g = torch.Generator().manual_seed(22)
    x = torch.randn(b, 6, generator=g)
    labels = torch.randint(0, 3, (b,), generator=g)
    originals = list(model.blocks)
    with torch.no_grad():
        baseline = accuracy(model(x), labels)
        by_order = {p: accuracy(permuted(model, list(p))(x), labels) for p in itertools.permutations(range(n))}
    assert len(set(by_order.values())) > 3     # orders matter in this net: the check can fail
    report = analyze_paths(model, find_residual_units(model), x, labels,
                           PathSettings(samples=1, lesion_draws=1, reorder_trials=12, seed=3))
    table = report.reorder
    first = table.iloc[0]
    assert first["swaps"] == 0 and first["tau"] == 1.0 and first["accuracy"] == baseline
    assert report.meta["baseline_accuracy"] == baseline
    assert len(table) > 1
    for row in table.iloc[1:].itertuples():
        candidates = {acc for p, acc in by_order.items() if math.isclose(brute_kendall(list(p)), row.tau)}
        assert candidates, row
        assert row.accuracy in candidates, row
    assert all(a is b for a, b in zip(model.blocks, originals)) and len(model.blocks) == n
    assert no_patched_forward(model)


def test_placed_swaps_modules_like_a_hand_built_model_and_restores_them():
    n = 4
    model = tanh_mlp(n, classes=3, seed=21, gain=3.0)
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    blocks = [f"blocks.{i}" for i in range(n)]
    modules = dict(model.named_modules())
    places = [(name, id(m)) for name, m in model.named_modules()]
    order = [2, 0, 3, 1]
    with torch.no_grad():
        with rp._placed(model, blocks, order, modules):
            inside = model(x)
            assert [id(model.blocks[i]) for i in range(n)] == [id(modules[blocks[j]]) for j in order]
        expected = permuted(model, order)(x)
        plain = model(x)
    assert torch.equal(inside, expected)
    assert not torch.allclose(inside, plain)
    assert [(name, id(m)) for name, m in model.named_modules()] == places


def test_demo_reorder_only_swaps_shape_preserving_blocks():
    model = randomize_batchnorm(DemoResNet()).eval()
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(6) % 10
    with torch.no_grad():
        swapped = copy.deepcopy(model)
        swapped.blocks = nn.Sequential(model.blocks[1], model.blocks[0], *model.blocks[2:])
        expected = accuracy(swapped(x), labels)
        baseline = accuracy(model(x), labels)
    places = [(name, id(m)) for name, m in model.named_modules()]
    report = analyze_paths(model, find_residual_units(model), x, labels,
                           PathSettings(gradient_images=2, decomposition_images=1, samples=1, lesion_draws=1,
                                        reorder_trials=6))
    # of six blocks only blocks.0 and blocks.1 (16 -> 16 channels, same size) trade places
    assert report.reorder["tau"].tolist() == pytest.approx([1.0, 13 / 15])
    assert report.reorder["accuracy"].tolist() == [baseline, expected]
    assert [(name, id(m)) for name, m in model.named_modules()] == places


# --------------------------------------------------------------------------------------------------
# 7. the cached report


SMALL_SETTINGS = PathSettings(images=64, gradient_images=16, decomposition_images=4, samples=2, lesion_draws=2,
                              reorder_trials=2)


def test_workspace_residual_paths_is_cached(monkeypatch, small_loaded, small_dataset, small_images, cache_dir):
    ws = Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu")
    real = workspace_module.analyze_paths
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(workspace_module, "analyze_paths", counting)
    fresh = ws.residual_paths(settings=SMALL_SETTINGS)
    assert len(calls) == 1 and fresh.meta["n_units"] == 2 and fresh.meta["images"] == 30

    images, labels = small_images  # 30 images, no split: all are used
    with torch.no_grad():
        logits = small_loaded.model(preprocess_by_hand(images, SMALL_PRE.mean, SMALL_PRE.std))
    assert fresh.meta["baseline_accuracy"] == pytest.approx(accuracy(logits, torch.as_tensor(labels)))

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(workspace_module, "analyze_paths", refuse)
    cached = ws.residual_paths(settings=SMALL_SETTINGS)
    assert cached.meta == fresh.meta
    for section in fresh.SECTIONS:
        want = getattr(fresh, section).dropna(axis=1, how="all")  # all-NaN columns (no learned scale) drop
        pd.testing.assert_frame_equal(getattr(cached, section), want, check_dtype=False, check_like=True)
    # the same units chosen by key, in any order, are the same entry
    again = ws.residual_paths(["blocks.1", "blocks.0#0"], settings=SMALL_SETTINGS)
    pd.testing.assert_frame_equal(again.units, cached.units)

    monkeypatch.setattr(workspace_module, "analyze_paths", counting)
    one = ws.residual_paths(["blocks.0"], settings=SMALL_SETTINGS)
    assert len(calls) == 2 and [u.key for u in calls[-1]] == ["blocks.0#0"]
    assert one.meta["n_units"] == 1 and list(one.paths["k"]) == [0, 1]
    monkeypatch.setattr(workspace_module, "analyze_paths", refuse)
    assert ws.residual_paths(["blocks.0"], settings=SMALL_SETTINGS).meta == one.meta
    other = PathSettings(**{**SMALL_SETTINGS.__dict__, "seed": 1})
    with pytest.raises(AssertionError, match="recomputed"):
        ws.residual_paths(["blocks.0"], settings=other)
