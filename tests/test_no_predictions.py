"""A model without predictions (a backbone with no classifier head, issue 22): every frame and view leaves
out what needs them (no accuracy, no predicted class, no misclassified flag, no option that colours or
filters by them), and the same views on a classifier keep all of it. Views get ``predictions=None``
as the page and the notebook hand it over; a tiny DINOv2 folder goes through the notebook end to end."""

from __future__ import annotations

import html
import io
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import param
import pytest

from netatlas.backend.cluster.tree import build_cluster_tree
from netatlas.backend.embedding import EmbedSettings, embed
from netatlas.backend.errors import NetatlasError
from netatlas.viz.dendromap import MapData, dendromap_frame, node_colors
from netatlas.viz.embedding import MapPoints, aggregate, legend_html, render
from netatlas.viz.images import image_detail_html
from netatlas.viz.treemap import color_scale
from tests.backbones import digit_folder, dinov2_folder
from tests.backend_support import run_coroutine

# What a page says only about predictions (any case): none of it may show without them.
PREDICTION_WORDS = re.compile(r"accura|\bacc\b|predict|misclassif|wrong|correct|FNR|FPR", re.IGNORECASE)


def visible_text(markup: str) -> str:
    """What a reader sees of HTML: text and tooltips, without style blocks, tags or class names."""
    titles = " ".join(html.unescape(t) for t in re.findall(r'title="([^"]*)"', markup))
    text = re.sub(r"<style>.*?</style>", " ", markup, flags=re.DOTALL)
    return " ".join((html.unescape(re.sub(r"<[^>]+>", " ", text)) + " " + titles).split())


def said(text: str) -> list[str]:
    return PREDICTION_WORDS.findall(text)


# ----------------------------------------------------------------------------- viz
@pytest.fixture(scope="module")
def headless() -> MapData:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 6)) * 5
    labels = rng.integers(0, 4, 400)
    x = centres[labels] + rng.normal(size=(400, 6))
    labels[::40] = -1                                     # a few unlabeled images
    tree = build_cluster_tree(x, labels, None, 4)
    return MapData(tree, labels, None, [f"im{i:03d}" for i in range(400)], list("wxyz"))


def test_a_frame_without_predictions_colours_by_class_share_and_names_no_prediction(headless):
    data, tree = headless, headless.tree
    assert data.wrong is None and not data.has_predictions
    page, clusters = dendromap_frame(data, tree.root, 6, 20, 12, 30, lambda i: f"/t/{i}.png")
    colours = dict(re.findall(r'data-node=(\d+) style="[^"]*--c:(#[0-9a-f]{6})"', page))
    assert len(clusters) == 6 and sorted(map(int, colours)) == sorted(clusters)
    for cluster in clusters:                              # the first class's share, counted directly
        images = tree.images(cluster)
        share = (data.labels[images] == 0).sum() / len(images)
        assert colours[str(cluster)] == color_scale(np.array([share]), "share")[0]
    heads = re.findall(r'<div class="na-head">([^<]*)</div>', page)
    assert heads == [f"{tree.count[c]:,} images" for c in clusters]
    assert not said(visible_text(page)), said(visible_text(page))
    assert not re.findall(r'class="na-img[^"]*na-wrong', page)
    assert 'class="na-treemap na-mis-none' in page        # the outline mode never applies
    with pytest.raises(ValueError, match="needs predictions"):
        node_colors(data, clusters, "accuracy")


def test_a_frame_with_predictions_still_defaults_to_accuracy(headless):
    predictions = np.where(headless.labels >= 0, headless.labels, 0)
    predictions[::7] = (predictions[::7] + 1) % 4
    tree = build_cluster_tree(np.random.default_rng(0).normal(size=(400, 3)), headless.labels, predictions, 4)
    data = MapData(tree, headless.labels, predictions, headless.ids, headless.class_names)
    page, clusters = dendromap_frame(data, tree.root, 4, 10, 10, 20, str)
    for cluster in clusters:
        images = tree.images(cluster)
        known = images[data.labels[images] >= 0]
        accuracy = (predictions[known] == data.labels[known]).mean()
        assert f"{tree.count[cluster]:,} images · {accuracy:.0%} acc" in page
        assert color_scale(np.array([accuracy]), "accuracy")[0] in page
    assert "predicted" in visible_text(page) and 'class="na-treemap na-mis-outline' in page


def test_image_details_without_predictions_name_the_label_only():
    labels = np.array([0, 1, -1, 2])
    page = image_detail_html(lambda i: np.full((8, 8), 40 * i, np.uint8), ["a", "b", "c", "d"],
                             lambda c: "wxyz"[c] if c >= 0 else "?", labels, None, 1, [0, 2, 3], [0.5, 1.0, 2.0])
    text = visible_text(page)
    assert "label x" in text and "d · label y" in text and not said(text), said(text)
    assert ' wrong"' not in page                          # no thumbnail outlined
    with_predictions = image_detail_html(lambda i: np.zeros((8, 8), np.uint8), ["a", "b", "c", "d"],
                                         lambda c: "wxyz"[c] if c >= 0 else "?", labels, np.array([0, 0, 1, 2]),
                                         1, [0, 2, 3], [0.5, 1.0, 2.0])
    assert "predicted" in with_predictions and "misclassified" in with_predictions


