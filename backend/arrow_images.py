"""`datasets` folders as ``save_to_disk`` writes them, read with pyarrow alone (no `datasets` needed).

A Dataset folder holds Arrow IPC *stream* files (``data-00000-of-00001.arrow``), ``state.json`` (which
names them, in order) and ``dataset_info.json`` (the features: Image, ClassLabel names); a DatasetDict
folder holds ``dataset_dict.json`` and one such folder per split. A lone ``.arrow`` stream file opens too.

Files are memory-mapped and read by record batch: opening walks the batches' metadata (zero-copy, so no
image bytes are read and none decoded), reads the label column and, when small, the image paths.
A process's first read of a file walks that metadata again (the map is per process); after that
``read(i)`` touches the pages of one image only. Ids are the images' stored paths when all are there
and unique, else row numbers; several splits give a ``split`` column and ids ``<split>/<row>``. The
manifest hash comes from file names, sizes, mtimes, batch sizes and the fingerprint ``datasets`` keeps
in state.json, so it is cheap and still changes with the data.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from netatlas.backend.datasets import DECODE_THREADS, EncodedReader, ImageDataset
from netatlas.backend.errors import NetatlasError, first_line
from netatlas.backend.parquet_images import (PATH_BYTES_PER_ROW, _classes, _hf_features, _image_column,
                                             _info_features, _label_column, _label_values)

DICT_FILE = "dataset_dict.json"
STATE_FILE = "state.json"
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # what every Arrow stream writer (datasets' too) ends with
REWRITE_HINT = "write it again with save_to_disk"


@dataclass(frozen=True)
class _Split:
    """One split's folder and its Arrow files, in the order state.json gives (the rows' order)."""

    name: str | None   # None: a Dataset folder or a lone file (no split column)
    folder: Path
    files: list[Path]
    fingerprint: str


@dataclass
class _Scan:
    """What opening one Arrow file read: rows per record batch and the small columns, never image bytes."""

    path: Path
    split: str | None
    size: int
    mtime_ns: int
    rows: list[int]
    labels: list[pa.Array]
    paths: list[pa.Array]
    path_bytes: int


def is_arrow_dataset(path: Path) -> bool:
    """A save_to_disk folder (dataset_dict.json, or state.json beside .arrow files) or an .arrow file:
    names only (an image folder that happens to hold a state.json stays an image folder)."""
    if path.is_file():
        return path.suffix == ".arrow"
    return (path / DICT_FILE).is_file() or ((path / STATE_FILE).is_file() and any(path.glob("*.arrow")))


def arrow_dataset(path: Path, image_column: str | None = None,
                  label_column: str | None = None) -> ImageDataset:
    """The images of a save_to_disk Dataset or DatasetDict folder (or one .arrow file), read lazily."""
    path = Path(path).resolve()
    splits = _splits(path)
    readers = {f: _open_stream(f, path) for split in splits for f in split.files}
    schema, features = readers[splits[0].files[0]].schema, _features(splits, readers)
    image, struct, label = _columns(readers, path, features, image_column, label_column)
    with_paths = struct and _has_child(schema.field(image).type, "path")
    scans = [_scan(f, split.name, readers.pop(f), label, image if with_paths else None, path)
             for split in splits for f in split.files]
    n = sum(sum(s.rows) for s in scans)
    if not n:
        raise NetatlasError(f"{path.name} holds no rows: give a dataset with images")
    labels, label_names = _labels(scans, label, schema, n)
    classes = _classes(label_names, labels, label, features, list(dict.fromkeys([splits[0].folder, _folder(path)])))
    several = len({s.split for s in scans}) > 1
    ids, skipped = _ids(scans, several), []
    options = {k: v for k, v in (("image_column", image_column), ("label_column", label_column)) if v}
    meta = {"split": np.repeat(np.array([s.split for s in scans]), [sum(s.rows) for s in scans])} if several else {}
    return ImageDataset(_folder(path).name, ids, labels, classes, _manifest_hash(scans, splits, image, label, classes),
                        _reader(path, ids, skipped, scans, image, struct), skipped, meta=meta,
                        decode_threads=DECODE_THREADS, options=options)


def _features(splits: list[_Split], readers: dict[Path, pa.ipc.RecordBatchStreamReader]) -> dict[str, Any]:
    """The features (Image, ClassLabel names): dataset_info.json, overridden by the schema's own copy."""
    return {**_info_features(splits[0].folder), **_hf_features(readers[splits[0].files[0]].schema)}


def _columns(readers: dict[Path, pa.ipc.RecordBatchStreamReader], root: Path, features: dict[str, Any],
             image_column: str | None, label_column: str | None) -> tuple[str, bool, str | None]:
    """(image column, whether it is the Image struct, label column) as for Parquet; every file has them."""
    (first, reader), *_ = readers.items()
    image, struct = _image_column(reader.schema, image_column, features, _rel(first, root))
    label = _label_column(reader.schema, label_column, features, _rel(first, root))
    for f, other in readers.items():
        _check_same_columns(other.schema, reader.schema, [c for c in (image, label) if c], _rel(f, root))
    return image, struct, label


