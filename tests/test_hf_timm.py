"""Hugging Face save_pretrained folders and timm models, built here with the real libraries (tiny
configs, random weights, no downloads), checked against the libraries' own preprocessing and forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
import transformers
from PIL import Image
from transformers import (AutoImageProcessor, AutoModelForImageClassification, ConvNextConfig,
                          ConvNextForImageClassification, ConvNextImageProcessor, ViTConfig,
                          ViTForImageClassification, ViTImageProcessor)

from netatlas.backend.activations import extract_activations
from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.circuit.trace import trace_circuit
from netatlas.backend.datasets import folder_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.featviz import FeatvizSettings
from netatlas.backend.residual.blocks import find_residual_units
from netatlas.backend.residual.paths import PathSettings
from netatlas.backend.workspace import Workspace
from netatlas.cli import main
from tests.backbones import rgb_digit_folder

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 real MNIST digits as RGB PNGs of a few sizes, in class folders (labels 0..2)."""
    return rgb_digit_folder(tmp_path_factory.mktemp("digits"), CLASSES)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "vit-tiny"
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label=dict(enumerate(CLASSES)),
                       label2id={c: i for i, c in enumerate(CLASSES)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.3, 0.25]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def convnext_folder(tmp_path_factory) -> Path:
    """A ConvNeXt saved in three safetensors shards, its processor resizing 36 px and cropping 32."""
    folder = tmp_path_factory.mktemp("hf") / "convnext-tiny"
    torch.manual_seed(1)
    config = ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=4, image_size=32)
    ConvNextForImageClassification(config).save_pretrained(folder, max_shard_size="20KB")
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def library_logits(folder: Path, root: Path) -> tuple[list[str], torch.Tensor]:
    """The ids and logits transformers itself computes: its PIL image processor, then its model."""
    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    except TypeError:   # transformers 4: the slow processor is the PIL one
        processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    pixels = processor([Image.open(root / i).convert("RGB") for i in ids], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return ids, model(pixel_values=pixels).logits


@pytest.mark.parametrize("which", ["vit_folder", "convnext_folder"])
def test_hf_folder_extracts_what_transformers_computes(which, request, images):
    folder = request.getfixturevalue(which)
    loaded = load_checkpoint(folder)
    assert loaded.format == "transformers" and loaded.arch.startswith("transformers:")
    dataset = folder_dataset(images)
    acts = extract_activations(loaded.model, dataset, loaded.preprocessing, batch_size=5, num_workers=0)
    ids, expected = library_logits(folder, images)
    assert dataset.ids == ids
    np.testing.assert_allclose(acts.logits, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_hf_folder_classes_and_preprocessing_come_from_its_configs(vit_folder, convnext_folder):
    vit = load_checkpoint(vit_folder)
    assert vit.classes == CLASSES
    pre = vit.preprocessing
    assert pre.size == (32, 32) and pre.resize is None
    np.testing.assert_allclose(pre.mean, [0.4, 0.5, 0.6]) and np.testing.assert_allclose(pre.std, [0.2, 0.3, 0.25])
    convnext = load_checkpoint(convnext_folder)
    assert convnext.classes == [f"LABEL_{i}" for i in range(4)]
    assert convnext.preprocessing.size == (32, 32) and convnext.preprocessing.resize == int(32 / 0.875)
    assert convnext.preprocessing.interpolation == "bicubic"


def test_a_weights_file_inside_the_folder_and_a_pickled_bin_open_too(vit_folder, tmp_path):
    by_file = load_checkpoint(vit_folder / "model.safetensors")
    assert by_file.format == "transformers" and by_file.checkpoint_hash == load_checkpoint(vit_folder).checkpoint_hash
    legacy = tmp_path / "vit-bin"   # as transformers 4 wrote it: pytorch_model.bin, read with weights_only
    legacy.mkdir()
    (legacy / "config.json").write_text((vit_folder / "config.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(vit_folder, local_files_only=True)
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")
    loaded = load_checkpoint(legacy)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).logits, model.eval()(x).logits, atol=1e-5, rtol=1e-5)


def test_hf_vit_in_every_view(vit_folder, images, tmp_path):
    loaded = load_checkpoint(vit_folder)
    workspace = Workspace(loaded, folder_dataset(images), ResultCache(tmp_path / "cache"), "cpu", batch_size=6)
    modules = workspace.modules
    assert "vit.layers.0.attention" in set(modules["name"])
    acts = workspace.activations(["vit.layers.1"])
    assert acts.layers["vit.layers.1"].shape == (12, 32)        # tokens averaged per feature
    assert any("torch.export" in note for note in workspace.circuit.notes)   # fx fails on HF's forward
    units = find_residual_units(loaded.model)
    assert [u.label for u in units] == [f"vit.layers.{i} add {j}" for i in range(2) for j in range(2)]
    report = workspace.residual_paths(settings=PathSettings(images=12, samples=2))
    assert report.meta["decomposition_rel_error"] < 1e-5 and len(report.units) == 4
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    loaded.model(x).logits[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0     # gradients reach the pixels through the HF forward
    tree = workspace.cluster_tree()
    assert tree.n_images == 12 and sorted(tree.order) == list(range(12))
    facets = workspace.facets("", 1, featviz_settings=FeatvizSettings(steps=5))
    assert facets.images.shape[1:] == (32, 32, 3)
    assert (facets.activation > facets.start_activation).all()   # the optimization climbed the logit


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {"num_classes": 3}),
    ("vit_tiny_patch16_224", {"num_classes": 3, "img_size": 32, "patch_size": 8, "depth": 2}),
])
def test_timm_short_form_uses_the_models_own_preprocessing(name, kwargs, images, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path, f"timm:{name}", kwargs)
    size = (3, *loaded.preprocessing.size)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({"input_size": size}, model=model))
    dataset = folder_dataset(images)
    acts = extract_activations(loaded.model, dataset, loaded.preprocessing, batch_size=5, num_workers=0)
    x = torch.stack([transform(Image.open(images / i).convert("RGB")) for i in dataset.ids])
    with torch.no_grad():
        np.testing.assert_allclose(acts.logits, model(x).numpy(), atol=1e-5, rtol=1e-5)
    assert loaded.preprocessing.interpolation == model.pretrained_cfg["interpolation"]
    assert find_residual_units(loaded.model)      # BasicBlocks, or each ViT block's two adds
    assert trace_circuit(loaded.model, torch.zeros(1, *size)).ops


