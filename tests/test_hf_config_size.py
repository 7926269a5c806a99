"""Hugging Face folders without preprocessor_config.json (what ``Trainer.save_model`` leaves when no processor
was passed): the input size and channels come from config.json, the rest from the defaults of the image
processor class transformers registers for the model type, checked against that class run by itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from PIL import Image
from transformers import (CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model, ViTConfig,
                          ViTForImageClassification)

from netatlas.backend.activations import extract_activations
from netatlas.backend.checkpoint import default_preprocessing, load_checkpoint
from netatlas.backend.datasets import folder_dataset
from netatlas.cli import main
from tests.backbones import rgb_digit_folder

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """12 real MNIST digits as RGB PNGs of a few sizes, in class folders (labels 0..2)."""
    return rgb_digit_folder(tmp_path_factory.mktemp("digits"), CLASSES)


def processor_class(name: str) -> type:
    """transformers' PIL image processor of that name (transformers 5: ``*Pil``; 4: the slow one)."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def vit_folder(root: Path, channels: int) -> Path:
    """A ViT for 64 px images saved by save_pretrained alone: no preprocessor_config.json."""
    folder = root / f"vit-64-{channels}"
    torch.manual_seed(0)
    config = ViTConfig(image_size=64, patch_size=16, num_channels=channels, num_hidden_layers=1, hidden_size=32,
                       num_attention_heads=2, intermediate_size=64, num_labels=3, id2label=dict(enumerate(CLASSES)),
                       label2id={c: i for i, c in enumerate(CLASSES)})
    ViTForImageClassification(config).save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists()
    return folder


def vit_processor(channels: int):
    """ViT's image processor with its own defaults at 64 px; one channel takes the mean of its mean and std."""
    cls = processor_class("ViTImageProcessor")
    if channels == 3:
        return cls(size={"height": 64, "width": 64})
    defaults = cls()
    return cls(size={"height": 64, "width": 64}, image_mean=[float(np.mean(defaults.image_mean))],
               image_std=[float(np.mean(defaults.image_std))])


@pytest.mark.parametrize("channels", [3, 1])
def test_a_vit_without_a_processor_takes_its_config_size(channels, images, tmp_path):
    folder = vit_folder(tmp_path, channels)
    loaded = load_checkpoint(folder)
    assert loaded.input_shape == (1, channels, 64, 64) and loaded.classes == CLASSES
    assert default_preprocessing(folder, None) == loaded.preprocessing
    dataset = folder_dataset(images)
    acts = extract_activations(loaded.model, dataset, loaded.preprocessing, batch_size=5, num_workers=0)
    mode = "RGB" if channels == 3 else "L"
    pixels = vit_processor(channels)([Image.open(images / i).convert(mode) for i in dataset.ids],
                                     return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = loaded.model(pixel_values=pixels).logits
    np.testing.assert_allclose(acts.logits, expected.numpy(), atol=1e-5, rtol=1e-5)


def netatlas_pixels(pre, paths: list[Path]) -> torch.Tensor:
    """The model input netatlas makes of image files: decoded and resized once, then scaled and normalized."""
    return pre.uint8_to_tensor(np.stack([pre.pil_to_uint8(Image.open(p)) for p in paths]), resized=True)


def test_a_shorter_edge_and_crop_processor_keeps_its_ratio_at_the_config_size(images, tmp_path):
    """DINOv2 (BiT's processor: shorter edge, then a centre crop) saved without its processor, 28 px."""
    folder = tmp_path / "dinov2"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             mlp_ratio=2)).save_pretrained(folder)
    loaded = load_checkpoint(folder)
    cls = processor_class("BitImageProcessor")
    defaults = cls()
    edge = round(defaults.size["shortest_edge"] * 28 / defaults.crop_size["height"])
    assert loaded.preprocessing.size == (28, 28) and loaded.preprocessing.resize == edge
    paths = sorted(images.rglob("*.png"))
    expected = cls(size={"shortest_edge": edge}, crop_size={"height": 28, "width": 28})(
        [Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(netatlas_pixels(loaded.preprocessing, paths), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert loaded.model(torch.zeros(loaded.input_shape)).last_hidden_state.shape[1] == 1 + (28 // 7) ** 2


def test_a_multi_tower_config_gives_its_vision_config_size(tmp_path):
    """CLIP keeps image_size and num_channels in vision_config; the processor is CLIP's."""
    folder = tmp_path / "clip"
    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 64},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 40, "patch_size": 8},
                        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    pre = default_preprocessing(folder, None)
    clip = processor_class("CLIPImageProcessor")()
    assert pre.size == (40, 40) and pre.interpolation == "bicubic"
    np.testing.assert_allclose(pre.mean, clip.image_mean) and np.testing.assert_allclose(pre.std, clip.image_std)


def test_cli_info_and_extract_on_a_folder_without_a_processor(images, tmp_path, capsys):
    folder = vit_folder(tmp_path, 3)
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "input=1x3x64x64" in out and "ViTImageProcessor" in out and "image_size 64" in out
    table = tmp_path / "acts.parquet"
    assert main(["extract", str(folder), str(images), "-o", str(table), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert pq.read_table(table).num_rows == 12
