"""``netatlas kan`` end to end on the demos, the analysis behind it, and what it says on bad input."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from torch import nn

from netatlas.backend.kan.analysis import UNIFORM_SAMPLE, analyze
from netatlas.backend.kan.checkpoint import read_kan
from netatlas.backend.kan.demo import demo_digits_kan, demo_digits_sample, demo_kan
from netatlas.cli import main
from tests.kan_reference_basis import ChebyKAN


def rows(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def test_cli_recovers_the_demo_formula(tmp_path, capsys):
    assert main(["kan", "demo", "-o", str(tmp_path), "--suggest", "--parts", "--format", "svg", "pdf"]) == 0
    said = capsys.readouterr().out
    assert "pykan, widths 2 -> 1 -> 1" in said and "256 inputs" in said
    best = {(r["layer"], r["i"]): r["formula"] for r in rows(tmp_path / "formulas.csv") if r["rank"] == "1"}
    assert "sin(3.14*x" in best[("0", "0")] and "x^2" in best[("0", "1")] and "exp(" in best[("1", "0")]
    for name in ("network", "layer0_heatmap", "layer0_curves", "layer1_heatmap", "layer1_curves"):
        assert ET.parse(tmp_path / f"{name}.svg").getroot().tag.endswith("svg")
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    table = rows(tmp_path / "curves.csv")
    assert {"base", "spline", "total"} <= set(table[0])
    edge = [r for r in table if (r["layer"], r["i"], r["j"]) == ("0", "0", "0")]
    x = torch.tensor([float(r["x"]) for r in edge])
    layer = read_kan(demo_kan()).layers[0]     # the total at x, against the layer's own forward along x_0
    inputs = torch.stack([x, torch.zeros_like(x)], 1)
    expected = layer.forward(inputs)[:, 0] - layer.forward(torch.zeros(1, 2))[:, 0] + layer.edges(torch.zeros(1, 2))[0, 0, 0]
    np.testing.assert_allclose([float(r["total"]) for r in edge], expected.detach().numpy(), atol=1e-5)


def test_cli_draws_chosen_edges_of_a_wide_layer(tmp_path, capsys):
    args = ["kan", str(demo_digits_kan()), "--sample", str(demo_digits_sample()), "--layer", "0",
            "--edges", "36:3", "27:0", "-o", str(tmp_path), "--format", "png"]
    assert main(args) == 0
    assert "efficient-kan, widths 64 -> 16 -> 10" in capsys.readouterr().out
    assert {(r["i"], r["j"]) for r in rows(tmp_path / "curves.csv")} == {("36", "3"), ("27", "0")}
    assert (tmp_path / "layer0_curves.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "layer1_curves.png").exists()


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "not found"),
    (["mlp.pt"], "not a KAN"),
    (["demo", "--layer", "5"], "layers 0..1"),
    (["demo", "--edges", "3:0"], "I < 2"),
    (["demo", "--family", "nope"], "unknown KAN family"),
    (["demo", "--option", "g=3"], "takes no option g"),
    (["demo", "--sample", "wide.npy"], "wide.npy"),
])
def test_cli_errors_are_one_line_on_stderr(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), "mlp.pt")
    np.save("wide.npy", np.zeros((8, 5), dtype=np.float32))
    assert main(["kan", *args, "-o", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netatlas: error:") and message in err and err.count("\n") == 1
    assert not list(tmp_path.glob("out/*"))


def test_modules_between_layers_are_named_in_a_note():
    torch.manual_seed(0)
    model = ChebyKAN([3, 4, 2], degree=3)
    state = {**model.state_dict(), "norms.0.weight": torch.ones(4), "norms.0.bias": torch.zeros(4)}
    network = read_kan_state(state)
    assert any("norms.0.weight" in note and "not read" in note for note in network.notes)
    assert not any("not read" in note for note in read_kan_state(model.state_dict()).notes)


def read_kan_state(state):
    from netatlas.backend.kan.families import read_network

    return read_network(state)


def test_without_a_sample_the_first_layer_is_sampled_over_its_grid():
    network = read_kan(demo_digits_kan())
    analysis = analyze(network)
    first = analysis.inputs[0]
    domain = network.layers[0].domain()
    assert first.shape == (UNIFORM_SAMPLE, 64) and "uniformly" in analysis.sample_note
    assert bool(((first >= domain[:, 0]) & (first <= domain[:, 1])).all())
    torch.testing.assert_close(analysis.inputs[1], network.layers[0].forward(first))
    scores = analysis.importance[0]
    edges = network.layers[0].edges(first)                       # importance, recomputed by hand
    expected = edges.std(0) / (first.std(0) + 0.1)[:, None]
    torch.testing.assert_close(scores, expected.T)


@pytest.mark.parametrize("name", ["fastkan-net", "chebykan-net", "fourierkan", "relukan-trained-net",
                                  "trukan-learned-net", "afkan-net"])
def test_cli_draws_every_family_from_its_detected_state_dict(name, tmp_path, capsys):
    from tests.test_kan_basis_families import build

    case = build(name)
    torch.save(case.net.float().state_dict(), tmp_path / "model.pt")
    options = [f"{key}={value}" for key, value in case.options.items()]
    args = ["kan", str(tmp_path / "model.pt"), "-o", str(tmp_path / "out"), "--parts", "--top", "4"]
    assert main(args + (["--option", *options] if options else [])) == 0
    assert f"model.pt: {case.family.FAMILY.name}, widths" in capsys.readouterr().out
    table = rows(tmp_path / "out" / "curves.csv")
    assert {r["layer"] for r in table} == {str(i) for i in range(len(case.layers))}
    assert all(np.isfinite(float(r["total"])) for r in table)
    assert ET.parse(tmp_path / "out" / "layer0_curves.svg").getroot().tag.endswith("svg")
