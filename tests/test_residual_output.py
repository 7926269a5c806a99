"""The residual analysis of a model with no classifier head: every measurement taken against the model's
output, never an accuracy.

A backbone (the demo ResNet with its fc replaced by nn.Identity, a residual MLP without a head) returns
features, so an argmax over them is no prediction. ``analyze_paths(targets="output")`` scores lesions and
reorders by the cosine similarity of each image's output to the intact model's output and takes the path
gradients of the output's norm. Each number is checked here against a direct computation: the model run
by hand with branches zeroed, permuted or gradient-routed, cosines by torch's own cosine_similarity,
gradients by autograd on a plain forward.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from types import SimpleNamespace

import holoviews as hv
import numpy as np
import pytest
import torch
from torch import nn

import netatlas.backend.residual.paths as rp
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.errors import NetatlasError
from netatlas.backend.residual.blocks import find_residual_units
from netatlas.backend.residual.paths import PathSettings, analyze_paths, output_cosine
from netatlas.viz.residual import residual_figures
from tests.backend_support import randomize_batchnorm
from tests.test_residual import brute_kendall, masked_forward, permuted, tanh_mlp
from tests.test_residual_reuse import assert_same_report

ALL = PathSettings(images=64, gradient_images=64, decomposition_images=5, samples=20, lesion_draws=20,
                   reorder_trials=12, seed=3)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of cos(a_i, b_i), by torch's own function."""
    return float(nn.functional.cosine_similarity(a.detach().flatten(1), b.detach().flatten(1), dim=1).mean())


def headless_demo() -> DemoResNet:
    """The demo architecture as a backbone: its fc replaced by nn.Identity, so it returns pooled features.
    Its branches are scaled up (bn2 x 4), so that removing or swapping one moves the output visibly."""
    torch.manual_seed(0)
    model = randomize_batchnorm(DemoResNet())
    model.fc = nn.Identity()
    with torch.no_grad():
        for block in model.blocks:
            block.bn2.weight.mul_(4)
    return model.eval()


def demo_by_hand(model: DemoResNet, x: torch.Tensor, keep: list[float] | None = None,
                 route: set[int] | None = None) -> torch.Tensor:
    """The demo's forward written out: block l adds m_l times its branch; with ``route``, gradient flows
    through the branches of the blocks in it and through the skips (shortcuts) of the others."""
    h = model.stem(x)
    for l, block in enumerate(model.blocks):
        skip = h if block.downsample is None else block.downsample(h)
        branch = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(h)))))
        if route is not None:
            skip, branch = (skip.detach(), branch) if l in route else (skip, branch.detach())
        h = block.relu(skip + (1.0 if keep is None else keep[l]) * branch)
    return model.pool(h).flatten(1)


def gradient_of_output_norm(forward, x: torch.Tensor) -> float:
    """Mean over images of || d||y_i|| / dx_i ||, by autograd on ``forward``."""
    xg = x.clone().requires_grad_(True)
    y = forward(xg)
    (grad,) = torch.autograd.grad(y.flatten(1).norm(dim=1).sum(), xg)
    return float(grad.flatten(1).norm(dim=1).mean())


def strings(value) -> list[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings(v)]]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def bokeh_texts(figure) -> list[str]:
    """The titles, axis labels, legend labels and hover fields of every plot a figure renders to."""
    from bokeh.models import HoverTool, Legend, Plot, Title
    texts = []
    for model in hv.render(figure, backend="bokeh").references():
        if isinstance(model, Plot):
            texts += [axis.axis_label or "" for axis in [*model.xaxis, *model.yaxis]]
        elif isinstance(model, Title):
            texts.append(model.text or "")
        elif isinstance(model, Legend):
            texts += [str(getattr(item.label, "value", item.label)) for item in model.items if item.label]
        elif isinstance(model, HoverTool) and isinstance(model.tooltips, list):
            texts += [f"{name} {field}" for name, field in model.tooltips]
    return texts


@pytest.fixture(scope="module")
def demo_case():
    model = headless_demo()
    x = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    report = analyze_paths(model, find_residual_units(model), x, None, ALL, targets="output")
    return model, x, report