@pytest.mark.parametrize("make, message", [
    (lambda f: _edit_config(f, architectures=["ViTForImageClassificationX"]), "does not have"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:300]),
     "could not load"),
    (lambda f: (f / "config.json").write_text("{not json"), "cannot read"),
])
def test_bad_hf_folders_are_clear_errors(make, message, vit_folder, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in vit_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    make(folder)
    with pytest.raises(NetatlasError, match=message):
        load_checkpoint(folder)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def test_other_bad_model_inputs(tmp_path):
    with pytest.raises(NetatlasError, match="timm has no model"):
        load_checkpoint(_state(tmp_path), "timm:resnet_nonexistent")
    with pytest.raises(NetatlasError, match="config.json"):
        load_checkpoint(_state(tmp_path), "transformers:ViTForImageClassification")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NetatlasError, match="folder without config.json"):
        load_checkpoint(empty)


def _state(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, path)
    return path


def test_cli_on_a_hf_folder(vit_folder, images, tmp_path, capsys):
    assert main(["info", str(vit_folder)]) == 0
    out = capsys.readouterr().out
    assert "format=transformers" in out and "vit.layers.1.attention" in out
    cache = ["--cache-dir", str(tmp_path / "cache")]
    table = tmp_path / "acts.parquet"
    assert main(["extract", str(vit_folder), str(images), "--layers", "vit.layers.0", "-o", str(table), *cache]) == 0
    import pyarrow.parquet as pq
    rows = pq.read_table(table)
    assert rows.num_rows == 12 and rows.column("id").to_pylist() == sorted(
        p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert main(["diagram", str(vit_folder), "-o", str(tmp_path / "vit.svg")]) == 0
    assert (tmp_path / "vit.svg").stat().st_size > 1000
    assert main(["paths", str(vit_folder), str(images), "--images", "12", "--samples", "2", "--formats", "svg",
                 "-o", str(tmp_path / "paths"), *cache]) == 0
    assert main(["cluster", str(vit_folder), str(images), "-k", "3", *cache]) == 0
    assert main(["embed", str(vit_folder), str(images), "--method", "pca", *cache]) == 0
    assert main(["featviz", str(vit_folder), str(images), "--unit", "1", "-k", "2", "--steps", "3",
                 "-o", str(tmp_path / "fv"), *cache]) == 0
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_transformers_never_asked_the_network(vit_folder, monkeypatch):
    """Loading works with every network call refused (local files only, even with no hub cache)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HOME", str(vit_folder.parent / "no-hub-cache"))
    assert load_checkpoint(vit_folder).classes == CLASSES
    assert transformers.__version__
