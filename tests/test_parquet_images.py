"""Parquet image tables in the Hugging Face hub's layout: rows, labels, class names, lazy row-group reads,
the manifest hash, extraction equal to a PNG folder, bad input, the CLI and the sidebar's list."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from netatlas.backend.activations import extract_activations
from netatlas.backend.cache import ResultCache
from netatlas.backend.datasets import DatasetSource, load_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.parquet_images import ParquetImageReader, parquet_dataset
from netatlas.backend.roots import AllowedRoots
from netatlas.backend.sharded import _worker_dataset, portable_source
from netatlas.backend.workspace import Workspace
from netatlas.cli import main
from tests.shard_builders import (decode, demo_logits, encode, image_table, png_folder, spread_digits, vectors,
                                  write_shards, write_tar)

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits():
    return spread_digits(60)


@pytest.fixture
def hub(tmp_path, digits):
    """data/test-*.parquet (1 shard) and data/train-*.parquet (2 shards); every third image a JPEG."""
    images, labels = digits
    encoded = [encode(im, "JPEG" if i % 3 == 2 else "PNG") for i, im in enumerate(images)]
    paths = [f"c{label}/{i:04d}.png" for i, label in enumerate(labels)]
    table = image_table(encoded, labels, paths, CLASSES)
    write_shards(tmp_path / "hub" / "data", table.slice(0, 45), 2, "train")
    write_shards(tmp_path / "hub" / "data", table.slice(45), 1, "test")
    return tmp_path / "hub", encoded, paths


def test_hub_layout_with_splits_reads_every_row(hub, digits):
    root, encoded, paths = hub
    images, labels = digits
    ds = load_dataset(root)
    order = list(range(45, 60)) + list(range(45))  # test-* sorts before train-*
    assert ds.name == "hub" and len(ds) == 60
    assert ds.ids == [paths[i] for i in order]
    assert ds.labels.tolist() == labels[order].tolist()
    assert ds.classes == CLASSES
    assert ds.meta["split"].tolist() == ["test"] * 15 + ["train"] * 45
    assert ds.table()["split"].tolist() == ds.meta["split"].tolist()
    for row, i in enumerate(order):
        image = ds.read(row)
        np.testing.assert_array_equal(image, decode(encoded[i]))
        if i % 3 != 2:  # PNG: exactly the original digit
            np.testing.assert_array_equal(image, images[i])
    assert ds.skipped == []


def test_a_single_file_and_a_flat_folder_of_shards(tmp_path, digits):
    images, labels = digits
    table = image_table([encode(im) for im in images], labels)
    write_shards(tmp_path / "flat", table, 3)
    single = tmp_path / "one.parquet"
    pq.write_table(table, single, row_group_size=7)
    for ds in (load_dataset(tmp_path / "flat"), load_dataset(single)):
        assert len(ds) == 60 and ds.labels.tolist() == labels.tolist()
        assert "split" not in ds.meta  # one split only
        np.testing.assert_array_equal(ds.read(59), images[59])
    assert load_dataset(single).ids[:2] == ["one/0", "one/1"]  # no paths: <shard stem>/<row>
    assert load_dataset(tmp_path / "flat").ids[20] == "train-00001-of-00003/0"


@pytest.mark.parametrize("where, nesting", [("beside", False), ("beside", True), ("above", False)])
def test_class_names_from_dataset_info_json(tmp_path, digits, where, nesting):
    images, labels = digits
    write_shards(tmp_path / "ds" / "data", image_table([encode(im) for im in images], labels), 2)
    features = {"features": {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}}
    folder = tmp_path / "ds" / "data" if where == "beside" else tmp_path / "ds"
    (folder / "dataset_info.json").write_text(json.dumps({"default": features} if nesting else features))
    ds = load_dataset(tmp_path / "ds")
    assert ds.classes == CLASSES
    assert [ds.class_name(int(l)) for l in ds.labels] == [CLASSES[l] for l in labels]


def test_class_names_from_readme_yaml(tmp_path, digits):
    images, labels = digits
    write_shards(tmp_path / "ds" / "data", image_table([encode(im) for im in images], labels), 1)
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(CLASSES))
    (tmp_path / "ds" / "README.md").write_text(
        "---\nlicense: mit\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n"
        f"    dtype:\n      class_label:\n        names:\n{names}\n  splits:\n  - name: train\n---\n# Digits\n")
    assert load_dataset(tmp_path / "ds").classes == CLASSES


def test_schema_metadata_wins_and_label_values_are_the_fallback(tmp_path, digits):
    images, labels = digits
    encoded = [encode(im) for im in images]
    pq.write_table(image_table(encoded, labels, classes=CLASSES), tmp_path / "meta.parquet")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"features": {"label": {"names": list("abcdefghij")}}}))
    assert load_dataset(tmp_path / "meta.parquet").classes == CLASSES
    (tmp_path / "plain").mkdir()
    pq.write_table(image_table(encoded, labels), tmp_path / "plain" / "x.parquet")
    assert load_dataset(tmp_path / "plain" / "x.parquet").classes == [str(d) for d in range(10)]
    pq.write_table(image_table(encoded, None), tmp_path / "plain" / "x.parquet")
    unlabeled = load_dataset(tmp_path / "plain" / "x.parquet")
    assert unlabeled.labels.tolist() == [-1] * 60 and unlabeled.classes == [] and not unlabeled.labeled


def test_raw_binary_images_and_chosen_columns(tmp_path, digits):
    images, labels = digits
    table = pa.table({"digit": pa.array(labels), "pixels": pa.array([encode(im) for im in images], pa.binary()),
                      "name": pa.array([CLASSES[l] for l in labels]), "writer": pa.array(np.arange(60) % 7)})
    pq.write_table(table, tmp_path / "raw.parquet", row_group_size=8)
    found = load_dataset(tmp_path / "raw.parquet")  # image column found by type; no label/labels column
    assert found.labels.tolist() == [-1] * 60
    np.testing.assert_array_equal(found.read(11), images[11])
    chosen = load_dataset(tmp_path / "raw.parquet", image_column="pixels", label_column="digit")
    assert chosen.labels.tolist() == labels.tolist() and chosen.options == {"image_column": "pixels",
                                                                           "label_column": "digit"}
    assert chosen.manifest_hash != found.manifest_hash  # another label column: another dataset
    named = load_dataset(tmp_path / "raw.parquet", label_column="name")  # strings: sorted names
    assert named.classes == sorted(CLASSES)
    assert [named.class_name(int(l)) for l in named.labels] == [CLASSES[l] for l in labels]


def test_ids_fall_back_to_rows_when_paths_repeat(tmp_path, digits):
    images, labels = digits
    encoded = [encode(im) for im in images]
    pq.write_table(image_table(encoded, labels, ["same.png"] * 60), tmp_path / "dup.parquet")
    assert load_dataset(tmp_path / "dup.parquet").ids == [f"dup/{i}" for i in range(60)]
    paths = [f"{i}.png" for i in range(60)]
    paths[7] = None
    pq.write_table(image_table(encoded, labels, paths), tmp_path / "null.parquet")
    assert load_dataset(tmp_path / "null.parquet").ids[7] == "null/7"


# ------------------------------------------------------------------------------ lazy reading

@pytest.fixture
def reads(monkeypatch):
    """Every column pyarrow is asked to read from a ParquetFile, and each image row-group read."""
    log = {"columns": [], "row_groups": []}
    for method in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        original = getattr(pq.ParquetFile, method)

        def spy(self, *args, _original=original, **kwargs):
            log["columns"].append(tuple(kwargs.get("columns") or ("<all>",)))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(pq.ParquetFile, method, spy)
    original_group = ParquetImageReader.read_row_group

    def count(self, g):
        log["row_groups"].append(g)
        return original_group(self, g)
    monkeypatch.setattr(ParquetImageReader, "read_row_group", count)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read_table reads whole tables"))
    return log


def test_opening_reads_no_image_bytes_and_a_row_reads_one_row_group(tmp_path, digits, reads):
    images, labels = digits
    paths = [f"{i}.png" for i in range(60)]
    write_shards(tmp_path / "ds", image_table([encode(im) for im in images], labels, paths), 3, row_group_size=4)
    ds = load_dataset(tmp_path / "ds")  # 3 shards x 5 row groups of 4 rows
    assert ds.ids == paths
    assert all("image.bytes" not in cols and "image" not in cols and "<all>" not in cols
               for cols in reads["columns"]), reads["columns"]
    assert reads["row_groups"] == []
    reads["columns"].clear()
    np.testing.assert_array_equal(ds.read(33), images[33])  # shard 1 (rows 20..39), group 3 (32..35)
    assert reads["row_groups"] == [8] and reads["columns"] == [("image.bytes",)]
    np.testing.assert_array_equal(ds.read(35), images[35])  # same row group: from the LRU
    assert reads["row_groups"] == [8]


def test_sequential_batches_read_each_row_group_once(tmp_path, digits, reads):
    from tests.backend_support import SMALL_PRE

    images, labels = digits
    write_shards(tmp_path / "ds", image_table([encode(im) for im in images], labels), 2, row_group_size=3)
    ds = load_dataset(tmp_path / "ds")
    got = torch.cat([x for _, x in ds.batches(SMALL_PRE, batch_size=16)])
    assert got.shape == (60, 1, 12, 12)
    assert sorted(reads["row_groups"]) == list(range(20))  # 2 shards x 10 groups, each read once


def test_reader_pickles_without_its_cache(tmp_path, digits):
    images, labels = digits
    pq.write_table(image_table([encode(im) for im in images], labels), tmp_path / "x.parquet", row_group_size=5)
    ds = load_dataset(tmp_path / "x.parquet")
    ds.read(3)
    copy = pickle.loads(pickle.dumps(ds.read))
    assert len(copy._cache) == 0
    np.testing.assert_array_equal(copy(42), images[42])


# ------------------------------------------------------------------------------ manifest hash

def test_manifest_hash_changes_with_a_rewritten_shard_only(tmp_path, digits):
    images, labels = digits
    table = image_table([encode(im) for im in images], labels)
    shards = write_shards(tmp_path / "ds", table, 3)
    first = load_dataset(tmp_path / "ds").manifest_hash
    assert load_dataset(tmp_path / "ds").manifest_hash == first
    shards[1].touch()  # a new mtime, same bytes: the same dataset
    assert load_dataset(tmp_path / "ds").manifest_hash == first
    flipped = [encode(im) for im in images[20:40][::-1]]  # shard 1 rewritten with its images reversed
    pq.write_table(image_table(flipped, labels[20:40][::-1]), shards[1], row_group_size=10)
    assert load_dataset(tmp_path / "ds").manifest_hash != first


# ------------------------------------------------------------------------------ extraction

def test_extraction_equals_the_same_images_as_a_png_folder(tmp_path, digits, small_loaded):
    images, labels = digits
    folder = load_dataset(png_folder(tmp_path / "pngs", images, labels))
    paths = [f"c{label}/{i:04d}.png" for i, label in enumerate(labels)]
    write_shards(tmp_path / "pq" / "data", image_table([encode(im) for im in images], labels, paths), 3)
    table = load_dataset(tmp_path / "pq")
    order = [folder.ids.index(i) for i in table.ids]  # the folder sorts by class subfolder
    model, pre = small_loaded.model, small_loaded.preprocessing
    want = extract_activations(model, folder, pre, ["blocks.0", "pool"], batch_size=16, device="cpu")
    got = Workspace(small_loaded, table, ResultCache(tmp_path / "cache"), "cpu", 16).activations(["blocks.0", "pool"])
    np.testing.assert_array_equal(got.logits, want.logits[order])
    for layer in ("blocks.0", "pool"):
        np.testing.assert_array_equal(got.layers[layer], want.layers[layer][order])
    assert table.labels.tolist() == folder.labels[order].tolist()


def test_an_undecodable_row_has_no_result_and_is_counted_during_extraction(tmp_path, digits, small_loaded):
    images, labels = digits
    encoded = [encode(im) for im in images]
    encoded[17] = b"\x89PNG\r\n\x1a\n not really"
    pq.write_table(image_table(encoded, labels), tmp_path / "bad.parquet", row_group_size=6)
    ds = load_dataset(tmp_path / "bad.parquet")
    assert ds.skipped == []  # nothing decoded on open
    acts = extract_activations(small_loaded.model, ds, small_loaded.preprocessing, batch_size=8, device="cpu")
    assert ds.skipped == ["bad/17"]
    assert acts.rows().tolist() == [i for i in range(len(ds)) if i != 17] and len(acts.logits) == len(ds) - 1
    image = ds.read(17)                                  # shown (if ever) as black; never a result
    assert image.max() == 0 and image.shape == (8, 8)
    assert ds.skipped == ["bad/17"]  # counted once


# ------------------------------------------------------------------------------ bad input

def test_no_image_column_lists_the_columns(tmp_path):
    pq.write_table(pa.table({"x": [1.0, 2.0], "label": [0, 1]}), tmp_path / "t.parquet")
    with pytest.raises(NetatlasError, match=r"no image column \(its columns: x \(double\), label \(int64\)\).*"
                                            r"--image-column"):
        load_dataset(tmp_path / "t.parquet")


def test_wrong_column_options_name_the_columns(tmp_path, digits):
    images, labels = digits
    pq.write_table(image_table([encode(im) for im in images[:3]], labels[:3]), tmp_path / "t.parquet")
    with pytest.raises(NetatlasError, match=r"no column 'pixels'.*image \(struct.*label \(int64\)"):
        load_dataset(tmp_path / "t.parquet", image_column="pixels")
    with pytest.raises(NetatlasError, match="column 'label' of t.parquet holds int64, not images"):
        load_dataset(tmp_path / "t.parquet", image_column="label")
    with pytest.raises(NetatlasError, match="no column 'target'.*--label-column"):
        load_dataset(tmp_path / "t.parquet", label_column="target")
    with pytest.raises(NetatlasError, match="Parquet tables"):
        load_dataset("demo", image_column="image")


def test_a_truncated_shard_is_named(tmp_path, digits):
    images, labels = digits
    shards = write_shards(tmp_path / "ds", image_table([encode(im) for im in images], labels), 3)
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(NetatlasError, match="train-00002-of-00003.parquet is not a readable Parquet file.*"
                                            "truncated"):
        load_dataset(tmp_path / "ds")


def test_a_shard_corrupted_after_opening_is_named_on_read(tmp_path, digits):
    images, labels = digits
    shards = write_shards(tmp_path / "ds", image_table([encode(im) for im in images], labels), 2)
    ds = load_dataset(tmp_path / "ds")
    data = shards[1].read_bytes()
    shards[1].write_bytes(b"\0" * 64 + data[64:])  # row groups overwritten, footer intact
    with pytest.raises(NetatlasError, match="row group 0 of train-00001-of-00002.parquet"):
        ds.read(30)


def test_an_image_folder_with_a_results_table_stays_an_image_folder(tmp_path, digits):
    images, labels = digits
    png_folder(tmp_path / "pngs", images[:5], labels[:5])
    pq.write_table(pa.table({"index": [0, 1], "logits": [[0.5], [0.25]]}), tmp_path / "pngs" / "acts.parquet")
    ds = load_dataset(tmp_path / "pngs")
    assert len(ds) == 5 and ds.ids[0].endswith(".png")
    (tmp_path / "tables").mkdir()
    pq.write_table(pa.table({"index": [0, 1]}), tmp_path / "tables" / "t.parquet")
    with pytest.raises(NetatlasError, match="no image column"):  # no images beside it: the table was meant
        load_dataset(tmp_path / "tables")


def test_a_folder_without_shards(tmp_path):
    (tmp_path / "hub" / "data").mkdir(parents=True)
    (tmp_path / "hub" / "README.md").write_text("# nothing here yet\n")
    with pytest.raises(NetatlasError, match=r"no readable images .*\.parquet or \.tar shards"):
        load_dataset(tmp_path / "hub")
    with pytest.raises(NetatlasError, match="no .parquet shards"):
        parquet_dataset(tmp_path / "hub")


# ------------------------------------------------------------------------------ Dask, CLI, sidebar

def test_column_options_travel_to_workers(tmp_path, digits, monkeypatch, small_loaded):
    images, labels = digits
    table = pa.table({"pixels": pa.array([encode(im) for im in images]), "target": pa.array(labels)})
    pq.write_table(table, tmp_path / "raw.parquet")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("raw.parquet", image_column="pixels", label_column="target")
    source = portable_source(Workspace(small_loaded, ds, device="cpu", source="raw.parquet")._dataset_source())
    assert source == DatasetSource(str(tmp_path / "raw.parquet"), "pixels", "target")
    on_worker = _worker_dataset(source)  # what each Dask worker opens
    assert on_worker.manifest_hash == ds.manifest_hash
    assert on_worker.labels.tolist() == labels.tolist()


def test_cli_extract_on_a_parquet_folder(tmp_path, digits, capsys):
    images, labels = digits
    table = pa.table({"target": pa.array(labels), "pixels": pa.array([encode(im) for im in images])})
    write_shards(tmp_path / "ds", table, 2)
    out = tmp_path / "acts.parquet"
    code = main(["extract", "demo", str(tmp_path / "ds"), "--image-column", "pixels", "--label-column", "target",
                 "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    result = pq.read_table(out)
    assert result.num_rows == 60
    assert result.column("id").to_pylist()[:2] == ["train-00000-of-00002/0", "train-00000-of-00002/1"]
    np.testing.assert_array_equal(result.column("label").to_numpy(), labels)
    np.testing.assert_allclose(vectors(result, "logits"), demo_logits(images), atol=1e-5)


def test_cli_reports_a_missing_image_column_with_the_option(tmp_path, capsys):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    code = main(["extract", "demo", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "o.parquet"),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "netatlas: error: t.parquet has no image column" in err and "--image-column" in err
    assert "Traceback" not in err and not (tmp_path / "o.parquet").exists()


def test_the_sidebar_lists_a_shard_folder_once(tmp_path, digits):
    images, labels = digits
    table = image_table([encode(im) for im in images], labels)
    write_shards(tmp_path / "hub" / "data", table, 3)
    write_shards(tmp_path / "flat", table, 2)
    pq.write_table(table, tmp_path / "single.parquet")
    pq.write_table(pa.table({"logits": [[0.1, 0.2]]}), tmp_path / "acts.parquet")  # a result, not images
    sample = {"png": encode(images[0]), "cls": b"3"}
    for i in range(3):
        write_tar(tmp_path / "wds" / f"d-{i:06d}.tar", [sample], [f"k{i}"])
    write_tar(tmp_path / "one.tar", [sample], ["k"])
    listed = AllowedRoots.of(tmp_path).datasets()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in listed) == [
        "flat", "hub", "one.tar", "single.parquet", "wds"]
    for path in listed:
        assert len(load_dataset(path)) > 0


@pytest.mark.parametrize("argv", [["extract", "demo", "d", "-o", "x"], ["paths", "demo", "d", "-o", "x"],
                                  ["featviz", "demo", "d", "--unit", "0", "-o", "x"], ["cluster", "demo", "d"],
                                  ["embed", "demo", "d"], ["serve", "--data", "d"]])
def test_every_dataset_command_takes_the_column_options(argv):
    from netatlas.app.config import AppConfig
    from netatlas.cli import build_parser

    args = build_parser().parse_args([*argv, "--image-column", "img", "--label-column", "y"])
    assert (args.data, args.image_column, args.label_column) == ("d", "img", "y")
    if argv[0] == "serve":
        config = AppConfig.from_args(args)
        assert (config.image_column, config.label_column) == ("img", "y")
