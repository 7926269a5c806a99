"""Workspace + ResultCache: cached activations are reused when valid and recomputed when not."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import netatlas.backend.workspace as workspace_module
from tests.backend_support import SMALL_PRE, preprocess_by_hand
from netatlas.backend.cache import META_KEY, ResultCache, arrow_to_vectors, cache_key, vectors_to_arrow
from netatlas.backend.workspace import Workspace

LAYERS = ["stem.0", "fc"]


class ExtractSpy:
    """Wraps the Workspace's pass (resumable_pass), recording the layers each call asked for."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[list[str]] = []
        self._real = workspace_module.resumable_pass
        monkeypatch.setattr(workspace_module, "resumable_pass", self)

    def __call__(self, model, dataset, preprocessing, layers=(), *args, **kwargs):
        self.calls.append(list(layers))
        return self._real(model, dataset, preprocessing, layers, *args, **kwargs)


def forbid_extraction(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a pass ran although the cache holds the result")
    monkeypatch.setattr(workspace_module, "resumable_pass", refuse)


@pytest.fixture
def workspace(small_loaded, small_dataset, cache_dir):
    return Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu", batch_size=8)


@pytest.fixture
def direct(small_model, small_images):
    """The reference: stem conv output (mean and max per channel) and logits by a plain forward."""
    images, _ = small_images
    x = preprocess_by_hand(images, SMALL_PRE.mean, SMALL_PRE.std)
    with torch.no_grad():
        stem = small_model.stem[0](x)
        blocks0 = small_model.blocks[0](small_model.stem(x))
        logits = small_model(x)
    return {"stem.0": stem.mean(dim=(2, 3)).numpy(), "stem.0/max": stem.amax(dim=(2, 3)).numpy(),
            "blocks.0": blocks0.mean(dim=(2, 3)).numpy(), "fc": logits.numpy(), "logits": logits.numpy()}


def activation_files(cache_dir):
    return sorted((cache_dir / "activations").glob("*.parquet"))


def layer_file(workspace, layer, reduction="mean"):
    return workspace.cache.path("activations", workspace._inputs(layer=layer, reduction=reduction))


def outputs_file(workspace):
    return workspace.cache.path("outputs", workspace._inputs())


def assert_matches_direct(acts, direct, layers=LAYERS):
    np.testing.assert_allclose(acts.logits, direct["logits"], atol=1e-5)
    np.testing.assert_array_equal(acts.predictions, direct["logits"].argmax(1))
    for name in layers:
        np.testing.assert_allclose(acts.layers[name], direct[name], atol=1e-5)


def assert_valid_cache_file(path, kind, workspace, **extra):
    table = pq.read_table(path)
    stored = json.loads(table.schema.metadata[META_KEY])
    assert stored == json.loads(json.dumps({"kind": kind, **workspace._inputs(**extra)}))
    return table


def test_second_call_reads_the_cache(workspace, direct, monkeypatch):
    spy = ExtractSpy(monkeypatch)
    first = workspace.activations(LAYERS)
    assert spy.calls == [LAYERS]
    assert_matches_direct(first, direct)
    assert len(activation_files(workspace.cache.root)) == 2
    assert outputs_file(workspace).exists()

    forbid_extraction(monkeypatch)
    progress = []
    second = workspace.activations(LAYERS, progress=lambda done, total: progress.append((done, total)))
    np.testing.assert_array_equal(second.logits, first.logits)
    np.testing.assert_array_equal(second.predictions, first.predictions)
    for name in LAYERS:
        np.testing.assert_array_equal(second.layers[name], first.layers[name])
        assert second.layers[name].dtype == np.float32
    assert progress == [(30, 30)]


def test_a_new_workspace_on_the_same_inputs_reads_the_cache(workspace, small_checkpoint, small_dataset,
                                                            direct, monkeypatch):
    from tests.backend_support import DEMO_ARCH, SMALL_KWARGS
    from netatlas.backend.checkpoint import load_checkpoint

    workspace.activations(LAYERS)
    forbid_extraction(monkeypatch)
    reloaded = load_checkpoint(small_checkpoint, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)
    again = Workspace(reloaded, small_dataset, ResultCache(workspace.cache.root), device="cpu")
    assert_matches_direct(again.activations(LAYERS), direct)


def test_new_layer_computes_only_that_layer(workspace, direct, monkeypatch):
    spy = ExtractSpy(monkeypatch)
    workspace.activations(["fc"])
    both = workspace.activations(["fc", "blocks.0"])
    assert spy.calls == [["fc"], ["blocks.0"]]
    assert_matches_direct(both, direct, ["fc", "blocks.0"])
    assert list(both.layers) == ["fc", "blocks.0"]
    # and now both are cached
    forbid_extraction(monkeypatch)
    assert_matches_direct(workspace.activations(["blocks.0", "fc"]), direct, ["fc", "blocks.0"])


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_layer_file_is_recomputed(workspace, direct, monkeypatch, damage):
    workspace.activations(LAYERS)
    path = layer_file(workspace, "stem.0")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not parquet" * 50)
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")

    spy = ExtractSpy(monkeypatch)
    acts = workspace.activations(LAYERS)
    assert spy.calls == [["stem.0"]]
    assert_matches_direct(acts, direct)
    table = assert_valid_cache_file(path, "activations", workspace, layer="stem.0", reduction="mean")
    np.testing.assert_allclose(arrow_to_vectors(table.column("values")), direct["stem.0"], atol=1e-5)


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_outputs_file_is_recomputed(workspace, direct, monkeypatch, damage):
    workspace.activations(["fc"])
    path = outputs_file(workspace)
    data = path.read_bytes()
    path.write_bytes(b"\x00\xff" * 300 if damage == "garbage" else data[:-20])
    spy = ExtractSpy(monkeypatch)
    acts = workspace.activations(["fc"])
    assert spy.calls == [[]]  # only logits were missing
    assert_matches_direct(acts, direct, ["fc"])
    table = assert_valid_cache_file(path, "outputs", workspace)
    np.testing.assert_allclose(arrow_to_vectors(table.column("logits")), direct["logits"], atol=1e-5)


def test_file_written_for_other_inputs_is_recomputed(workspace, direct, monkeypatch):
    workspace.activations(LAYERS)
    path = layer_file(workspace, "stem.0")
    # a well-formed parquet with plausible values, but whose stored inputs are for another checkpoint
    foreign_inputs = {"kind": "activations", **workspace._inputs(layer="stem.0", reduction="mean"),
                      "checkpoint": "0" * 64}
    fake = pa.table({"index": pa.array(np.arange(30)), "values": vectors_to_arrow(np.zeros((30, 4)))})
    fake = fake.replace_schema_metadata({META_KEY: json.dumps(foreign_inputs, sort_keys=True).encode()})
    pq.write_table(fake, path)
    assert pq.read_table(path).num_rows == 30

    spy = ExtractSpy(monkeypatch)
    acts = workspace.activations(LAYERS)
    assert spy.calls == [["stem.0"]]
    assert_matches_direct(acts, direct)
    assert_valid_cache_file(path, "activations", workspace, layer="stem.0", reduction="mean")


def test_file_without_inputs_metadata_is_recomputed(workspace, direct, monkeypatch):
    workspace.activations(["fc"])
    path = layer_file(workspace, "fc")
    pq.write_table(pa.table({"index": pa.array(np.arange(30)),
                             "values": vectors_to_arrow(np.ones((30, 5)))}), path)
    spy = ExtractSpy(monkeypatch)
    assert_matches_direct(workspace.activations(["fc"]), direct, ["fc"])
    assert spy.calls == [["fc"]]


def test_no_temp_files_left_behind(workspace, cache_dir, monkeypatch):
    workspace.activations(LAYERS)
    workspace.activations(["blocks.0"], "max")
    names = [p.name for p in cache_dir.rglob("*")]
    assert not [n for n in names if n.startswith(".tmp-")], names
    assert sum(n.endswith(".parquet") for n in names) == 4  # outputs + stem.0, fc (mean) + blocks.0 (max)

    # a write that fails halfway removes its temp file and leaves the old entry alone
    def broken_write(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(pq, "write_table", broken_write)
    cache = ResultCache(cache_dir)
    with pytest.raises(OSError, match="disk full"):
        cache.write("activations", {"x": 1}, pa.table({"values": vectors_to_arrow(np.ones((2, 2)))}),
                    float_columns=("values",))
    assert not list(cache_dir.rglob(".tmp-*"))
    assert not cache.path("activations", {"x": 1}).exists()


def test_different_reduction_has_a_different_key(workspace, direct, monkeypatch):
    mean_inputs = workspace._inputs(layer="stem.0", reduction="mean")
    max_inputs = workspace._inputs(layer="stem.0", reduction="max")
    assert cache_key(mean_inputs) != cache_key(max_inputs)
    assert layer_file(workspace, "stem.0", "mean") != layer_file(workspace, "stem.0", "max")

    spy = ExtractSpy(monkeypatch)
    mean = workspace.activations(["stem.0"], "mean")
    peak = workspace.activations(["stem.0"], "max")
    assert spy.calls == [["stem.0"], ["stem.0"]]
    np.testing.assert_allclose(mean.layers["stem.0"], direct["stem.0"], atol=1e-5)
    np.testing.assert_allclose(peak.layers["stem.0"], direct["stem.0/max"], atol=1e-5)
    assert peak.reduction == "max"
    assert layer_file(workspace, "stem.0", "mean").exists() and layer_file(workspace, "stem.0", "max").exists()


def test_other_preprocessing_or_dataset_has_a_different_key(small_loaded, small_dataset, cache_dir):
    from dataclasses import replace

    from netatlas.backend.preprocessing import Preprocessing

    a = Workspace(small_loaded, small_dataset, ResultCache(cache_dir), device="cpu")
    other_pre = replace(small_loaded, preprocessing=Preprocessing(size=(12, 12), grayscale=True,
                                                                  mean=(0.5,), std=(0.3,)))
    b = Workspace(other_pre, small_dataset, ResultCache(cache_dir), device="cpu")
    other_data = replace(small_dataset, manifest_hash="f" * 64)
    c = Workspace(small_loaded, other_data, ResultCache(cache_dir), device="cpu")
    paths = {w.cache.path("outputs", w._inputs()) for w in (a, b, c)}
    assert len(paths) == 3


def test_result_cache_round_trip_and_get_or_compute(cache_dir):
    cache = ResultCache(cache_dir)
    values = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    computed = []

    def compute():
        computed.append(1)
        return pa.table({"values": vectors_to_arrow(values)})

    first = cache.get_or_compute("thing", {"a": 1, "b": [1, 2]}, compute, float_columns=("values",))
    second = cache.get_or_compute("thing", {"b": [1, 2], "a": 1}, compute, float_columns=("values",))
    assert computed == [1]
    np.testing.assert_array_equal(arrow_to_vectors(second.column("values")), values)
    np.testing.assert_array_equal(arrow_to_vectors(first.column("values")), values)
    assert cache.read("thing", {"a": 2, "b": [1, 2]}) is None


def test_default_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NETATLAS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert ResultCache().root == tmp_path / "elsewhere"
