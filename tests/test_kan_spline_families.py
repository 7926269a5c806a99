"""The spline KAN families against the libraries' own forwards: pykan's classes, and reference modules
written from efficient-kan's and pykan 0.1's published code (tests/kan_reference_spline.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from kan import KAN
from kan.spline import B_batch

from netatlas.backend.kan.families import efficient_kan, pykan
from netatlas.backend.kan.families.bspline import bspline_basis
from netatlas.backend.errors import NetatlasError
from tests.kan_reference_spline import EfficientKAN, OldPykanKAN, increasing_knots

TOL = dict(atol=1e-9, rtol=1e-9)   # float64 throughout: only summation order differs


def pykan_model(tmp_path, width, k=3, grid=5, seed=0, **kwargs) -> KAN:
    """pykan's own model, writing nothing outside tmp_path; float64 so only summation order differs."""
    return KAN(width=copy.deepcopy(width), grid=grid, k=k, seed=seed,   # pykan rewrites the width list
               auto_save=False, ckpt_path=str(tmp_path), **kwargs).double()


def random_affines(model: KAN) -> None:
    """Non-trivial subnode and node affines (pykan initialises them to the identity)."""
    with torch.no_grad():
        for params in (model.node_scale, model.subnode_scale):
            for p in params:
                p.copy_(torch.rand_like(p) + 0.5)
        for params in (model.node_bias, model.subnode_bias):
            for p in params:
                p.copy_(torch.randn_like(p))


def symbolic_names(model: KAN) -> dict:
    return {"symbolic_functions": [layer.funs_name for layer in model.symbolic_fun]}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_bspline_basis_matches_pykan_including_repeated_knots(k):
    torch.manual_seed(k)
    grid = increasing_knots(3, 6 + 2 * k + 1)
    grid[1, 4] = grid[1, 5] = grid[1, 6]             # repeated knots: pykan zeroes what a 0/0 touches
    x = torch.rand(200, 3, dtype=torch.float64) * 3.4 - 1.7   # inside and beyond the grid
    ours = bspline_basis(x, grid, k)
    assert ours.shape == (200, 3, 6 + k)
    torch.testing.assert_close(ours, B_batch(x, grid, k=k).double(), **TOL)   # bool at k=0


@pytest.mark.parametrize("scaler", [True, False])
@pytest.mark.parametrize("k", [2, 3])
def test_efficient_kan_matches_reference(scaler, k):
    torch.manual_seed(1)
    reference = EfficientKAN([3, 4, 2], grid_size=5, spline_order=k, standalone_scale=scaler).double()
    network = efficient_kan.FAMILY.read(reference.state_dict(), {})
    assert network.family == "efficient-kan" and network.widths == [3, 4, 2]
    assert network.names == ["layers.0", "layers.1"]
    assert ("spline_scaler folded into the spline weights" in network.notes) == scaler
    x = torch.rand(64, 3, dtype=torch.float64) * 4 - 2
    torch.testing.assert_close(network.forward(x), reference(x), **TOL)
    for ours, theirs, layer_input in zip(network.layers, reference.layers, network.layer_inputs(x)):
        torch.testing.assert_close(ours.edges(layer_input).sum(1) + ours.bias, theirs(layer_input), **TOL)
        base = F.linear(F.silu(layer_input), theirs.base_weight)
        torch.testing.assert_close(ours.edges(layer_input, parts=("base",)).sum(1), base, **TOL)
        torch.testing.assert_close(ours.domain(), theirs.grid[:, [k, -k - 1]].double(), **TOL)


def test_efficient_kan_reads_a_single_layer_and_refuses_a_wrong_k():
    layer = EfficientKAN([2, 3], spline_order=3)
    network = efficient_kan.FAMILY.read(layer.layers[0].state_dict(), {})
    assert network.widths == [2, 3]
    with pytest.raises(NetatlasError, match="k=2 was given.*mean k=3"):
        efficient_kan.FAMILY.read(layer.state_dict(), {"k": 2})


