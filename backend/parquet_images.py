"""Parquet image tables as the Hugging Face hub stores them: one file, a folder of shards, or ``data/`` shards.

Opening reads the shards' footers, the label column and (when small) the image paths, nothing else;
``read(i)`` reads the image column of one row group, kept in a small per-process LRU, so a million
images never become a million files or a million decoded images in memory. The manifest hash comes
from the footers (row-group offsets and statistics), so it is cheap and still changes with the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from netatlas.backend.datasets import DECODE_THREADS, EncodedReader, ImageDataset
from netatlas.backend.errors import NetatlasError

HF_METADATA_KEY = b"huggingface"
LABEL_NAMES = ("label", "labels")
IMAGE_NAMES = ("image", "img")
INFO_FILES = ("dataset_info.json", "dataset_infos.json")
ROW_GROUP_CACHE = 32                # row groups kept per process: two batches in flight, small groups
ROW_GROUP_CACHE_BYTES = 256 << 20   # ... unless they are large; the newest one is always kept
PATH_BYTES_PER_ROW = 1024           # image paths are read on open only when their column is this small


@dataclass(frozen=True)
class _Shard:
    path: Path
    size: int
    footer: bytes               # the raw footer: hashed into the manifest
    metadata: pq.FileMetaData   # parsed from those same bytes

    @property
    def schema(self) -> pa.Schema:
        return self.metadata.schema.to_arrow_schema()


def find_parquet_shards(path: Path) -> list[Path]:
    """The shards ``path`` names: itself, the .parquet files in the folder, else those in its ``data/``,
    else those of the hub converter's layout (``<config>/<split>/NNNN.parquet``, splits sorted)."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return _parquet_files(path) or _parquet_files(path / "data") or _converter_shards(path)


def _converter_shards(path: Path) -> list[Path]:
    config = _converter_config(path)
    return [f for split in _split_folders(config) for f in _parquet_files(split)] if config else []


def _converter_config(path: Path) -> Path | None:
    """The converter's config folder at ``path``: itself when its subfolders (the splits) hold shards,
    else its only config, else ``default``; among several others the user chooses (rows would mix)."""
    if _split_folders(path):
        return path
    configs = [d for d in _subfolders(path) if _split_folders(d)]
    chosen = [d for d in configs if d.name == "default"] or configs
    if len(chosen) > 1:
        raise NetatlasError(f"{path.name} holds the configs {', '.join(d.name for d in configs)} of one dataset: "
                            f"give one of their folders, e.g. {configs[0]}")
    return chosen[0] if chosen else None


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _split_folders(config: Path) -> list[Path]:
    """The subfolders that hold .parquet files (a name test each, no Path per file)."""
    return [d for d in _subfolders(config) if _holds_parquet(d)]


def _holds_parquet(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.endswith(".parquet") and not e.name.startswith(".") for e in it)
    except OSError:
        return False


def _parquet_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")
                  and p.is_file())


