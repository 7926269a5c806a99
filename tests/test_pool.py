"""Sessions share one model, dataset and Workspace per distinct content; results are computed once."""

from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import param
import pytest
import torch
from safetensors.torch import save_file

from netatlas.app.config import AppConfig
from netatlas.app.loader_view import LoaderView
from netatlas.app.page import build_views
from netatlas.app.state import POOL, AppState
from netatlas.backend import workspace as workspace_module
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.errors import NetatlasError
from netatlas.backend.pool import SharedPool, model_key, open_workspace, parse_bytes
from netatlas.backend.workspace import Workspace
from tests.backend_support import run_coroutine


def test_one_build_per_key_shared_until_the_last_release():
    pool, built, dropped = SharedPool(max_bytes=1 << 30), [], []
    first = pool.acquire("k", lambda: built.append(1) or object(), on_drop=lambda: dropped.append(1))
    second = pool.acquire("k", lambda: built.append(1) or object())
    assert first.value is second.value and built == [1] and pool.holders("k") == 2
    first.release()
    first.release()                          # idempotent: one holder gives back one claim
    assert pool.holders("k") == 1 and not dropped
    second.release()
    assert len(pool) == 0 and dropped == [1]
    assert pool.acquire("k", object).value is not first.value   # built afresh after the drop


def test_a_second_caller_waits_for_the_build_in_flight():
    pool, started, finish, builds = SharedPool(max_bytes=1 << 30), threading.Event(), threading.Event(), []

    def slow_build():
        builds.append(1)
        started.set()
        finish.wait(5)
        return object()

    handles = []
    first = threading.Thread(target=lambda: handles.append(pool.acquire("k", slow_build)))
    first.start()
    started.wait(5)
    second = threading.Thread(target=lambda: handles.append(pool.acquire("k", slow_build)))
    second.start()
    time.sleep(0.2)
    assert len(handles) == 0                 # the second caller is waiting, not building
    finish.set()
    first.join(5), second.join(5)
    assert builds == [1] and handles[0].value is handles[1].value
    assert not pool._building                # no lock kept for a key nobody is building


def test_a_failed_build_leaves_no_lock_and_can_be_retried():
    pool = SharedPool(max_bytes=1 << 30)
    with pytest.raises(ZeroDivisionError):
        pool.acquire("k", lambda: 1 / 0)
    assert not pool._building and len(pool) == 0
    assert pool.acquire("k", lambda: 42).value == 42


def test_the_memory_budget_refuses_with_a_message_and_keeps_what_is_held():
    pool = SharedPool(max_bytes=1000)
    held = pool.acquire("a", lambda: bytearray(600), nbytes=len)
    with pytest.raises(NetatlasError, match="memory budget.*--max-memory"):
        pool.acquire("b", lambda: bytearray(600), nbytes=len)
    built = []
    with pytest.raises(NetatlasError, match="memory budget"):   # refused from the estimate, before building
        pool.acquire("c", lambda: built.append(1), estimate=500)
    assert not built and pool.held_bytes == 600 and pool.holders("a") == 1
    held.release()
    assert pool.acquire("b", lambda: bytearray(600), nbytes=len).value is not None


@pytest.mark.parametrize("text, expected", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29),
                                            ("1024", 1024), ("2 GB", 2 << 30)])
def test_memory_sizes(text, expected):
    assert parse_bytes(text) == expected
    with pytest.raises(ValueError):
        parse_bytes("lots")


def _open(pool: SharedPool, path, cache: ResultCache, dataset=None):
    key = model_key(path, None, None, None, False, "cpu")
    return open_workspace(pool, key, lambda: load_checkpoint(path), dataset or demo_dataset(), cache, "cpu")


def test_two_sessions_share_one_workspace_and_the_last_release_frees_the_model(tmp_path):
    pool, cache = SharedPool(max_bytes=1 << 30), ResultCache(tmp_path)
    a, b = _open(pool, demo_checkpoint(), cache), _open(pool, demo_checkpoint(), cache)
    assert a.value is b.value and a.value.loaded is b.value.loaded and a.value.dataset is b.value.dataset
    assert len(pool) == 3                    # one model, one dataset, one workspace
    a.release()
    assert len(pool) == 3
    b.release()
    assert len(pool) == 0 and pool.held_bytes == 0
    assert _open(pool, demo_checkpoint(), cache).value.loaded is not a.value.loaded


