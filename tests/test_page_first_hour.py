"""The first hour's smaller things on the page (issue 26), as the user sees them: the module table's counts
right-aligned, a root folder named without "/.", header controls that say what they do, the Facets placeholder
(what and how long), the DendroMap's units at the whole dataset (never a column of 0.0 excess), and Load,
Compute and Open kept disabled until every run in flight has ended."""

from __future__ import annotations

import asyncio
import re
import threading

import numpy as np
import panel as pn
import param
import pytest

from netatlas.app.config import AppConfig
from netatlas.app.state import AppState
from netatlas.backend.roots import AllowedRoots
from tests.backend_support import page_views, run_coroutine


@pytest.fixture
def views(small_loaded, small_dataset, cache_dir):
    """The page's linked views on a small classifier, its workspace open (no first pass run)."""
    return page_views(small_loaded, small_dataset, cache_dir)


# ----------------------------------------------------------------------------- Model tab
def test_module_table_counts_are_right_aligned_under_right_aligned_titles(views):
    built, _ = views
    view = built["Model"]
    view._update(None)
    model = view.tree.get_root()
    columns = {column["field"]: column for column in model.configuration["columns"]}
    formatters = {column.field: column.formatter for column in model.columns}
    for name in ("units", "params", "trainable"):
        assert columns[name].get("formatter") is None, name          # no Tabulator formatter overrides Panel's
        assert formatters[name].text_align == "right" and formatters[name].format == "0,0", name
        assert columns[name]["headerHozAlign"] == "right", name
    assert formatters["name"].text_align == "left"


# ----------------------------------------------------------------------------- sidebar
def test_a_folder_that_is_a_root_is_named_without_a_dot(tmp_path):
    from netatlas.app.loader_view import LoaderView, root_label
    from netatlas.backend.demo import assets_dir
    from tests.backbones import digit_folder, dinov2_folder

    model, digits = dinov2_folder(tmp_path / "m"), digit_folder(tmp_path / "d")
    roots = AllowedRoots.of(assets_dir(), model, digits)     # as `serve --checkpoint model --data digits` makes
    assert root_label(model, roots.roots) == f"{model.name}/"
    assert root_label(model / "config.json", roots.roots) == f"{model.name}/config.json"
    loader = LoaderView(AppState(AppConfig(checkpoint=str(model), data=str(digits), roots=roots)))
    assert f"{model.name}/" in loader.checkpoint.options and f"{digits.name}/" in loader.dataset.options
    labels = [*loader.checkpoint.options, *loader.dataset.options]
    assert not [label for label in labels if label.endswith("/.")], labels
    assert loader.checkpoint.value == str(model) and loader.dataset.value == str(digits)


# ----------------------------------------------------------------------------- header
def test_every_header_control_says_what_it_does():
    from netatlas.app.page import HEADER_CONTROLS, labelled_header

    panel_source = pn.template.FastListTemplate._template.read_text(encoding="utf-8")
    source = labelled_header(panel_source)
    for tooltip, element, text in HEADER_CONTROLS:
        assert f'id="{element}"' in panel_source, element          # Panel still draws this control
        assert f'id="{element}" aria-label="{text}"' in source
        assert re.search(rf'<fast-tooltip anchor="{element}"[^>]*>{re.escape(text)}</fast-tooltip>', source)
        assert tooltip not in source


# ----------------------------------------------------------------------------- Facets
def test_the_facets_placeholder_says_what_will_appear_and_how_long():
    from netatlas.app.facets_view import FacetsView

    view = FacetsView(AppState(AppConfig()), lambda: (None, 0), lambda: None)
    text = view.placeholder.object
    assert view.placeholder.visible and text.startswith("**Nothing visualized yet.**")
    assert "into 4 facets" in text and "one synthetic image per facet" in text and "exemplars" in text
    assert "optimized for 200 steps from the facet's mean image" in text
    assert "The demo's defaults (4 facets, 200 steps) take about 5 s" in text and "roughly 5 s" in text
    view.steps.value = 400
    view.k.value = 1
    view.start.value = "noise"
    text = view.placeholder.object
    assert "into 1 facet " in text and "400 steps from random noise" in text and "roughly 9 s" in text


