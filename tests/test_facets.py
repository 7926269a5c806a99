"""Facet discovery and the cached facet report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netatlas.backend.workspace as workspace_module
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.facets import FacetSettings, find_facets, penultimate_layer
from netatlas.backend.featviz import FeatvizSettings
from netatlas.backend.workspace import Workspace
from netatlas.backend.errors import NetatlasError


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 top images in 4 well-separated blobs of codes, plus 300 weak images elsewhere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 64)) * 20
    blob = np.repeat(np.arange(4), 50)
    codes = np.concatenate([centres[blob] + rng.normal(size=(200, 64)), rng.normal(size=(300, 64))])
    values = np.concatenate([10 + rng.random(200), rng.random(300)])
    return values, codes, np.concatenate([blob, np.full(300, -1)])


def test_facets_recover_planted_clusters_and_only_use_top_images():
    values, codes, blob = planted()
    facets = find_facets(values, codes, FacetSettings(k=4, top_n=200, members=15))
    assert set(facets.top) == set(range(200))
    for members in facets.exemplars:
        assert len(members) == 15
        assert len(set(blob[members])) == 1, "a facet mixes planted clusters"
    assert sorted(blob[e[0]] for e in facets.exemplars) == [0, 1, 2, 3]
    assert np.bincount(facets.assignment).tolist() == [50, 50, 50, 50]


def test_facet_assignment_is_reproducible_with_a_seed():
    rng = np.random.default_rng(1)
    values, codes = rng.random(400), rng.normal(size=(400, 32))
    a = find_facets(values, codes, FacetSettings(k=5, seed=3))
    b = find_facets(values, codes, FacetSettings(k=5, seed=3))
    np.testing.assert_array_equal(a.assignment, b.assignment)
    for x, y in zip(a.exemplars, b.exemplars):
        np.testing.assert_array_equal(x, y)
    # Facets are ordered by size, largest first.
    sizes = np.bincount(a.assignment)
    assert (np.diff(sizes) <= 0).all()


def test_bad_k_is_a_user_error():
    values, codes, _ = planted()
    with pytest.raises(NetatlasError, match="between 1 and 10"):
        find_facets(values, codes, FacetSettings(k=11))


def test_penultimate_layer_feeds_the_last_linear():
    import torchvision

    assert penultimate_layer(DemoResNet()) == "flatten"
    assert penultimate_layer(torchvision.models.resnet18()) == "avgpool"
    assert penultimate_layer(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))) is None


def test_workspace_facets_measure_against_the_data_and_are_cached(tmp_path, monkeypatch):
    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    ws = Workspace(loaded, dataset, ResultCache(tmp_path), "cpu")
    settings = (FacetSettings(k=3, top_n=60, members=5), FeatvizSettings(steps=20))
    report = ws.facets("", 7, *settings)

    # Independent check: the dataset's logits of class 7 and the synthetic images' logits.
    with torch.no_grad():
        logits = loaded.model(loaded.preprocessing.uint8_to_tensor(dataset.array))[:, 7].numpy()
        images = torch.from_numpy(report.images).float().div(255).unsqueeze(1)
        reached = loaded.model((images - 0.1307) / 0.3081)[:, 7].numpy()
    assert report.dataset_max == pytest.approx(float(logits.max()), rel=1e-4)
    np.testing.assert_allclose(report.activation, reached, rtol=0.05, atol=0.05)  # PNG quantization
    np.testing.assert_array_equal(report.rank, 1 + (logits[None, :] > report.activation[:, None]).sum(1))
    assert (report.activation > report.start_activation).all()
    for members in report.exemplars:
        assert set(members) <= set(np.argsort(logits)[::-1][:60])

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(workspace_module, "build_facets", refuse)
    again = ws.facets("", 7, *settings)
    np.testing.assert_array_equal(again.images, report.images)
    np.testing.assert_allclose(again.activation, report.activation)
    with pytest.raises(NetatlasError, match="out of range"):
        ws.facets("", 10, *settings)
