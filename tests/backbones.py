"""Models without a classifier head, built here with the real libraries (random weights, no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from tests.shard_builders import spread_digits


def dinov2_folder(root: Path) -> Path:
    """A tiny DINOv2 backbone (``Dinov2Model``: features, no head) with DINOv2's image processor
    (shorter edge resized, then a centre crop), saved as a Hugging Face folder."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = root / "dinov2-tiny"
    torch.manual_seed(0)
    config = Dinov2Config(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          mlp_ratio=2)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      do_convert_rgb=True).save_pretrained(folder)
    return folder


def digit_folder(root: Path, n: int = 40) -> Path:
    """``n`` real MNIST digits (every class) as PNGs in class folders ``digit-0`` .. ``digit-9``."""
    images, labels = spread_digits(n)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / "digits" / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root / "digits"


TOWER = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2)
TEXT = dict(TOWER, vocab_size=64, max_position_embeddings=16)


def clip_folder(root: Path) -> Path:
    """A tiny CLIP (``CLIPModel``: text and image towers, a 32 px ViT) with CLIP's image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = root / "clip-tiny"
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1),
                        vision_config=dict(TOWER, image_size=32, patch_size=8), projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def siglip_folder(root: Path) -> Path:
    """A tiny SigLIP (``SiglipModel``: no projection, the vision model's pooling head) with its processor."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = root / "siglip-tiny"
    torch.manual_seed(1)
    config = SiglipConfig(text_config=TEXT, vision_config=dict(TOWER, image_size=32, patch_size=8))
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def saved_digits(root: Path, n: int = 40, train: int = 30) -> Path:
    """``n`` real MNIST digits as a ``datasets`` DatasetDict written by ``save_to_disk`` (train and test splits;
    an Image and a ClassLabel feature), the form ``datasets`` users keep a dataset in."""
    import datasets as hf

    images, labels = spread_digits(n)
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=[f"digit-{d}" for d in range(10)])})
    ds = hf.Dataset.from_dict({"image": [Image.fromarray(im) for im in images], "label": labels.tolist()},
                              features=features)
    hf.DatasetDict({"train": ds.select(range(train)), "test": ds.select(range(train, n))}).save_to_disk(
        str(root / "saved-digits"))
    return root / "saved-digits"


def rgb_digit_folder(root: Path, classes: list[str], n: int = 12) -> Path:
    """``n`` real MNIST digits as RGB PNGs of a few sizes (so resizing is exercised), in one folder per class
    (``classes``, taken in turn)."""
    import numpy as np

    from netatlas.backend.demo import demo_digits

    digits, _, _ = demo_digits()
    for i in range(n):
        image = Image.fromarray(np.stack([digits[i]] * 3, -1)).resize((40 + i, 34 + (i % 3)), Image.BILINEAR)
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:02d}.png")
    return root
