"""Content-addressed Parquet cache for every computed result.

A result's key is the SHA-256 of its canonical JSON inputs (checkpoint bytes hash, dataset manifest,
layer, reduction, preprocessing, computation version). The inputs are stored in the file's metadata
and checked on read, so a corrupt, truncated or foreign file is recomputed, never trusted. Writes are
atomic (temp file in the same folder, fsync, ``os.replace``) and serialized per key across threads
and processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
META_KEY = b"netatlas.inputs"


def default_cache_dir() -> Path:
    return Path(os.environ.get("NETATLAS_CACHE_DIR") or Path.home() / ".cache" / "netatlas")


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs).encode()).hexdigest()


def canonical_json(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cache inputs must be JSON-like, got {type(value).__name__}")


class ResultCache:
    """Parquet files named by key under ``root/<kind>/``; see the module docstring for the contract."""

    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def path(self, kind: str, inputs: dict[str, Any]) -> Path:
        return self.root / kind / f"{cache_key({'kind': kind, **inputs})}.parquet"

    def read(self, kind: str, inputs: dict[str, Any]) -> pa.Table | None:
        """The cached table, or None when absent, unreadable or written for other inputs."""
        path = self.path(kind, inputs)
        if not path.exists():
            return None
        try:
            table = pq.read_table(path, memory_map=True)
            stored = (table.schema.metadata or {}).get(META_KEY, b"").decode()
        except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
            log.warning("cache file %s is unreadable (%s); recomputing", path, exc)
            return None
        if stored != canonical_json({"kind": kind, **inputs}):
            log.warning("cache file %s was written for other inputs; recomputing", path)
            return None
        return table

    def write(self, kind: str, inputs: dict[str, Any], table: pa.Table,
              float_columns: tuple[str, ...] = ()) -> Path:
        """Write atomically; ``float_columns`` get byte-stream-split encoding (better zstd ratios)."""
        path = self.path(kind, inputs)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = canonical_json({"kind": kind, **inputs}).encode()
        return write_parquet_atomic(path, table.replace_schema_metadata(meta), float_columns)

    def parts_dir(self, kind: str, inputs: dict[str, Any]) -> Path:
        """A folder ``root/<kind>/<key>/`` for results written in parts (one file per Dask worker task)."""
        return self.root / kind / cache_key({"kind": kind, **inputs})

    def get_or_compute(self, kind: str, inputs: dict[str, Any], compute: Callable[[], pa.Table],
                       float_columns: tuple[str, ...] = ()) -> pa.Table:
        """Read, or compute and write under the key's lock (a second caller waits, then reads)."""
        table = self.read(kind, inputs)
        if table is not None:
            return table
        with self.lock(kind, inputs):
            table = self.read(kind, inputs)
            if table is None:
                table = compute()
                self.write(kind, inputs, table, float_columns)
        return table

    @contextlib.contextmanager
    def lock(self, kind: str, inputs: dict[str, Any]) -> Iterator[None]:
        """Per-key lock: a thread lock for this process and an flock for other processes."""
        path = self.path(kind, inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locks_guard:
            thread_lock = self._locks.setdefault(str(path), threading.Lock())
        with thread_lock, open(path.with_suffix(".lock"), "a+") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)


def write_parquet_atomic(path: Path, table: pa.Table, float_columns: tuple[str, ...] = ()) -> Path:
    """zstd Parquet written through ``atomic_file``; ``float_columns`` (fixed-size lists of float32)
    get byte-stream-split encoding, which zstd compresses better."""
    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd",
                       use_byte_stream_split=[f"{c}.list.element" for c in float_columns] or False,
                       use_dictionary=[c for c in table.column_names if c not in float_columns])
    return path


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A temp file in ``path``'s folder, fsynced and renamed over ``path`` when the block succeeds and
    removed when it fails: readers see the old file or the new one, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def vectors_to_arrow(values: np.ndarray) -> pa.FixedSizeListArray:
    """[N, D] float32 -> one fixed-size-list column (zero-copy)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The inverse of vectors_to_arrow: a fixed-size-list column -> [N, D] float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
