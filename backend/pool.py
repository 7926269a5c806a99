"""One loaded model, dataset and Workspace per distinct content, shared by every session that opens it.

A lab's server has many browser sessions, most of them on the same few models and datasets. Loading
each per session multiplies memory and, worse, computes every result once per session. The pool keys
a model by what makes it the same model (the checkpoint's content hash, its sidecar, architecture,
preprocessing, device, trust), a dataset by its manifest hash, and a Workspace by the two together
with the cache it writes to. The first session to ask builds the object; later ones share it; the last
to release it drops it, so a model nobody holds is freed. ``max_bytes`` bounds what sessions hold at
once: a load that would pass it is refused with a message, and the server keeps serving the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, TypeVar

from torch import nn

from netatlas.backend.cache import ResultCache, canonical_json
from netatlas.backend.checkpoint import LoadedModel, file_sha256, read_sidecar
from netatlas.backend.datasets import ImageDataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.hf_models import folder_hash, hf_folder
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.workspace import Workspace

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)
T = TypeVar("T")


def default_max_memory() -> int:
    """Half of this machine's physical memory: room for the results, the page and the OS beside it."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError):
        return 8 << 30


def parse_bytes(text: str) -> int:
    """``8G``, ``512M``, ``1.5GiB`` or a plain byte count, as ``--max-memory`` takes it."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        return int(float(value[:len(value) - len(unit)]) * units[unit])
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (e.g. 8G, 512M)") from None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class _Entry:
    value: Any
    nbytes: int
    on_drop: Callable[[], None] | None
    label: str = ""
    holders: int = 0


@dataclass
class _Build:
    lock: threading.Lock = field(default_factory=threading.Lock)
    callers: int = 0                   # holding or waiting on the lock


class Handle(Generic[T]):
    """One holder's claim on a shared object; ``release`` (idempotent) gives the claim back."""

    def __init__(self, pool: "SharedPool", key: str, value: T) -> None:
        self.pool, self.key, self.value = pool, key, value
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._release(self.key)


@dataclass
class SharedPool:
    """Reference-counted objects by key, built once under a per-key lock and bounded in bytes."""

    max_bytes: int = field(default_factory=default_max_memory)
    _entries: dict[str, _Entry] = field(default_factory=dict, repr=False)
    _building: dict[str, _Build] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acquire(self, key: str, build: Callable[[], T], nbytes: Callable[[T], int] = lambda _: 0,
                on_drop: Callable[[], None] | None = None, estimate: int = 0, label: str = "") -> Handle[T]:
        """The object under ``key``, built by ``build`` if nobody holds one. A second caller for a key
        being built waits for that build instead of building again. ``estimate`` (bytes) refuses a build
        that cannot fit before it starts; ``on_drop`` runs when the object built by this call is dropped
        (its last holder released it). ``label`` names the object in the log (unlabelled: not logged)."""
        with self._building_lock(key):
            with self._guard:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.holders += 1
                    return Handle(self, key, entry.value)
            self._check_budget(estimate)
            value = build()
            size = nbytes(value)
            with self._guard:
                self._check_budget(size)
                self._entries[key] = _Entry(value, size, on_drop, label, holders=1)
                held = self.held_bytes
            if label:
                log.info("loaded %s (%s; sessions hold %s of %s)", label, format_bytes(size),
                         format_bytes(held), format_bytes(self.max_bytes))
            return Handle(self, key, value)

    @contextlib.contextmanager
    def _building_lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s build lock; the lock is forgotten when no caller holds or waits on it, so a server
        that opens many models over its life keeps no lock per key it ever saw."""
        with self._guard:
            build = self._building.setdefault(key, _Build())
            build.callers += 1
        try:
            with build.lock:
                yield
        finally:
            with self._guard:
                build.callers -= 1
                if not build.callers:
                    del self._building[key]

    def _check_budget(self, size: int) -> None:
        if self.held_bytes + size > self.max_bytes:
            raise NetatlasError(
                f"opening this needs {format_bytes(size)} and the server's sessions already hold "
                f"{format_bytes(self.held_bytes)} of its {format_bytes(self.max_bytes)} memory budget "
                "(--max-memory); close a session's model, or restart the server with a larger budget")

    def _release(self, key: str) -> None:
        with self._guard:
            entry = self._entries[key]
            entry.holders -= 1
            if entry.holders:
                return
            del self._entries[key]
        if entry.label:
            log.info("released %s (%s): no session holds it", entry.label, format_bytes(entry.nbytes))
        if entry.on_drop is not None:
            entry.on_drop()

    @property
    def held_bytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def holders(self, key: str) -> int:
        entry = self._entries.get(key)
        return entry.holders if entry else 0

    def __len__(self) -> int:
        return len(self._entries)


def model_key(path: Path, arch: str | None, arch_kwargs: dict | None, preprocessing: Preprocessing | None,
              trust_pickle: bool, device: str) -> str:
    """What makes two loads the same model, read without loading it: the checkpoint's content hash (memoized
    by size and mtime, so a changed file is a new model), the sidecar, and every option of the load."""
    folder = hf_folder(path) if path.exists() else None
    return "model:" + canonical_json({
        "file": file_sha256(path) if path.is_file() else None,
        "hf": folder_hash(folder) if folder is not None else None,
        "sidecar": read_sidecar(path) if path.exists() else {},
        "arch": arch, "arch_kwargs": arch_kwargs,
        "preprocessing": preprocessing.to_dict() if preprocessing else None,
        "trust_pickle": trust_pickle, "device": device})


def dataset_key(dataset: ImageDataset) -> str:
    return "dataset:" + canonical_json({"manifest": dataset.manifest_hash, "options": dataset.options})


def model_nbytes(loaded: LoadedModel) -> int:
    model: nn.Module = loaded.model
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def dataset_nbytes(dataset: ImageDataset) -> int:
    """The images held in memory (the demo, .npz files); lazy datasets hold only their index."""
    arrays = [dataset.array, dataset.labels, *dataset.meta.values()]
    return sum(a.nbytes for a in arrays if a is not None) + 64 * len(dataset)


def file_nbytes(path: Path) -> int:
    """Bytes on disk of a checkpoint file or a folder's files: a model's size before it is loaded."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0


def open_workspace(pool: SharedPool, key: str, load_model: Callable[[], LoadedModel], dataset: ImageDataset,
                   cache: ResultCache, device: str = "auto", dask: Client | None = None,
                   source: str | None = None, estimate: int = 0, label: str = "") -> Handle[Workspace]:
    """The Workspace shared by every session that opens model ``key`` on ``dataset`` (equal manifests are
    one dataset) with the same cache; it holds the model and the dataset until its last holder leaves."""
    model = pool.acquire(key, load_model, model_nbytes, estimate=estimate, label=f"model {label}")
    held = [model]
    try:
        held.append(pool.acquire(dataset_key(dataset), lambda: dataset, dataset_nbytes,
                                 label=f"dataset {dataset.name}"))
        data = held[1].value
        built: list[bool] = []

        def build() -> Workspace:
            built.append(True)
            return Workspace(model.value, data, cache, device, dask=dask, source=source)

        ws_key = "workspace:" + canonical_json({"model": key, "dataset": held[1].key, "cache": str(cache.root),
                                                "device": device, "dask": id(dask) if dask else None})
        workspace = pool.acquire(ws_key, build, on_drop=lambda: [h.release() for h in held])
    except BaseException:
        for handle in held:
            handle.release()
        raise
    if not built:                      # an existing Workspace already holds its own model and dataset
        for handle in held:
            handle.release()
    return workspace
