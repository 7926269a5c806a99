"""The notebook's first hour: its messages name its own arguments, a cached result prints nothing (no empty
progress bar, no torch warning), texts say "view" where there are no tabs, and every view's ``.data`` holds
the numbers it shows (checked against the Workspace's results and direct computations)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import netatlas as na
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.embedding import EmbedSettings, default_seed
from netatlas.backend.errors import NetatlasError, model_failed
from netatlas.backend.kan.checkpoint import is_kan_checkpoint
from netatlas.backend.preprocessing import Preprocessing
from netatlas.notebook import notebook_words

FLAGS = ("--size", "--grayscale", "--arch", "--trust-pickle", "--image-column", "--label-column", "--device",
         "Preprocessing fields", "Trust pickled code")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The demo checkpoint in a folder of its own, beside a state_dict pickled with protocol 4 (torch's
    safe unpickler warns about it when the notebook's KAN view lists the folder)."""
    root = tmp_path_factory.mktemp("models")
    for path in demo_checkpoint().parent.glob(demo_checkpoint().stem + ".*"):
        shutil.copy(path, root / path.name)
    torch.save({"w": torch.zeros(3)}, root / "other.pt", pickle_protocol=4)
    return root


@pytest.fixture(scope="module")
def atlas(folder, tmp_path_factory):
    return na.open(folder / demo_checkpoint().name, "demo", cache_dir=tmp_path_factory.mktemp("cache"))


def assert_no_flags(message: str) -> None:
    assert not [flag for flag in FLAGS if flag in message], message


# ---- messages --------------------------------------------------------------------------------------------
def test_errors_from_open_name_its_arguments(tmp_path):
    pickled, weights = tmp_path / "pickled.pt", tmp_path / "weights.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), pickled)
    torch.save(nn.Linear(784, 10).state_dict(), weights)
    with pytest.raises(NetatlasError, match="trust_pickle=True") as refused:
        na.open(pickled, "demo", cache_dir=tmp_path / "cache")
    with pytest.raises(NetatlasError, match=r"with arch= \(") as weights_only:
        na.open(weights, "demo", cache_dir=tmp_path / "cache")
    # A forward that cannot take the input size: found by the views' first pass, raised from the cell.
    with pytest.raises(NetatlasError, match=r"preprocessing=Preprocessing\(size=") as wrong_size:
        na.open(pickled, "demo", trust_pickle=True, cache_dir=tmp_path / "cache",
                preprocessing=Preprocessing(size=(32, 32), grayscale=True))
    assert "1x1024 and 784x10" in str(wrong_size.value)
    for raised in (refused, weights_only, wrong_size):
        assert_no_flags(str(raised.value))


def test_every_flag_the_backend_names_has_a_notebook_argument():
    sized = str(model_failed(RuntimeError("boom"), "a batch", None))
    assert "--size" in sized
    words = notebook_words(sized)
    assert_no_flags(words)
    assert "arch=" in words and "preprocessing=Preprocessing(size=..., grayscale=...)" in words
    assert notebook_words("name the column that holds them with --image-column NAME") == \
        'name the column that holds them with image_column="NAME"'
    assert notebook_words("pass e.g. --arch-kwargs '{\"num_classes\": N}'") == \
        'pass e.g. arch_kwargs={"num_classes": N}'
    assert notebook_words("CUDA is not available here; use --device cpu") == \
        'CUDA is not available here; use device="cpu"'
    assert notebook_words("--image-column and --label-column choose columns") == \
        "image_column= and label_column= choose columns"