def test_efficient_kan_refuses_layers_that_do_not_chain():
    state = {**{f"head.{key}": v for key, v in EfficientKAN([3, 2]).state_dict().items()},
             **{f"tail.{key}": v for key, v in EfficientKAN([5, 1]).state_dict().items()}}
    with pytest.raises(NetatlasError, match="do not chain"):
        efficient_kan.FAMILY.read(state, {})


def other_family_states() -> dict[str, dict[str, torch.Tensor]]:
    """Key layouts of the other KAN libraries (names and ranks as their modules register them)."""
    t = torch.zeros
    return {
        "fastkan": {"layers.0.layernorm.weight": t(3), "layers.0.layernorm.bias": t(3),
                    "layers.0.rbf.grid": t(8), "layers.0.spline_linear.weight": t(2, 24),
                    "layers.0.base_linear.weight": t(2, 3), "layers.0.base_linear.bias": t(2)},
        "chebykan": {"layers.0.cheby_coeffs": t(3, 2, 5), "layers.0.arange": t(5)},
        "fourierkan": {"layers.0.fouriercoeffs": t(2, 2, 3, 4), "layers.0.bias": t(1, 2)},
        "relukan": {"layers.0.phase_low": t(3, 7), "layers.0.phase_height": t(3, 7),
                    "layers.0.equal_size_conv.weight": t(2, 1, 7, 3), "layers.0.equal_size_conv.bias": t(2)},
    }


def test_signatures_match_only_their_own_family(tmp_path):
    pykan_state = pykan_model(tmp_path, [2, 2]).state_dict()
    efficient_state = EfficientKAN([2, 2]).state_dict()
    old_state = OldPykanKAN([2, 2]).state_dict()
    assert pykan.FAMILY.matches(pykan_state) and pykan.FAMILY.matches(old_state)
    assert efficient_kan.FAMILY.matches(efficient_state)
    assert not efficient_kan.FAMILY.matches(pykan_state) and not efficient_kan.FAMILY.matches(old_state)
    assert not pykan.FAMILY.matches(efficient_state)
    for name, state in other_family_states().items():
        assert not efficient_kan.FAMILY.matches(state), name
        assert not pykan.FAMILY.matches(state), name


@pytest.mark.parametrize("width, k", [([2, 3, 1], 3), ([3, 4, 2], 2)])
def test_pykan_multkan_matches_pykan(tmp_path, width, k):
    torch.manual_seed(2)
    model = pykan_model(tmp_path, width, k=k)
    random_affines(model)
    x = torch.randn(128, width[0], dtype=torch.float64) * 1.5
    model.update_grid_from_samples(x)                 # non-uniform grids from the data
    model(x)
    ranges = [torch.stack([a.min(0).values, a.max(0).values], dim=1) for a in model.acts[:-1]]
    model.fix_symbolic(0, 1, 2, "sin", verbose=False, log_history=False)
    expected = model(x)

    network = pykan.FAMILY.read(model.state_dict(), symbolic_names(model))
    torch.testing.assert_close(network.forward(x), expected, **TOL)
    for l, layer in enumerate(network.layers):
        scale = model.node_scale[l] * model.subnode_scale[l]
        torch.testing.assert_close(layer.forward(model.acts[l]), model.acts[l + 1], **TOL)
        torch.testing.assert_close(layer.edges(model.acts[l]),
                                   model.spline_postacts[l].permute(0, 2, 1) * scale, **TOL)
        torch.testing.assert_close(layer.domain(), ranges[l], atol=1e-7, rtol=0)
        assert layer.symbolic() == ({(1, 2): "sin"} if l == 0 else {})
    assert [p.name for p in network.layers[0].parts] == ["base", "spline", "symbolic"]
    assert [p.name for p in network.layers[1].parts] == ["base", "spline"]


def test_pykan_identity_base_and_disabled_symbolic_branch(tmp_path):
    torch.manual_seed(3)
    model = pykan_model(tmp_path, [2, 2], base_fun="identity", symbolic_enabled=False)
    model.fix_symbolic(0, 0, 1, "x^2", fit_params_bool=False, verbose=False, log_history=False)
    x = torch.randn(32, 2, dtype=torch.float64)
    options = {"base_fun": "identity", "symbolic_enabled": False, **symbolic_names(model)}
    torch.testing.assert_close(pykan.FAMILY.read(model.state_dict(), options).forward(x), model(x), **TOL)
    as_typed = {**options, "symbolic_enabled": "false"}        # as the page and the CLI pass it: text
    torch.testing.assert_close(pykan.FAMILY.read(model.state_dict(), as_typed).forward(x), model(x), **TOL)