def _reader(root: Path, ids: list[str], skipped: list[str], scans: list[_Scan], image: str,
            struct: bool) -> "ArrowImageReader":
    starts = np.concatenate([[0], np.cumsum([r for s in scans for r in s.rows], dtype=np.int64)])
    batches = np.asarray([(k, b) for k, s in enumerate(scans) for b in range(len(s.rows))], dtype=np.int64)
    return ArrowImageReader(root, ids, skipped, [s.path for s in scans], [s.size for s in scans], image, struct,
                            starts, batches.reshape(-1, 2))


class ArrowImageReader(EncodedReader):
    """Image i: record batch by a prefix sum over batch sizes, from the memory-mapped file.

    Each process maps a file on its first read (the batch list is zero-copy views into the map) and
    keeps it; the map is not pickled, so DataLoader and Dask workers map the files themselves.
    """

    def __init__(self, root: Path, ids: list[str], skipped: list[str], files: list[Path], sizes: list[int],
                 column: str, struct: bool, starts: np.ndarray, batches: np.ndarray) -> None:
        self.files, self.sizes, self.column, self.struct = files, sizes, column, struct
        self.starts, self.batches = starts, batches  # first row per batch (and the total); (file, batch)
        super().__init__(root, ids, skipped)

    def _fresh(self) -> None:
        super()._fresh()
        self._mapped: dict[int, list[pa.Array]] = {}
        self._map_lock = threading.Lock()

    def encoded(self, i: int) -> bytes | None:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"image {i} of {len(self.ids)}")
        b = int(np.searchsorted(self.starts, i, side="right")) - 1
        k, batch = (int(v) for v in self.batches[b])
        return self._images(k)[batch][i - int(self.starts[b])].as_py()

    def _images(self, k: int) -> list[pa.Array]:
        """The image bytes of every batch of file k (views into its map); one thread maps it."""
        images = self._mapped.get(k)
        if images is None:
            with self._map_lock:
                images = self._mapped.get(k)
                if images is None:
                    images = self._mapped[k] = self._map(k)
        return images

    def _map(self, k: int) -> list[pa.Array]:
        """Maps file k after checking it is as opened: a shorter file would fault on reading its map."""
        path = self.files[k]
        try:
            size = path.stat().st_size
            if size != self.sizes[k]:
                raise ValueError(f"{size} bytes, {self.sizes[k]} when opened")
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            return [_image_bytes(batch.column(self.column), self.struct) for batch in reader]
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise NetatlasError(f"cannot read {_rel(path, self.root)} ({first_line(exc)}): it changed since the "
                                f"dataset was opened or is corrupt; {REWRITE_HINT}, then reopen") from exc


def _image_bytes(column: pa.Array, struct: bool) -> pa.Array:
    """The encoded bytes of an image column: a null struct (no image) gives null bytes."""
    if not struct:
        return column
    return column.flatten()[column.type.get_field_index("bytes")]


# ------------------------------------------------------------------------------------------ opening

def _splits(path: Path) -> list[_Split]:
    """The splits dataset_dict.json names (its order), else the folder (or file) as the only one."""
    if path.is_file():
        return [_Split(None, path.parent, [path], "")]
    listed = _json(path / DICT_FILE)
    if listed is None:
        return [_dataset_folder(path, None)]
    names = listed.get("splits") if isinstance(listed, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(s, str) for s in names):
        raise NetatlasError(f"{path.name}/{DICT_FILE} lists no splits (expected {{\"splits\": [\"train\", ...]}}): "
                            f"{REWRITE_HINT}")
    return [_dataset_folder(path / name, name if len(names) > 1 else None) for name in names]


def _dataset_folder(folder: Path, split: str | None) -> _Split:
    """The Arrow files state.json lists (else the folder's .arrow files, sorted); each must be there."""
    state = _json(folder / STATE_FILE)
    listed = state.get("_data_files") if isinstance(state, dict) else None
    if isinstance(listed, list) and listed:
        files = [folder / str(entry.get("filename")) for entry in listed if isinstance(entry, dict)]
    else:
        files = sorted(folder.glob("*.arrow")) if folder.is_dir() else []
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        what = f"{missing[0].name} (listed in {STATE_FILE}) is missing" if missing else "there are no .arrow files"
        raise NetatlasError(f"cannot open {folder.name} as a saved dataset: {what}; {REWRITE_HINT}")
    fingerprint = str(state.get("_fingerprint", "")) if isinstance(state, dict) else ""
    return _Split(split, folder, files, fingerprint)


