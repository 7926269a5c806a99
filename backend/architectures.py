"""Build an untrained model from an architecture spec: a torchvision name, ``timm:NAME`` or ``pkg.module:factory``."""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import Any

from torch import nn

from netatlas.backend.errors import NetatlasError
from netatlas.backend.timm_models import build_timm, timm_name


def torchvision_names() -> list[str]:
    return list(_torchvision_names())


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    """torchvision's registry is fixed once imported, and listing it walks its modules (0.2 s a page)."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models()))


def is_import_path(spec: str) -> bool:
    """An import path runs code from the named module; ``timm:NAME`` only names a timm architecture."""
    return ":" in spec and timm_name(spec) is None


def build_architecture(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision model name (``resnet18``, ``vit_b_16``), ``timm:NAME`` (both built without weights),
    or an import path.

    Import paths run code from the named module, so the app only offers the ones the server was
    started with or that sidecars under its roots declare; the CLI takes any.
    """
    kwargs = dict(kwargs or {})
    if timm_name(spec):
        return build_timm(timm_name(spec), kwargs)
    if spec.startswith("transformers:"):
        raise NetatlasError(f"{spec} is built from its config.json: open the save_pretrained folder (or a "
                            "weights file inside it) instead of naming the class")
    if is_import_path(spec):
        return _build_from_import_path(spec, kwargs)
    names = torchvision_names()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise NetatlasError(
            f"unknown architecture {spec!r}: give a torchvision model name (e.g. resnet18), timm:NAME "
            f"(e.g. timm:resnet50) or an import path 'package.module:factory'.{hint}")
    import torchvision

    try:
        return torchvision.models.get_model(spec, weights=None, **kwargs)
    except TypeError as exc:
        raise NetatlasError(f"architecture {spec} does not accept {kwargs}: {exc}") from exc


def _build_from_import_path(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise NetatlasError(f"cannot import architecture {spec!r}: {exc}") from exc
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise NetatlasError(f"{spec}(**{kwargs}) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise NetatlasError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
