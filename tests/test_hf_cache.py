"""The Hugging Face cache, offline: a cache tree built here the way the hub writes it (files in blobs/,
snapshots/<rev>/ of relative symlinks into them, refs/main naming <rev>), opened by repo folder, by id and by
id@revision through the backend, the CLI and the page's sidebar, equal to the snapshot folder it names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from netatlas.app.config import AppConfig
from netatlas.app.loader_view import LoaderView
from netatlas.app.state import AppState
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import load_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.hf_cache import hub_cache_dir, local_path, parse_repo_id, repo_label
from netatlas.backend.hf_models import folder_hash
from netatlas.backend.roots import AllowedRoots
from netatlas.cli import build_parser, main
from tests.backend_support import run_coroutine
from tests.shard_builders import encode, image_table, spread_digits, write_shards

CLASSES = ["cat", "dog", "fish"]
REV = "a" * 40
OLD_REV = "b" * 40


def cache_repo(cache: Path, folder_name: str, files: Path, revisions: dict[str, str | None]) -> Path:
    """``cache/folder_name`` holding ``files`` as the hub stores them: each file once in blobs/ (named by its
    sha256), each revision's snapshot a tree of relative symlinks into blobs/, refs/<ref> naming a revision."""
    repo = cache / folder_name
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rev, ref in revisions.items():
        for source in sorted(p for p in files.rglob("*") if p.is_file()):
            data = source.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = repo / "snapshots" / rev / source.relative_to(files)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        if ref:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(rev)
    return repo


@pytest.fixture(scope="module")
def vit_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "vit"
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label=dict(enumerate(CLASSES)),
                       label2id={c: i for i, c in enumerate(CLASSES)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> Path:
    """24 real digits as PNG bytes in the hub's Parquet layout (data/train-*.parquet), labels 0..9."""
    folder = tmp_path_factory.mktemp("saved") / "digits"
    images, labels = spread_digits(24)
    write_shards(folder / "data", image_table([encode(im) for im in images], labels), 1)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch, vit_files, digit_files) -> Path:
    """HF_HUB_CACHE with the model org/vit (main, and an older revision tagged v1) and the dataset org/digits."""
    hub = tmp_path / "hub"
    cache_repo(hub, "models--org--vit", vit_files, {OLD_REV: "v1", REV: "main"})
    cache_repo(hub, "datasets--org--digits", digit_files, {REV: "main"})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)                      # no org/ folder here: the ids are not paths
    return hub


def logits(loaded) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return loaded.model(torch.rand(2, 3, 32, 32)).logits


# ----------------------------------------------------------------------------- backend
def test_a_model_opens_by_repo_folder_id_and_revision_as_its_snapshot(cache, vit_files):
    snapshot = cache / "models--org--vit" / "snapshots" / REV
    assert (snapshot / "model.safetensors").is_symlink()
    reference = load_checkpoint(snapshot)
    assert reference.classes == CLASSES and reference.format == "transformers"
    # symlinks are followed and hashed by content: the same hash as the folder save_pretrained wrote
    assert reference.checkpoint_hash == folder_hash(vit_files)
    for given in (cache / "models--org--vit", "org/vit", "org/vit@main", f"org/vit@{REV}", Path("org/vit")):
        loaded = load_checkpoint(given)
        assert loaded.path == snapshot, given
        assert loaded.identity == reference.identity and loaded.classes == CLASSES
        torch.testing.assert_close(logits(loaded), logits(reference), rtol=0, atol=0)
    for older in (f"org/vit@{OLD_REV}", "org/vit@v1"):
        assert load_checkpoint(older).path == snapshot.parent / OLD_REV


