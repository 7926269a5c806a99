"""The cached member index of WebDataset tar shards: a second open reads it instead of the headers and
gives the same dataset; a rewritten or replaced shard is indexed afresh; a bad cache file (or none that
can be written) only costs a parse. And the header walk: netatlas' own equals tarfile's, and every form
it does not take (pax, GNU long names) goes to tarfile."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from netatlas.backend import webdataset
from netatlas.backend.datasets import load_dataset
from tests.shard_builders import decode, encode, spread_digits, write_tar

AN_HOUR_NS = 3600 * 10**9


@pytest.fixture(scope="module")
def digits():
    return spread_digits(30)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NETATLAS_CACHE_DIR", str(folder))
    return folder / webdataset.INDEX_KIND


def age(path, hours=1):
    """Set the shard's mtime back: a shard modified in the last 2 s is not cached (see _store_index)."""
    stamp = time.time_ns() - hours * AN_HOUR_NS
    os.utime(path, ns=(stamp, stamp))
    return path


def samples(images, labels):
    return [{"png": encode(image), "cls": str(label).encode(), "txt": b"caption"}
            for image, label in zip(images, labels)]


@pytest.fixture
def shards(tmp_path, digits):
    """Three aged shards of 10 samples each."""
    images, labels = digits
    folder = tmp_path / "wds"
    for s in range(3):
        rows = slice(10 * s, 10 * (s + 1))
        age(write_tar(folder / f"d-{s:06d}.tar", samples(images[rows], labels[rows]),
                      [f"k{i:04d}" for i in range(30)][rows]))
    return folder


def no_parse(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path.name} was parsed, not read from the cache")
    monkeypatch.setattr(webdataset, "_parse_shard", fail)


def assert_same(got, want):
    assert got.ids == want.ids and got.classes == want.classes and got.name == want.name
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.manifest_hash == want.manifest_hash
    for i in range(len(want)):
        np.testing.assert_array_equal(got.read(i), want.read(i))


def test_the_second_open_reads_the_cached_index(shards, cache, digits, monkeypatch):
    parsed = load_dataset(shards)
    assert len(list(cache.glob("*.parquet"))) == 3
    np.testing.assert_array_equal(np.stack([parsed.read(i) for i in range(30)]), digits[0])
    no_parse(monkeypatch)
    cached = load_dataset(shards)
    assert_same(cached, parsed)
    assert cached.ids == [f"k{i:04d}" for i in range(30)] and cached.labels.tolist() == digits[1].tolist()


def test_a_fresh_shard_is_not_cached_until_its_mtime_is_old_enough(tmp_path, cache, digits):
    """Within a file system's timestamp tick a same-size rewrite could keep the mtime, so an index of a
    shard modified in the last 2 s would not be safe to reuse."""
    path = write_tar(tmp_path / "new.tar", samples(*[a[:3] for a in digits]), ["a", "b", "c"])
    load_dataset(path)
    assert not cache.exists() or not list(cache.glob("*.parquet"))
    load_dataset(age(path))
    assert len(list(cache.glob("*.parquet"))) == 1


def test_a_rewritten_shard_is_indexed_again(shards, cache, digits, monkeypatch):
    images, labels = digits
    before = load_dataset(shards)
    path = shards / "d-000001.tar"
    write_tar(path, samples(images[10:21], labels[10:21]), [f"k{i:04d}" for i in range(10, 20)] + ["new"])
    age(path, hours=2)
    after = load_dataset(shards)
    assert after.ids == before.ids[:20] + ["new"] + before.ids[20:]
    np.testing.assert_array_equal(after.read(20), images[20])
    assert after.manifest_hash != before.manifest_hash
    assert len(list(cache.glob("*.parquet"))) == 3  # the shard's new index replaced its old one
    no_parse(monkeypatch)
    assert_same(load_dataset(shards), after)


def test_a_touched_shard_of_the_same_size_is_indexed_again(shards, cache, digits):
    """Same size, other labels: only the mtime tells the rewrite apart."""
    images, labels = digits
    before = load_dataset(shards)
    path = shards / "d-000002.tar"
    write_tar(path, samples(images[20:30], (labels[20:30] + 1) % 10), [f"k{i:04d}" for i in range(20, 30)])
    age(path, hours=2)
    after = load_dataset(shards)
    assert after.labels[20:].tolist() == ((labels[20:30] + 1) % 10).tolist()
    assert after.labels[:20].tolist() == before.labels[:20].tolist()


def test_a_shard_replaced_with_the_same_size_and_mtime_is_indexed_again(shards, cache, digits):
    """A shard renamed into place keeps nothing of the old file but, possibly, its size and mtime: the
    inode tells them apart."""
    images, labels = digits
    load_dataset(shards)
    path = shards / "d-000000.tar"
    old = path.stat()
    other = write_tar(shards / "tmp.part", samples(images[:10], (labels[:10] + 1) % 10),
                      [f"k{i:04d}" for i in range(10)])
    assert other.stat().st_size == old.st_size
    os.utime(other, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(other, path)
    assert load_dataset(shards).labels[:10].tolist() == ((labels[:10] + 1) % 10).tolist()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "inconsistent"])
