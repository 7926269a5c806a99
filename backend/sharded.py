"""Extraction sharded over Dask workers, one Parquet part per shard, read back through dask.dataframe.

Workers load the model and the dataset themselves (checkpoint path + DatasetSource: the dataset's path
and column options), so nothing large is pickled and a remote worker needs only the same files at
the same paths. Shards start on multiples of the batch size, so every batch a worker runs is a batch
of the single-process pass: the parts together are bitwise equal to its result. ``_manifest.json``
is written last; a folder without one is an interrupted run and is never read.

Only this module imports dask, and only when called: the single-machine path needs no Dask.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import threading
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from netatlas.backend.activations import (Activations, Progress, Reduction, activation_table,
                                          extract_activations)
from netatlas.backend.cache import arrow_to_vectors, atomic_file, cache_key, canonical_json, write_parquet_atomic
from netatlas.backend.checkpoint import LoadedModel, load_checkpoint
from netatlas.backend.datasets import DEMO_NAME, DatasetSource, ImageDataset
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "netatlas-activation-parts-v2"   # v2: parts hold readable images only, tagged by pass
PART_META = b"netatlas.part"
SHARD_ROWS = 8192       # at most this many images per shard: what a lost worker or a killed run costs
SHARDS_PER_WORKER = 2  # a little slack: a slow worker holds up the end by half its share at most
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the same model: small, picklable, checked by content hash."""

    path: str
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)
    checkpoint_hash: str = ""

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "ModelSpec":
        return cls(str(loaded.path.resolve()), loaded.arch, dict(loaded.arch_kwargs),
                   loaded.format == "pickled-module", loaded.preprocessing.to_dict(), loaded.checkpoint_hash)

    def load(self) -> LoadedModel:
        """The model on the CPU; a different file at the same path is refused, not used."""
        pre = Preprocessing.from_dict(self.preprocessing) if self.preprocessing else None
        loaded = load_checkpoint(self.path, self.arch, dict(self.arch_kwargs), trust_pickle=self.trust_pickle,
                                 preprocessing=pre, device="cpu")
        if self.checkpoint_hash and loaded.checkpoint_hash != self.checkpoint_hash:
            raise NetatlasError(f"the checkpoint at {self.path} on this worker differs from the client's "
                                "(another content hash): give every worker the same file")
        return loaded

    def key(self) -> str:
        return canonical_json(asdict(self))


