"""The residual-path figures: units named on the axes, log axes fed only positive values."""

from __future__ import annotations

import logging

import holoviews as hv
import numpy as np
import pytest
import torch
from bokeh.models import FactorRange, Legend, WheelZoomTool
from torchvision.models import VisionTransformer

from netatlas.backend.residual.blocks import find_residual_units
from netatlas.backend.residual.paths import PathSettings, analyze_paths
from netatlas.viz.residual import (LOG_FORMAT, MAX_LOG_TICKS, decade_axis, lesion_curves, path_trio, residual_figures,
                                   unit_names, unit_statistics)


@pytest.fixture(scope="module")
def vit_report():
    """A real report on a small torchvision ViT (8 residual adds named encoder.layers.encoder_layer_i add j)."""
    hv.extension("bokeh")
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=8, num_layers=4, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight)      # torchvision zero-initialises the head
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 5, (16,))
    return analyze_paths(model, find_residual_units(model), x, y, PathSettings(images=16, samples=2))


def test_unit_names_drop_the_shared_path_but_never_down_to_a_number():
    assert unit_names(["encoder.layers.encoder_layer_0 add 0", "encoder.layers.encoder_layer_1 add 1"]) == [
        "encoder_layer_0 add 0", "encoder_layer_1 add 1"]
    assert unit_names(["blocks.0", "blocks.1"]) == ["blocks.0", "blocks.1"]
    assert unit_names(["layer1.0", "layer3.1"]) == ["layer1.0", "layer3.1"]
    assert unit_names(["stages.0.blocks.0", "stages.0.blocks.1"]) == ["blocks.0", "blocks.1"]


def test_units_are_named_on_the_x_axes_in_depth_order(vit_report):
    expected = unit_names(vit_report.units.sort_values("depth")["unit"])
    assert expected[0] == "encoder_layer_0 add 0" and len(expected) == 8
    per_unit = hv.render(unit_statistics(vit_report.units))
    assert isinstance(per_unit.x_range, FactorRange) and list(per_unit.x_range.factors) == expected
    lesions = hv.render(lesion_curves(vit_report.lesions, vit_report.lesions_k, vit_report.reorder,
                                      vit_report.meta))
    single = lesions.children[0][0]
    assert list(single.x_range.factors) == unit_names(vit_report.lesions["unit"])


def test_log_axes_leave_out_zero_values_and_say_so(vit_report, caplog):
    paths = vit_report.paths.copy()
    paths.loc[paths["k"] == 0, ["grad_mean", "effective"]] = 0.0
    paths.loc[paths["k"] == 3, "grad_mean"] = np.nan
    with caplog.at_level(logging.WARNING):
        plots = hv.render(path_trio(paths))
        for figure in residual_figures(vit_report).values():
            hv.render(figure)
    assert not [r for r in caplog.records if "Logarithmic" in r.getMessage()]
    grad = plots.children[1][0]
    assert "k = 0, 3 not drawn" in grad.title.text
    ys = [y for r in grad.renderers for name in ("y", "grad_mean") if name in r.data_source.data
          for y in r.data_source.data[name]]
    assert ys and min(ys) > 0 and len(ys) % (len(paths) - 2) == 0


def test_log_axes_label_whole_decades_only():
    assert decade_axis([7e-3, 6e-3, 5e-3]) == ((1e-3, 1e-2), [1e-3, 1e-2])    # within one decade: its two ends
    assert decade_axis([1e-3, 0.2, np.nan, 0.0]) == ((1e-3, 1.0), [1e-3, 1e-2, 1e-1, 1.0])
    (low, high), ticks = decade_axis([1e-14, 1.0])                          # 15 decades: every 3rd labelled
    assert (low, high) == (1e-14, 1.0) and len(ticks) <= MAX_LOG_TICKS
    assert np.allclose(np.diff(np.log10(ticks)), 3)


def test_log_plots_have_few_readable_ticks_and_no_covered_curve(vit_report):
    figures = residual_figures(vit_report)
    trio = hv.render(figures["paths"])
    orders = hv.render(figures["orders"])
    for plot in (trio.children[1][0], trio.children[2][0], orders):
        ticks = plot.yaxis[0].ticker.ticks
        assert 2 <= len(ticks) <= MAX_LOG_TICKS
        assert np.allclose(np.log10(ticks), np.round(np.log10(ticks)))       # decades only
        assert plot.yaxis[0].formatter.format == LOG_FORMAT
        assert plot.y_range.start <= min(ticks) and plot.y_range.end >= max(ticks)
    # the order-k legend sits outside the plot area, beside it, never over the curves
    assert not [r for r in orders.center if isinstance(r, Legend)]
    assert [r for r in orders.right if isinstance(r, Legend)]


def test_the_wheel_scrolls_the_page_over_every_residual_plot(vit_report):
    plots = [p for figure in residual_figures(vit_report).values() for p in
             (figure if isinstance(figure, hv.Layout) else [figure])]
    assert len(plots) == 8
    for figure in plots:
        state = hv.render(figure)
        assert state.toolbar.active_scroll is None
        assert any(isinstance(t, WheelZoomTool) for t in state.tools)             # still in the toolbar


def test_the_reorder_plot_shows_tau_1_whole(vit_report):
    lesions = hv.render(lesion_curves(vit_report.lesions, vit_report.lesions_k, vit_report.reorder,
                                      vit_report.meta))
    reorder = lesions.children[2][0]
    assert reorder.x_range.end >= 1.1 and reorder.x_range.start <= vit_report.reorder["tau"].min() - 0.1
    assert reorder.y_range.end >= 1.05


def test_residual_tab_says_what_compute_will_show_and_how_long(vit_report):
    from netatlas.app.config import AppConfig
    from netatlas.app.residual_view import ResidualView, placeholder_text
    from netatlas.app.state import AppState

    view = ResidualView(AppState(AppConfig()))
    assert view.plots.objects == [view.placeholder]
    text = placeholder_text(6, PathSettings())                      # the demo: 6 units, 256 images
    assert "Nothing computed yet" in text and "four plots" in text and "exact over 2^6 branch masks" in text
    assert "runs the model about 190 times" in text and "roughly 10 s" in text
    assert "estimate only" in placeholder_text(20, PathSettings(images=64))
    assert "choose at least one residual unit" in placeholder_text(0, PathSettings())
    view.units.param.update(options=["a", "b", "c"], value=["a", "b", "c"])
    view.images.value = 64
    assert "With 3 units and 64 images" in view.placeholder.object
    view.show(vit_report)
    assert len(view.plots.objects) == 4 and view.placeholder not in view.plots.objects
