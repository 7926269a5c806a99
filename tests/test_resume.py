"""Extraction survives a crash: a run killed part way resumes where it stopped and gives, to the bit, what
an uninterrupted run gives; two processes extracting the same thing at once compute it once."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from netatlas.backend import resumable
from netatlas.backend.activations import extract_activations
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.cli import main

BATCH, CHUNK_ROWS = 64, 256
N = 5000                    # the demo digits
CHUNK = resumable.chunk_size(N, BATCH, CHUNK_ROWS)   # 192: whole batches, about a twentieth of the pass

# The CLI in a child process, with small chunks, logging how many images each batch it computed covered.
DRIVER = """
import sys
import netatlas.backend.resumable as r
r.CHUNK_ROWS = int(sys.argv[1])
real, log = r.pass_batches, sys.argv[2]
def counting(*args, **kwargs):
    for batch in real(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{batch.stop - batch.start}\\n")
        yield batch
r.pass_batches = counting
from netatlas.cli import main
sys.exit(main(sys.argv[3:]))
"""


def extract_argv(cache: Path, output: Path) -> list[str]:
    return ["extract", "demo", "demo", "--layers", "blocks.3", "--batch-size", str(BATCH), "--device", "cpu",
            "-o", str(output), "--cache-dir", str(cache)]


def child(tmp: Path, cache: Path, output: Path, log: Path) -> subprocess.Popen:
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(script), str(CHUNK_ROWS), str(log), *extract_argv(cache, output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def computed(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    assert main(extract_argv(tmp / "cache", tmp / "whole.parquet")) == 0
    return tmp / "whole.parquet"


def test_a_killed_extraction_resumes_to_the_same_bits(uninterrupted, tmp_path, monkeypatch, capsys):
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).randint(2, N // CHUNK - 3)       # chunks written before the kill
    cache, output, log = tmp_path / "cache", tmp_path / "out.parquet", tmp_path / "computed.log"
    process = child(tmp_path, cache, output, log)
    parts = cache / "activations-pass"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*/[0-9]*.arrow"))) < kill_after:       # finished chunks, not temp files
        assert process.poll() is None, f"finished before the kill (seed {seed}): {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no progress (seed {seed})"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not output.exists()
    kept = sum(int(p.stem.split("-")[1]) - int(p.stem.split("-")[0])
               for p in parts.glob("*/[0-9]*.arrow"))
    assert kept >= kill_after * CHUNK, f"seed {seed}"

    rows = []
    real = resumable.pass_batches

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            rows.append(batch.stop - batch.start)
            yield batch
    monkeypatch.setattr(resumable, "pass_batches", counting)
    monkeypatch.setattr(resumable, "CHUNK_ROWS", CHUNK_ROWS)
    assert main(extract_argv(cache, output)) == 0, capsys.readouterr().err
    assert sum(rows) == N - kept, f"seed {seed}: the resumed run recomputed images already written"
    assert pq.read_table(output).equals(pq.read_table(uninterrupted)), f"seed {seed}"
    assert not list(parts.glob("*/*"))                  # the chunks go once the entries are written


def test_two_processes_extracting_the_same_layer_compute_it_once(uninterrupted, tmp_path):
    cache = tmp_path / "cache"
    logs = [tmp_path / f"computed-{i}.log" for i in range(2)]
    outputs = [tmp_path / f"out-{i}.parquet" for i in range(2)]
    processes = [child(tmp_path, cache, out, log) for out, log in zip(outputs, logs)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert sum(computed(log) for log in logs) == N               # one pass between them: the other waited
    for out in outputs:
        assert pq.read_table(out).equals(pq.read_table(uninterrupted))
    assert len(list((cache / "outputs").glob("*.parquet"))) == 1
    assert len(list((cache / "activations").glob("*.parquet"))) == 1


def test_chunks_of_another_pass_or_a_half_written_file_are_not_used(tmp_path):
    """A folder's leftovers that are not this pass's finished chunks are removed and computed again."""
    loaded, dataset = load_checkpoint(demo_checkpoint()), demo_dataset()
    part = dataset_head(dataset, 640)
    folder = tmp_path / "pass"
    whole = resumable.resumable_pass(loaded.model, part, loaded.preprocessing, ["blocks.3"], "mean", BATCH, "cpu",
                                     folder, "tag-a", chunk_rows=CHUNK_ROWS)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{a:012d}-{a + 64:012d}.arrow" for a in range(0, 640, 64)]  # 640 // 20: one batch each
    torn = (folder / names[1]).read_bytes()
    (folder / names[1]).write_bytes(torn[: len(torn) // 2])                # a torn file
    (folder / ".tmp-x.arrow").write_bytes(b"half")                     # a killed writer's temp file
    again = resumable.resumable_pass(loaded.model, part, loaded.preprocessing, ["blocks.3"], "mean", BATCH, "cpu",
                                     folder, "tag-a", chunk_rows=CHUNK_ROWS)
    assert np.array_equal(again.logits, whole.logits) and np.array_equal(again.layers["blocks.3"],
                                                                          whole.layers["blocks.3"])
    other = resumable.read_chunks(folder, "tag-b", 640)                   # another pass's key: nothing kept
    assert other == [] and not list(folder.iterdir())
    direct = extract_activations(loaded.model, part, loaded.preprocessing, ["blocks.3"], batch_size=BATCH, device="cpu")
    assert np.array_equal(whole.logits, direct.logits)


def dataset_head(dataset, n):
    from netatlas.backend.activations import row_slice

    return row_slice(dataset, range(n))