# --------------------------------------------------------------------------------------------------
# the measurements, against direct computations


def test_demo_backbone_lesions_are_cosines_to_the_intact_output(demo_case):
    model, x, report = demo_case
    n = len(model.blocks)
    with torch.no_grad():
        intact = model(x)
        assert torch.allclose(demo_by_hand(model, x), intact, atol=1e-6)     # the hand forward is the model
        by_hand = [cosine(demo_by_hand(model, x, [0.0 if i == l else 1.0 for i in range(n)]), intact)
                   for l in range(n)]
        none_left = cosine(demo_by_hand(model, x, [0.0] * n), intact)
    assert "accuracy" not in report.lesions and "accuracy" not in report.reorder
    np.testing.assert_allclose(report.lesions["cosine"], by_hand, rtol=1e-5, atol=1e-6)
    assert min(by_hand) < 0.99                       # a lesion really moves the output: the check can fail
    all_removed = report.lesions_k.set_index("k").loc[n]
    assert all_removed["mean"] == pytest.approx(none_left, rel=1e-5) and all_removed["sd"] == 0
    for k in (2, n - 1):   # every k-subset enumerated (C(6, k) <= 20 draws): mean and sd are exact
        values = [cosine(demo_by_hand(model, x, [0.0 if i in s else 1.0 for i in range(n)]), intact)
                  for s in itertools.combinations(range(n), k)]
        row = report.lesions_k.set_index("k").loc[k]
        assert row["mean"] == pytest.approx(np.mean(values), rel=1e-5)
        assert row["sd"] == pytest.approx(np.std(values), rel=1e-4, abs=1e-6)
    assert report.meta["baseline"] == 1.0 and report.reorder.iloc[0]["cosine"] == 1.0


def test_demo_backbone_reorder_is_the_cosine_of_the_swapped_model(demo_case):
    model, x, report = demo_case
    with torch.no_grad():
        swapped = copy.deepcopy(model)
        swapped.blocks = nn.Sequential(model.blocks[1], model.blocks[0], *model.blocks[2:])
        expected = cosine(swapped(x), model(x))
    assert report.reorder["tau"].tolist() == pytest.approx([1.0, 13 / 15])
    assert report.reorder["cosine"].tolist() == pytest.approx([1.0, expected], rel=1e-5)
    assert expected < 0.999                          # the swap moves the output: the check can fail


def test_demo_backbone_path_gradients_are_of_the_output_norm(demo_case):
    model, x, report = demo_case
    n = len(model.blocks)
    expected = [np.mean([gradient_of_output_norm(lambda t: demo_by_hand(model, t, route=set(s)), x)
                         for s in itertools.combinations(range(n), k)]) for k in range(n + 1)]
    assert list(report.paths["enumerated"]) == [1.0] * (n + 1)
    np.testing.assert_allclose(report.paths["grad_mean"], expected, rtol=1e-4)
    plain = gradient_of_output_norm(model, x)   # the hand forward's gradients are the model's own
    assert plain == pytest.approx(gradient_of_output_norm(lambda t: demo_by_hand(model, t), x), rel=1e-5)
    # a class loss (the cross-entropy of argmax "predictions") would give other numbers: the check can fail
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        y = model(xg)
        (ce,) = torch.autograd.grad(nn.functional.cross_entropy(y, y.argmax(1), reduction="sum"), xg)
    assert float(ce.flatten(1).norm(dim=1).mean()) != pytest.approx(plain, rel=1e-2)


