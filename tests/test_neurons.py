"""One unit's statistics and figures when its activations are constant, NaN or infinite: every number
shown is right or absent (checked against numpy on the finite values)."""

from __future__ import annotations

import warnings

import holoviews as hv
import numpy as np
import pandas as pd
import pytest

from netatlas.backend.neurons import class_means, top_bottom, top_units
from netatlas.viz.neurons import activation_histogram, class_mean_bars


def test_nan_activations_are_neither_top_nor_bottom():
    values = np.array([3.0, np.nan, -1.0, 7.0, np.nan, 0.5])
    top, bottom = top_bottom(values, 3)
    assert top.tolist() == [3, 0, 5] and bottom.tolist() == [2, 5, 0]
    top, bottom = top_bottom(values, 10)                  # asks for more than there are numbers
    assert sorted(top.tolist()) == sorted(bottom.tolist()) == [0, 2, 3, 5]
    assert top_bottom(np.full(3, np.nan), 2)[0].size == 0


def test_a_unit_with_nan_activations_has_no_excess_and_ranks_last():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(40, 4))
    values[3, 1] = np.nan                                 # one bad image in unit 1
    values[:, 2] = 2.0                                    # constant: excess exactly 0
    members = np.arange(10)
    table = top_units(values, members, k=4)
    assert table["unit"].tolist()[-1] == 1 and np.isnan(table["excess (sd)"].iloc[-1])
    good = [0, 3]
    overall, spread = values[:, good].mean(0), values[:, good].std(0)
    score = dict(zip(good, (values[members][:, good].mean(0) - overall) / spread))
    score[2] = 0.0
    ranked = sorted(score, key=lambda u: -score[u])
    assert table["unit"].tolist()[:3] == ranked
    np.testing.assert_allclose(table["excess (sd)"].iloc[:3], [score[u] for u in ranked], rtol=1e-12, atol=1e-12)


def test_class_means_average_the_finite_activations():
    values = np.array([1.0, np.nan, 3.0, np.inf, 5.0, 6.0])
    labels = np.array([0, 0, 0, 1, 1, -1])
    table = class_means(values, labels, ["a", "b"])
    expected = pd.DataFrame({"class": ["a", "b"], "mean": [2.0, 5.0], "std": [1.0, 0.0], "count": [2, 1]})
    pd.testing.assert_frame_equal(table, expected)


@pytest.fixture(autouse=True, scope="module")
def _bokeh():
    hv.extension("bokeh")


def histogram_data(overlay) -> tuple[np.ndarray, np.ndarray]:
    hist = overlay.get(0)
    return hist.edges, hist.dimension_values(1)


def test_histogram_bins_the_finite_values_and_says_how_many_were_left_out():
    values = np.array([0.0, 1.0, 2.0, 3.0, np.nan, np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        overlay = activation_histogram(values, "unit", bins=3, marks={"a": 1.0, "b": np.nan})
    edges, counts = histogram_data(overlay)
    want_counts, want_edges = np.histogram(values[:4], bins=3)
    np.testing.assert_allclose(edges, want_edges)
    np.testing.assert_array_equal(counts, want_counts)
    assert "2 non-finite left out" in overlay.opts.get().kwargs["title"]
    assert len(overlay) == 2                              # the histogram and the one finite mark


def test_constant_unit_is_one_bar_at_its_value():
    overlay = activation_histogram(np.full(7, -3.0), "unit")
    edges, counts = histogram_data(overlay)
    np.testing.assert_allclose(edges, [-3.5, -2.5])
    np.testing.assert_array_equal(counts, [7])


def test_unit_figures_keep_wheel_zoom_in_the_toolbar_but_off():
    """The wheel over a Neurons plot scrolls the page (tests/browser/test_mouse.py moves the real mouse)."""
    from bokeh.models import WheelZoomTool

    means = pd.DataFrame({"class": ["a", "b"], "mean": [1.0, 2.0], "std": [0.1, 0.2], "count": [3, 4]})
    for figure in (activation_histogram(np.arange(10.0), "h", marks={"p99": 8.0}), class_mean_bars(means, "m")):
        toolbar = hv.render(figure, backend="bokeh").toolbar
        assert any(isinstance(tool, WheelZoomTool) for tool in toolbar.tools)
        assert not isinstance(toolbar.active_scroll, WheelZoomTool)     # "auto": no scroll tool is on