def test_a_changed_checkpoint_on_disk_is_a_new_model(tmp_path):
    pool, cache = SharedPool(max_bytes=1 << 30), ResultCache(tmp_path / "cache")
    path = tmp_path / demo_checkpoint().name
    shutil.copy(demo_checkpoint(), path)
    shutil.copy(demo_checkpoint().with_suffix(".json"), path.with_suffix(".json"))
    before = _open(pool, path, cache)
    state = load_checkpoint(path).model.state_dict()
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path))
    after = _open(pool, path, cache)
    assert after.value is not before.value and after.value.loaded is not before.value.loaded
    assert after.value.loaded.checkpoint_hash != before.value.loaded.checkpoint_hash
    first = next(iter(after.value.loaded.model.parameters()))
    assert torch.allclose(first, next(iter(before.value.loaded.model.parameters())) + 1)


def test_equal_manifests_are_one_dataset_and_another_manifest_is_another_workspace(tmp_path):
    pool, cache = SharedPool(max_bytes=1 << 30), ResultCache(tmp_path)
    a, b = _open(pool, demo_checkpoint(), cache, demo_dataset()), _open(pool, demo_checkpoint(), cache, demo_dataset())
    assert a.value.dataset is b.value.dataset
    other = demo_dataset()
    other.manifest_hash = "another"
    c = _open(pool, demo_checkpoint(), cache, other)
    assert c.value is not a.value and c.value.loaded is a.value.loaded and c.value.dataset is other


def test_a_result_asked_for_twice_at_once_is_computed_once(tmp_path, monkeypatch):
    pool, cache = SharedPool(max_bytes=1 << 30), ResultCache(tmp_path)
    ws = _open(pool, demo_checkpoint(), cache).value
    passes, trees = [], []
    extract, build = workspace_module.resumable_pass, workspace_module.build_cluster_tree
    monkeypatch.setattr(workspace_module, "resumable_pass", lambda *a, **k: passes.append(1) or extract(*a, **k))
    monkeypatch.setattr(workspace_module, "build_cluster_tree",
                        lambda *a, **k: trees.append(1) or time.sleep(0.3) or build(*a, **k))
    results = []
    threads = [threading.Thread(target=lambda: results.append(ws.cluster_tree())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert passes == [1] and trees == [1] and len(results) == 3
    np.testing.assert_array_equal(results[0].order, results[2].order)


def _session(tmp_path) -> tuple[AppState, LoaderView]:
    state = AppState(AppConfig(cache_dir=tmp_path))
    return state, LoaderView(state)


def test_page_sessions_share_the_model_but_not_their_selections(tmp_path):
    (s1, l1), (s2, l2) = _session(tmp_path), _session(tmp_path)
    run_coroutine(l1.load())
    run_coroutine(l2.load())
    assert isinstance(s1.workspace, Workspace) and s1.workspace is s2.workspace
    assert s1.workspace.loaded is s2.workspace.loaded
    v1, v2 = build_views(s1), build_views(s2)
    v1["Map"].selection = np.arange(5)
    v1["DendroMap"].highlight_images(np.arange(5))
    assert v2["Map"].selection is None and v2["DendroMap"].external is None
    held = len(POOL)
    s1.release()
    assert len(POOL) == held                 # the other session still holds it
    s2.release()
    assert len(POOL) == held - 3


def test_a_session_closed_while_loading_gives_its_workspace_back(tmp_path):
    state, loader = _session(tmp_path)
    held = len(POOL)
    state.release()                          # the page closed before its Load finished
    run_coroutine(loader.load())
    assert state.workspace is None and len(POOL) == held


def test_the_first_neurons_pass_also_captures_what_the_dendromap_clusters(tmp_path, monkeypatch):
    """Opening a model costs one pass over the dataset, not one for the Neurons tab and one for the DendroMap."""
    passes = []
    extract = workspace_module.resumable_pass
    monkeypatch.setattr(workspace_module, "resumable_pass",
                        lambda *a, **k: passes.append(list(a[3])) or extract(*a, **k))
    state = AppState(AppConfig(cache_dir=tmp_path))
    neurons = build_views(state)["Neurons"]
    ws = Workspace(load_checkpoint(demo_checkpoint()), demo_dataset(), ResultCache(tmp_path), "cpu")
    with param.parameterized.discard_events(state):   # the views are driven by hand below
        state.workspace = ws
    run_coroutine(neurons._on_workspace(SimpleNamespace(new=ws)))
    assert passes == [[neurons.layer.value, ws.representation_layer()]]
    assert neurons.values is not None and neurons.values.shape == (len(ws.dataset), 64)
    ws.cluster_tree()
    assert len(passes) == 1                               # the tree reads the representation from the cache
    with param.parameterized.discard_events(neurons.layer):
        neurons.layer.value = "blocks.0"                  # a layer chosen later is extracted alone
    run_coroutine(neurons._on_layer())
    assert passes[1:] == [["blocks.0"]]
