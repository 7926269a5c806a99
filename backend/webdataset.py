"""WebDataset .tar shards (``name-000000.tar``, ...): ``KEY.jpg|jpeg|png|webp`` with an optional ``KEY.cls``.

Opening walks the tar headers once (seeking over the data: nothing is extracted and no image byte is
read) and keeps each image's data offset and size; ``read(i)`` seeks there and decodes. The ``.cls``
members (a label as text, a few bytes each) are read on open; ``.txt``/``.json`` are ignored.

A shard's index (keys, offsets, sizes, labels) is cached in ``<cache>/tar-index/`` under its path, size,
mtime and inode, so a large set opens again without touching its headers; a shard rewritten since is
indexed afresh, and a missing, stale or unreadable cache file only costs a parse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netatlas.backend.cache import META_KEY, atomic_file, canonical_json, default_cache_dir
from netatlas.backend.datasets import DECODE_THREADS, EncodedReader, ImageDataset
from netatlas.backend.errors import NetatlasError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # preference order when a sample has several
LABEL_EXTENSION = "cls"
CLASSES_FILE = "classes.txt"
MAX_LABEL_BYTES = 64
TAIL_CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE
HEADER = struct.Struct("100s56xc188x155s12x")  # name, typeflag, prefix of a ustar/GNU/v7 header
CHECK_BATCH = 4096  # headers whose checksums are verified at once
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
NO_DATA_TYPES = (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
                 tarfile.FIFOTYPE)
INDEX_KIND = "tar-index"
INDEX_VERSION = 1  # bump when what an index holds, or how a shard is read into one, changes
INDEX_SCHEMA = pa.schema([("key", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
                          ("label", pa.int64())])
RACY_NS = 2_000_000_000  # a shard modified this recently is not cached: see _store_index


def _octal_field(width: int, capture: bool = False) -> bytes:
    """A regex for a ``width``-byte number field that tarfile's ``nti`` reads as the same octal number:
    spaces, octal digits, spaces and a NUL within the field (what comes after the NUL is ignored, as
    by ``nts``). Stricter than ``nti`` (no sign, no base-256, no field without a NUL, which every
    current writer ends them with): a header it refuses goes to tarfile, never to an error."""
    digits = rb"([0-7]*)" if capture else rb"[0-7]*"
    return rb"(?=[ 0-7]{0,%d}\x00)(?= *%s *\x00).{%d}" % (width - 1, digits, width)


# mode, uid, gid, size (group 1), mtime, chksum (group 2), then devmajor, devminor: all a header's numbers
NUMBERS = re.compile(rb".{100}" + _octal_field(8) * 3 + _octal_field(12, True) + _octal_field(12)
                     + _octal_field(8, True) + rb".{173}" + _octal_field(8) * 2, re.DOTALL)


@dataclass
class _ShardIndex:
    """One shard's samples in tar order: key, image data offset and size, label (-1: none)."""

    path: Path
    keys: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray


def find_tar_shards(path: Path) -> list[Path]:
    """The shards ``path`` names: itself when a .tar file, else the .tar files in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".tar" else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix == ".tar" and not p.name.startswith(".") and p.is_file())


def webdataset_dataset(path: Path) -> ImageDataset:
    """The samples of one .tar shard or a folder of them, in sorted shard order and tar order."""
    path = Path(path).resolve()
    files = find_tar_shards(path)
    if not files:
        raise NetatlasError(f"no .tar shards in {path}: give a WebDataset .tar file or a folder of them")
    shards = [_index_shard(f) for f in files]
    n = sum(len(s.keys) for s in shards)
    if n == 0:
        where = files[0].name if len(files) == 1 else f"the {len(files)} .tar shards in {path.name}"
        raise NetatlasError(f"no images in {where} (looked for members KEY.{', KEY.'.join(IMAGE_EXTENSIONS)}): "
                            "give WebDataset shards whose samples hold an image")
    labels = np.concatenate([s.labels for s in shards])
    ids = _ids(shards)
    classes = _classes(files[0].parent, labels)
    skipped: list[str] = []
    reader = TarImageReader(path, ids, skipped, [s.path for s in shards],
                            np.repeat(np.arange(len(shards), dtype=np.int32), [len(s.keys) for s in shards]),
                            np.concatenate([s.offsets for s in shards]), np.concatenate([s.sizes for s in shards]))
    name = path.stem if path.is_file() else path.name
    return ImageDataset(name, ids, labels, classes, _manifest_hash(shards, classes), reader, skipped,
                        decode_threads=DECODE_THREADS)


class TarImageReader(EncodedReader):
    """Image i: one seek and one read of its member's data in its shard."""

    def __init__(self, root: Path, ids: list[str], skipped: list[str], shards: list[Path], shard_of: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.shards, self.shard_of, self.offsets, self.sizes = shards, shard_of, offsets, sizes
        super().__init__(root, ids, skipped)

    def encoded(self, i: int) -> bytes:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"image {i} of {len(self.ids)}")
        path, size = self.shards[int(self.shard_of[i])], int(self.sizes[i])
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(int(self.offsets[i]))
                data = f.read(size)
        except OSError as exc:
            raise NetatlasError(f"cannot read {path.name} ({exc}): the shard is gone or unreadable; "
                                "restore it, then reopen the dataset") from exc
        if len(data) != size:
            raise NetatlasError(f"{path.name} ends inside the image of {self.ids[i]}: the shard was truncated "
                                "since it was opened; download or write it again, then reopen")
        return data


# ------------------------------------------------------------------------------------------ opening

def _index_shard(path: Path) -> _ShardIndex:
    """The cached index when the shard's stamp (path, size, mtime, inode) matches it, else a parse,
    cached for the next open."""
    try:
        before = path.stat()
    except OSError:
        return _parse_shard(path)  # it names the problem
    index = _cached_index(path, before)
    if index is None:
        index = _parse_shard(path)
        _store_index(index, before)
    return index


def _parse_shard(path: Path) -> _ShardIndex:
    """Walk the headers (the fast walk, else tarfile's), then read the few bytes of each .cls member."""
    try:
        with open(path, "rb") as f:
            walked = _walk_headers(f)
            if walked is None:
                f.seek(0)
                walked = _walk_with_tarfile(f)
            members, end = walked
            _check_tail(f, end)
            return _samples(path, f, members)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise NetatlasError(f"{path.name} is not a readable tar shard ({exc}): it may be truncated or corrupt; "
                            "download or write that shard again") from exc