def test_residual_mlp_without_head_against_hand_computation():
    n, b = 4, 40
    model = tanh_mlp(n, seed=7, gain=2.0).double()        # no head: the output is the residual stream
    x = torch.randn(b, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    report = analyze_paths(model, find_residual_units(model), x, torch.randint(0, 3, (b,)), ALL, targets="output")
    with torch.no_grad():
        intact = model(x)
        single = [cosine(masked_forward(model, x, [i != l for i in range(n)]), intact) for l in range(n)]
        by_order = {p: cosine(permuted(model, list(p))(x), intact) for p in itertools.permutations(range(n))}
    np.testing.assert_allclose(report.lesions["cosine"], single, rtol=1e-9)
    for row in report.reorder.iloc[1:].itertuples():
        candidates = [c for p, c in by_order.items() if math.isclose(brute_kendall(list(p)), row.tau)]
        assert any(math.isclose(row.cosine, c, rel_tol=1e-9) for c in candidates), row

    def routed(subset):
        def forward(t):
            h = t
            for l, block in enumerate(model.blocks):
                h = h.detach() + block.f(h) if l in subset else h + block.f(h).detach()
            return h
        return forward

    expected = [np.mean([gradient_of_output_norm(routed(set(s)), x) for s in itertools.combinations(range(n), k)])
                for k in range(n + 1)]
    np.testing.assert_allclose(report.paths["grad_mean"], expected, rtol=1e-9)


def test_output_mode_reuse_gives_the_numbers_of_plain_passes(demo_case):
    model, x, reused = demo_case
    plain = analyze_paths(model, find_residual_units(model), x, None, ALL, targets="output", reuse=False)
    assert_same_report(reused, plain)


def test_labels_are_ignored_and_the_classifier_mode_is_unchanged():
    model = headless_demo()
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    settings = PathSettings(gradient_images=3, decomposition_images=2, samples=2, lesion_draws=2, reorder_trials=3)
    units = find_residual_units(model)
    one = analyze_paths(model, units, x, torch.zeros(6, dtype=torch.long), settings, targets="output")
    other = analyze_paths(model, units, x, None, settings, targets="output")
    assert_same_report(one, other)
    labels = analyze_paths(model, units, x, torch.zeros(6, dtype=torch.long), settings)
    assert labels.meta["mode"] == "labels" and "accuracy" in labels.lesions and "baseline_accuracy" in labels.meta
    with pytest.raises(NetatlasError, match="targets"):
        analyze_paths(model, units, x, None, settings, targets="logits")


# --------------------------------------------------------------------------------------------------
# nothing says accuracy in that mode: meta, tables, figures, the tab's header, the command line


def test_no_accuracy_in_meta_tables_or_figures(demo_case):
    _, _, report = demo_case
    meta = report.meta
    assert meta["mode"] == "output" and meta["score"] == "cosine"
    assert "cosine" in meta["score_label"] and "||y||" in meta["gradient_of"]
    assert not [s for s in strings(meta) if "accuracy" in s.lower()], meta
    assert not [c for s in report.SECTIONS for c in getattr(report, s).columns if "accuracy" in c]
    hv.extension("bokeh")
    texts = [t for figure in residual_figures(report).values() for t in bokeh_texts(figure)]
    assert not [t for t in texts if "accuracy" in t.lower()], texts
    assert any("cosine" in t for t in texts) and any("d|y|/dx" in t for t in texts)
    assert not any("dL/dx" in t for t in texts)


def test_the_word_check_finds_accuracy_in_a_classifier_report():
    """The collectors above see the labels when they are there (so their silence means something)."""
    torch.manual_seed(0)
    model = randomize_batchnorm(DemoResNet()).eval()
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    report = analyze_paths(model, find_residual_units(model), x, torch.arange(4),
                           PathSettings(gradient_images=2, decomposition_images=1, samples=1, lesion_draws=1,
                                        reorder_trials=2))
    hv.extension("bokeh")
    texts = [t for figure in residual_figures(report).values() for t in bokeh_texts(figure)]
    assert any("accuracy" in t for t in texts) and any("dL/dx" in t for t in texts)
    assert [s for s in strings(report.meta) if "accuracy" in s]


def test_cached_output_report_renders_as_output(demo_case, tmp_path):
    """The meta carries the mode: a report read back from its table and JSON meta renders the same way."""
    _, _, report = demo_case
    back = rp.ResidualReport.from_frame(report.to_frame(), json.loads(report.meta_json()))
    hv.extension("bokeh")
    texts = [t for figure in residual_figures(back).values() for t in bokeh_texts(figure)]
    assert not [t for t in texts if "accuracy" in t.lower()] and any("cosine" in t for t in texts)


def test_residual_tab_header_says_what_is_measured(demo_case):
    from netatlas.app.config import AppConfig
    from netatlas.app.residual_view import ResidualView
    from netatlas.app.state import AppState
    _, _, report = demo_case
    view = ResidualView(AppState(AppConfig()))
    view.show(report)
    assert "accuracy" not in view.summary.object.lower()
    assert "cosine similarity" in view.summary.object and "no classifier head" in view.summary.object
    assert len(view.plots.objects) == 4


def test_paths_command_prints_no_accuracy(demo_case, tmp_path, monkeypatch, capsys):
    import netatlas.cli as cli
    _, _, report = demo_case
    workspace = SimpleNamespace(residual_paths=lambda units, settings, progress: report,
                                dataset=SimpleNamespace(skipped=[]), predictions_note="no classification head")
    monkeypatch.setattr(cli, "dataset_from_args", lambda args: None)
    monkeypatch.setattr(cli, "workspace_from_args", lambda args, dataset, *a, **k: workspace)
    args = cli.build_parser().parse_args(["paths", "demo", "demo", "-o", str(tmp_path),
                                          "--formats", "svg"])
    assert cli.cmd_paths(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" not in out.lower() and "cosine similarity to the intact output" in out, out
    assert "accuracy" not in (tmp_path / "meta.json").read_text().lower()
    for name in report.SECTIONS:
        assert "accuracy" not in (tmp_path / f"{name}.csv").read_text().splitlines()[0]
    lesions_svg = (tmp_path / "residual_lesions.svg").read_text()
    assert "accuracy" not in lesions_svg.lower() and "cosine" in lesions_svg


# --------------------------------------------------------------------------------------------------
# divisions that can meet zero: defined, never NaN


def test_output_cosine_is_defined_at_zero_and_matches_torch_elsewhere():
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, -1.0], [1e-30, 0.0]])
    b = torch.tensor([[2.0, 4.0], [0.0, 0.0], [1.0, 1.0], [-3.0, 1.0], [1e-30, 0.0]])
    found = output_cosine(a, b)
    assert found.tolist() == pytest.approx([1.0, 1.0, 0.0, -1.0, 1.0])
    c, d = torch.randn(7, 3, 4, generator=torch.Generator().manual_seed(0)).unbind(1)[:2]
    assert torch.allclose(output_cosine(c, d), nn.functional.cosine_similarity(c, d, dim=1), atol=1e-6)