# ---- quiet on a cache hit ----------------------------------------------------------------------------------
def test_open_prints_no_pickle_protocol_warning(folder, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not is_kan_checkpoint(folder / "other.pt")           # the file that warns when listed
    assert any("pickle protocol 4" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        na.open(folder / demo_checkpoint().name, "demo", cache_dir=tmp_path / "cache")
    assert not [str(w.message) for w in caught if "pickle protocol" in str(w.message)]


def test_a_cached_result_prints_no_progress_bar(atlas, capfd):
    atlas.neurons("blocks.5", unit=2)
    atlas.dendromap()
    atlas.map(method="pca")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atlas.neurons("blocks.5", unit=2)
        atlas.dendromap()
        atlas.map(method="pca")
        atlas.activations(["blocks.5"])
    out, err = capfd.readouterr()
    assert "step" not in err + out and "img" not in err + out, err
    assert not [str(w.message) for w in caught if "pickle" in str(w.message)]


def test_texts_say_view_where_there_are_no_tabs(atlas):
    embedding = atlas.map(method="pca")
    embedding.select(np.arange(10))
    assert "highlighted in the DendroMap view" in embedding.selected.object
    assert embedding.data["selected"].sum() == 10
    embedding.select(None)
    assert "the layer of the Neurons view" in atlas.dendromap().units_title.object


def test_each_call_shows_its_own_view_and_an_earlier_cell_keeps_its_own(atlas):
    first = atlas.neurons("blocks.5", unit=7)
    shown = first.top.object
    second = atlas.neurons("blocks.5", unit=3)
    assert second is not first and second.top is not first.top
    assert first.current_unit() == ("blocks.5", 7) and first.top.object == shown
    assert second.current_unit() == ("blocks.5", 3) and second.top.object != shown
    assert atlas.facets("", 3, k=2, steps=5) is not atlas.facets("", 3, k=2, steps=5)


def test_an_error_from_a_button_in_a_cell_shows_in_that_cell(atlas):
    """The view's own status line is drawn under it (a notebook has no sidebar): what its callbacks report."""
    view = atlas.diagram()
    layout = view.__panel__()
    status = [obj for obj in layout.objects if "na-status" in getattr(obj, "css_classes", [])]
    assert len(status) == 1
    view.state.error("a *literal* message")
    assert status[0].object == "**Error:** a \\*literal\\* message"
    assert view.state.status is status[0]
    other = atlas.diagram()
    assert other.state.status is not view.state.status and other.state.status.object == ""


# ---- .data -------------------------------------------------------------------------------------------------
def test_neurons_data_is_the_units_activations(atlas):
    view = atlas.neurons("blocks.5", unit=7)
    table = atlas.activations(["blocks.5"])
    data = view.data
    expected = np.stack(table["blocks.5"])[:, 7]
    frame = data["activations"]
    np.testing.assert_array_equal(frame["activation"].to_numpy(), expected)
    assert list(frame["id"]) == list(table["id"]) and (frame["label"] == table["label"]).all()
    assert (frame["prediction"] == table["prediction"]).all()
    order = np.argsort(-expected, kind="stable")
    np.testing.assert_array_equal(np.sort(data["top"]["activation"].to_numpy())[::-1], expected[order[:16]])
    np.testing.assert_array_equal(np.sort(data["bottom"]["activation"].to_numpy()), np.sort(expected)[:16])
    assert len(data["top"]) == len(data["bottom"]) == 16


def test_dendromap_data_is_the_frontiers_clusters(atlas):
    view = atlas.dendromap()
    frame = view.data
    tree, dataset = view.tree, atlas.workspace.dataset
    table = atlas.activations([])
    labels, predictions = dataset.labels, table["prediction"].to_numpy()
    assert len(frame) == int(view.k.value) and frame["size"].sum() == len(dataset)
    seen = np.zeros(len(dataset), int)
    for row in frame.itertuples(index=False):
        images = tree.images(row.cluster)
        seen[images] += 1
        assert row.size == len(images)
        assert row.accuracy == pytest.approx((labels[images] == predictions[images]).mean())
        counts = np.bincount(labels[images], minlength=len(dataset.classes))
        assert frame.loc[frame["cluster"] == row.cluster, list(dataset.classes)].iloc[0].tolist() == counts.tolist()
    assert (seen == 1).all()                       # the frontier partitions the dataset


def test_map_data_is_the_cached_embedding(atlas):
    view = atlas.map(method="pca")
    frame = view.data
    settings = EmbedSettings(method="pca", seed=default_seed(len(atlas.workspace.dataset)))
    xy = atlas.workspace.embedding(atlas._layer_name(view), settings=settings).xy
    np.testing.assert_allclose(frame["x"].to_numpy(), xy[:, 0], rtol=1e-6)
    np.testing.assert_allclose(frame["y"].to_numpy(), xy[:, 1], rtol=1e-6)
    table = atlas.activations([])
    assert list(frame["id"]) == list(table["id"]) and (frame["prediction"] == table["prediction"]).all()
    assert not frame["selected"].any()


def test_model_data_is_the_module_table(atlas):
    frame = atlas.model().data
    pd.testing.assert_frame_equal(frame, atlas.modules)
    assert frame["params"].iloc[0] == sum(p.numel() for p in atlas.workspace.loaded.model.parameters())


def test_kan_data_is_the_drawn_curves():
    view = na.kan("demo")
    frame = view.data
    layer = view.analysis.network.layers[view.layer.value]
    assert {"layer", "i", "j", "x", "total"} <= set(frame.columns) and len(frame)
    for (i, j), rows in frame.groupby(["i", "j"]):
        x = torch.zeros(len(rows), layer.in_dim, dtype=torch.float64)
        x[:, i] = torch.as_tensor(rows["x"].to_numpy())
        with torch.no_grad():
            edge = layer.edges(x.to(layer.bias.dtype))[:, i, j].double().numpy()
        np.testing.assert_allclose(rows["total"].to_numpy(), edge, rtol=1e-4, atol=1e-5)


def test_facets_data_is_the_facet_table(atlas):
    view = atlas.facets("", 3, k=2, steps=10)
    frame = view.data
    logits = np.stack(atlas.activations([])["logits"])[:, 3]
    assert len(frame) == 2 and list(frame["facet"]) == [0, 1]
    for row in frame.itertuples(index=False):
        assert row.rank == 1 + int((logits > row.activation).sum())      # 1 + dataset images above it
    ids = atlas.workspace.dataset.ids
    for size, shown, members in zip(frame["size"], frame["exemplar ids"], view.report.exemplars):
        assert shown == [ids[i] for i in members] and 0 < len(shown) <= size
    np.testing.assert_allclose(frame["sd above dataset max"], (frame["activation"] - logits.max()) / logits.std(),
                               rtol=1e-4)


def test_residual_data_is_the_reports_tables(atlas):
    view = atlas.residual(images=32, samples=2)
    data = view.data
    assert set(data) == {"units", "paths", "orders", "lesions", "lesions_k", "reorder"}
    for name, table in data.items():
        pd.testing.assert_frame_equal(table, getattr(view.report, name))
    assert len(data["units"]) == view.report.meta["n_units"] == 6
