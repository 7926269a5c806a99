"""netatlas in a notebook: the Python API against the Workspace and a direct forward, the views are the
page's own classes, the cache is shared with the page, and examples/tour.ipynb runs top to bottom."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

import netatlas as na
from netatlas.app.dendromap_view import DendroMapView
from netatlas.app.diagram_view import DiagramView
from netatlas.app.facets_view import FacetsView
from netatlas.app.kan_view import KANView
from netatlas.app.map_view import MapView
from netatlas.app.neurons_view import NeuronsView
from netatlas.app.residual_view import ResidualView
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.embedding import EmbedSettings, default_seed
from netatlas.backend.errors import NetatlasError
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
TOUR = REPO / "examples" / "tour.ipynb"
PANEL_OUTPUT = "application/vnd.holoviews_exec.v0+json"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    return na.open("demo", "demo", cache_dir=tmp_path_factory.mktemp("notebook-cache"))


def test_activations_are_a_direct_forward(atlas):
    table = atlas.activations(["blocks.5"])
    loaded, dataset = load_checkpoint(demo_checkpoint()), demo_dataset()
    captured = []
    handle = loaded.model.blocks[5].register_forward_hook(lambda m, i, o: captured.append(o.mean((2, 3))))
    with torch.no_grad():
        logits = loaded.model(loaded.preprocessing.uint8_to_tensor(dataset.array))
    handle.remove()
    assert list(table["id"]) == dataset.ids and (table["label"].to_numpy() == dataset.labels).all()
    np.testing.assert_allclose(np.stack(table["blocks.5"]), captured[0].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.stack(table["logits"]), logits.numpy(), atol=1e-4, rtol=1e-4)
    assert (table["prediction"].to_numpy() == logits.argmax(1).numpy()).all()


def test_views_are_the_pages_own_and_show_the_workspaces_results(atlas, tmp_path):
    neurons = atlas.neurons("blocks.5", unit=7)
    assert type(neurons) is NeuronsView and neurons.current_unit() == ("blocks.5", 7)
    assert neurons.top.object.count("<img") == 16
    tree = atlas.dendromap()
    assert type(tree) is DendroMapView and tree.tree.n_images == 5000
    assert np.array_equal(tree.tree.order, atlas.workspace.cluster_tree().order)
    assert "na-tile" in tree.treemap.html
    embedding = atlas.map(color="correct", method="pca")
    assert type(embedding) is MapView and embedding.points is not None
    diagram = atlas.diagram(fold_depth=1)
    assert type(diagram) is DiagramView and diagram.view.boxes == len(list(atlas.workspace.loaded.model.children()))
    for suffix in ("svg", "pdf", "tex"):
        assert diagram.save(tmp_path / f"d.{suffix}").stat().st_size > 500
    residual = atlas.residual(images=32, samples=2)
    assert type(residual) is ResidualView and residual.report.meta["n_units"] == 6
    facets = atlas.facets("", 3, k=2, steps=10)
    assert type(facets) is FacetsView and len(facets.report.images) == 2
    assert type(na.kan("demo")) is KANView
    page = atlas.app()
    assert len(page.objects[0].objects) == 7 and list(atlas.views) == ["Model", "Diagram", "Neurons", "DendroMap", "Map",
                                                            "Residual", "KAN"]
    with pytest.raises(NetatlasError, match="unknown color"):
        atlas.map(color="rainbow")


def test_a_map_computed_in_the_notebook_is_the_pages_cache_entry(atlas, monkeypatch):
    """A Workspace as the page opens it, on the same cache folder, reads the notebook's map: no embedding runs."""
    import netatlas.backend.workspace as workspace_module

    atlas.map(method="pca")
    page_side = Workspace(load_checkpoint(demo_checkpoint()), demo_dataset(), ResultCache(atlas.workspace.cache.root),
                          "cpu", source="demo")
    monkeypatch.setattr(workspace_module, "embed", lambda *a, **k: pytest.fail("the map was computed again"))
    monkeypatch.setattr(workspace_module, "resumable_pass", lambda *a, **k: pytest.fail("extracted again"))
    settings = EmbedSettings(method="pca", seed=default_seed(5000))
    np.testing.assert_array_equal(page_side.embedding(settings=settings).xy,
                                  atlas.workspace.embedding(settings=settings).xy)


def test_unsafe_pickles_stay_refused_unless_trusted(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), path)
    with pytest.raises(NetatlasError, match="refused to unpickle"):
        na.open(path, "demo", cache_dir=tmp_path / "cache")
    trusted = na.open(path, "demo", trust_pickle=True, cache_dir=tmp_path / "cache",
                      preprocessing=Preprocessing(size=(28, 28), grayscale=True))
    assert trusted.workspace.loaded.format == "pickled-module"


def test_the_tour_is_committed_without_outputs():
    notebook = nbformat.read(TOUR, as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")


def test_the_tour_runs_top_to_bottom_on_a_fresh_kernel(tmp_path):
    shutil.copy(TOUR, tmp_path / "tour.ipynb")
    env = {**os.environ, "NETATLAS_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "tour.ipynb",
                           "--output", "executed.ipynb", "--ExecutePreprocessor.timeout=600"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    notebook = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    views = [cell for cell in code if "atlas." in cell.source and "activations" not in cell.source
             and "modules" not in cell.source or "na.kan" in cell.source]
    for cell in views:   # each view is a live Panel object in the notebook, not a text repr
        assert any(PANEL_OUTPUT in o.get("data", {}) for o in cell.outputs), cell.source
    blob = {cell.source.splitlines()[0]: json.dumps([o.get("data", {}) for o in cell.outputs]) for cell in code}
    assert "na-tile" in blob["atlas.dendromap()"]                 # the tree was drawn before the cell returned
    assert blob['atlas.facets("", 3, k=2, steps=40)'].count("data:image/png") >= 2
    assert (tmp_path / "tour_diagram.svg").read_text().lstrip().startswith(("<?xml", "<svg"))


def test_what_the_page_shows_as_an_error_raises_in_the_cell(atlas, tmp_path):
    with pytest.raises(NetatlasError, match="no.such.layer"):
        atlas.neurons("no.such.layer")
    broken = tmp_path / "broken_kan.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(NetatlasError):
        na.kan(broken)