def test_branch_ratio_leaves_out_zero_skips():
    ratio = rp._branch_ratio
    assert ratio(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([2.0, 0.0, 1.0])) == pytest.approx((0.5 + 3.0) / 2)
    assert ratio(torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0])) == 0.0
    assert ratio(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])) == math.inf


@pytest.mark.parametrize("targets", ["output", "labels"])
def test_a_model_whose_output_is_zero_gives_no_nan(targets):
    """Every branch ends in a zero head: output 0 under every mask, every route's gradient 0."""
    model = tanh_mlp(3, classes=3, seed=1)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    report = analyze_paths(model, find_residual_units(model), x, torch.zeros(8, dtype=torch.long),
                           PathSettings(gradient_images=4, decomposition_images=4, samples=3, lesion_draws=2,
                                        reorder_trials=3), targets=targets)
    for section in report.SECTIONS:
        frame = getattr(report, section).select_dtypes("number")
        if section == "units":
            frame = frame.drop(columns="scale")        # NaN by design: no learned branch scale
        assert not frame.isna().any().any(), (section, frame)
    assert (report.orders["exact"] == 0).all() and (report.orders["exact_share"] == 0).all()
    assert (report.paths["grad_mean"] == 0).all()
    if targets == "output":   # both outputs zero: the same output
        assert (report.lesions["cosine"] == 1.0).all() and (report.reorder["cosine"] == 1.0).all()
    hv.extension("bokeh")
    for figure in residual_figures(report).values():
        hv.render(figure)
