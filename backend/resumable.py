"""A pass over a dataset written as it runs, so that a killed extraction resumes where it stopped.

The pass's results go to a folder of chunk files, ``START-STOP.arrow`` for images START..STOP (Arrow IPC:
a chunk lives only until the pass ends, and writing one costs little more than a copy, which keeps the
pass at the speed of one write at the end), each written atomically (temp file, fsync, rename) by a
writer thread while the model runs the next batches.
A chunk holds the rows of the images that could be read (``index``), the outputs and every layer. A
run that finds chunks of the same pass (their metadata names it) computes only the ranges between them;
chunks start and stop on batch boundaries, so every batch of a resumed run is a batch of an uninterrupted
one, and the result is the same to the bit. The caller holds the pass's lock (``ResultCache.lock``): a
second process waits and then reads the finished result instead of racing the first.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from netatlas.backend.activations import (Activations, BatchResult, Progress, Reduction, collect, pass_batches,
                                          row_slice)
from netatlas.backend.cache import arrow_to_vectors, atomic_file, vectors_to_arrow
from netatlas.backend.datasets import ImageDataset
from netatlas.backend.preprocessing import Preprocessing

PASS_META = b"netatlas.pass"
CHUNK_SUFFIX = ".arrow"
CHUNK_ROWS = 8192       # at most this many images are lost with a killed run (fewer when FLUSH_SECONDS passes)
CHUNKS_PER_PASS = 20    # ...and at most about a twentieth of a smaller pass
FLUSH_SECONDS = 30.0    # a slow model (a large one on a CPU) still writes every half minute


def resumable_pass(model, dataset: ImageDataset, preprocessing: Preprocessing, layers: Iterable[str],
                   reduction: Reduction, batch_size: int, device, folder: Path, tag: str,
                   progress: Progress | None = None, chunk_rows: int | None = None,
                   flush_seconds: float | None = None) -> Activations:
    """The pass of ``model`` over ``dataset``, reusing the chunks in ``folder`` written for ``tag`` (the
    pass's cache inputs) and writing the rest there as it goes. No predictions: the caller decides them."""
    layers = list(dict.fromkeys(layers))
    n = len(dataset)
    chunk_rows = chunk_size(n, batch_size, chunk_rows)
    flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
    done = read_chunks(folder, tag, n)
    covered = sum(r.stop - r.start for r in done)
    if progress:
        progress(covered, n)
    with ThreadPoolExecutor(1, thread_name_prefix="netatlas-chunks") as writer:
        pending: list[Future] = []
        for start, stop in missing_ranges(done, n):
            rows = row_slice(dataset, range(start, stop))
            buffer: list[BatchResult] = []
            last_flush = time.monotonic()
            for result in pass_batches(model, rows, preprocessing, layers, reduction, batch_size, device):
                result = _shifted(result, start)
                buffer.append(result)
                covered += result.stop - result.start
                if progress:
                    progress(covered, n)
                full = result.stop - buffer[0].start >= chunk_rows
                if full or result.stop == stop or time.monotonic() - last_flush >= flush_seconds:
                    chunk = _merged(buffer)
                    done.append(chunk)
                    pending.append(writer.submit(write_chunk, folder, chunk, tag))
                    buffer, last_flush = [], time.monotonic()
                    _raise_failed(pending)
        for future in pending:
            future.result()
    return collect(done, n, reduction, classify=False, dataset=dataset)


def chunk_size(n: int, batch_size: int, chunk_rows: int | None = None) -> int:
    """Images per chunk: whole batches, about a twentieth of the pass (a kill loses at most that much of
    it), at most ``CHUNK_ROWS`` (or ``chunk_rows``)."""
    most = chunk_rows or CHUNK_ROWS
    return max(batch_size, min(most, n // CHUNKS_PER_PASS) // batch_size * batch_size)


def missing_ranges(done: list[BatchResult], n: int) -> list[tuple[int, int]]:
    """The (start, stop) ranges of 0..n that no chunk covers."""
    gaps, position = [], 0
    for chunk in sorted(done, key=lambda r: r.start):
        if chunk.start > position:
            gaps.append((position, chunk.start))
        position = max(position, chunk.stop)
    if position < n:
        gaps.append((position, n))
    return gaps


def read_chunks(folder: Path, tag: str, n: int) -> list[BatchResult]:
    """The chunks in ``folder`` written for ``tag``; anything else there (another pass's chunks, a temp file
    a killed writer left, an unreadable file, an overlap) is removed, and so is computed again."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks: list[BatchResult] = []
    for path in sorted(folder.iterdir()):
        chunk = _read_chunk(path, tag, n)
        if chunk is None or any(c.start < chunk.stop and chunk.start < c.stop for c in chunks):
            path.unlink(missing_ok=True)
        else:
            chunks.append(chunk)
    return chunks


def _read_chunk(path: Path, tag: str, n: int) -> BatchResult | None:
    try:
        start, stop = (int(part) for part in path.name.removesuffix(CHUNK_SUFFIX).split("-"))
        with pa.OSFile(str(path), "rb") as source:
            table = pa.ipc.open_file(source).read_all()
    except (ValueError, OSError, pa.ArrowException):
        return None
    if (table.schema.metadata or {}).get(PASS_META, b"").decode() != tag or not 0 <= start < stop <= n:
        return None
    index = table.column("index").to_numpy().astype(np.int64)
    if table.num_rows == 0:
        return BatchResult(start, stop, index, np.empty((0, 0), np.float32), {})
    layers = {name: arrow_to_vectors(table.column(name)) for name in table.column_names[2:]}
    return BatchResult(start, stop, index, arrow_to_vectors(table.column("logits")), layers)


def write_chunk(folder: Path, chunk: BatchResult, tag: str) -> Path:
    """One chunk, atomically: a reader (or a resumed run) sees all of it or none of it."""
    if len(chunk.index):
        columns = {"index": pa.array(chunk.index), "logits": vectors_to_arrow(chunk.logits),
                   **{name: vectors_to_arrow(values) for name, values in chunk.layers.items()}}
        table = pa.table(columns)
    else:
        table = pa.table({"index": pa.array(chunk.index, pa.int64())})
    table = table.replace_schema_metadata({PASS_META: tag.encode()})
    path = folder / f"{chunk.start:012d}-{chunk.stop:012d}{CHUNK_SUFFIX}"
    with atomic_file(path) as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return path


def _shifted(result: BatchResult, offset: int) -> BatchResult:
    return BatchResult(result.start + offset, result.stop + offset, result.index + offset, result.logits,
                       result.layers)


def _merged(results: list[BatchResult]) -> BatchResult:
    """Consecutive batches as one chunk (batches whose images were all unreadable add only their range)."""
    read = [r for r in results if len(r.index)]
    if not read:
        return BatchResult(results[0].start, results[-1].stop, np.empty(0, np.int64),
                           np.empty((0, 0), np.float32), {})
    return BatchResult(results[0].start, results[-1].stop, np.concatenate([r.index for r in read]),
                       np.concatenate([r.logits for r in read]),
                       {name: np.concatenate([r.layers[name] for r in read]) for name in read[0].layers})


def _raise_failed(pending: list[Future]) -> None:
    """A chunk that failed to write (a full disk) stops the pass now, not at its end."""
    for future in pending:
        if future.done():
            future.result()


def remove_chunks(folder: Path) -> None:
    """The chunks of a finished pass (its result now lives in the cache entries)."""
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