def parquet_dataset(path: Path, image_column: str | None = None,
                    label_column: str | None = None) -> ImageDataset:
    """The images of one .parquet file or a folder of shards, in sorted shard order, read lazily.

    Several splits (``data/train-*.parquet``, ``data/test-*.parquet``, or the converter's split folders
    ``default/train/``, ``default/test/``) give a ``split`` column.
    """
    path = Path(path).resolve()
    files = find_parquet_shards(path)
    if not files:
        raise NetatlasError(f"no .parquet shards in {path} (nor in {path / 'data'}): give a .parquet file, "
                            "a folder of shards, or a folder whose data/ holds them")
    shards = [_read_shard(f) for f in files]
    if not any(s.metadata.num_rows for s in shards):
        raise NetatlasError(f"the {len(files)} .parquet shard(s) of {path.name} hold no rows: give a table with images")
    schema = shards[0].schema
    features = _hf_features(schema)
    image, struct = _image_column(schema, image_column, features, files[0].name)
    label = _label_column(schema, label_column, features, files[0].name)
    for shard in shards[1:]:
        _check_same_columns(shard, schema, [c for c in (image, label) if c])
    with_paths = struct and _has_child(schema, image, "path")
    labels, label_names, paths = _read_open_columns(shards, label, image if with_paths else None)
    classes = _classes(label_names, labels, label, features, _info_dirs(path, files[0]))
    ids, skipped = _ids(shards, paths), []
    reader = ParquetImageReader(path, ids, skipped, [s.path for s in shards], [s.metadata for s in shards],
                                f"{image}.bytes" if struct else image, struct, *_row_groups(shards))
    options = {k: v for k, v in (("image_column", image_column), ("label_column", label_column)) if v}
    name = path.stem if path.is_file() else (path.parent.name if path.name == "data" else path.name)
    return ImageDataset(name, ids, labels, classes, _manifest_hash(shards, image, label, classes), reader,
                        skipped, meta=_split_column(shards), decode_threads=DECODE_THREADS, options=options)


class ParquetImageReader(EncodedReader):
    """Image i: row group by a prefix sum over row counts, only the image column read, an LRU per process."""

    def __init__(self, root: Path, ids: list[str], skipped: list[str], shards: list[Path],
                 metadata: list[pq.FileMetaData], column: str, struct: bool, groups: np.ndarray,
                 starts: np.ndarray) -> None:
        self.shards, self.metadata, self.column, self.struct = shards, metadata, column, struct
        self.groups, self.starts = groups, starts  # (shard, row group) per group; first row per group
        super().__init__(root, ids, skipped)

    def _fresh(self) -> None:
        super()._fresh()
        self._cache: OrderedDict[int, pa.Array] = OrderedDict()
        self._cache_lock = threading.Lock()

    def encoded(self, i: int) -> bytes | None:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"image {i} of {len(self.ids)}")
        g = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._row_group(g)[i - int(self.starts[g])].as_py()

    def _row_group(self, g: int) -> pa.Array:
        """The images of row group g; one thread reads it while the others wanting it wait."""
        with self._cache_lock:
            images = self._cache.get(g)
            if images is not None:
                self._cache.move_to_end(g)
                return images
            images = self._cache[g] = self.read_row_group(g)
            while len(self._cache) > 1 and (len(self._cache) > ROW_GROUP_CACHE or sum(
                    a.nbytes for a in self._cache.values()) > ROW_GROUP_CACHE_BYTES):
                self._cache.popitem(last=False)
            return images

    def read_row_group(self, g: int) -> pa.Array:
        """The image bytes of row group g, read from its shard (the only place image data is read)."""
        shard, group = (int(v) for v in self.groups[g])
        path = self.shards[shard]
        try:
            with pq.ParquetFile(path, metadata=self.metadata[shard]) as pf:
                column = pf.read_row_group(group, columns=[self.column]).column(0).combine_chunks()
        except (OSError, pa.ArrowException) as exc:
            raise NetatlasError(f"cannot read row group {group} of {path.name} ({exc}): the shard is corrupt "
                                "or changed since it was opened; download or write it again, then reopen") from exc
        return column.flatten()[0] if self.struct else column  # flatten: a null struct gives null bytes


# ------------------------------------------------------------------------------------------ opening

def has_image_column(path: Path) -> bool:
    """Whether a Parquet file holds images (its footer only): result tables are not datasets."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return False
    return any(_is_image_type(f.type) for f in schema)


def _read_shard(path: Path) -> _Shard:
    """The footer bytes (for the hash) and the metadata parsed from them; a truncated file fails here."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < 12:
                raise ValueError(f"{size} bytes is too short")
            f.seek(size - 8)
            tail = f.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or not 0 < length <= size - 12:
                raise ValueError("no Parquet footer at its end")
            f.seek(size - 8 - length)
            footer = f.read(length)
        metadata = pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise NetatlasError(f"{path.name} is not a readable Parquet file ({exc}): it may be truncated or "
                            "corrupt; download or write that shard again") from exc
    return _Shard(path, size, footer, metadata)


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _has_child(schema: pa.Schema, column: str, child: str) -> bool:
    t = schema.field(column).type
    return pa.types.is_struct(t) and t.get_field_index(child) >= 0


