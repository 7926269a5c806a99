"""No classifier, no predictions: a model predicts only through a head it declares, and a backbone's
default representation is its pooled output. Checked on real torchvision, timm and transformers models."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.classifier import Head, declared_head, predictions_for
from netatlas.backend.datasets import load_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.workspace import Workspace
from netatlas.cli import main
from tests.backbones import digit_folder, dinov2_folder


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone")
    return dinov2_folder(root), digit_folder(root)


def test_heads_are_read_from_what_the_model_is():
    import timm
    from torchvision.models import resnet18

    demo = load_checkpoint(demo_checkpoint())
    assert demo.head.width == 10 and "fc is Linear(64 -> 10)" in demo.head.why
    assert declared_head(resnet18(num_classes=7)).width == 7
    headless = resnet18()
    headless.fc = nn.Identity()
    head = declared_head(headless)
    assert head.width is None and "layer4.1.bn2 is a BatchNorm2d" in head.why
    assert declared_head(timm.create_model("resnet18", num_classes=0), "timm:resnet18").width is None
    assert declared_head(timm.create_model("resnet18", num_classes=5), "timm:resnet18").width == 5
    scripted = torch.jit.script(demo.model)
    assert declared_head(scripted).width == 10                # TorchScript keeps the Python class names


def test_hugging_face_classes_decide_their_head(backbone, tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    dinov2 = load_checkpoint(backbone[0])
    assert dinov2.head.width is None and "Dinov2Model has no classification head" in dinov2.head.why
    config = ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=4)
    assert declared_head(ViTForImageClassification(config), "transformers:ViTForImageClassification").width == 4


def test_labels_are_compared_only_with_the_classes_they_name():
    imagenet = Head(1000, "its last layer fc is Linear(512 -> 1000)")
    assert predictions_for(imagenet, ["cat", "dog", "car"], labeled=True)[0] is False
    assert predictions_for(imagenet, ["cat", "dog", "car"], labeled=False) == (True, "")   # names what it sees
    assert predictions_for(imagenet, ["0", "1", "2"], labeled=True) == (True, "")          # integer labels
    assert predictions_for(Head(3, "x"), ["cat", "dog", "car"], labeled=True) == (True, "")
    predicts, why = predictions_for(Head(3, "x"), ["a", "b", "c"], labeled=True, output_width=768)
    assert not predicts and "returns 768 values" in why


def test_a_backbone_has_no_predictions_and_is_represented_by_its_pooled_output(backbone, tmp_path):
    from transformers import AutoImageProcessor, Dinov2Model

    folder, digits = backbone
    ws = Workspace(load_checkpoint(folder), load_dataset(digits), ResultCache(tmp_path), "cpu", batch_size=8)
    assert ws.representation_layer() == "" and not ws.predicts
    acts = ws.activations([])
    assert acts.predictions is None and "no classification head" in ws.predictions_note
    model = Dinov2Model.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    from PIL import Image
    images = [Image.open(digits / name).convert("RGB") for name in ws.dataset.ids]
    with torch.no_grad():
        pooled = model(**processor(images, return_tensors="pt")).pooler_output.numpy()
    np.testing.assert_allclose(acts.logits, pooled, atol=1e-4)       # the CLS token after the final norm
    tree = ws.cluster_tree()
    assert np.isnan(tree.accuracy).all()


def test_the_cli_shows_no_prediction_for_a_backbone(backbone, tmp_path, capsys):
    folder, digits = backbone
    common = [str(folder), str(digits), "--cache-dir", str(tmp_path), "--device", "cpu"]
    assert main(["extract", *common, "-o", str(tmp_path / "x.parquet")]) == 0
    out, err = capsys.readouterr()
    table = pq.read_table(tmp_path / "x.parquet")
    assert "prediction" not in table.column_names and table.num_rows == 40
    assert "accuracy" not in out and "no predictions: Dinov2Model has no classification head" in err
    assert main(["cluster", *common, "-k", "3"]) == 0
    out, _ = capsys.readouterr()
    assert "accuracy" not in out and "tree of 40 images on the outputs" in out
    assert main(["embed", *common, "--method", "pca", "-o", str(tmp_path / "map.parquet")]) == 0
    assert "prediction" not in pq.read_table(tmp_path / "map.parquet").column_names


def test_a_head_missing_from_the_saved_weights_is_no_head(tmp_path):
    """A backbone's folder whose config names *ForImageClassification: transformers initialises the head at
    random; its argmax would be a made-up prediction."""
    import json

    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=28, patch_size=7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=4)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "architectures": ["ViTForImageClassification"]}))
    loaded = load_checkpoint(tmp_path)
    assert loaded.missing_weights == ["classifier.bias", "classifier.weight"]
    assert loaded.head.width is None and "initialised at random" in loaded.head.why
    assert any("initialised at random" in note for note in loaded.notes)