def test_map_points_without_predictions_offer_no_colouring_by_them():
    rng = np.random.default_rng(1)
    xy, labels = rng.normal(size=(200, 2)), rng.integers(-1, 3, 200)
    points = MapPoints.build(xy, labels, None, ["p", "q", "r"])
    assert list(points.frame.columns) == ["x", "y", "class", "value"]
    assert set(points.categories) == {"class"} and not points.has_predictions
    assert [c for c in ("class", "predicted", "correct", "cluster", "value", "density") if not points.offers(c)] \
        == ["predicted", "correct"]
    for colour in ("predicted", "correct"):
        with pytest.raises(ValueError, match="needs predictions"):
            aggregate(points, colour, (-5, 5), (-5, 5), 50, 50)
    counts = aggregate(points, "class", (-9, 9), (-9, 9), 40, 40).sum(["x", "y"]).values
    np.testing.assert_array_equal(counts, [(labels == c).sum() for c in range(3)] + [(labels < 0).sum()])
    assert render(points, "class").data.shape[2] == 4
    assert not said(legend_html(points, "class", "true class"))
    classified = MapPoints.build(xy, labels, np.clip(labels, 0, 2), ["p", "q", "r"])
    assert classified.offers("correct") and "correct" in classified.frame


# ----------------------------------------------------------------------------- the views
@pytest.fixture
def views(small_loaded, small_dataset, cache_dir):
    """The page's linked views on a small model, with its representation, tree and map computed."""
    from tests.backend_support import page_views

    built, ws = page_views(small_loaded, small_dataset, cache_dir)
    _, vectors, acts = ws.representation("")
    assert acts.predictions is not None                   # the small model is a classifier
    return built, ws, vectors, acts


def test_dendromap_view_without_predictions(views):
    from netatlas.app.dendromap_view import ANY

    built, ws, vectors, acts = views
    view = built["DendroMap"]
    tree = build_cluster_tree(vectors, ws.dataset.labels, None, len(ws.dataset.classes))
    view.shown = True
    view.show(tree, vectors, None)
    assert view.color_by.options == ["Share of a class", "Neuron (from the Neurons tab)"]
    assert view.color_by.value == "Share of a class" and view.color_class.visible
    assert not (view.predicted.visible or view.wrong_only.visible or view.misclassified_box.visible)
    view.k.value = 4
    text = " ".join([visible_text(view.treemap.html), view.summary.object, view.legend.object])
    assert "share of class" in text and not said(text), said(text)
    assert list(view.classes.value.columns) == ["class", "label", "count"]
    counts = dict(zip(view.classes.value["label"], view.classes.value["count"]))
    assert counts == {c: int((ws.dataset.labels == c).sum()) for c in range(len(ws.dataset.classes))}
    exported = pd.read_csv(io.BytesIO(view._export_csv().getvalue()))
    assert list(exported.columns) == ["index", "id", "label", "class", "cluster"] and len(exported) == len(ws.dataset)
    view.true_label.value = ws.dataset.classes[1]           # the filters that remain still work
    assert view.map_data.hits.sum() == (ws.dataset.labels == 1).sum()
    view.true_label.value = ANY
    run_coroutine(view.show_image(3))
    detail = visible_text(view.detail.object)
    assert ws.dataset.ids[3] in detail and not said(detail), said(detail)

    view.show(build_cluster_tree(vectors, ws.dataset.labels, acts.predictions, len(ws.dataset.classes)),
              vectors, acts.predictions)                  # a classifier again: everything is back
    assert "Accuracy" in view.color_by.options and view.predicted.visible and view.misclassified_box.visible
    assert view.color_by.value == "Accuracy"              # the default again: the user chose no other
    assert "acc" in view.treemap.html and "accuracy" in view.classes.value.columns
    exported = pd.read_csv(io.BytesIO(view._export_csv().getvalue()))
    assert list(exported.columns) == ["index", "id", "label", "class", "prediction", "predicted_class", "correct",
                                      "cluster"]


