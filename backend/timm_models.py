"""timm models by name: ``timm:resnet50`` builds ``timm.create_model("resnet50")`` without weights.

The preprocessing comes from the model's own ``pretrained_cfg`` (input size, interpolation, crop_pct,
mean, std), read without building the model: timm's evaluation transform resizes the shorter edge to
``floor(size / crop_pct)`` and centre-crops to the input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from netatlas.backend.errors import NetatlasError
from netatlas.backend.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

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
    timm = import_timm()
    if not timm.is_model(name):
        close = close_names(name)
        raise NetatlasError(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise NetatlasError(f"timm model {name} does not accept {kwargs}: {exc}") from exc


def close_names(name: str) -> list[str]:
    """Up to three timm architectures spelled like ``name`` (a typo's likely meaning)."""
    import difflib

    return difflib.get_close_matches(name, import_timm().list_models(), n=3)


def timm_preprocessing(name: str, kwargs: dict[str, Any] | None = None) -> Preprocessing:
    """The evaluation transform of ``name``'s pretrained config, with ``img_size``/``in_chans`` kwargs applied."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
    kwargs = kwargs or {}
    channels, height, width = (cfg.input_size if cfg is not None else (3, 224, 224))
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = int(kwargs.get("in_chans", channels))
    return data_config_preprocessing((channels, height, width), cfg.crop_pct if cfg is not None else None,
                                     cfg.mean if cfg is not None else IMAGENET_MEAN,
                                     cfg.std if cfg is not None else IMAGENET_STD,
                                     cfg.interpolation if cfg is not None else None)


def data_config_preprocessing(input_size: Sequence[int], crop_pct: float | None, mean: Sequence[float],
                              std: Sequence[float], interpolation: str | None) -> Preprocessing:
    """timm's evaluation transform as a Preprocessing: the shorter edge resized to ``floor(size / crop_pct)``
    and a centre crop at the input size, placed as torchvision's CenterCrop rounds; one channel takes the
    mean of an RGB mean and std, as timm does for a one-channel model."""
    channels, height, width = (int(v) for v in input_size)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return Preprocessing(size=(height, width), grayscale=channels == 1, mean=mean, std=std,
                         resize=math.floor(min(height, width) / float(crop_pct or 0.875)),
                         interpolation=interpolation or "bicubic", crop_rounding="round")


def import_timm():
    """The timm package, or the NetatlasError that says how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise NetatlasError("timm models need the timm package: pip install timm") from exc
    return timm
