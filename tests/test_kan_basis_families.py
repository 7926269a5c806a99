"""The basis-function KAN families read back against modules written from each library's own code.

Every check compares our edges with a reference forward (tests/kan_reference_basis.py): the sum
sum_i phi_ij(x_i) + c_j per layer and the whole network, and, for separable layers, single edges
through the forward's change when one input moves. Family modules are imported directly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from netatlas.backend.kan.analysis import analyze
from netatlas.backend.kan.families import afkan, chebykan, fastkan, fourierkan, relukan, trukan
from netatlas.backend.errors import NetatlasError
from tests import kan_reference_basis as ref

FAMILIES = (fastkan, chebykan, fourierkan, relukan, trukan, afkan)
ATOL = 1e-5


@dataclass
class Case:
    family: object                          # the family module
    net: nn.Module                          # reference network, float64
    layers: list[nn.Module]                 # its layers in order
    call: Callable[[nn.Module, torch.Tensor], torch.Tensor]    # [B, in] -> [B, out] through a layer/net
    inputs: tuple[float, float]             # range of test inputs
    options: dict


def plain(module, x):
    return module(x)


def column(module, x):                      # ReLU-KAN: [B, in, 1] -> [B, out, 1]
    return module(x[..., None])[..., 0]


def stacked(module, x):                     # AF-KAN layers: [methods, B, in]
    return module(x[None])[0]


def randomize(net: nn.Module, names: tuple[str, ...], scale: float = 1.0, seed: int = 0) -> None:
    """Random values for parameters whose name ends in one of ``names`` (inits are often zeros/ones)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith(names):
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * scale)


def build(name: str) -> Case:
    torch.manual_seed(zlib.crc32(name.encode()))
    case = CASES[name]()
    case.net.eval()                         # BatchNorm on its running statistics, as a loaded model runs
    return case


def _fastkan(widths, options=None, **kwargs) -> Callable[[], Case]:
    def make():
        net = ref.FastKAN(widths, **kwargs).double()
        randomize(net, ("layernorm.weight", "layernorm.bias", "base_linear.bias"), 0.5)
        return Case(fastkan, net, list(net.layers), plain, (-3, 3), options or {})
    return make


def _chebykan(widths, degree) -> Callable[[], Case]:
    def make():
        net = ref.ChebyKAN(widths, degree).double()
        randomize(net, ("cheby_coeffs",), 0.5)
        return Case(chebykan, net, list(net.layers), plain, (-3, 3), {})
    return make


def _fourierkan(widths, gridsize, addbias=True) -> Callable[[], Case]:
    def make():
        net = ref.FourierKAN(widths, gridsize, addbias).double()
        randomize(net, ("bias",))
        return Case(fourierkan, net, list(net.layers), plain, (-4, 4), {})
    return make


def _relukan(widths, g, k, noise=0.0, widen=0.0, options=None) -> Callable[[], Case]:
    def make():
        net = ref.ReLUKAN(widths, g, k, train_ab=True).double()
        with torch.no_grad():                           # trained-looking phases: each one moved a little
            for layer in net.rk_layers:
                layer.phase_low.add_(torch.randn_like(layer.phase_low) * noise / g)
                layer.phase_height.add_(torch.randn_like(layer.phase_height) * noise / g + widen * (k + 1) / g)
        return Case(relukan, net, list(net.rk_layers), column, (-k / g - 0.1, 1.2), options or {})
    return make


def _trukan(widths, options=None, knot_noise=0.0, **kwargs) -> Callable[[], Case]:
    def make():
        net = ref.TruKan(widths, **kwargs).double()
        randomize(net, ("coeffs", "bias_out"), 0.3)
        with torch.no_grad():
            for layer in net.layers.values():
                if layer.learn_knots:                   # uneven learned increments
                    layer.raw_knots.add_(torch.randn_like(layer.raw_knots) * knot_noise)
                elif knot_noise:                        # fixed knots at arbitrary sorted positions
                    layer.fixed_knots = (torch.rand_like(layer.fixed_knots) * 2 - 1).sort(-1).values
        lo, hi = kwargs.get("knots_range", (-1, 1))
        return Case(trukan, net, list(net.layers.values()), plain, (lo - 0.5, hi + 0.5), options or {})
    return make


