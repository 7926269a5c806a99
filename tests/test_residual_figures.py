"""The residual-path figures: units named on the axes, log axes fed only positive values."""

from __future__ import annotations

import logging

import holoviews as hv
import numpy as np
import pytest
import torch
from bokeh.models import FactorRange
from torchvision.models import VisionTransformer

from netatlas.backend.residual.blocks import find_residual_units
from netatlas.backend.residual.paths import PathSettings, analyze_paths
from netatlas.viz.residual import lesion_curves, path_trio, residual_figures, unit_names, unit_statistics


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
