"""Extraction sharded over a 2-worker Dask LocalCluster equals the single-process pass, bit for bit."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from netatlas.backend.activations import extract_activations
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import npz_dataset
from netatlas.backend.demo import demo_checkpoint, demo_digits
from netatlas.backend.sharded import (MANIFEST, ModelSpec, connect, extract_sharded, parts_to_activations,
                                      read_manifest, read_parts, shard_ranges)
from netatlas.cli import main
from netatlas.backend.errors import NetatlasError

N_IMAGES = 1030  # not a multiple of the batch size: the last shard ends on a short batch
BATCH = 100
LAYERS = ["blocks.1", "pool"]


@pytest.mark.parametrize("n, shards, batch", [(1, 4, 256), (1030, 4, 100), (5000, 4, 256), (5000, 3, 7),
                                              (300, 10, 100), (256, 2, 256), (257, 2, 256)])
def test_shard_ranges_cover_everything_on_batch_boundaries(n, shards, batch):
    ranges = shard_ranges(n, shards, batch)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))  # contiguous
    assert all(start < stop for start, stop in ranges)                             # none empty
    assert all(start % batch == 0 for start, _ in ranges)                          # batch-aligned
    assert len(ranges) == min(shards, -(-n // batch))
    assert shard_ranges(0, shards, batch) == []


@pytest.fixture(scope="module")
def client():
    with connect("local") as client:
        yield client


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    images, labels, _ = demo_digits()
    path = tmp_path_factory.mktemp("sharded") / "digits.npz"
    np.savez(path, images=images[:N_IMAGES], labels=labels[:N_IMAGES])
    return path


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(demo_checkpoint())


@pytest.fixture(scope="module")
def single(loaded, digits_npz):
    """The reference: one pass in this process over the same images and batches."""
    return extract_activations(loaded.model, npz_dataset(digits_npz), loaded.preprocessing, LAYERS,
                               batch_size=BATCH, device="cpu")


@pytest.fixture(scope="module")
def parts(client, loaded, digits_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts")
    calls = []
    manifest = extract_sharded(ModelSpec.from_loaded(loaded), digits_npz, LAYERS, "mean", out, client,
                               BATCH, progress=lambda done, total: calls.append((done, total)))
    return out, manifest, calls


def test_parts_equal_the_single_process_pass(parts, single, digits_npz):
    out, manifest, calls = parts
    assert len(manifest["parts"]) == 4 and manifest["rows"] == N_IMAGES   # 2 shards per worker
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [p["file"] for p in manifest["parts"]]
    assert calls[-1] == (N_IMAGES, N_IMAGES) and [d for d, _ in calls] == sorted(d for d, _ in calls)

    frame = read_parts(out)
    assert frame.npartitions == 4
    frame = frame.compute().sort_values("index")
    dataset = npz_dataset(digits_npz)
    np.testing.assert_array_equal(frame["index"].to_numpy(), np.arange(N_IMAGES))
    assert frame["id"].tolist() == dataset.ids
    np.testing.assert_array_equal(frame["label"].to_numpy(), dataset.labels)
    assert "prediction" not in frame.columns          # the client decides whether the model predicts
    assert np.array_equal(np.stack(frame["logits"].to_numpy()), single.logits)
    assert np.array_equal(np.stack(frame["blocks.1"].to_numpy()), single.layers["blocks.1"])

    acts = parts_to_activations(out, LAYERS)
    assert np.array_equal(acts.logits, single.logits)
    assert acts.predictions is None and acts.index is None
    for name in LAYERS:
        assert acts.layers[name].dtype == np.float32 and np.array_equal(acts.layers[name], single.layers[name])


def test_a_folder_without_manifest_is_never_read(parts, tmp_path):
    out, manifest, _ = parts
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    assert read_manifest(partial) is not None
    (partial / manifest["parts"][2]["file"]).unlink()  # a part lost: incomplete
    assert read_manifest(partial) is None
    shutil.copytree(out, partial, dirs_exist_ok=True)
    (partial / MANIFEST).unlink()                       # interrupted before the manifest
    assert read_manifest(partial) is None
    for read in (read_parts, lambda d: parts_to_activations(d, LAYERS)):
        with pytest.raises(NetatlasError, match="no complete sharded extraction"):
            read(partial)


def test_workspace_on_dask_writes_the_usual_cache_entries(client, loaded, digits_npz, single, tmp_path,
                                                          monkeypatch):
    from netatlas.backend import workspace as workspace_module

    dataset = npz_dataset(digits_npz)
    cache = ResultCache(tmp_path / "cache")
    on_dask = workspace_module.Workspace(loaded, dataset, cache, "cpu", BATCH, dask=client,
                                         source=str(digits_npz))
    acts = on_dask.activations(["pool"])
    assert np.array_equal(acts.logits, single.logits) and np.array_equal(acts.layers["pool"], single.layers["pool"])
    inputs = on_dask._pass_inputs(["pool"], "mean")
    assert read_manifest(cache.parts_dir("activations-parts", inputs), inputs) is not None

    def no_pass(*args, **kwargs):
        raise AssertionError("the single-machine Workspace recomputed instead of reading the cache")

    monkeypatch.setattr(workspace_module, "resumable_pass", no_pass)
    again = workspace_module.Workspace(loaded, dataset, cache, "cpu", BATCH).activations(["pool"])
    assert np.array_equal(again.logits, single.logits)
    assert np.array_equal(again.predictions, single.predictions)
    assert np.array_equal(again.layers["pool"], single.layers["pool"])


def test_a_rerun_keeps_the_parts_already_written(parts, client, loaded, digits_npz, single, tmp_path):
    """A killed client or a lost worker costs only the missing shards: the others are kept, not rewritten."""
    out, manifest, _ = parts
    rerun = tmp_path / "rerun"
    shutil.copytree(out, rerun)
    lost = manifest["parts"][1]["file"]
    (rerun / lost).unlink()
    (rerun / MANIFEST).unlink()                          # killed before the manifest was written
    (rerun / ".tmp-half-written.parquet").write_bytes(b"PAR1 cut")
    before = {p.name: p.stat().st_mtime_ns for p in rerun.glob("part-*.parquet")}
    again = extract_sharded(ModelSpec.from_loaded(loaded), digits_npz, LAYERS, "mean", rerun, client, BATCH)
    after = {p.name: p.stat().st_mtime_ns for p in rerun.glob("part-*.parquet")}
    assert {name: after[name] for name in before} == before and lost in after   # only the lost part ran
    assert not list(rerun.glob(".tmp-*")) and again["parts"] == manifest["parts"]
    acts = parts_to_activations(rerun, LAYERS)
    assert np.array_equal(acts.logits, single.logits) and np.array_equal(acts.layers["blocks.1"],
                                                                         single.layers["blocks.1"])


def test_an_image_folder_is_decoded_in_the_daemonic_workers(client, loaded, tmp_path):
    """Workers may not start DataLoader processes; the Workspace finds the folder's path itself."""
    from PIL import Image

    from netatlas.backend.datasets import load_dataset
    from netatlas.backend.workspace import Workspace

    images, labels, _ = demo_digits()
    for i in range(90):
        (tmp_path / "digits" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(tmp_path / "digits" / str(labels[i]) / f"{i:03d}.png")
    dataset = load_dataset(tmp_path / "digits")
    single = extract_activations(loaded.model, dataset, loaded.preprocessing, ["pool"], batch_size=16, device="cpu")
    acts = Workspace(loaded, dataset, ResultCache(tmp_path / "cache"), "cpu", 16, dask=client).activations(["pool"])
    assert np.array_equal(acts.logits, single.logits) and np.array_equal(acts.layers["pool"], single.layers["pool"])


def test_a_worker_error_surfaces_as_netatlas_error(client, loaded, digits_npz, tmp_path):
    with pytest.raises(NetatlasError, match="no module named 'nope'"):
        extract_sharded(ModelSpec.from_loaded(loaded), digits_npz, ["nope"], "mean", tmp_path, client, BATCH)
    assert read_manifest(tmp_path) is None


def test_a_changed_checkpoint_is_refused_on_the_worker(loaded):
    spec = ModelSpec.from_loaded(loaded)
    assert spec.load().identity == loaded.identity
    with pytest.raises(NetatlasError, match="differs from the client's"):
        dataclasses.replace(spec, checkpoint_hash="0" * 64).load()


def test_an_unreachable_scheduler_is_a_netatlas_error():
    with pytest.raises(NetatlasError, match="cannot reach a Dask scheduler"):
        with connect("tcp://127.0.0.1:1", timeout=1):
            pass


def test_the_single_machine_path_imports_no_dask():
    code = ("import sys, netatlas.cli, netatlas.backend.workspace, netatlas.backend.sharded; "
            "sys.exit(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_extract_on_dask_equals_the_single_process_cli(client, digits_npz, tmp_path, capsys, monkeypatch):
    import contextlib

    from netatlas.backend import sharded

    addresses = []

    @contextlib.contextmanager
    def module_cluster(address):  # the module's LocalCluster: connect("local") is tested by the fixture
        addresses.append(address)
        yield client

    monkeypatch.setattr(sharded, "connect", module_cluster)
    outputs = {}
    for mode, extra in (("single", []), ("dask", ["--dask", "local"])):
        outputs[mode] = tmp_path / f"{mode}.parquet"
        code = main(["extract", "demo", str(digits_npz), "--layers", "blocks.3", "--batch-size", str(BATCH),
                     "--device", "cpu", "-o", str(outputs[mode]), "--cache-dir", str(tmp_path / mode), *extra])
        assert code == 0, capsys.readouterr().err
    single, on_dask = (pq.read_table(outputs[m]) for m in ("single", "dask"))
    assert single.num_rows == N_IMAGES and single.column_names == on_dask.column_names
    assert single.equals(on_dask)
    assert addresses == ["local"]
    assert any((tmp_path / "dask" / "activations-parts").glob(f"*/{MANIFEST}"))


def test_parquet_column_options_reach_the_workers(client, loaded, tmp_path):
    """A table opened with --image-column/--label-column is opened the same way on every worker."""
    import pyarrow as pa

    from netatlas.backend.datasets import load_dataset
    from netatlas.backend.workspace import Workspace
    from tests.shard_builders import encode, spread_digits, write_shards

    images, labels = spread_digits(80)
    table = pa.table({"thumb": pa.array([encode(im[::2, ::2]) for im in images]),  # found first by default
                      "pixels": pa.array([encode(im) for im in images]), "target": pa.array(labels)})
    write_shards(tmp_path / "digits", table, 2)
    dataset = load_dataset(tmp_path / "digits", image_column="pixels", label_column="target")
    single = extract_activations(loaded.model, dataset, loaded.preprocessing, ["pool"], batch_size=16, device="cpu")
    acts = Workspace(loaded, dataset, ResultCache(tmp_path / "cache"), "cpu", 16, dask=client).activations(["pool"])
    assert np.array_equal(acts.logits, single.logits) and np.array_equal(acts.layers["pool"], single.layers["pool"])