def _is_image_type(t: pa.DataType) -> bool:
    """The hub's Image feature (a struct with binary ``bytes``) or raw encoded bytes."""
    if pa.types.is_struct(t):
        i = t.get_field_index("bytes")
        return i >= 0 and _is_binary(t.field(i).type)
    return _is_binary(t)


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def _image_column(schema: pa.Schema, given: str | None, features: dict[str, Any],
                  shard: str) -> tuple[str, bool]:
    """(name, is_struct) of the image column: the given one, else found by type (hub-marked first)."""
    if given is not None:
        if given not in schema.names:
            raise NetatlasError(f"no column {given!r} in {shard}; its columns: {_describe(schema)}. "
                                "Give one of them with --image-column")
        if not _is_image_type(schema.field(given).type):
            raise NetatlasError(f"column {given!r} of {shard} holds {schema.field(given).type}, not images (a struct "
                                "with binary 'bytes' as the hub writes them, or raw bytes); its columns: "
                                f"{_describe(schema)}")
        return given, pa.types.is_struct(schema.field(given).type)
    found = [f.name for f in schema if _is_image_type(f.type)]
    if not found:
        raise NetatlasError(f"{shard} has no image column (its columns: {_describe(schema)}): images must be a "
                            "struct with binary 'bytes' (the hub's Image) or a binary column; name the column "
                            "that holds them with --image-column NAME")
    marked = [n for n in found if (features.get(n) or {}).get("_type") == "Image"]
    named = [n for n in found if n.lower() in IMAGE_NAMES]
    chosen = (marked or named or found)[0]
    return chosen, pa.types.is_struct(schema.field(chosen).type)


def _label_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _label_column(schema: pa.Schema, given: str | None, features: dict[str, Any], shard: str) -> str | None:
    """The given label column, else an integer ``label``/``labels``, else the hub's ClassLabel; may be none."""
    if given is not None:
        if given not in schema.names:
            raise NetatlasError(f"no column {given!r} in {shard}; its columns: {_describe(schema)}. "
                                "Give one of them with --label-column, or leave it out for unlabeled images")
        if not _label_type_ok(schema.field(given).type):
            raise NetatlasError(f"column {given!r} of {shard} holds {schema.field(given).type}: labels must be "
                                "integers (class indices) or strings (class names)")
        return given
    integer = [f.name for f in schema if pa.types.is_integer(f.type)]
    named = [n for n in integer if n.lower() in LABEL_NAMES]
    marked = [n for n in integer if (features.get(n) or {}).get("_type") == "ClassLabel"]
    return (named or marked or [None])[0]


def _check_same_columns(shard: _Shard, first: pa.Schema, columns: list[str]) -> None:
    schema = shard.schema
    for column in columns:
        if column not in schema.names or schema.field(column).type != first.field(column).type:
            raise NetatlasError(f"{shard.path.name} has no column {column!r} of type {first.field(column).type} "
                                f"like the first shard (its columns: {_describe(schema)}): every shard must "
                                "share the image and label columns")


