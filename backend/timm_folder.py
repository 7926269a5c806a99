"""timm models as timm saves them for the hub (``timm.models.save_for_hf``; every ``timm/...`` repo).

The folder holds config.json (the ``architecture``, its ``model_args`` and ``num_classes``, the
``pretrained_cfg`` with input size, crop, mean, std and interpolation, optionally ``label_names``)
and the native state dict as model.safetensors or pytorch_model.bin. transformers would read such a
folder through its TimmWrapper, which fails when the model_args repeat ``num_classes``; here timm itself
builds the architecture and the weights load strictly into it. A ``save_pretrained`` config always names
its ``model_type`` and a timm config never does: that tells the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netatlas.backend.errors import NetatlasError, first_line
from netatlas.backend.hf_models import hf_folder, read_config
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.timm_models import PREFIX, close_names, data_config_preprocessing, import_timm

WEIGHTS = ("model.safetensors", "pytorch_model.bin")   # save_for_hf writes either, or both


@dataclass(frozen=True)
class TimmFolder:
    """What a timm hub folder's config.json says, read the way timm's own ``local-dir:`` loader reads it."""

    path: Path
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    label_names: Any = None

    @property
    def arch(self) -> str:
        return PREFIX + self.architecture

    @property
    def num_classes(self) -> int | None:
        given = self.model_args.get("num_classes", self.pretrained_cfg.get("num_classes"))
        return None if given is None else int(given)

    @property
    def weights(self) -> Path:
        """The weight file: safetensors first (nothing to unpickle), else the torch pickle."""
        for name in WEIGHTS:
            if (self.path / name).is_file():
                return self.path / name
        raise NetatlasError(f"{self.path.name} has a timm config.json but no weights (model.safetensors or "
                            "pytorch_model.bin): save the model with timm.models.save_for_hf")


def is_timm_config(config: dict[str, Any]) -> bool:
    """A config.json timm wrote: it names an ``architecture`` (transformers' say ``architectures`` and
    always a ``model_type``, TimmWrapper's included, whose weights are transformers' to read)."""
    return isinstance(config.get("architecture"), str) and "model_type" not in config


def timm_folder(path: Path) -> TimmFolder | None:
    """The timm hub folder ``path`` is, or holds the weights of; None for anything else (an unreadable
    config.json too: whoever reads the folder next says what is wrong with it, if it matters)."""
    folder = hf_folder(path) if path.exists() else None
    if folder is None:
        return None
    try:
        config = read_config(folder)
    except NetatlasError:
        return None
    return parse_config(folder, config) if is_timm_config(config) else None


def parse_config(folder: Path, config: dict[str, Any]) -> TimmFolder:
    """The architecture, model_args, pretrained_cfg and labels of a timm config.json.

    As timm's own loader: an old export keeps every pretrained_cfg field at the top level; top-level
    ``num_classes`` and ``label_names`` win; ``in_chans`` (and, for a model of fixed input size,
    ``img_size``) among the model_args correct the recorded input size.
    """
    if isinstance(config.get("pretrained_cfg"), dict):
        pretrained = dict(config["pretrained_cfg"])
    else:
        pretrained = {k: v for k, v in config.items() if k not in ("architecture", "num_features", "labels")}
    if config.get("num_classes") is not None:
        pretrained["num_classes"] = config["num_classes"]
    labels = config.get("label_names", config.get("labels", pretrained.get("label_names")))
    args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    size = list(pretrained.get("input_size") or (3, 224, 224))
    if args.get("in_chans") is not None:
        size[0] = int(args["in_chans"])
    if args.get("img_size") is not None and pretrained.get("fixed_input_size"):
        img = args["img_size"]
        size[1:] = [img, img] if isinstance(img, int) else list(img)
    pretrained["input_size"] = tuple(size)
    return TimmFolder(folder, config["architecture"], dict(args), pretrained, labels)


def _build(found: TimmFolder) -> nn.Module:
    """timm's architecture with the folder's model_args and pretrained_cfg, no weights (nothing downloaded)."""
    timm = import_timm()
    if not timm.is_model(found.architecture):
        close = close_names(found.architecture)
        raise NetatlasError(f"{found.path.name}/config.json names the architecture {found.architecture!r}, which "
                            f"timm {timm.__version__} does not have"
                            + (f" (did you mean {', '.join(close)}?)" if close else "")
                            + ": upgrade timm, or fix 'architecture'")
    kwargs = dict(found.model_args)
    if found.num_classes is not None:
        kwargs.setdefault("num_classes", found.num_classes)
    try:
        return timm.create_model(found.architecture, pretrained=False, pretrained_cfg=_known_fields(found), **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:   # model_args this version does not take
        raise NetatlasError(f"{found.path.name}: timm could not build {found.architecture} from config.json "
                            f"({first_line(exc)}): the config was written by another timm version, or edited") from exc


def _known_fields(found: TimmFolder) -> dict[str, Any]:
    """The pretrained_cfg fields this timm knows (a newer timm's extra fields would fail its PretrainedCfg)."""
    known = {f.name for f in fields(import_timm().models.PretrainedCfg)}
    cfg = {k: v for k, v in found.pretrained_cfg.items() if k in known}
    return {**cfg, "architecture": found.architecture}


def timm_folder_model(found: TimmFolder, state: dict[str, torch.Tensor]) -> nn.Module:
    """timm's model for the folder with ``state`` (its weights) loaded strictly: a tensor missing, left
    over or of another shape is one readable error, not a model with random parts."""
    model = _build(found)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: weights {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        counts = ", ".join(f"{len(items)} {label}" for label, items in
                           (("missing", missing), ("unexpected", unexpected), ("differ in shape", shapes)) if items)
        example = (shapes or missing or unexpected)[0]
        raise NetatlasError(f"{found.path.name}: config.json does not fit the weights ({counts}; e.g. {example}): "
                            "the config belongs to another model or was edited; save config and weights together "
                            "with timm.models.save_for_hf")
    model.load_state_dict(state, strict=True)
    return model


def timm_folder_preprocessing(found: TimmFolder) -> Preprocessing:
    """timm's evaluation transform for the folder's pretrained_cfg (``timm.data.resolve_data_config``)."""
    data = import_timm().data.resolve_data_config(pretrained_cfg=found.pretrained_cfg)
    return data_config_preprocessing(data["input_size"], data["crop_pct"], data["mean"], data["std"],
                                     data["interpolation"])


def timm_folder_classes(found: TimmFolder) -> list[str] | None:
    """Class names in head order from ``label_names`` (a list, or ``{index: name}`` where indices have gaps);
    None when there are none or they do not match the head's width."""
    names, width = found.label_names, found.num_classes
    if isinstance(names, dict):
        try:
            by_index = {int(i): str(name) for i, name in names.items()}
        except (TypeError, ValueError):
            return None
        names = [by_index.get(i, str(i)) for i in range(width or (max(by_index) + 1 if by_index else 0))]
    if not isinstance(names, (list, tuple)) or not names or (width and len(names) != width):
        return None
    return [str(name) for name in names]


def describe_timm_folder(found: TimmFolder, classes: list[str] | None) -> str:
    """One line for ``info`` and the page: who built it, its classes and the transform its pretrained_cfg asks."""
    timm = import_timm()
    preprocessing = timm_folder_preprocessing(found)
    h, w = preprocessing.size
    how = (f"shorter edge to {preprocessing.resize} px, centre crop {h}x{w}" if preprocessing.resize
           else f"resize to {h}x{w}")
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "") if classes else ""
    head = (f"{len(classes)} classes from label_names ({shown})" if classes
            else f"{found.num_classes} outputs, no label_names" if found.num_classes else "no classifier head")
    crop_mode = found.pretrained_cfg.get("crop_mode", "center")
    mode = "" if crop_mode in (None, "center") else f"; its crop_mode {crop_mode!r} is read as 'center'"
    return (f"built by timm {timm.__version__} from config.json ({found.architecture}); {head}; preprocessing "
            f"from its pretrained_cfg: {how}, {preprocessing.interpolation}, {preprocessing.channels} channel"
            f"{'s' if preprocessing.channels > 1 else ''}{mode}")

