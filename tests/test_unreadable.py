"""Unreadable images are never results: no row, no prediction, no accuracy, no place in a tree or a map.

A folder opens without reading its images, so a truncated, empty or mislabelled file is found when the
first pass decodes it. These tests hold every consumer to what the user sees: the rows written, the
counts printed, the trees and maps built, checked against a folder that holds only the readable images.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.cluster.tree import TreeSettings
from netatlas.backend.datasets import load_dataset
from netatlas.backend.demo import demo_checkpoint, demo_digits
from netatlas.backend.embedding import EmbedSettings
from netatlas.backend.workspace import Workspace
from netatlas.cli import main

BROKEN = ["3/truncated.png", "3/zero.png", "5/random.jpg", "7/text.png"]


def digit_folder(root: Path, broken: bool) -> Path:
    """120 real digits in class folders, and with ``broken`` four files no decoder can read."""
    images, labels, _ = demo_digits()
    for i in range(0, 5000, 42):
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / str(labels[i]) / f"{i:04d}.png")
    if broken:
        png = (root / "0" / "0000.png").read_bytes()
        (root / "3" / "truncated.png").write_bytes(png[: len(png) // 2])
        (root / "3" / "zero.png").write_bytes(b"")
        (root / "5" / "random.jpg").write_bytes(os.urandom(700))
        (root / "7" / "text.png").write_text("a note saved with an image's name")
        (root / "7" / "notes.txt").write_text("not an image name: never listed")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("unreadable")
    return digit_folder(base / "mixed", broken=True), digit_folder(base / "clean", broken=False)


@pytest.fixture(scope="module")
def loaded():
    return load_checkpoint(demo_checkpoint())


def test_the_workspace_computes_on_the_readable_images_only(folders, loaded, tmp_path):
    mixed, clean = folders
    ws = Workspace(loaded, load_dataset(mixed), ResultCache(tmp_path), "cpu", batch_size=16)
    assert len(ws.dataset) == 124                           # nothing is read before the first pass
    acts = ws.activations(["blocks.3"])
    reference = Workspace(loaded, load_dataset(clean), ResultCache(tmp_path / "clean"), "cpu", batch_size=16)
    want = reference.activations(["blocks.3"])
    assert sorted(ws.dataset.skipped) == BROKEN
    assert ws.dataset.ids == reference.dataset.ids and len(acts.logits) == 120
    np.testing.assert_array_equal(ws.dataset.labels, reference.dataset.labels)
    np.testing.assert_allclose(acts.logits, want.logits, atol=1e-5)
    np.testing.assert_array_equal(acts.predictions, want.predictions)
    assert all(Image.open(mixed / name).size for name in ws.dataset.ids)   # every row is a file that reads

    tree = ws.cluster_tree(settings=TreeSettings())
    assert tree.n_images == 120
    labeled = ws.dataset.labels >= 0
    direct = (acts.predictions == ws.dataset.labels)[labeled].mean()        # a count over readable images
    assert tree.accuracy[tree.root] == pytest.approx(direct)
    assert len(ws.embedding(settings=EmbedSettings(method="pca")).xy) == 120


def test_a_second_workspace_knows_the_unreadable_images_before_any_pass(folders, loaded, tmp_path, monkeypatch):
    from netatlas.backend import workspace as workspace_module

    mixed, _ = folders
    cache = ResultCache(tmp_path)
    Workspace(loaded, load_dataset(mixed), cache, "cpu", batch_size=16).activations([])
    monkeypatch.setattr(workspace_module, "resumable_pass", lambda *a, **k: pytest.fail("passed again"))
    again = Workspace(loaded, load_dataset(mixed), cache, "cpu", batch_size=16)
    assert len(again.dataset) == 120 and sorted(again.dataset.skipped) == BROKEN
    assert len(again.activations([]).logits) == 120


def test_a_file_that_breaks_later_changes_the_keys(folders, loaded, tmp_path):
    """A rewritten file is a new listing (size, mtime): nothing cached while it read is served with it."""
    mixed, _ = folders
    copy = shutil.copytree(mixed, tmp_path / "copy")
    cache = ResultCache(tmp_path / "cache")
    first = Workspace(loaded, load_dataset(copy), cache, "cpu", batch_size=16)
    first.activations([])
    (copy / "0" / "0000.png").write_bytes(b"\x89PNG broken now")
    second = Workspace(loaded, load_dataset(copy), cache, "cpu", batch_size=16)
    acts = second.activations([])
    assert "0/0000.png" in second.dataset.skipped and "0/0000.png" not in second.dataset.ids
    assert len(acts.logits) == 119 and second.dataset.manifest_hash != first.dataset.manifest_hash


def run_cli(capsys, *argv: str) -> tuple[str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_every_command_leaves_the_same_images_out(folders, tmp_path, capsys):
    mixed, clean = folders
    cache = ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    out, err = run_cli(capsys, "extract", "demo", str(mixed), "--layers", "blocks.3", "-o",
                       str(tmp_path / "x.parquet"), *cache)
    assert "left out 4 unreadable images" in err and "3/truncated.png" in err
    table = pq.read_table(tmp_path / "x.parquet")
    clean_out, _ = run_cli(capsys, "extract", "demo", str(clean), "--layers", "blocks.3", "-o",
                           str(tmp_path / "clean.parquet"), "--cache-dir", str(tmp_path / "c2"), "--device", "cpu")
    reference = pq.read_table(tmp_path / "clean.parquet")
    assert table.num_rows == 120 and table.column("id").to_pylist() == reference.column("id").to_pylist()
    assert not set(BROKEN) & set(table.column("id").to_pylist())
    labels, predictions = (table.column(c).to_numpy() for c in ("label", "prediction"))
    accuracy = f"accuracy {(labels == predictions).mean():.4f}"        # direct count over the rows written
    assert accuracy in out and accuracy in clean_out and "120 images" in out

    out, err = run_cli(capsys, "cluster", "demo", str(mixed), "-k", "2", "-o", str(tmp_path / "tree.parquet"), *cache)
    assert "tree of 120 images" in out and "left out 4 unreadable images" in err
    assert not any(name in out for name in BROKEN)
    out, err = run_cli(capsys, "embed", "demo", str(mixed), "--method", "pca", "-o", str(tmp_path / "map.parquet"),
                       *cache)
    assert "map of 120 images" in out and "left out 4" in err
    assert pq.read_table(tmp_path / "map.parquet").column("id").to_pylist() == reference.column("id").to_pylist()


def test_the_notebook_says_which_images_were_left_out(folders, tmp_path):
    import netatlas.notebook as na

    mixed, _ = folders
    atlas = na.open("demo", mixed, cache_dir=tmp_path, device="cpu")
    with pytest.warns(UserWarning, match=r"Left out 4 unreadable images \(3/truncated.png"):
        frame = atlas.activations(["blocks.3"])
    assert len(frame) == 120 and not set(BROKEN) & set(frame["id"])
    assert "120 images" in repr(atlas)


def test_a_folder_of_only_unreadable_images_is_one_line(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(os.urandom(300))
    (tmp_path / "a" / "y.png").write_bytes(b"")
    code = main(["extract", "demo", str(tmp_path), "-o", str(tmp_path / "x.parquet"), "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("netatlas: error: none of the 2 images of") and "a/x.png" in err
    assert not (tmp_path / "x.parquet").exists()