def _read_open_columns(shards: list[_Shard], label: str | None, image: str | None
                       ) -> tuple[np.ndarray, list[str] | None, list[list[str | None]] | None]:
    """(labels, class names when labels are strings, image paths per shard or None): no image bytes.

    ``image`` names a struct column whose ``path`` child is read when small (else ids are row numbers).
    """
    n = sum(s.metadata.num_rows for s in shards)
    path_column = f"{image}.path" if image else None
    if path_column and _column_bytes(shards, path_column) > PATH_BYTES_PER_ROW * max(n, 1):
        path_column = None
    columns = [c for c in (label, path_column) if c]
    tables = [_read_columns(s, columns) for s in shards] if columns else []
    paths = [t.column(image).combine_chunks().flatten()[0].to_pylist() for t in tables] \
        if path_column else None
    if label is None:
        return np.full(n, -1, dtype=np.int64), None, paths
    labels, names = _label_values(pa.chunked_array([c for t in tables for c in t.column(label).chunks],
                                                   type=tables[0].schema.field(label).type))
    return labels, names, paths


def _column_bytes(shards: list[_Shard], column: str) -> int:
    """The column's uncompressed size, from the footers."""
    total = 0
    for shard in shards:
        md = shard.metadata
        j = [md.schema.column(k).path for k in range(md.num_columns)].index(column)
        total += sum(md.row_group(g).column(j).total_uncompressed_size for g in range(md.num_row_groups))
    return total


def _read_columns(shard: _Shard, columns: list[str]) -> pa.Table:
    """Whole small columns of one shard (labels, paths) for opening; never the image bytes."""
    try:
        with pq.ParquetFile(shard.path, metadata=shard.metadata) as pf:
            return pf.read(columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise NetatlasError(f"cannot read {', '.join(columns)} of {shard.path.name} ({exc}): the shard is "
                            "corrupt; download or write it again") from exc


def _label_values(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str] | None]:
    """int64 labels (-1 for null or negative); string labels become indices into their sorted names."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type):
        labels = pc.fill_null(column.cast(pa.int64()), -1).to_numpy()
        return np.where(labels < 0, -1, labels).astype(np.int64), None
    names = sorted(pc.unique(column).drop_null().to_pylist())
    index = pc.index_in(column, value_set=pa.array(names, type=column.type))
    return pc.fill_null(index.cast(pa.int64()), -1).to_numpy().astype(np.int64), names


def _ids(shards: list[_Shard], paths: list[list[str | None]] | None) -> list[str]:
    """The images' own paths when every one is present and unique, else ``<shard stem>/<row>``
    (``<split folder>/<shard stem>/<row>`` in the converter's layout, whose shards share stems)."""
    if paths is not None:
        flat = [p for shard_paths in paths for p in shard_paths]
        if None not in flat and "" not in flat and len(set(flat)) == len(flat):
            return flat
    several = _in_several_folders(shards)
    keys = [f"{s.path.parent.name}/{s.path.stem}" if several else s.path.stem for s in shards]
    return [f"{key}/{row}" for key, s in zip(keys, shards) for row in range(s.metadata.num_rows)]


def _in_several_folders(shards: list[_Shard]) -> bool:
    """The converter's layout: each split a folder of its own."""
    return len({s.path.parent for s in shards}) > 1


def _row_groups(shards: list[_Shard]) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row group) per row group, and each one's first row (one more entry: the total)."""
    groups = [(s, g) for s, shard in enumerate(shards) for g in range(shard.metadata.num_row_groups)]
    rows = [shards[s].metadata.row_group(g).num_rows for s, g in groups]
    return (np.asarray(groups, dtype=np.int64).reshape(-1, 2),
            np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]))


def _split_column(shards: list[_Shard]) -> dict[str, np.ndarray]:
    """``{"split": per row}`` from the shards' folders (the converter's layout) or name prefixes, when
    they name more than one split."""
    several = _in_several_folders(shards)
    splits = [s.path.parent.name if several else _split_name(s.path.stem) for s in shards]
    if len(set(splits)) < 2:
        return {}
    return {"split": np.repeat(np.array(splits), [s.metadata.num_rows for s in shards])}


def _split_name(stem: str) -> str:
    """``train-00000-of-00003`` -> ``train``; ``test-0001`` -> ``test``; ``validation`` -> itself."""
    match = re.match(r"^(.+?)(-\d+-of-\d+|-\d+)$", stem)
    return match.group(1) if match else stem