def test_facets_replace_the_placeholder_and_another_unit_brings_it_back(views):
    from netatlas.backend.facets import FacetSettings
    from netatlas.backend.featviz import FeatvizSettings

    built, ws = views
    facets = built["Neurons"].facets
    report = ws.facets("", 1, FacetSettings(k=2, top_n=12, members=3, pca_dims=4), FeatvizSettings(steps=5))
    facets.show(report)
    assert not facets.placeholder.visible and "na-facet-img" in facets.results.object
    facets.clear()
    assert facets.placeholder.visible and facets.results.object == ""


# ----------------------------------------------------------------------------- DendroMap
def test_the_whole_dataset_lists_its_most_active_units_and_a_cluster_its_top_units(views):
    from netatlas.app.dendromap_view import CLUSTER_UNITS_TITLE, ROOT_UNITS_TITLE
    from netatlas.app.neurons_view import LOGITS
    from netatlas.backend.cluster.tree import build_cluster_tree

    built, ws = views
    neurons, view = built["Neurons"], built["DendroMap"]
    _, vectors, acts = ws.representation("")
    with param.discard_events(neurons.layer):
        neurons.layer.options, neurons.layer.value = [LOGITS], LOGITS
    neurons.show(acts)
    tree = build_cluster_tree(vectors, ws.dataset.labels, acts.predictions, len(ws.dataset.classes))
    view.shown = True
    view.show(tree, vectors, acts.predictions)

    table = view.units.value
    assert view.units_title.object == ROOT_UNITS_TITLE.format(neurons="the Neurons tab")
    assert "Most active units (the layer of the Neurons tab" in view.units_title.object
    assert list(table.columns) == ["unit", "dataset mean", "dataset sd"]
    means = acts.logits.astype(np.float64).mean(0)
    np.testing.assert_allclose(table["dataset mean"], np.sort(means)[::-1].round(4), atol=1e-4)
    assert table["unit"].tolist() == np.argsort(-means, kind="stable").tolist()

    child = max(tree.children(tree.root), key=lambda node: tree.count[node])
    view._navigate([tree.root, int(child)])
    table = view.units.value
    assert view.units_title.object == CLUSTER_UNITS_TITLE.format(neurons="the Neurons tab")
    assert list(table.columns) == ["unit", "in cluster", "dataset", "excess (sd)"]
    assert (table["excess (sd)"].abs() > 0).any()


def test_highest_mean_units_rank_finite_means_first():
    from netatlas.backend.neurons import highest_mean_units

    mean, sd = np.array([0.5, np.nan, 2.0, np.inf, 1.0]), np.array([1.0, np.nan, 0.5, np.nan, 0.2])
    table = highest_mean_units((mean, sd), k=4)
    assert table["unit"].tolist() == [2, 4, 0, 1]
    assert table["dataset mean"].tolist()[:3] == [2.0, 1.0, 0.5] and table["dataset sd"].tolist()[:3] == [0.5, 0.2, 1.0]


# ----------------------------------------------------------------------------- busy
def test_buttons_stay_disabled_until_every_run_in_flight_has_ended():
    """The first pass after Load, and meanwhile a short run (the Diagram tab's trace): when the short one ends,
    Load, Compute and Open stay disabled, the progress bar and Cancel stay, the status names the pass."""
    from netatlas.app.kan_view import KANView
    from netatlas.app.loader_view import LoaderView
    from netatlas.app.residual_view import ResidualView

    state = AppState(AppConfig())
    loader, residual, kan = LoaderView(state), ResidualView(state), KANView(state)
    buttons = (loader.load_button, residual.compute, kan.open_button)
    release = threading.Event()

    async def scenario() -> None:
        first_pass = asyncio.ensure_future(state.run("Computing activations of blocks.5",
                                                     lambda _progress: release.wait(30)))
        await asyncio.sleep(0.05)
        assert await state.run("Tracing the model", lambda _progress: "circuit") == "circuit"
        assert state.busy and all(button.disabled for button in buttons)
        assert state.progress.visible and state.cancel_button.visible
        assert state.status.object.startswith("Computing activations of blocks")
        release.set()
        assert await first_pass is True
        assert not state.busy and not any(button.disabled for button in buttons)
        assert not state.progress.visible and not state.cancel_button.visible and state.status.object == ""
    run_coroutine(scenario())
