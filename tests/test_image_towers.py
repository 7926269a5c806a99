"""Text-image models (CLIP, SigLIP) saved by transformers open as their image tower: the output is the model's
own image embedding on its own preprocessing, the text tower is left out and said to be, and there are no
predictions (such a model has no classifier head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessor, CLIPModel, SiglipImageProcessor, SiglipModel

from netatlas.backend.activations import extract_activations
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.circuit.trace import trace_circuit
from netatlas.backend.classifier import declared_head
from netatlas.backend.datasets import folder_dataset
from netatlas.backend.demo import demo_digits
from netatlas.backend.residual.blocks import find_residual_units
from netatlas.viz.circuit import render
from netatlas.cli import main
from tests.backbones import clip_folder, siglip_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 real MNIST digits as RGB PNGs of a few sizes, in two class folders."""
    root = tmp_path_factory.mktemp("digits")
    digits, _, _ = demo_digits()
    for i in range(8):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.stack([digits[i]] * 3, -1)).resize((36 + i, 40), Image.BILINEAR).save(folder / f"{i}.png")
    return root


BUILDERS = {"clip": (clip_folder, CLIPModel, CLIPImageProcessor),
            "siglip": (siglip_folder, SiglipModel, SiglipImageProcessor)}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def saved(request, tmp_path_factory):
    build, model_class, processor_class = BUILDERS[request.param]
    return build(tmp_path_factory.mktemp(request.param)), model_class, processor_class


def library_embeddings(folder: Path, model_class, processor_class, root: Path) -> tuple[list[str], torch.Tensor]:
    """What transformers itself computes: the folder's image processor (PIL, as netatlas decodes), then
    get_image_features."""
    model = model_class.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert isinstance(processor, processor_class) or processor_class.__name__[:-len("ImageProcessor")] in type(
        processor).__name__
    ids = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    pixels = processor([Image.open(root / i).convert("RGB") for i in ids], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return ids, getattr(out, "pooler_output", out)


def test_a_text_image_model_is_its_image_embedding(saved, images):
    folder, model_class, processor_class = saved
    loaded = load_checkpoint(folder)
    dataset = folder_dataset(images)
    acts = extract_activations(loaded.model, dataset, loaded.preprocessing, batch_size=3, num_workers=0)
    ids, expected = library_embeddings(folder, model_class, processor_class, images)
    assert dataset.ids == ids
    np.testing.assert_allclose(acts.logits, expected.numpy(), atol=1e-5, rtol=1e-5)


def test_the_text_tower_is_left_out_and_said_to_be(saved):
    folder, model_class, _ = saved
    loaded = load_checkpoint(folder)
    names = [name for name, _ in loaded.model.named_modules()]
    assert not [n for n in names if "text" in n] and any(n.startswith("vision_model.encoder") for n in names)
    assert any("the text tower is left out" in note for note in loaded.notes)
    assert loaded.arch == f"transformers:{model_class.__name__}"
    assert loaded.head.width is None and declared_head(loaded.model, loaded.arch).width is None
    assert loaded.head.why.startswith(f"{model_class.__name__}'s image tower has no classification head")
    units = find_residual_units(loaded.model)           # the vision encoder's residual layers, nothing of text
    assert units and all(unit.module.startswith("vision_model.") for unit in units)
    circuit = trace_circuit(loaded.model, torch.zeros(1, 3, 32, 32))    # the Diagram: the image tower alone
    assert circuit.ops and not [op for op in circuit.ops if "text" in str(op)]
    # Every module open: Graphviz 2.43's newrank layout crashed (SIGSEGV) on the CLIP tower's nested fences.
    assert render(circuit.view(None, set(), set()), "svg").startswith(b"<?xml")


def test_info_says_the_text_tower_is_left_out(saved, capsys):
    folder, _, _ = saved
    assert main(["info", str(folder)]) == 0
    assert "the text tower is left out" in capsys.readouterr().out