def _manifest_hash(shards: list[_Shard], image: str, label: str | None, classes: list[str]) -> str:
    """File names, sizes and footers (row-group offsets, sizes, statistics): no data is read to hash."""
    digest = hashlib.sha256(b"parquet-images-v1\0")
    digest.update(json.dumps([image, label, classes]).encode())
    for shard in shards:
        digest.update(f"\n{shard.path.name}\0{shard.size}\0".encode())
        digest.update(shard.footer)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- class names

def _classes(label_names: list[str] | None, labels: np.ndarray, label: str | None,
             features: dict[str, Any], dirs: list[Path]) -> list[str]:
    """Names: string labels; the hub's schema metadata; dataset_info.json or README YAML in ``dirs``
    (nearest first); else the values."""
    if label_names is not None:
        return label_names
    if label is None:
        return []
    for found in _feature_sources(features, dirs):
        names = _names_of(found.get(label))
        if names is not None:
            return names
    return [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []


def _info_dirs(root: Path, shard: Path) -> list[Path]:
    """Where the hub's descriptions may lie: the shard's folder and those above it up to the dataset's
    (``data/`` and the repo; ``default/train/``, ``default/`` and the repo), and the repo above a
    ``data/`` or a converter config (``default/``) given itself."""
    dirs = [shard.parent]
    while dirs[-1] != root and root in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    config = shard.parent.parent == root and shard.parent.name != "data"
    return dirs + [dirs[-1].parent] if dirs[-1].name == "data" or config else dirs


def _feature_sources(features: dict[str, Any], dirs: list[Path]) -> Iterator[dict[str, Any]]:
    """The hub's feature descriptions by trust; a file is read only when those before name no classes."""
    yield features
    for folder in dirs:
        yield _info_features(folder)
    for folder in dirs:
        yield _readme_features(folder)


def _hf_features(schema: pa.Schema) -> dict[str, Any]:
    """``{"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": [...]}}`` or {}."""
    raw = (schema.metadata or {}).get(HF_METADATA_KEY)
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def _info_features(folder: Path) -> dict[str, Any]:
    """Features of ``dataset_info.json`` (or ``dataset_infos.json``), also nested per config (``default``)."""
    for name in INFO_FILES:
        try:
            info = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and "features" not in info:
            configs = [v for v in info.values() if isinstance(v, dict) and "features" in v]
            info = info.get("default") if isinstance(info.get("default"), dict) else (configs or [{}])[0]
        features = info.get("features") if isinstance(info, dict) else None
        if isinstance(features, dict):
            return features
    return {}


def _readme_features(folder: Path) -> dict[str, Any]:
    """Features from README.md's YAML front matter (``dataset_info: features: - name: ... dtype: ...``)."""
    import yaml

    try:
        text = (folder / "README.md").read_text(encoding="utf-8")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
        card = yaml.safe_load(match.group(1)) if match else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    info = card.get("dataset_info") if isinstance(card, dict) else None
    if isinstance(info, list):  # one entry per config
        info = next((c for c in info if isinstance(c, dict) and c.get("config_name") == "default"),
                    info[0] if info else None)
    features = info.get("features") if isinstance(info, dict) else None
    if not isinstance(features, list):
        return {}
    return {f["name"]: f.get("dtype") for f in features if isinstance(f, dict) and "name" in f}


def _names_of(feature: Any) -> list[str] | None:
    """Class names of a ClassLabel feature: ``{"names": [...]}`` (JSON) or ``{"class_label": {"names": {"0": ..}}}``."""
    if not isinstance(feature, dict):
        return None
    names = feature.get("names")
    if names is None and isinstance(feature.get("class_label"), dict):
        names = feature["class_label"].get("names")
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        return [by_index.get(i, str(i)) for i in range(max(by_index) + 1)] if by_index else None
    return None
