"""WebDataset .tar shards: samples, labels, class names, header-only indexing, the manifest hash,
extraction equal to a PNG folder, bad input and the CLI."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from netatlas.backend import webdataset
from netatlas.backend.activations import extract_activations
from netatlas.backend.datasets import load_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.webdataset import webdataset_dataset
from netatlas.cli import main
from tests.shard_builders import decode, demo_logits, encode, png_folder, spread_digits, vectors, write_tar

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits():
    return spread_digits(60)


def samples(images, labels, fmt=lambda i: "png"):
    """WebDataset samples: an image (.png or .jpg), its .cls, and a .txt and .json that are ignored."""
    out = []
    for i, (image, label) in enumerate(zip(images, labels)):
        ext = fmt(i)
        out.append({ext: encode(image, "JPEG" if ext == "jpg" else "PNG"), "cls": str(label).encode(),
                    "txt": b"a caption", "json": json.dumps({"i": i}).encode()})
    return out


@pytest.fixture
def shards(tmp_path, digits):
    """Three shards of 20 samples; every fourth image a JPEG."""
    images, labels = digits
    all_samples = samples(images, labels, lambda i: "jpg" if i % 4 == 3 else "png")
    keys = [f"sample{i:06d}" for i in range(60)]
    for s in range(3):
        write_tar(tmp_path / "wds" / f"digits-{s:06d}.tar", all_samples[s * 20:(s + 1) * 20], keys[s * 20:(s + 1) * 20])
    return tmp_path / "wds", all_samples, keys


def test_samples_labels_and_ids(shards, digits):
    folder, all_samples, keys = shards
    images, labels = digits
    ds = load_dataset(folder)
    assert ds.name == "wds" and len(ds) == 60
    assert ds.ids == keys
    assert ds.labels.tolist() == labels.tolist()
    assert ds.classes == [str(d) for d in range(10)]
    for i, sample in enumerate(all_samples):
        image = ds.read(i)
        ext = "jpg" if i % 4 == 3 else "png"
        np.testing.assert_array_equal(image, decode(sample[ext]))
        if ext == "png":
            np.testing.assert_array_equal(image, images[i])
    assert ds.skipped == []
    copy = pickle.loads(pickle.dumps(ds.read))
    np.testing.assert_array_equal(copy(59), ds.read(59))


def test_classes_txt_and_a_single_shard(shards, digits):
    folder, _, keys = shards
    (folder / "classes.txt").write_text("\n".join(NAMES) + "\n")
    ds = load_dataset(folder)
    assert ds.classes == NAMES
    assert [ds.class_name(int(l)) for l in ds.labels] == [NAMES[l] for l in digits[1]]
    one = load_dataset(folder / "digits-000001.tar")
    assert one.name == "digits-000001" and one.ids == keys[20:40] and one.classes == NAMES


def test_keys_repeated_across_shards_get_the_shard_stem(tmp_path, digits):
    images, labels = digits
    for s in range(2):
        write_tar(tmp_path / "w" / f"p-{s:06d}.tar", samples(images[:2], labels[:2]), ["a", "b"])
    assert load_dataset(tmp_path / "w").ids == ["p-000000/a", "p-000000/b", "p-000001/a", "p-000001/b"]


def test_samples_without_cls_are_unlabeled(tmp_path, digits):
    images, _ = digits
    webp = [{"webp": encode(im, "WEBP")} for im in images[:4]]
    write_tar(tmp_path / "u.tar", webp, list("abcd"))
    ds = load_dataset(tmp_path / "u.tar")
    assert ds.labels.tolist() == [-1] * 4 and ds.classes == [] and not ds.labeled
    np.testing.assert_array_equal(ds.read(2), decode(webp[2]["webp"]))  # WebP keeps 3 channels


class CountingFile(io.FileIO):
    """A file that counts the bytes read through it."""

    total = 0

    def read(self, size=-1):
        data = super().read(size)
        CountingFile.total += len(data)
        return data


def test_opening_reads_headers_not_image_data(tmp_path, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, size=(60, 64, 64, 3), dtype=np.uint8)  # ~12 kB PNGs
    encoded = [{"png": encode(im), "cls": b"1"} for im in noise]
    path = write_tar(tmp_path / "big.tar", encoded, [f"{i:04d}" for i in range(60)])
    CountingFile.total = 0
    monkeypatch.setattr(webdataset, "open", lambda p, mode="rb", buffering=-1: CountingFile(p, "r"),
                        raising=False)
    ds = webdataset_dataset(path)
    image_bytes = sum(len(s["png"]) for s in encoded)
    # a header (and tarfile's one-byte check) per member, the end-of-archive block, the .cls bytes, the tail
    headers_and_labels = 120 * 513 + 512 + 60 * 1 + 20 * 512
    assert CountingFile.total <= headers_and_labels < image_bytes / 10
    assert os.path.getsize(path) > image_bytes
    CountingFile.total = 0
    np.testing.assert_array_equal(ds.read(7), noise[7])
    assert CountingFile.total == len(encoded[7]["png"])  # one seek, one read of exactly that member


def test_manifest_hash_changes_with_a_rewritten_shard(shards, digits):
    folder, all_samples, keys = shards
    first = load_dataset(folder).manifest_hash
    assert load_dataset(folder).manifest_hash == first
    write_tar(folder / "digits-000002.tar", all_samples[40:60][::-1], keys[40:60][::-1])
    assert load_dataset(folder).manifest_hash != first


def test_extraction_equals_the_same_images_as_a_png_folder(tmp_path, shards, digits, small_loaded):
    images, labels = digits
    folder = load_dataset(png_folder(tmp_path / "pngs", images, labels))
    tar = load_dataset(shards[0])
    order = [folder.ids.index(f"c{label}/{i:04d}.png") for i, label in enumerate(labels)]
    png_rows = [i for i in range(60) if i % 4 != 3]  # JPEG samples decode to other pixels
    model, pre = small_loaded.model, small_loaded.preprocessing
    want = extract_activations(model, folder, pre, ["blocks.1"], batch_size=16, device="cpu")
    got = extract_activations(model, tar, pre, ["blocks.1"], batch_size=16, device="cpu")
    np.testing.assert_array_equal(got.logits[png_rows], want.logits[order][png_rows])
    np.testing.assert_array_equal(got.layers["blocks.1"][png_rows], want.layers["blocks.1"][order][png_rows])


def test_an_undecodable_member_has_no_result_and_is_counted(tmp_path, digits, small_loaded):
    images, labels = digits
    bad = samples(images[:10], labels[:10])
    bad[4]["png"] = b"\x89PNG\r\n\x1a\n" + os.urandom(300)
    write_tar(tmp_path / "bad.tar", bad, [f"k{i}" for i in range(10)])
    ds = load_dataset(tmp_path / "bad.tar")
    acts = extract_activations(small_loaded.model, ds, small_loaded.preprocessing, batch_size=4, device="cpu")
    assert ds.skipped == ["k4"]
    assert acts.rows().tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    want = extract_activations(small_loaded.model, load_dataset(tmp_path / "bad.tar"), small_loaded.preprocessing,
                               batch_size=1, device="cpu")          # batch of one: no neighbour can differ
    np.testing.assert_allclose(acts.logits, want.logits, atol=1e-5)
    assert ds.read(4).max() == 0


def test_a_tar_with_no_images(tmp_path):
    write_tar(tmp_path / "text.tar", [{"txt": b"hello", "cls": b"1"}], ["a"])
    with pytest.raises(NetatlasError, match=r"no images in text.tar \(looked for members KEY.jpg"):
        load_dataset(tmp_path / "text.tar")


@pytest.mark.parametrize("damage", ["cut-in-data", "cut-in-header", "no-end-marker", "garbled-header"])
def test_a_truncated_or_corrupt_shard_is_named(shards, damage):
    path = shards[0] / "digits-000001.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    data = bytearray(path.read_bytes())
    second = members[1].offset  # the header of the second member
    last = members[-1].offset_data + -(-members[-1].size // 512) * 512
    if damage == "cut-in-data":
        data = data[: members[20].offset_data + 100]
    elif damage == "cut-in-header":
        data = data[: second + 200]
    elif damage == "no-end-marker":
        data = data[:last]  # every member whole, the zero blocks that end an archive gone
    else:
        data[second: second + 100] = os.urandom(100)
    path.write_bytes(bytes(data))
    with pytest.raises(NetatlasError, match="digits-000001.tar is not a readable tar shard"):
        load_dataset(shards[0])


def test_a_cls_that_is_not_an_integer(tmp_path, digits):
    write_tar(tmp_path / "c.tar", [{"png": encode(digits[0][0]), "cls": b"cat"}], ["a"])
    with pytest.raises(NetatlasError, match=r"a.cls in c.tar holds 'cat'.*classes.txt"):
        load_dataset(tmp_path / "c.tar")


def test_a_folder_without_tar_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetatlasError, match="no .tar shards"):
        webdataset_dataset(tmp_path / "empty")
    with pytest.raises(NetatlasError, match="not one"):
        load_dataset(tmp_path / "empty", label_column="label")


def test_cli_extract_on_a_tar_folder(shards, tmp_path, digits, capsys):
    images, labels = digits
    folder, all_samples, keys = shards
    out = tmp_path / "acts.parquet"
    code = main(["extract", "demo", str(folder), "-o", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    assert "60 images" in capsys.readouterr().out
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == keys
    np.testing.assert_array_equal(table.column("label").to_numpy(), labels)
    decoded = np.stack([decode(s["jpg" if i % 4 == 3 else "png"]) for i, s in enumerate(all_samples)])
    np.testing.assert_allclose(vectors(table, "logits"), demo_logits(decoded), atol=1e-5)