def test_a_bad_cache_file_falls_back_to_parsing(shards, cache, damage, caplog, monkeypatch):
    parsed = load_dataset(shards)
    files = sorted(cache.glob("*.parquet"))
    victim = webdataset._index_file(shards / "d-000001.tar")
    assert victim in files
    if damage == "garbage":
        victim.write_bytes(os.urandom(2000))
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    elif damage == "empty":
        victim.write_bytes(b"")
    else:  # readable, this shard's stamp, but offsets past the end of the shard
        table = pq.read_table(victim)
        offsets = pa.array(table.column("offset").to_numpy() + 10**9)
        pq.write_table(table.set_column(1, "offset", offsets).replace_schema_metadata(table.schema.metadata), victim)
    with caplog.at_level(logging.WARNING, logger=webdataset.__name__):
        again = load_dataset(shards)
    assert_same(again, parsed)
    assert f"cached tar index {victim}" in caplog.text
    no_parse(monkeypatch)  # the parse wrote a good index over the bad one
    assert_same(load_dataset(shards), parsed)


def test_a_cache_that_cannot_be_written_never_fails_the_open(shards, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("NETATLAS_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger=webdataset.__name__):
        ds = load_dataset(shards)
    assert len(ds) == 30 and "cannot cache the tar index of d-000000.tar" in caplog.text


# ------------------------------------------------------------------------------------------ the walk

def tar_bytes(members, fmt=tarfile.USTAR_FORMAT):
    """An archive of (name, data, type) members in the given format."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime, info.uid = kind, len(data), 1_700_000_000, 1000
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def walks(data):
    """(own walk, tarfile's walk) of an archive's bytes."""
    return webdataset._walk_headers(io.BytesIO(data)), webdataset._walk_with_tarfile(io.BytesIO(data))


PLAIN = [("a.png", b"x" * 700, tarfile.REGTYPE), ("a.cls", b"3", tarfile.REGTYPE),
         ("sub", b"", tarfile.DIRTYPE), ("sub/b.png", b"y" * 512, tarfile.REGTYPE),
         ("link.png", b"", tarfile.SYMTYPE), ("sub/c.jpg", b"", tarfile.REGTYPE),
         ("d" * 90 + "/" + "e" * 60 + ".png", b"z", tarfile.REGTYPE)]  # a ustar prefix


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_own_walk_equals_tarfiles(fmt):
    members = PLAIN if fmt == tarfile.USTAR_FORMAT else PLAIN[:-1]  # GNU and pax write long names otherwise
    own, reference = walks(tar_bytes(members, fmt))
    assert own == reference
    prefixed = {"d" * 90 + "/" + "e" * 60} if fmt == tarfile.USTAR_FORMAT else set()
    assert set(own[0]) == {"a", "sub/b", "sub/c"} | prefixed


LONG = "f" * 120 + ".png"
ACCENTED = "caf\u00e9-\u00e9t\u00e9.png"


@pytest.mark.parametrize("name, fmt, declined", [(LONG, tarfile.PAX_FORMAT, True), (LONG, tarfile.GNU_FORMAT, True),
                                                 (ACCENTED, tarfile.PAX_FORMAT, True),
                                                 (ACCENTED, tarfile.GNU_FORMAT, False)])
def test_names_a_plain_header_cannot_hold_go_to_tarfile(tmp_path, name, fmt, declined, digits, cache):
    """A pax header or a GNU long name: the own walk declines and tarfile reads the shard. (GNU format
    writes an accented short name as UTF-8 in a plain header: the own walk reads it as tarfile does.)"""
    png = encode(digits[0][0])
    data = tar_bytes([(name, png, tarfile.REGTYPE), ("b.png", b"", tarfile.REGTYPE)], fmt)
    own, reference = walks(data)
    key = name.partition(".")[0]
    assert (own is None) == declined and key in reference[0]
    assert declined or own == reference
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    ds = load_dataset(age(path))
    assert ds.ids == [key, "b"]
    np.testing.assert_array_equal(ds.read(0), decode(png))


def patched(data, start, value):
    """The archive with bytes ``start:`` of its first header replaced and its checksum made right again."""
    block = bytearray(data[:512])
    block[start:start + len(value)] = value
    block[148:156] = b"%06o\0 " % (256 + sum(block[:148]) + sum(block[156:]))
    return bytes(block) + data[512:]


@pytest.mark.parametrize("start, value, declined", [
    (100, b"  644 \0\0", False),     # mode: spaces around the digits
    (136, b"14513261230\0", False),   # mtime: eleven digits and a NUL
    (124, b"1274\0garbage", False),   # size: what follows the NUL is ignored, as tarfile ignores it
    (100, b"garbage\0", True),        # tarfile rejects it ("invalid header")
    (108, b"00001750", True),         # uid without a NUL, tarfile reads it: left to tarfile
    (136, b"14513261230 ", True),     # mtime ended by a space: left to tarfile
    (108, b"\x80\0\0\0\0\0\x03\xe8", True),  # base-256: left to tarfile
])
def test_number_fields_the_own_walk_takes_are_read_as_tarfile_reads_them(start, value, declined):
    data = patched(tar_bytes(PLAIN[:2]), start, value)
    own = webdataset._walk_headers(io.BytesIO(data))
    if declined:
        assert own is None
    else:
        assert own is not None and own == webdataset._walk_with_tarfile(io.BytesIO(data))


def test_a_bad_checksum_goes_to_tarfile():
    data = bytearray(tar_bytes(PLAIN[:2]))
    second = 512 + 1024  # the second header, after the first member's two data blocks
    data[second + 100] ^= 1  # the mode field: the checksum no longer matches
    assert webdataset._walk_headers(io.BytesIO(bytes(data))) is None