def _afkan(widths, options=None, **kwargs) -> Callable[[], Case]:
    def make():
        net = ref.AF_KAN(widths, **kwargs).double()
        randomize(net, ("gk_linear.weight", "gk_linear.bias", "norm.bias", "norm.running_mean", "conv1d.weight"))
        with torch.no_grad():
            for name, buffer in net.named_buffers():
                if name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
        return Case(afkan, net, list(net.rk_layers), stacked, (-0.8, 1.6), options or {})
    return make


CASES: dict[str, Callable[[], Case]] = {
    "fastkan-ln-base": _fastkan([3, 4]),
    "fastkan-net": _fastkan([5, 2, 3], grid_min=-1.5, grid_max=2.5, num_grids=6),
    "fastkan-no-ln": _fastkan([1, 3, 2], use_layernorm=False),
    "fastkan-no-base": _fastkan([4, 3, 2], use_base_update=False),
    "fastkan-denominator": _fastkan([3, 2], {"denominator": 0.7}, denominator=0.7),
    "chebykan": _chebykan([3, 4], 4),
    "chebykan-net": _chebykan([4, 5, 3, 2], 6),
    "chebykan-linear": _chebykan([2, 3], 1),
    "fourierkan": _fourierkan([3, 4], 5),
    "fourierkan-net-nobias": _fourierkan([4, 3, 2], 7, addbias=False),
    "relukan": _relukan([3, 4], 5, 3),
    "relukan-trained-net": _relukan([4, 3, 2], 4, 2, noise=0.15),
    "relukan-options": _relukan([2, 3], 6, 1, noise=0.3, widen=0.5, options={"g": 6, "k": 1}),
    "trukan": _trukan([3, 4]),
    "trukan-edge-knots-net": _trukan([3, 4, 2], degree=2, shared_knots=False, num_knots=5, knot_noise=1.0),
    "trukan-learned-net": _trukan([4, 3, 2], {"knots_range": "-2,3"}, learn_knots=True,
                                  knots_range=(-2.0, 3.0), knot_noise=0.5),
    "trukan-learned-edge": _trukan([2, 3], degree=1, learn_knots=True, shared_knots=False, knot_noise=0.5),
    "afkan": _afkan([3, 4]),
    "afkan-net": _afkan([4, 3, 2], grid=4, k=2),
    "afkan-batchnorm-silu": _afkan([3, 2], {"base_activation": "silu", "func": "sum_prod"}, norm_type="batch",
                                   base_activation="silu", func="sum_prod"),
    "afkan-identity-norm": _afkan([3, 2], {"func": "cubic1", "func_norm": "false"}, norm_type="none",
                                  func="cubic1", func_norm=False),
}
SEPARABLE = [name for name in CASES if not name.startswith("afkan")]


def sample(case: Case, width: int, count: int = 64, seed: int = 1) -> torch.Tensor:
    lo, hi = case.inputs
    generator = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(count, width, generator=generator, dtype=torch.float64)


def read(case: Case):
    return case.family.FAMILY.read(case.net.state_dict(), case.options)


