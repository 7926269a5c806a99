"""`datasets` on disk, written by the `datasets` library itself: save_to_disk folders (a Dataset and a
DatasetDict) and the hub converter's Parquet layout (``default/<split>/0000.parquet``). Rows, pixels,
labels, class names, splits, lazy opening, a truncated Arrow file, and the CLI."""

from __future__ import annotations

import pickle

import datasets as hf
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from netatlas.backend.arrow_images import ArrowImageReader, arrow_dataset
from netatlas.backend.datasets import DatasetSource, load_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.cli import main
from tests.shard_builders import demo_logits, spread_digits, vectors

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN = 35  # of 50: the rest is the test split


@pytest.fixture(scope="module")
def digits():
    return spread_digits(50)


def hf_dataset(images: np.ndarray, labels: np.ndarray) -> hf.Dataset:
    """What a user builds: an Image feature (datasets encodes the PIL images as PNG) and a ClassLabel."""
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=CLASSES)})
    return hf.Dataset.from_dict({"image": [Image.fromarray(im) for im in images], "label": labels.tolist()},
                                features=features)


def to_parquet(ds: hf.Dataset, path) -> None:
    """One shard as the hub's Parquet converter writes it (``datasets`` embeds the image bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


@pytest.fixture
def saved(tmp_path, digits):
    """One Dataset folder: data-00000-of-00001.arrow, dataset_info.json, state.json."""
    hf_dataset(*digits).save_to_disk(str(tmp_path / "digits"))
    return tmp_path / "digits"


@pytest.fixture
def saved_dict(tmp_path, digits):
    """A DatasetDict folder: dataset_dict.json and train/, test/ (each a Dataset folder)."""
    ds = hf_dataset(*digits)
    hf.DatasetDict({"train": ds.select(range(TRAIN)), "test": ds.select(range(TRAIN, 50))}).save_to_disk(
        str(tmp_path / "dict"))
    return tmp_path / "dict"


def assert_pixels(ds, images: np.ndarray, order) -> None:
    for row, i in enumerate(order):
        np.testing.assert_array_equal(ds.read(row), images[i])
    assert ds.skipped == []


def test_a_saved_dataset_reads_every_row(saved, digits):
    images, labels = digits
    ds = load_dataset(saved)
    assert ds.name == "digits" and len(ds) == 50
    assert ds.ids == [str(i) for i in range(50)]
    assert ds.labels.tolist() == labels.tolist() and ds.classes == CLASSES
    assert "split" not in ds.meta and "split" not in ds.table()
    assert_pixels(ds, images, range(50))


def test_a_dataset_dict_gives_a_split_column(saved_dict, digits):
    images, labels = digits
    ds = load_dataset(saved_dict)
    assert ds.name == "dict" and len(ds) == 50
    assert ds.ids[:2] == ["train/0", "train/1"] and ds.ids[TRAIN:TRAIN + 2] == ["test/0", "test/1"]
    assert ds.meta["split"].tolist() == ["train"] * TRAIN + ["test"] * 15
    assert ds.table()["split"].tolist() == ds.meta["split"].tolist()
    assert ds.labels.tolist() == labels.tolist() and ds.classes == CLASSES
    assert_pixels(ds, images, range(50))
    one = load_dataset(saved_dict / "test")  # one split's folder is a Dataset of its own
    assert len(one) == 15 and one.ids[0] == "0" and "split" not in one.meta
    assert_pixels(one, images, range(TRAIN, 50))


def test_the_converter_layout_opens_with_its_splits(tmp_path, digits):
    images, labels = digits
    ds = hf_dataset(images, labels)
    to_parquet(ds.select(range(TRAIN)), tmp_path / "hub" / "default" / "train" / "0000.parquet")
    to_parquet(ds.select(range(TRAIN, 50)), tmp_path / "hub" / "default" / "test" / "0000.parquet")
    order = list(range(TRAIN, 50)) + list(range(TRAIN))  # split folders in sorted order: test, train
    for root in (tmp_path / "hub", tmp_path / "hub" / "default"):
        opened = load_dataset(root)
        assert len(opened) == 50 and opened.classes == CLASSES
        assert opened.ids[:2] == ["test/0000/0", "test/0000/1"] and opened.ids[15] == "train/0000/0"
        assert opened.meta["split"].tolist() == ["test"] * 15 + ["train"] * TRAIN
        assert opened.labels.tolist() == labels[order].tolist()
        assert_pixels(opened, images, order)
    single = load_dataset(tmp_path / "hub" / "default" / "train")  # one split: a folder of shards
    assert len(single) == TRAIN and "split" not in single.meta


README = ("---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
          "      class_label:\n        names:\n" + "".join(f"          '{i}': {n}\n" for i, n in enumerate(CLASSES))
          + "---\n# Digits\n")


@pytest.mark.parametrize("layout", ["default/train", "data"])
def test_class_names_from_the_repo_readme_above_the_shards(tmp_path, digits, layout):
    """Shards written with pyarrow alone (no features metadata): the names come from the repo's README."""
    images, labels = digits
    shard = tmp_path / "hub" / layout / "0000.parquet"
    to_parquet(hf_dataset(images, labels), shard)
    pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
    (tmp_path / "hub" / "README.md").write_text(README)
    for root in (tmp_path / "hub", tmp_path / "hub" / layout.split("/")[0]):  # the repo, data/ or default/
        opened = load_dataset(root)
        assert opened.classes == CLASSES and opened.labels.tolist() == labels.tolist()