def _json(path: Path) -> Any:
    """A small JSON file, None when absent; an unreadable one is the user's to rewrite."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NetatlasError(f"cannot read {path.parent.name}/{path.name} ({first_line(exc)}): {REWRITE_HINT}") from exc


def _open_stream(path: Path, root: Path) -> pa.ipc.RecordBatchStreamReader:
    """A stream reader over the mapped file; a file cut short (no end-of-stream marker) is named here."""
    try:
        source = pa.memory_map(str(path))
        complete = source.size() >= len(END_OF_STREAM) and _tail(source) == END_OF_STREAM
        reader = pa.ipc.open_stream(source) if complete else None
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, root, exc) from exc
    if reader is None:
        raise NetatlasError(f"{_rel(path, root)} is cut short (it does not end with the Arrow end-of-stream "
                            f"marker): it was truncated in writing or copying; {REWRITE_HINT}")
    return reader


def _unreadable(path: Path, root: Path, exc: BaseException) -> NetatlasError:
    return NetatlasError(f"{_rel(path, root)} is not a readable Arrow stream ({first_line(exc)}): it may be "
                         f"truncated or corrupt; {REWRITE_HINT}")


def _tail(source: pa.MemoryMappedFile) -> bytes:
    source.seek(source.size() - len(END_OF_STREAM))
    tail = source.read(len(END_OF_STREAM))
    source.seek(0)
    return tail


def _scan(path: Path, split: str | None, reader: pa.ipc.RecordBatchStreamReader, label: str | None,
          image: str | None, root: Path) -> _Scan:
    """Walks the file's record batches: their sizes, labels and image paths (views into the map)."""
    stat = path.stat()
    scan = _Scan(path, split, stat.st_size, stat.st_mtime_ns, [], [], [], 0)
    try:
        for batch in reader:
            scan.rows.append(batch.num_rows)
            if label:
                scan.labels.append(batch.column(label))
            if image:
                paths = batch.column(image).field("path")
                scan.paths.append(paths)
                scan.path_bytes += paths.nbytes
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, root, exc) from exc
    return scan


def _labels(scans: list[_Scan], label: str | None, schema: pa.Schema, n: int
            ) -> tuple[np.ndarray, list[str] | None]:
    if label is None:
        return np.full(n, -1, dtype=np.int64), None
    return _label_values(pa.chunked_array([a for s in scans for a in s.labels], type=schema.field(label).type))


def _ids(scans: list[_Scan], several: bool) -> list[str]:
    """The images' own paths when all are present, small and unique, else row numbers; with several
    splits each id starts with its split (``test/17``), rows counted within the split."""
    splits = [s.split for s in scans for _ in range(sum(s.rows))]

    def prefixed(local: list[str]) -> list[str]:
        return [f"{split}/{x}" for split, x in zip(splits, local)] if several else local

    ids = prefixed(_path_ids(scans))
    return ids if ids and len(set(ids)) == len(ids) else prefixed(_row_ids(scans))


def _path_ids(scans: list[_Scan]) -> list[str]:
    """Every image's stored path, or [] when one is missing or they are too large to read on opening."""
    n = sum(sum(s.rows) for s in scans)
    if not all(s.paths for s in scans) or sum(s.path_bytes for s in scans) > PATH_BYTES_PER_ROW * n:
        return []
    paths = [p for s in scans for a in s.paths for p in a.to_pylist()]
    return [] if None in paths or "" in paths else paths


def _row_ids(scans: list[_Scan]) -> list[str]:
    """Row numbers counted within each split (across its files)."""
    ids: list[str] = []
    rows: dict[str | None, int] = {}
    for s in scans:
        start = rows.get(s.split, 0)
        rows[s.split] = start + sum(s.rows)
        ids += [str(r) for r in range(start, rows[s.split])]
    return ids


def _has_child(t: pa.DataType, child: str) -> bool:
    return pa.types.is_struct(t) and t.get_field_index(child) >= 0


def _check_same_columns(schema: pa.Schema, first: pa.Schema, columns: list[str], name: str) -> None:
    for column in columns:
        if column not in schema.names or schema.field(column).type != first.field(column).type:
            raise NetatlasError(f"{name} has no column {column!r} of type {first.field(column).type} like the "
                                "first file: every split must share the image and label columns")


def _folder(path: Path) -> Path:
    """The dataset's folder: itself, or a lone .arrow file's."""
    return path.parent if path.is_file() else path


def _rel(path: Path, root: Path) -> str:
    """The file as the user knows it: under the dataset folder (``train/data-00000-of-00001.arrow``)."""
    try:
        return path.relative_to(root).as_posix() if root != path else path.name
    except ValueError:
        return path.name


def _manifest_hash(scans: list[_Scan], splits: list[_Split], image: str, label: str | None,
                   classes: list[str]) -> str:
    """File names, sizes, mtimes and batch sizes, and datasets' own fingerprints: no image is read to hash."""
    digest = hashlib.sha256(b"arrow-images-v1\0")
    digest.update(json.dumps([image, label, classes, [[s.name, s.fingerprint] for s in splits]]).encode())
    for s in scans:
        digest.update(f"\n{s.split}/{s.path.name}\0{s.size}\0{s.mtime_ns}\0{s.rows}".encode())
    return digest.hexdigest()