@pytest.mark.parametrize("name", SEPARABLE)
def test_edges_sum_to_each_layer_and_the_network(name):
    case = build(name)
    network = read(case)
    paths = {id(module): path for path, module in case.net.named_modules()}
    assert network.names == [paths[id(module)] + "." for module in case.layers]
    x0 = x = sample(case, network.layers[0].in_dim)
    with torch.no_grad():
        for layer, module in zip(network.layers, case.layers):
            expected = case.call(module, x)
            torch.testing.assert_close(layer.edges(x).sum(1) + layer.bias.to(x), expected, atol=ATOL, rtol=0)
            x = expected
        torch.testing.assert_close(network.forward(x0), case.call(case.net, x0), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", [n for n in SEPARABLE if not n.startswith("fastkan") or n == "fastkan-no-ln"])
def test_single_edges_follow_the_forward_when_one_input_moves(name):
    """phi_ij(a) - phi_ij(b) == y_j(x with x_i = a) - y_j(x with x_i = b): each edge on its own.

    (Not for FastKAN with a LayerNorm, which mixes the inputs before the RBFs.)
    """
    case = build(name)
    layer, module = read(case).layers[0], case.layers[0]
    x = sample(case, layer.in_dim, count=16)
    moved = x.clone()
    for i in range(layer.in_dim):
        moved[:, i] = sample(case, layer.in_dim, count=16, seed=7)[:, i]
        with torch.no_grad():
            expected = case.call(module, moved) - case.call(module, x)
        torch.testing.assert_close(layer.edges(moved)[:, i] - layer.edges(x)[:, i], expected, atol=ATOL, rtol=0)
        moved[:, i] = x[:, i]


@pytest.mark.parametrize("name", ["fastkan-net", "chebykan", "fourierkan", "relukan", "trukan-learned-net"])
def test_float32_checkpoints_read_in_float32(name):
    case = build(name)
    case.net.float()
    network = read(case)
    x = sample(case, network.layers[0].in_dim).float()
    with torch.no_grad():
        torch.testing.assert_close(network.forward(x), case.call(case.net, x), atol=1e-4, rtol=1e-4)


def test_fastkan_reads_layernorm_as_its_own_variable():
    case = build("fastkan-ln-base")
    layer = read(case).layers[0]
    module = case.layers[0]
    x = sample(case, 3)
    assert {p.name: p.variable for p in layer.parts} == {"base": "x", "spline": "LayerNorm(x)"}
    with torch.no_grad():
        torch.testing.assert_close(layer.variables(x)["LayerNorm(x)"], module.layernorm(x))
        expected_base = nn.functional.silu(x) @ module.base_linear.weight.T
    torch.testing.assert_close(layer.edges(x, parts=("base",)).sum(1), expected_base)
    torch.testing.assert_close(layer.knots()[1], module.rbf.grid.float())
    assert layer.domain()[0].tolist() == [-2.0, 2.0]


def test_fastkan_denominator_is_an_option_that_matters():
    case = build("fastkan-denominator")
    x = sample(case, 3)
    default = fastkan.FAMILY.read(case.net.state_dict(), {})
    with torch.no_grad():
        assert not torch.allclose(default.forward(x), case.net(x), atol=1e-3)


def test_relukan_infers_g_and_k_from_trained_phases():
    case = build("relukan-trained-net")
    network = read(case)
    assert [(layer.g, layer.k) for layer in network.layers] == [(4, 2), (4, 2)]
    assert any("g=4, k=2" in note for note in network.notes)
    low, high = case.layers[0].phase_low, case.layers[0].phase_height
    expected = torch.stack([low.min(1).values, high.max(1).values], 1).float()
    torch.testing.assert_close(network.layers[0].domain(), expected)


def test_relukan_options_override_what_the_phases_suggest():
    case = build("relukan-options")                   # bumps widened by training: inference is fooled
    guessed = relukan.FAMILY.read(case.net.state_dict(), {}).layers[0]
    assert (guessed.g, guessed.k) != (6, 1)
    chosen = read(case).layers[0]
    assert (chosen.g, chosen.k) == (6, 1)
    assert read(case).notes == []


def test_relukan_rejects_options_that_do_not_fit_the_phases():
    case = build("relukan")
    with pytest.raises(NetatlasError, match="g \\+ k"):
        relukan.FAMILY.read(case.net.state_dict(), {"g": 5, "k": 4})


def test_trukan_parts_split_polynomial_and_truncated_powers():
    case = build("trukan")
    layer, module = read(case).layers[0], case.layers[0]
    x = sample(case, 3)
    with torch.no_grad():
        basis = module.basis(x, module.get_knots())                   # [B, in, 4 + K]
        poly = torch.einsum("bid,iod->bio", basis[..., :4], module.coeffs[..., :4])
        torch.testing.assert_close(layer.edges(x, parts=("polynomial",)), poly)
    torch.testing.assert_close(layer.domain(), torch.tensor([[-1.0, 1.0]] * 3))
    torch.testing.assert_close(layer.knots(), module.fixed_knots.float())


def test_trukan_domain_recovers_the_knots_range_of_fixed_per_edge_knots():
    module = ref.TruKanLayer(2, 3, num_knots=4, shared_knots=False, knots_range=(-2.0, 0.5))
    layer = trukan.FAMILY.read(module.state_dict(), {}).layers[0]
    torch.testing.assert_close(layer.domain(), torch.tensor([[-2.0, 0.5]] * 2))
    torch.testing.assert_close(layer.knots(), module.fixed_knots.reshape(2, -1).sort(1).values)


def test_trukan_learned_knots_need_their_range():
    case = build("trukan-learned-net")
    x = sample(case, 4)
    wrong = trukan.FAMILY.read(case.net.state_dict(), {})             # default (-1, 1), model used (-2, 3)
    with torch.no_grad():
        assert not torch.allclose(wrong.forward(x), case.net(x), atol=1e-3)
    with pytest.raises(NetatlasError, match="knots_range"):
        trukan.FAMILY.read(case.net.state_dict(), {"knots_range": "3,-2"})


# ---------------------------------------------------------------- AF-KAN
@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("afkan")])
def test_afkan_forward_matches_the_published_layer_on_a_batch(name):
    case = build(name)
    network = read(case)
    x = sample(case, network.layers[0].in_dim)
    with torch.no_grad():
        torch.testing.assert_close(network.forward(x), case.net(x), atol=ATOL, rtol=0)
    assert not network.layers[0].separable
    assert [p.name for p in network.layers[0].parts] == ["conditional"]


