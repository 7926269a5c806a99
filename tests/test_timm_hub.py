"""timm models as timm saves them for the hub (``timm.models.save_for_hf``), built here with timm itself
(tiny test models, random weights, no downloads) and checked against timm's own reading of the folder
(``local-dir:``) and its own evaluation transform on PIL images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import timm.data
import torch
from PIL import Image

from netatlas.backend.activations import extract_activations
from netatlas.backend.checkpoint import default_preprocessing, load_checkpoint
from netatlas.backend.datasets import folder_dataset
from netatlas.backend.errors import NetatlasError
from netatlas.backend.hf_models import is_saved_model
from netatlas.backend.roots import AllowedRoots
from netatlas.cli import main
from tests.backbones import rgb_digit_folder

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 real MNIST digits as RGB PNGs of a few sizes, in class folders (labels 0..2)."""
    return rgb_digit_folder(tmp_path_factory.mktemp("digits"), CLASSES)


def save_for_hf(folder: Path, name: str, safe: bool, **kwargs) -> Path:
    """A timm model saved by timm for the hub, with class names (safetensors, or the torch pickle)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=len(CLASSES), **kwargs)
    timm.models.save_for_hf(model, folder, model_config={"label_names": CLASSES}, safe_serialization=safe)
    return folder


@pytest.fixture(scope="module")
def resnet_hub(tmp_path_factory) -> Path:
    return save_for_hf(tmp_path_factory.mktemp("timm") / "test-resnet", "test_resnet", safe=True)


@pytest.fixture(scope="module")
def gray_vit_hub(tmp_path_factory) -> Path:
    """A one-channel ViT in pytorch_model.bin: timm averages the RGB mean and std into one value."""
    return save_for_hf(tmp_path_factory.mktemp("timm") / "test-vit-gray", "test_vit", safe=False, in_chans=1)


def timm_logits(folder: Path, root: Path, ids: list[str], mode: str) -> torch.Tensor:
    """What timm computes: its own load of the folder and its own evaluation transform on PIL images."""
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    x = torch.stack([transform(Image.open(root / i).convert(mode)) for i in ids])
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("which, name, mode", [("resnet_hub", "test_resnet", "RGB"),
                                               ("gray_vit_hub", "test_vit", "L")])
def test_timm_folder_opens_through_timm_and_computes_what_timm_computes(which, name, mode, request, images):
    folder = request.getfixturevalue(which)
    loaded = load_checkpoint(folder)
    assert loaded.format == "timm-folder" and loaded.arch == f"timm:{name}"
    assert type(loaded.model).__module__.startswith("timm.")       # timm's class, not transformers' wrapper
    assert loaded.classes == CLASSES and loaded.head.width == len(CLASSES)
    assert loaded.preprocessing.grayscale == (mode == "L")
    dataset = folder_dataset(images)
    acts = extract_activations(loaded.model, dataset, loaded.preprocessing, batch_size=5, num_workers=0)
    expected = timm_logits(folder, images, dataset.ids, mode)
    np.testing.assert_allclose(acts.logits, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_preprocessing_comes_from_the_pretrained_cfg(resnet_hub):
    config = json.loads((resnet_hub / "config.json").read_text())["pretrained_cfg"]
    loaded = load_checkpoint(resnet_hub)
    pre = loaded.preprocessing
    assert pre.size == tuple(config["input_size"][1:]) and pre.interpolation == config["interpolation"]
    assert pre.resize == int(config["input_size"][1] / config["crop_pct"])
    np.testing.assert_allclose(pre.mean, config["mean"]) and np.testing.assert_allclose(pre.std, config["std"])
    assert default_preprocessing(resnet_hub, None) == pre        # what the page and the CLI flags start from
    assert any("label_names" in note and "pretrained_cfg" in note for note in loaded.notes)


def test_the_weight_file_the_own_arch_and_the_sidebar(resnet_hub, tmp_path):
    folder = load_checkpoint(resnet_hub)
    by_file = load_checkpoint(resnet_hub / "model.safetensors")
    assert by_file.format == "timm-folder" and by_file.checkpoint_hash == folder.checkpoint_hash
    again = load_checkpoint(resnet_hub, "timm:test_resnet")     # as a Dask worker reopens it
    assert again.format == "timm-folder" and not any("ignored" in note for note in again.notes)
    assert any("ignored" in note for note in load_checkpoint(resnet_hub, "resnet18").notes)
    root = tmp_path / "models"
    shutil.copytree(resnet_hub, root / "mine")
    assert is_saved_model(root / "mine")
    assert AllowedRoots.of(root).checkpoints() == [(root / "mine").resolve()]   # one entry, its weights not again


def test_cli_info_and_extract_on_a_timm_folder(resnet_hub, images, tmp_path, capsys):
    assert main(["info", str(resnet_hub)]) == 0
    out = capsys.readouterr().out
    assert "format=timm-folder" in out and "arch=timm:test_resnet" in out and "input=1x3x160x160" in out
    assert "3 classes from label_names (cat, dog, fish)" in out
    table = tmp_path / "acts.parquet"
    assert main(["extract", str(resnet_hub), str(images), "-o", str(table),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = pq.read_table(table)
    assert rows.num_rows == 12 and rows.column("id").to_pylist() == sorted(
        p.relative_to(images).as_posix() for p in images.rglob("*.png"))


def _broken(source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(source, folder)
    return folder


def test_an_architecture_timm_lacks_is_one_line(resnet_hub, tmp_path, capsys):
    folder = _broken(resnet_hub, tmp_path)
    _edit(folder, architecture="resnet_that_timm_lacks")
    with pytest.raises(NetatlasError, match="resnet_that_timm_lacks"):
        load_checkpoint(folder)
    assert main(["info", str(folder)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netatlas: error: ") and "resnet_that_timm_lacks" in lines[0]
    assert "Traceback" not in captured.err + captured.out and "transformers" not in lines[0]


@pytest.mark.parametrize("change, message", [
    (lambda f: _edit(f, num_classes=4, model_args={"num_classes": 4}), "does not fit the weights"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:300]),
     "not a readable safetensors"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights"),
])
def test_a_broken_timm_folder_is_a_clear_error(change, message, resnet_hub, tmp_path):
    folder = _broken(resnet_hub, tmp_path)
    change(folder)
    with pytest.raises(NetatlasError, match=message):
        load_checkpoint(folder)


def _edit(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