def test_pykan_inside_a_larger_module(tmp_path):
    torch.manual_seed(5)
    wrapper = torch.nn.Module()
    wrapper.kan = pykan_model(tmp_path, [3, 2])
    network = pykan.FAMILY.read(wrapper.state_dict(), {})
    assert network.names == ["kan.act_fun.0"]
    x = torch.randn(16, 3, dtype=torch.float64)
    torch.testing.assert_close(network.forward(x), wrapper.kan(x), **TOL)


def test_pykan_refusals(tmp_path):
    model = pykan_model(tmp_path, [2, 2], k=3)
    model.fix_symbolic(0, 0, 1, "sin", fit_params_bool=False, verbose=False, log_history=False)
    with pytest.raises(NetatlasError, match="symbolic functions.*_config.yml"):
        pykan.FAMILY.read(model.state_dict(), {})
    with pytest.raises(NetatlasError, match="k=2 was given"):
        pykan.FAMILY.read(model.state_dict(), {"k": [2], **symbolic_names(model)})
    with pytest.raises(NetatlasError, match="'anonymous'"):
        pykan.FAMILY.read(model.state_dict(), {"symbolic_functions": [[["0", "0"], ["anonymous", "0"]]]})
    with pytest.raises(NetatlasError, match="not 2 rows of 2"):
        pykan.FAMILY.read(model.state_dict(), {"symbolic_functions": [[["0", "0", "0"]]]})
    damaged = {key: value for key, value in model.state_dict().items() if key != "act_fun.0.scale_sp"}
    with pytest.raises(NetatlasError, match="lacks act_fun.0.scale_sp"):
        pykan.FAMILY.read(damaged, symbolic_names(model))
    mult = pykan_model(tmp_path, [2, [1, 1], 1])
    with pytest.raises(NetatlasError, match="multiplication nodes"):
        pykan.FAMILY.read(mult.state_dict(), {})


def test_old_pykan_layout_matches_reference():
    torch.manual_seed(4)
    reference = OldPykanKAN([2, 3, 2], grid=4, k=3).double()
    with torch.no_grad():
        for bias in reference.biases:
            bias.weight.normal_()
    reference.fix_symbolic(0, 1, 2, "sin", [1.3, -0.2, 0.7, 0.4])
    options = {"symbolic_functions": [layer.funs_name for layer in reference.symbolic_fun]}
    network = pykan.FAMILY.read(reference.state_dict(), options)
    assert any(note.startswith("pykan (0.1 layout)") for note in network.notes)
    x = torch.rand(64, 2, dtype=torch.float64) * 3 - 1.5
    expected, inputs, postacts = reference(x)
    torch.testing.assert_close(network.forward(x), expected, **TOL)
    for l, layer in enumerate(network.layers):
        torch.testing.assert_close(layer.edges(inputs[l]), postacts[l].permute(0, 2, 1), **TOL)
        grid = reference.act_fun[l].grid.reshape(layer.out_dim, layer.in_dim, -1)   # flat index j * in + i
        torch.testing.assert_close(layer.domain()[:, 0], grid[..., 0].min(0).values, **TOL)
        torch.testing.assert_close(layer.domain()[:, 1], grid[..., -1].max(0).values, **TOL)
        assert layer.knots() is None                   # every edge has its own grid here
    assert network.layers[0].symbolic() == {(1, 2): "sin"}


def test_old_pykan_layout_with_shared_grids_has_knots():
    reference = OldPykanKAN([2, 3], grid=4, k=2)
    with torch.no_grad():
        grid = reference.act_fun[0].grid
        grid.copy_(grid.reshape(3, 2, -1)[:1].expand(3, 2, -1).reshape(6, -1))   # one grid per input
    knots = pykan.FAMILY.read(reference.state_dict(), {}).layers[0].knots()
    torch.testing.assert_close(knots, reference.act_fun[0].grid[:2])