def shard_ranges(n: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty (start, stop) ranges covering 0..n whose starts are multiples of batch_size."""
    batches = -(-n // batch_size)
    shards = max(1, min(shards, batches))
    edges = [i * batches // shards * batch_size for i in range(shards + 1)]
    return [(start, min(stop, n)) for start, stop in zip(edges, edges[1:])] if n else []


def portable_source(source: str | os.PathLike | DatasetSource) -> DatasetSource:
    """The dataset source as workers should see it: ``demo``, else an absolute path, with its column options."""
    if not isinstance(source, DatasetSource):
        source = DatasetSource(str(source))
    if source.path == DEMO_NAME:
        return source
    return dataclasses.replace(source, path=str(Path(source.path).expanduser().resolve()))


# ------------------------------------------------------------------------------------ on the workers

@lru_cache(maxsize=2)
def _worker_model(spec_key: str) -> tuple[LoadedModel, threading.Lock]:
    """One load per worker process; the lock keeps two task threads from sharing the model's hooks."""
    return ModelSpec(**json.loads(spec_key)).load(), threading.Lock()


@lru_cache(maxsize=2)
def _worker_dataset(source: DatasetSource) -> ImageDataset:
    return source.open()


def _dataset_facts(source: DatasetSource) -> tuple[int, str]:
    dataset = _worker_dataset(source)
    return len(dataset), dataset.manifest_hash


def _use_worker_threads() -> None:
    """torch gets the worker's thread count, so n workers never oversubscribe n * threads cores."""
    import torch
    from distributed import get_worker

    threads = max(1, get_worker().state.nthreads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _extract_part(spec: ModelSpec, source: DatasetSource, manifest_hash: str, layers: list[str],
                  reduction: Reduction, start: int, stop: int, batch_size: int, path: str, key: str) -> int:
    """One shard: the forward pass over images start..stop, written atomically to ``path`` (the readable
    images' rows, tagged with the pass's ``key``); returns how many images it covered."""
    _use_worker_threads()
    dataset = _worker_dataset(source)
    if dataset.manifest_hash != manifest_hash:
        raise NetatlasError(f"the dataset {source.path} differs between Dask workers: give every worker the "
                            "same files")
    loaded, lock = _worker_model(spec.key())
    daemonic = multiprocessing.current_process().daemon  # may not start DataLoader processes
    with lock:
        acts = extract_activations(loaded.model, dataset, loaded.preprocessing, layers, reduction, batch_size,
                                   "auto", rows=range(start, stop), num_workers=0 if daemonic else None,
                                   classify=False)
    table = activation_table(dataset, acts, start, layers)
    table = table.replace_schema_metadata({PART_META: json.dumps([key, start, stop]).encode()})
    write_parquet_atomic(Path(path), table, ("logits", *layers))
    return stop - start


# ------------------------------------------------------------------------------------ on the client

def extract_sharded(spec: ModelSpec, source: str | os.PathLike | DatasetSource, layers: list[str],
                    reduction: Reduction, out_dir: str | os.PathLike, client: "Client", batch_size: int = 256,
                    progress: Progress | None = None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the extraction as one Dask task per shard into ``out_dir``; returns the manifest.

    Parts already there for the same pass (``inputs``, the cache key's inputs, and the same range) are kept:
    a run killed part way, or a worker lost with its shard, costs only the missing shards (Dask itself
    reruns a lost worker's task; a killed client's finished parts survive it). Worker failures surface as
    NetatlasError with the worker's message.
    """
    out_dir, source, layers = Path(out_dir), portable_source(source), list(dict.fromkeys(layers))
    [(n, manifest_hash)] = _results(client, [client.submit(_dataset_facts, source, pure=False)])
    key = cache_key(inputs or {})
    ranges = shard_ranges(n, max(SHARDS_PER_WORKER * max(1, len(client.nthreads())), -(-n // SHARD_ROWS)),
                          batch_size)
    parts = [f"part-{start:012d}-{stop:012d}.parquet" for start, stop in ranges]
    kept = _keep_parts(out_dir, key, dict(zip(parts, ranges)))
    futures = [client.submit(_extract_part, spec, source, manifest_hash, layers, reduction, start, stop,
                             batch_size, str(out_dir / name), key, pure=False)
               for (start, stop), name in zip(ranges, parts) if name not in kept]
    done = sum(stop - start for (start, stop), name in zip(ranges, parts) if name in kept)
    if progress:
        progress(done, n)
    for rows in _results(client, futures, as_they_finish=True):
        done += rows
        if progress:
            progress(done, n)
    manifest = {"format": MANIFEST_FORMAT, "rows": n, "layers": layers, "reduction": reduction,
                "batch_size": batch_size, "dataset": manifest_hash, "checkpoint": spec.checkpoint_hash,
                "parts": [{"file": name, "start": start, "stop": stop}
                          for name, (start, stop) in zip(parts, ranges)],
                "key": key, "inputs": json.loads(canonical_json(inputs or {}))}
    _write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def _results(client: "Client", futures: list, as_they_finish: bool = False) -> Iterator[Any]:
    """Each future's result; a failure cancels the others and raises NetatlasError."""
    from distributed import as_completed

    try:
        for future in as_completed(futures) if as_they_finish else futures:
            yield future.result()
    except NetatlasError:
        raise
    except Exception as exc:  # whatever the task raised, re-raised here by distributed
        raise NetatlasError(f"a Dask worker failed: {type(exc).__name__}: {exc}") from exc
    finally:
        client.cancel([f for f in futures if not f.done()])


def _keep_parts(out_dir: Path, key: str, wanted: dict[str, tuple[int, int]]) -> set[str]:
    """The parts in ``out_dir`` written for this pass (``key``) over the wanted ranges; everything else there
    (the manifest first, so that the folder reads as incomplete meanwhile) is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    kept = set()
    for path in out_dir.iterdir():
        if path.name in wanted and _part_tag(path) == [key, *wanted[path.name]]:
            kept.add(path.name)
        else:
            path.unlink(missing_ok=True)
    return kept


def _part_tag(path: Path) -> list | None:
    try:
        return json.loads(pq.read_schema(path).metadata.get(PART_META, b"null"))
    except (OSError, ValueError, AttributeError, pa.ArrowException):
        return None


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def read_manifest(out_dir: str | os.PathLike, inputs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of a complete run (for ``inputs``, when given), or None: absent, foreign, parts missing."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    if inputs is not None and manifest.get("key") != cache_key(inputs):
        return None
    try:
        complete = all((out_dir / part["file"]).is_file() for part in manifest["parts"])
    except (KeyError, TypeError):  # a hand-edited or foreign manifest
        return None
    return manifest if complete else None


def _complete(out_dir: str | os.PathLike) -> dict[str, Any]:
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise NetatlasError(f"{out_dir} holds no complete sharded extraction (no valid {MANIFEST}): "
                            "the run was interrupted or the folder is not one; run the extraction again")
    return manifest


def read_parts(out_dir: str | os.PathLike) -> "dd.DataFrame":
    """The parts of a complete run as one dask DataFrame (vector columns stay fixed-size lists)."""
    import dask.dataframe as dd

    files = [str(Path(out_dir) / part["file"]) for part in _complete(out_dir)["parts"]]
    return dd.read_parquet(files, dtype_backend="pyarrow")


def parts_to_activations(out_dir: str | os.PathLike, layers: list[str],
                         reduction: Reduction = "mean") -> Activations:
    """The parts as numpy Activations in image order, computed through ``read_parts``: the readable images'
    rows (``index``), no predictions (the caller knows whether the model has a classifier head)."""
    manifest, layers = _complete(out_dir), list(dict.fromkeys(layers))
    if set(layers) - set(manifest["layers"]) or manifest["reduction"] != reduction:
        raise NetatlasError(f"{out_dir} holds layers {manifest['layers']} ({manifest['reduction']}), "
                            f"not {layers} ({reduction})")
    frame = read_parts(out_dir)[["index", "logits", *layers]].compute()
    index = frame["index"].to_numpy(np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if len(index) and (index[0] < 0 or index[-1] >= manifest["rows"] or (np.diff(index) <= 0).any()):
        raise NetatlasError(f"the parts in {out_dir} hold images outside 0..{manifest['rows'] - 1} or twice")

    def vectors(name: str) -> np.ndarray:
        return arrow_to_vectors(pa.array(frame[name].array))[order]

    return Activations(vectors("logits"), None, {name: vectors(name) for name in layers}, reduction,
                       None if len(index) == manifest["rows"] else index)


# ------------------------------------------------------------------------------------------ cluster

@contextlib.contextmanager
def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Iterator["Client"]:
    """A Client for ``address`` (``local``: a 2-worker LocalCluster, one thread each), closed on exit."""
    from distributed import Client, LocalCluster

    if address == "local":
        # No dashboard, and its HTTP server on any free port (not 8787: two clusters may coexist);
        # worker errors reach the caller as NetatlasError, so their log tracebacks are silenced.
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": ":0"}, silence_logs=logging.CRITICAL) \
                as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise NetatlasError(f"cannot reach a Dask scheduler at {address!r} ({exc}); start one "
                            "(`dask scheduler`, then `dask worker ADDRESS` per machine) or use --dask local") from exc
    with client:
        yield client
