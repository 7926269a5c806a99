"""Whether a model predicts classes: predictions and accuracy exist only for a declared classifier head.

An argmax over any output would always give a number; over a backbone's pooled features it is a made-up
prediction. So a model has predictions only when it declares a classifier output, decided from what it
is, never from what it returns:

- a Hugging Face ``*ForImageClassification`` class (its ``config.num_labels``); any other class
  (``Dinov2Model``, ``ViTModel``, ``CLIPModel``) is a backbone;
- a timm model built with ``num_classes > 0`` (``num_classes=0`` removes the head);
- any other module (torchvision, an import path, a pickled module, TorchScript): its last parametrized
  leaf, in definition order, is an ``nn.Linear`` (torchvision defines ``fc``/``classifier``/``heads``
  last; a head replaced by ``nn.Identity`` leaves a norm or a conv there).

The dataset decides the rest (``predictions_for``): labels are compared with predictions only when they
name the head's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn


@dataclass(frozen=True)
class Head:
    """The classifier output a model declares (``width`` classes), or none (``width`` None); ``why`` says how
    this was decided, in words shown to the user."""

    width: int | None
    why: str

    @property
    def declared(self) -> bool:
        return self.width is not None


def declared_head(model: nn.Module, arch: str | None = None, missing: Iterable[str] = ()) -> Head:
    """The model's classifier head, decided from its class (Hugging Face, timm) or its last layer; a head
    whose weights the loader did not find (``missing``: it initialised them at random) is no head."""
    head = _declared(model, arch)
    untrained = [key for key in missing if any(key.startswith(path + ".") for path in _head_paths(model))]
    if head.declared and untrained:
        return Head(None, f"{type(model).__name__}'s classification head ({', '.join(untrained)}) is not in the "
                          "saved weights and was initialised at random, so there are no predictions")
    return head


def _head_paths(model: nn.Module) -> list[str]:
    """The module path of the last parametrized leaf: where a classification head lives."""
    return [path for path, _ in _parametrized_leaves(model)[-1:]]


def _parametrized_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in model.named_modules()
            if not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False))]


def _declared(model: nn.Module, arch: str | None) -> Head:
    name = type(model).__name__
    if arch and arch.startswith("transformers:"):
        if "ForImageClassification" in name:
            width = int(getattr(model.config, "num_labels", 0)) or None
            return Head(width, f"{name} has a classification head of {width} labels")
        # An image tower (image_towers.ImageTower) names the model it came from and what its output is.
        name = getattr(model, "label", name)
        output = getattr(model, "output_name", "its pooled features")
        return Head(None, f"{name} has no classification head (a backbone): its output is {output}, so there "
                          "are no predictions and no accuracy")
    if arch and arch.startswith("timm:") and hasattr(model, "num_classes"):
        if int(model.num_classes) > 0:
            return Head(int(model.num_classes), f"timm {name} with a head of {model.num_classes} classes")
        return Head(None, f"timm {name} built with num_classes=0 (no head): its output is its pooled "
                          "features, so there are no predictions and no accuracy")
    return _last_layer_head(model)


def _last_layer_head(model: nn.Module) -> Head:
    leaves = _parametrized_leaves(model)
    if not leaves:
        return Head(None, f"{type(model).__name__} has no parametrized layer, so no classifier head")
    path, last = leaves[-1]
    kind = getattr(last, "original_name", type(last).__name__)   # TorchScript keeps the Python class name
    if kind == "Linear" and getattr(last, "weight", None) is not None and last.weight.ndim == 2:
        out_features, in_features = last.weight.shape
        return Head(int(out_features), f"its last layer {path} is Linear({in_features} -> {out_features})")
    return Head(None, f"its last layer {path} is a {kind}, not a Linear classifier: there are no "
                      "predictions and no accuracy")


def predictions_for(head: Head, classes: list[str], labeled: bool,
                    output_width: int | None = None) -> tuple[bool, str]:
    """(whether the model's argmax is a prediction on this dataset, why not when it is not).

    On a labeled dataset the head's classes must be the labels' classes: the same count, or labels that
    are plain integers (``classes`` "0", "1", ...: an .npz without names) indexing the head's outputs.
    A 1000-way ImageNet head on a folder of 3 named classes predicts classes the labels do not name, and
    an accuracy over them would be wrong. ``output_width``, once a pass has run, must be the head's
    width (the declared head is what the model returns)."""
    if not head.declared:
        return False, head.why
    if output_width is not None and output_width != head.width:
        return False, (f"the model returns {output_width} values per image but {head.why}: its output is "
                       "not that head's, so there are no predictions")
    integer_labels = classes == [str(i) for i in range(len(classes))]
    if labeled and head.width != len(classes) and not (integer_labels and len(classes) <= head.width):
        return False, (f"{head.why}, but the dataset has {len(classes)} named classes: its predictions do not "
                       "name the dataset's classes, so there are no predictions and no accuracy")
    return True, ""