def _walk_with_tarfile(f) -> tuple[dict[str, dict[str, tuple[int, int]]], int]:
    """Every header tarfile understands (pax, GNU long names, sparse files); tarfile seeks over the data."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(fileobj=f, mode="r:") as tar:
        while (info := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every header; a shard may hold 100k
            if info.isfile():
                _add_member(members, info.name, info.offset_data, info.size)
        return members, tar.offset


def _walk_headers(f) -> tuple[dict[str, dict[str, tuple[int, int]]], int] | None:
    """tarfile's walk, about 4x faster, for archives of plain ustar/GNU/v7 headers (what tarfile,
    WebDataset's TarWriter and GNU tar write for short names). It takes only headers it is sure
    tarfile reads the same way; anything else (a pax or GNU long-name header, an unknown member type,
    a number field of an unusual form, a bad checksum, a short read, an empty archive) gives None and
    tarfile walks the shard instead, so rare forms and damage keep tarfile's exact handling and messages."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    checksums = _Checksums()
    offset = 0
    while True:
        f.seek(offset)
        block = f.read(BLOCK)
        if len(block) != BLOCK:
            return None
        if not block[0] and block.count(0) == BLOCK:  # the end-of-archive marker
            return (members, offset) if offset and checksums.verify() else None
        header = _plain_header(block)
        if header is None or not checksums.add(block, header[3]):
            return None
        name, kind, size, _ = header
        if kind in FILE_TYPES:
            _add_member(members, name, offset + BLOCK, size)
            offset += BLOCK + -(-size // BLOCK) * BLOCK
        elif kind in NO_DATA_TYPES:
            offset += BLOCK
        else:
            return None


def _plain_header(block: bytes) -> tuple[str, bytes, int, int] | None:
    """(name, type, size, stored checksum) of a header as tarfile.TarInfo.frombuf reads it, or None
    where this reading could differ from tarfile's or tarfile would reject the header."""
    numbers = NUMBERS.match(block)
    if numbers is None:
        return None
    name, kind, prefix = HEADER.unpack(block)
    name, prefix = _text(name), (_text(prefix) if prefix[0] else "")  # a prefix is rare: skip decoding
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE  # a v7 folder; tarfile looks at the name before the ustar prefix, too
    return (f"{prefix}/{name}" if prefix else name), kind, int(numbers[1] or b"0", 8), int(numbers[2] or b"0", 8)


class _Checksums:
    """tarfile's (unsigned) header checksums, verified CHECK_BATCH headers at a time: summing 512 bytes
    in Python costs more than the rest of reading a header. A mismatch, even many headers back, sends
    the whole shard to tarfile, so checking late changes no result."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.stored: list[int] = []

    def add(self, block: bytes, stored: int) -> bool:
        """False when a batch this header completes holds a mismatch."""
        self.blocks.append(block)
        self.stored.append(stored)
        return len(self.blocks) < CHECK_BATCH or self.verify()

    def verify(self) -> bool:
        """Whether every header added since the last verify has the checksum it stores."""
        blocks, stored = self.blocks, self.stored
        self.blocks, self.stored = [], []
        if not blocks:
            return True
        table = np.frombuffer(b"".join(blocks), dtype=np.uint8).reshape(len(blocks), BLOCK)
        sums = 256 + table.sum(axis=1, dtype=np.int64) - table[:, 148:156].sum(axis=1, dtype=np.int64)
        return bool(np.array_equal(sums, np.asarray(stored, dtype=np.int64)))


def _text(field: bytes) -> str:
    """A text field as tarfile's ``nts`` reads it with tarfile.open's default encoding and errors."""
    return field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")


def _add_member(members: dict[str, dict[str, tuple[int, int]]], name: str, offset: int, size: int) -> None:
    """The first member of each key and extension wins, as in tar order."""
    key, ext = _split_member(name)
    if ext:
        members.setdefault(key, {}).setdefault(ext, (offset, size))


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _check_tail(f, end: int) -> None:
    """After the last member only the end-of-archive zero blocks may follow: anything else is damage
    that tarfile stops at silently (a truncated or garbled header after the first)."""
    f.seek(0, 2)
    size = f.tell()
    if end >= size:
        raise ValueError("the end-of-archive marker is missing (the file was cut short)")
    f.seek(end)
    while chunk := f.read(TAIL_CHUNK):
        if chunk.count(0) != len(chunk):
            raise ValueError(f"damaged header at byte {end}")


def _samples(path: Path, f, members: dict[str, dict[str, tuple[int, int]]]) -> _ShardIndex:
    """Samples with an image, in tar order; each label read from its .cls member."""
    keys, offsets, sizes, labels = [], [], [], []
    f.seek(0, 2)
    size = f.tell()
    for key, parts in members.items():
        ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if ext is None:
            continue
        offset, length = parts[ext]
        if offset + length > size:
            raise ValueError(f"{key}.{ext} runs past the end of the file")
        keys.append(key)
        offsets.append(offset)
        sizes.append(length)
        labels.append(_read_label(path, f, key, *parts[LABEL_EXTENSION]) if LABEL_EXTENSION in parts else -1)
    return _ShardIndex(path, keys, np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                       np.asarray(labels, dtype=np.int64))


def _read_label(path: Path, f, key: str, offset: int, size: int) -> int:
    f.seek(offset)
    text = f.read(min(size, MAX_LABEL_BYTES)).decode("utf-8", "replace").strip()
    try:
        return max(int(text), -1)
    except ValueError:
        raise NetatlasError(f"{key}.cls in {path.name} holds {text!r}: a .cls member must be an integer class "
                            f"index (names go in a {CLASSES_FILE} beside the shards, one per line)") from None


def _ids(shards: list[_ShardIndex]) -> list[str]:
    """The sample keys when unique across shards (WebDataset's own ids), else ``<shard stem>/<key>``."""
    keys = [k for s in shards for k in s.keys]
    if len(set(keys)) == len(keys):
        return keys
    return [f"{s.path.stem}/{k}" for s in shards for k in s.keys]


def _classes(folder: Path, labels: np.ndarray) -> list[str]:
    """``classes.txt`` beside the shards (one name per line), else the label values as strings."""
    try:
        names = [line.strip() for line in (folder / CLASSES_FILE).read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
    except (OSError, UnicodeDecodeError):
        names = []
    if names:
        return names
    return [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []


def _manifest_hash(shards: list[_ShardIndex], classes: list[str]) -> str:
    """Shard names, sizes and mtimes, plus the member index (keys, offsets, sizes, labels) and class names."""
    digest = hashlib.sha256(b"webdataset-v1\0")
    digest.update("\0".join(classes).encode())
    for s in shards:
        st = s.path.stat()
        digest.update(f"\n{s.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        digest.update("\0".join(s.keys).encode())
        for array in (s.offsets, s.sizes, s.labels):
            digest.update(array.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ the index cache

def _index_file(path: Path) -> Path:
    """One cache file per shard path (the stamp is checked inside it): a rewritten shard's index
    replaces the old one instead of piling up beside it."""
    name = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()
    return default_cache_dir() / INDEX_KIND / f"{name}.parquet"


def _stamp(path: Path, st: os.stat_result) -> bytes:
    """What the cached index must have been made from: this shard's path, size, mtime and inode
    (a shard replaced by a rename gets a new inode even where size and mtime repeat)."""
    return canonical_json({"version": INDEX_VERSION, "path": str(path), "size": st.st_size,
                           "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}).encode()


def _cached_index(path: Path, st: os.stat_result) -> _ShardIndex | None:
    """The index cached for the shard as ``st`` describes it, or None: absent or stale (quietly),
    unreadable or inconsistent (with a warning). Never an error: the shard can always be parsed."""
    file = _index_file(path)
    if not file.is_file():
        return None
    try:
        table = pq.ParquetFile(file, page_checksum_verification=True).read()
    except (OSError, pa.ArrowException) as exc:
        log.warning("the cached tar index %s of %s is unreadable (%s); parsing the shard", file, path.name, exc)
        return None
    if (table.schema.metadata or {}).get(META_KEY) != _stamp(path, st):
        return None  # the shard was rewritten, moved or replaced, or the index is of an older version
    index = _index_from_table(path, table, st.st_size)
    if index is None:
        log.warning("the cached tar index %s of %s is inconsistent; parsing the shard", file, path.name)
    return index


def _index_from_table(path: Path, table: pa.Table, shard_size: int) -> _ShardIndex | None:
    """The index a cache table holds, or None when its columns cannot be one of this shard's."""
    if not table.schema.remove_metadata().equals(INDEX_SCHEMA) or any(c.null_count for c in table.columns):
        return None
    offsets, sizes, labels = (np.array(table.column(c).to_numpy(), dtype=np.int64)
                              for c in ("offset", "size", "label"))
    if ((offsets < 0) | (sizes < 0) | (offsets + sizes > shard_size) | (labels < -1)).any():
        return None
    return _ShardIndex(path, table.column("key").to_pylist(), offsets, sizes, labels)


def _store_index(index: _ShardIndex, before: os.stat_result) -> None:
    """Cache a parse, unless the shard changed while it was parsed or was modified within RACY_NS:
    a file system stamps mtimes in ticks (up to 2 s on some), so a same-size rewrite within the tick
    of the parse could keep the stamp; an index is only stored once such a rewrite is impossible.
    A cache that cannot be written costs the next open a parse, never this one."""
    try:
        after = index.path.stat()
    except OSError:
        return
    if _stamp(index.path, after) != _stamp(index.path, before) or after.st_mtime_ns > time.time_ns() - RACY_NS:
        return
    table = pa.table([pa.array(index.keys, pa.string()), index.offsets, index.sizes, index.labels],
                     schema=INDEX_SCHEMA.with_metadata({META_KEY: _stamp(index.path, after)}))
    file = _index_file(index.path)
    try:
        with atomic_file(file) as f:
            pq.write_table(table, f, compression="zstd", write_page_checksum=True)
    except (OSError, pa.ArrowException) as exc:
        log.warning("cannot cache the tar index of %s in %s (%s); the next open parses it again",
                    index.path.name, file, exc)