@pytest.mark.parametrize("method", ["global_attn", "spatial_attn", "multistep"])
def test_afkan_methods(method):
    module = ref.AF_KANLayer(4, 3, 2, 3, base_activation="gelu", methods=(method,)).double()
    randomize(module, ("gk_linear.weight", "conv1d.weight", "conv1d.bias", "norm.weight"))
    layer = afkan.FAMILY.read(module.state_dict(), {"method": method, "base_activation": "gelu"}).layers[0]
    x = torch.rand(32, 4, dtype=torch.float64) * 2 - 0.5
    with torch.no_grad():
        torch.testing.assert_close(layer.forward(x), module(x[None])[0], atol=ATOL, rtol=0)


def test_afkan_conditional_curve_is_zero_at_the_reference_and_follows_the_forward_on_a_line():
    case = build("afkan-net")
    network = read(case)
    x = sample(case, 4, count=40)
    analyze(network, x)
    layer, module = network.layers[0], case.layers[0]
    reference = layer.reference
    torch.testing.assert_close(reference, x.median(0).values)
    torch.testing.assert_close(layer.curves(reference[None]), torch.zeros(1, 4, 3, dtype=torch.float64))
    line = torch.linspace(-0.5, 1.5, 9, dtype=torch.float64)
    grid = line[:, None].expand(9, 4)
    curves = layer.curves(grid)                                       # [9, in, out]
    with torch.no_grad():
        at_reference = stacked(module, reference[None])
        for i in range(4):
            for n, value in enumerate(line):
                point = reference.clone()
                point[i] = value
                expected = stacked(module, point[None]) - at_reference     # each point alone
                torch.testing.assert_close(curves[n, i], expected[0], atol=ATOL, rtol=0)


def test_afkan_second_layer_probes_around_its_own_inputs_median():
    case = build("afkan-net")
    network = read(case)
    x = sample(case, 4, count=40)
    analyze(network, x)
    with torch.no_grad():
        hidden = case.net.rk_layers[0](x[None])[0]
    torch.testing.assert_close(network.layers[1].reference, hidden.median(0).values)


def test_afkan_rejects_unknown_options():
    case = build("afkan")
    with pytest.raises(NetatlasError, match="method"):
        afkan.FAMILY.read(case.net.state_dict(), {"method": "local_attn"})
    with pytest.raises(NetatlasError, match="base_activation"):
        afkan.FAMILY.read(case.net.state_dict(), {"base_activation": "swish"})


# ---------------------------------------------------------------- detection
OTHER_LAYOUTS = {
    "pykan": {"act_fun.0.coef": torch.zeros(2, 3, 8), "act_fun.0.grid": torch.zeros(2, 12),
              "symbolic_fun.0.affine": torch.zeros(3, 2, 4), "node_bias_0": torch.zeros(3)},
    "efficient-kan": {"layers.0.base_weight": torch.zeros(3, 2), "layers.0.spline_weight": torch.zeros(3, 2, 8),
                      "layers.0.grid": torch.zeros(2, 12)},
}


def test_each_family_matches_only_its_own_layout():
    states = {name: (case.family, case.net.state_dict()) for name, case in ((n, build(n)) for n in CASES)}
    states |= {name: (None, state) for name, state in OTHER_LAYOUTS.items()}
    for name, (owner, state) in states.items():
        for family in FAMILIES:
            assert family.FAMILY.matches(state) == (family is owner), (name, family.FAMILY.name)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.FAMILY.name)
def test_reading_another_layout_is_a_user_error(family):
    with pytest.raises(NetatlasError, match="no .* layer here"):
        family.FAMILY.read(OTHER_LAYOUTS["efficient-kan"], {})