def test_a_dataset_opens_by_repo_folder_and_id_with_the_same_rows(cache):
    snapshot = cache / "datasets--org--digits" / "snapshots" / REV
    reference = load_dataset(snapshot)
    images, labels = spread_digits(24)
    assert len(reference) == 24 and reference.labels.tolist() == labels.tolist()
    for given in (cache / "datasets--org--digits", "org/digits", f"org/digits@{REV}"):
        ds = load_dataset(given)
        assert ds.ids == reference.ids and ds.manifest_hash == reference.manifest_hash, given
        assert ds.labels.tolist() == reference.labels.tolist()
        for i in (0, 23):
            np.testing.assert_array_equal(ds.read(i), images[i])


def test_the_only_snapshot_opens_without_refs_main(cache, vit_files):
    cache_repo(cache, "models--solo--vit", vit_files, {REV: None})
    assert load_checkpoint("solo/vit").path == cache / "models--solo--vit" / "snapshots" / REV


def test_an_existing_path_wins_over_an_id(cache, tmp_path, vit_files):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "vit").symlink_to(vit_files)
    assert local_path("org/vit", "model") == Path("org/vit")
    assert load_checkpoint("org/vit").path == Path("org/vit")


@pytest.mark.parametrize("given, kind, says", [
    ("org/missing", "model", [("org/missing is not a path, nor a model in the Hugging Face cache: there is no "
                               "{hub}/models--org--missing"), "comes from $HF_HUB_CACHE", "`hf download org/missing`"]),
    ("org/vit", "dataset", ["nor a dataset", "there is no {hub}/datasets--org--vit", "--repo-type dataset"]),
    ("org/vit@v9", "model", ["org/vit has no revision v9 in the Hugging Face cache ({hub}/models--org--vit)",
                             "ref main, ref v1", f"snapshot {REV}"]),
])
def test_what_is_not_cached_says_where_netatlas_looked(cache, given, kind, says):
    opener = load_checkpoint if kind == "model" else load_dataset
    with pytest.raises(NetatlasError) as error:
        opener(given)
    for part in says:
        assert part.format(hub=cache) in str(error.value)


def test_a_repo_folder_without_a_usable_snapshot_says_so(cache, vit_files):
    empty = cache / "models--org--empty"
    (empty / "blobs").mkdir(parents=True)
    with pytest.raises(NetatlasError, match="org--empty is in the Hugging Face cache .* but has no snapshot"):
        load_checkpoint(empty)
    with pytest.raises(NetatlasError, match="org/empty is in the Hugging Face cache .* but has no snapshot"):
        load_checkpoint("org/empty")
    cache_repo(cache, "models--two--vit", vit_files, {REV: None, OLD_REV: None})
    with pytest.raises(NetatlasError, match="2 snapshots .* and no refs/main: choose one as two/vit@<revision>"):
        load_checkpoint("two/vit")
    gone = cache_repo(cache, "models--gone--vit", vit_files, {REV: "main"})
    (gone / "refs" / "main").write_text("c" * 40)
    with pytest.raises(NetatlasError, match="names the snapshot c{40} for main, but it is not there"):
        load_checkpoint("gone/vit")


def test_the_cache_is_found_where_huggingface_hub_looks(monkeypatch, tmp_path):
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hub_cache_dir() == tmp_path / "new"


def test_only_owner_slash_name_is_an_id():
    assert parse_repo_id("org/vit") == ("org/vit", None)
    assert parse_repo_id("org/vit-base_16.x@refs/pr/1") == ("org/vit-base_16.x", "refs/pr/1")
    for text in ("demo", "resnet18", "./x", "a/b/c", "/abs/path", "org--x/y", "a/../b", "~/x"):
        assert parse_repo_id(text) is None, text


