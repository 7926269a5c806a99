"""The shipped demo KANs (assets/kan/, trained by assets/train_kan_demo.py).

Read through ``read_kan`` as the app reads them, each exp(sin(pi x) + y^2) demo must compute the target
function and its edges must be the formula's pieces: sin(pi x) on x's edge, y^2 on y's edge, exp on the
output edge, each up to the affine maps a KAN is free to choose. The wide digits demo must classify its
held-out digits, and compute what the training script's own KANLinear computes from the same tensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from netatlas.backend.kan.checkpoint import read_kan
from netatlas.backend.kan.demo import demo_digits_kan, demo_digits_sample
from netatlas.backend.kan.symbolic import suggest_formulas

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "kan"
TRAINING_SCRIPT = ASSETS.parent / "train_kan_demo.py"
SAMPLE = ASSETS / "exp_sin_sample.npz"
DEMOS = {"pykan": (ASSETS / "pykan_exp_sin", None),          # pykan caches its own sample batch
         "efficient-kan": (ASSETS / "efficient_kan_exp_sin.pt", SAMPLE)}
# (layer, input) -> the function its edge to the single output must be
EDGES = {(0, 0): "sin", (0, 1): "x^2", (1, 0): "exp"}


@pytest.fixture(scope="module", params=list(DEMOS))
def demo(request):
    path, sample = DEMOS[request.param]
    return request.param, read_kan(path, sample=sample)


def test_demo_files_are_small():
    files = sorted(ASSETS.iterdir())
    assert {f.name for f in files} >= {"pykan_exp_sin_state", "pykan_exp_sin_config.yml", "pykan_exp_sin_cache_data",
                                       "efficient_kan_exp_sin.pt", "exp_sin_sample.npz",
                                       "efficient_kan_digits.pt", "digits_sample.npz"}
    assert all(f.stat().st_size < 100_000 for f in files)


def test_demo_computes_the_target_function(demo):
    family, network = demo
    assert network.family == family and network.widths == [2, 1, 1]
    x = network.sample.double().numpy()
    assert x.shape[1] == 2 and len(x) >= 200
    target = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
    with torch.no_grad():
        output = network.forward(network.sample.float()).double().numpy()[:, 0]
    assert np.sqrt(np.mean((output - target) ** 2)) < 0.02


@pytest.mark.parametrize("edge", list(EDGES))
def test_edges_are_the_formulas_pieces(demo, edge):
    _, network = demo
    layer, i = edge
    inputs = network.layer_inputs(network.sample.float())[layer]          # each curve where its data lies
    low, high = inputs.min(0).values, inputs.max(0).values
    t = low + (high - low) * torch.linspace(0, 1, 200)[:, None]
    with torch.no_grad():
        curve = network.layers[layer].curves(t)[:, i, 0]
    best = suggest_formulas(t[:, i], curve)[0]
    assert best.name == EDGES[edge] and best.r2 > 0.99
    if best.name == "sin":
        assert best.a == pytest.approx(np.pi, abs=0.05) and abs(best.b) < 0.05
    if best.name == "x^2":
        assert abs(best.b) < 0.05                                             # y^2, not (y - b)^2


def _training_script():
    """assets/train_kan_demo.py as a module (importing it only defines things); its KANLinear trained the demos."""
    spec = importlib.util.spec_from_file_location("train_kan_demo", TRAINING_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_demo_classifies_its_held_out_digits():
    assert demo_digits_kan().parent == demo_digits_sample().parent == ASSETS
    network = read_kan(demo_digits_kan(), sample=demo_digits_sample())
    assert network.family == "efficient-kan" and network.widths == [64, 16, 10]
    with np.load(demo_digits_sample()) as archive:
        x, labels = torch.from_numpy(archive["x"]), torch.from_numpy(archive["labels"])
    assert x.shape == (len(labels), 64) and len(labels) >= 300 and set(labels.tolist()) == set(range(10))
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    torch.testing.assert_close(network.sample, x)

    script = _training_script()
    reference = script.EfficientKAN([script.KANLinear(64, 16), script.KANLinear(16, 10)])
    reference.load_state_dict(torch.load(demo_digits_kan(), weights_only=True))
    with torch.no_grad():
        logits, expected = network.forward(network.sample), reference(x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == labels).double().mean() >= 0.9