def test_several_converter_configs_must_be_chosen(tmp_path, digits):
    ds = hf_dataset(*digits).select(range(5))
    for config in ("small", "large"):
        to_parquet(ds, tmp_path / "hub" / config / "train" / "0000.parquet")
    with pytest.raises(NetatlasError, match=r"configs large, small.*hub/large"):
        load_dataset(tmp_path / "hub")
    assert len(load_dataset(tmp_path / "hub" / "small")) == 5


def test_opening_maps_no_image_and_reads_map_each_file_once(saved_dict, digits, monkeypatch):
    images, _ = digits
    maps = []
    original = ArrowImageReader._map
    monkeypatch.setattr(ArrowImageReader, "_map", lambda self, k: maps.append(k) or original(self, k))
    ds = load_dataset(saved_dict)
    assert maps == [] and ds.skipped == []
    for row in (40, 3, 41, 0):
        ds.read(row)
    assert sorted(maps) == [0, 1]
    np.testing.assert_array_equal(ds.read(TRAIN + 5), images[TRAIN + 5])


def test_the_reader_pickles_without_its_maps_and_the_hash_is_stable(saved_dict, digits):
    images, _ = digits
    ds = load_dataset(saved_dict)
    ds.read(0)
    copy = pickle.loads(pickle.dumps(ds.read))
    assert copy._mapped == {}
    np.testing.assert_array_equal(copy(44), images[44])
    again = DatasetSource(str(saved_dict)).open()  # what a Dask worker opens
    assert again.manifest_hash == ds.manifest_hash and again.ids == ds.ids
    assert load_dataset(saved_dict / "train").manifest_hash != ds.manifest_hash


def test_column_options_and_a_lone_arrow_file(saved, digits):
    images, labels = digits
    ds = load_dataset(saved, image_column="image", label_column="label")
    assert ds.options == {"image_column": "image", "label_column": "label"}
    with pytest.raises(NetatlasError, match=r"no column 'pixels'.*image \(struct"):
        load_dataset(saved, image_column="pixels")
    lone = arrow_dataset(saved / "data-00000-of-00001.arrow")
    assert len(lone) == 50 and lone.classes == CLASSES and lone.labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(lone.read(7), images[7])


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_arrow_file_is_named_in_one_line(saved_dict, keep):
    arrow = saved_dict / "train" / "data-00000-of-00001.arrow"
    data = arrow.read_bytes()
    arrow.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(NetatlasError, match=r"train/data-00000-of-00001\.arrow .*truncated") as caught:
        load_dataset(saved_dict)
    assert "\n" not in str(caught.value)


def test_a_file_rewritten_shorter_after_opening_is_named_on_read(saved):
    ds = load_dataset(saved)
    arrow = saved / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:1000])
    with pytest.raises(NetatlasError, match=r"cannot read data-00000-of-00001\.arrow .*changed since"):
        ds.read(0)


def test_a_state_json_naming_a_missing_file(saved):
    (saved / "data-00000-of-00001.arrow").rename(saved / "elsewhere.arrow")
    with pytest.raises(NetatlasError, match=r"data-00000-of-00001\.arrow \(listed in state\.json\) is missing"):
        load_dataset(saved)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_extract_on_a_dataset_dict(saved_dict, digits, tmp_path, capsys):
    images, labels = digits
    out = tmp_path / "acts.parquet"
    code = main(["extract", "demo", str(saved_dict), "-o", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    result = pq.read_table(out)
    assert result.num_rows == 50
    assert result.column("id").to_pylist() == [f"train/{i}" for i in range(TRAIN)] + [f"test/{i}" for i in range(15)]
    np.testing.assert_array_equal(result.column("label").to_numpy(), labels)
    np.testing.assert_allclose(vectors(result, "logits"), demo_logits(images), atol=1e-5)


def test_cli_reports_a_truncated_arrow_file_in_one_line(saved, tmp_path, capsys):
    arrow = saved / "data-00000-of-00001.arrow"
    arrow.write_bytes(arrow.read_bytes()[:-100])
    code = main(["extract", "demo", str(saved), "-o", str(tmp_path / "o.parquet"),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "netatlas: error: data-00000-of-00001.arrow is cut short" in err
    assert not (tmp_path / "o.parquet").exists()


def test_the_sidebar_lists_saved_datasets_and_converter_repos_once(saved_dict, tmp_path, digits):
    from netatlas.backend.roots import AllowedRoots

    ds, repo = hf_dataset(*digits), tmp_path / "repo"
    to_parquet(ds.select(range(30)), repo / "default" / "train" / "0000.parquet")
    to_parquet(ds.select(range(30, 50)), repo / "default" / "test" / "0000.parquet")
    listed = [p.resolve() for p in AllowedRoots.of(tmp_path).datasets()]
    assert saved_dict.resolve() in listed and repo.resolve() in listed
    inside = [p for p in listed if saved_dict.resolve() in p.parents or repo.resolve() in p.parents]
    assert not inside, inside