# ----------------------------------------------------------------------------- CLI
def test_the_cli_takes_ids(cache, tmp_path, capsys):
    assert main(["info", "org/vit"]) == 0
    assert capsys.readouterr().out.startswith("org/vit  format=transformers")
    out = tmp_path / "out.parquet"
    assert main(["extract", "org/vit", "org/digits", "-o", str(out), "--cache-dir", str(tmp_path / "results"),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    table = pq.read_table(out)
    assert table.num_rows == 24 and table.column("label").to_pylist() == spread_digits(24)[1].tolist()
    assert main(["info", "org/missing"]) == 2
    assert "org/missing is not a path, nor a model in the Hugging Face cache" in capsys.readouterr().err


def test_cli_preprocessing_flags_apply_over_the_cached_models_own(cache, capsys):
    """``--size`` changes one field of the cached ViT's image processor (its mean and std stay), not of the
    ImageNet default a path that does not exist would get."""
    from netatlas.backend.arguments import checkpoint_path, preprocessing_from_args

    args = build_parser().parse_args(["extract", "org/vit", "org/digits", "-o", "x.parquet", "--size", "40"])
    own = load_checkpoint("org/vit").preprocessing
    chosen = preprocessing_from_args(args, checkpoint_path(args.checkpoint))
    assert chosen.size != own.size and tuple(chosen.mean) == tuple(own.mean) != (0.485, 0.456, 0.406)


def test_the_notebook_takes_ids(cache, tmp_path):
    import netatlas as na

    atlas = na.open("org/vit", "org/digits", cache_dir=tmp_path / "results")
    assert len(atlas.workspace.dataset) == 24
    assert atlas.workspace.loaded.path == load_checkpoint("org/vit").path
    assert atlas.model().data["name"].iloc[0] == "(model)"


# ----------------------------------------------------------------------------- the page
def serve_config(*argv: str) -> AppConfig:
    return AppConfig.from_args(build_parser().parse_args(["serve", *argv]))


def test_the_sidebar_lists_cached_repos_by_id_when_launched_with_one(cache, tmp_path):
    config = serve_config("--checkpoint", "org/vit", "--data", "org/digits", "--cache-dir", str(tmp_path / "r"))
    assert config.roots.hub == cache.resolve()
    loader = LoaderView(AppState(config))
    model = cache.resolve() / "models--org--vit" / "snapshots" / REV
    data = cache.resolve() / "datasets--org--digits" / "snapshots" / REV
    assert loader.checkpoint.options["org/vit"] == str(model)
    assert loader.dataset.options["org/digits"] == str(data)
    assert loader.checkpoint.value == str(model) and loader.dataset.value == str(data)
    labels = [*loader.checkpoint.options, *loader.dataset.options]
    assert not [label for label in labels if REV in label or label.endswith("/.")], labels
    assert config.roots.check(str(model)) == model
    run_coroutine(loader.load())
    assert loader.state.workspace is not None, loader.state.status.object
    assert loader.state.workspace.loaded.classes == CLASSES and len(loader.state.workspace.dataset) == 24
    loader.state.release()


def test_a_snapshot_given_as_a_path_is_named_by_its_id(cache, tmp_path):
    snapshot = cache / "models--org--vit" / "snapshots" / REV
    config = serve_config("--checkpoint", str(snapshot), "--cache-dir", str(tmp_path / "r"))
    loader = LoaderView(AppState(config))
    assert loader.checkpoint.options["org/vit"] == str(snapshot.resolve())
    assert loader.checkpoint.value == str(snapshot.resolve())
    assert repo_label(snapshot.parent / OLD_REV) == f"org/vit@{OLD_REV[:12]}"
    assert repo_label(snapshot / "config.json") == "org/vit/config.json"


def test_the_cache_stays_unreadable_unless_the_launch_names_it(cache, tmp_path):
    config = serve_config("--cache-dir", str(tmp_path / "r"))
    assert config.roots.hub is None
    assert "org/vit" not in LoaderView(AppState(config)).checkpoint.options
    with pytest.raises(NetatlasError, match="outside the folders"):
        config.roots.check(str(cache / "models--org--vit" / "snapshots" / REV))
    roots = AllowedRoots.of(cache)                   # --root on the cache itself lists it by id as well
    assert "org/vit" in LoaderView(AppState(AppConfig(roots=roots))).checkpoint.options
