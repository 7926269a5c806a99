"""Text-image models (CLIP, SigLIP, ALIGN, ...) opened as their image tower.

Such a model's forward needs text as well as pixels, and netatlas feeds images alone. Its image half is a
vision model and, for CLIP, a projection into the space it shares with text; that embedding is what the
model says about an image, so it is the tower's output, which the DendroMap and the Map cluster by default.
The text tower is left out of the module (so the module table, Diagram and Residual never trace it) and
the model's notes say so.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from netatlas.backend.errors import NetatlasError

TEXT_INPUTS = ("input_ids", "inputs_embeds")


def is_image_text_model(cls: type) -> bool:
    """Whether ``cls`` is a two-tower model: a forward that wants text besides ``pixel_values``, and an image
    half netatlas can run alone (``get_image_features``, from a ``vision_model``)."""
    try:
        params = [name for name in inspect.signature(cls.forward).parameters if name != "self"]
    except (TypeError, ValueError):
        return False
    return (bool(params) and params[0] in TEXT_INPUTS and "pixel_values" in params
            and hasattr(cls, "get_image_features"))


class ImageTower(nn.Module):
    """The vision model of a text-image model, and its projection when it has one: ``forward(pixels)`` is the
    model's own ``get_image_features(pixels)`` embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = getattr(model, "visual_projection", None)
        self.config = model.config
        self.source_class = type(model).__name__
        self.label = f"{self.source_class}'s image tower"       # how notes name it (classifier.declared_head)
        self.output_name = ("its image embedding (after the projection)" if self.visual_projection is not None
                            else "its pooled image features")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return pooled if self.visual_projection is None else self.visual_projection(pooled)


def image_tower(model: nn.Module, folder_name: str, missing: list[str]) -> tuple[ImageTower, str, list[str]]:
    """(the tower, a note saying what was left out, the tower's missing weights) of a loaded two-tower model;
    a tower whose weights the folder lacks (transformers initialised them at random) is refused."""
    if not isinstance(getattr(model, "vision_model", None), nn.Module):
        raise NetatlasError(f"{folder_name} holds a {type(model).__name__}, a text-image model without a "
                            "vision_model netatlas can run alone: save its vision tower on its own and open that")
    tower = ImageTower(model)
    own = tuple(name for name, _ in tower.named_children())
    untrained = [key for key in missing if key.startswith(own)]
    if untrained:
        raise NetatlasError(f"{folder_name}'s image tower is not in its weights ({len(untrained)} missing, e.g. "
                            f"{untrained[0]}): transformers would fill it with random numbers")
    note = (f"{type(model).__name__} opened as its image tower: the text tower is left out (not traced, not "
            f"shown); the model's output is {tower.output_name}")
    return tower, note, untrained
