"""timm models by name: ``timm:resnet50`` builds ``timm.create_model("resnet50")`` without weights.

The preprocessing comes from the model's own ``pretrained_cfg`` (input size, interpolation, crop_pct,
mean, std), read without building the model: timm's evaluation transform resizes the shorter edge to
``floor(size / crop_pct)`` and centre-crops to the input size.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from netatlas.backend.errors import NetatlasError
from netatlas.backend.preprocessing import Preprocessing

PREFIX = "timm:"
FACTORIES = {"create_model"}   # timm:create_model with {"model_name": ...} is the factory form


def timm_name(spec: str | None) -> str | None:
    """The model name of a ``timm:NAME`` spec; None for other specs and for timm's own factories."""
    if not spec or not spec.startswith(PREFIX):
        return None
    name = spec[len(PREFIX):]
    return None if name in FACTORIES or not name else name


def model_names() -> list[str]:
    """``timm:NAME`` for every architecture timm knows; empty when timm is not installed."""
    try:
        import timm
    except ImportError:
        return []
    return [PREFIX + name for name in timm.list_models()]


def build_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    timm = _timm()
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise NetatlasError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise NetatlasError(f"timm model {name} does not accept {kwargs}: {exc}") from exc


def timm_preprocessing(name: str, kwargs: dict[str, Any] | None = None) -> Preprocessing:
    """The evaluation transform of ``name``'s pretrained config, with ``img_size``/``in_chans`` kwargs applied."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
    kwargs = kwargs or {}
    channels, height, width = (cfg.input_size if cfg is not None else (3, 224, 224))
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = int(kwargs.get("in_chans", channels))
    crop_pct = float(cfg.crop_pct) if cfg is not None and cfg.crop_pct else 0.875
    mean = tuple(cfg.mean) if cfg is not None else (0.485, 0.456, 0.406)
    std = tuple(cfg.std) if cfg is not None else (0.229, 0.224, 0.225)
    if channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return Preprocessing(size=(height, width), grayscale=channels == 1, mean=mean, std=std,
                         resize=math.floor(min(height, width) / crop_pct),
                         interpolation=(cfg.interpolation if cfg is not None else "bicubic") or "bicubic",
                         crop_rounding="round")


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise NetatlasError("timm models need the timm package: pip install timm") from exc
    return timm