def test_map_view_without_predictions(views):
    built, ws, vectors, acts = views
    view = built["Map"]
    view.color_by.value = "Correct / misclassified"
    view.show(embed(vectors, EmbedSettings(method="pca")), vectors, None)
    assert view.color_by.options == ["Class", "Cluster (DendroMap tree)", "Neuron (from the Neurons tab)", "Density"]
    assert view.color_by.value == "Class"
    view._on_pointer(*view.points.xy[5])
    hover = visible_text(view.hover.object)
    assert ws.dataset.ids[5] in hover and not said(hover), said(hover)
    view.select(np.arange(10))
    text = visible_text(view.selected.object) + view.summary.object + view.legend.object
    assert "10 images selected" in text and not said(text), said(text)
    assert list(view.counts.value.columns) == ["class", "label", "count"]
    assert view.counts.value["count"].sum() == (ws.dataset.labels[:10] >= 0).sum()

    view.show(embed(vectors, EmbedSettings(method="pca")), vectors, acts.predictions)
    assert view.color_by.value == "Correct / misclassified"      # the user's choice, offered again
    view.select(np.arange(10))
    assert "accuracy" in view.selected.object and "accuracy" in view.counts.value.columns


def test_neurons_view_without_predictions(views):
    from netatlas.app.neurons_view import LOGITS

    built, ws, _, acts = views
    view = built["Neurons"]
    with param.discard_events(view.layer):
        view.layer.options, view.layer.value = [LOGITS], LOGITS
    view.show(replace(acts, predictions=None))
    text = visible_text(view.top.object + view.bottom.object) + view.stats.object
    assert ws.dataset.ids[0] in text or "activation" in text
    assert not said(text), said(text)
    assert " wrong\"" not in view.top.object + view.bottom.object
    assert "logit of class" not in view.stats.object      # a backbone's output units are not classes
    view.show(acts)
    assert "predicted" in visible_text(view.top.object) and "logit of class" in view.stats.object


def test_model_view_says_once_why_there_are_no_predictions(views, monkeypatch):
    from netatlas.backend.workspace import Workspace

    built, ws, _, _ = views
    note = "Sequential has no classification head, so there are no predictions"
    monkeypatch.setattr(Workspace, "predictions_note", property(lambda self: note), raising=False)
    ws.loaded.sidecar["test_accuracy"] = 0.5
    view = built["Model"]
    view._update(param.parameterized.Event(what="value", name="workspace", obj=None, cls=None, old=None, new=ws,
                                           type="changed"))
    assert view.summary.object.count(note) == 1 and "accuracy" not in view.summary.object
    monkeypatch.setattr(Workspace, "predictions_note", property(lambda self: ""), raising=False)
    view._update(param.parameterized.Event(what="value", name="workspace", obj=None, cls=None, old=None, new=ws,
                                           type="changed"))
    assert "held-out accuracy (sidecar)** 50.00%" in view.summary.object and "No predictions" not in \
        view.summary.object


# ----------------------------------------------------------------------------- a real backbone
def test_a_dinov2_backbone_in_the_notebook_has_no_predictions_anywhere(tmp_path):
    import netatlas as na

    atlas = na.open(dinov2_folder(tmp_path), digit_folder(tmp_path), cache_dir=tmp_path / "cache")
    note = atlas.workspace.predictions_note
    assert "no classification head" in note
    model = atlas.model()
    assert model.summary.object.count(note) == 1
    neurons = atlas.neurons()
    assert neurons.predictions is None
    assert not said(visible_text(neurons.top.object)), said(visible_text(neurons.top.object))
    tree = atlas.dendromap()
    assert "Accuracy" not in tree.color_by.options and tree.map_data.predictions is None
    assert np.isnan(tree.tree.accuracy).all()
    assert not said(visible_text(tree.treemap.html) + tree.summary.object)
    points = atlas.map(color="class", method="pca")
    assert "Predicted class" not in points.color_by.options and not points.points.has_predictions
    with pytest.raises(NetatlasError, match="needs predictions"):
        atlas.map(color="correct", method="pca")
    assert "prediction" not in atlas.activations().columns
    # .data of each view: no prediction or accuracy column for a model that predicts nothing
    columns = [*neurons.data["activations"].columns, *tree.data.columns, *points.data.columns]
    assert not [c for c in columns if "predict" in c or "accuracy" in c], columns


def test_undefined_values_read_as_words_not_nan():
    """A tile without labelled images, a constant or all-NaN unit: defined text, never "nan" or a made-up range."""
    from netatlas.app.neurons_view import unit_statistics
    from netatlas.viz.dendromap import _defined
    from netatlas.viz.embedding import MapPoints, legend_html

    assert _defined(float("nan"), "accuracy") == "none (no labelled image here)"
    assert _defined(0.25, "accuracy") == "0.25"
    column = np.array([2.0, np.nan, 4.0])
    assert unit_statistics(column) == ("mean 3 · sd 1 · min 2 · max 4 · 100.0% of images > 0 · "
                                       "1 images with a non-finite activation left out")
    assert unit_statistics(np.full(3, np.nan)) == "no finite activation on any of the 3 images"
    xy = np.random.default_rng(0).normal(size=(5, 2))
    points = MapPoints.build(xy, np.zeros(5, int), None, ["a"])
    points.frame["value"] = np.full(5, -3.0)
    assert "every image -3 (a constant unit)" in legend_html(points, "value")
    points.frame["value"] = np.full(5, np.nan)
    assert "nan" not in legend_html(points, "value").lower()
