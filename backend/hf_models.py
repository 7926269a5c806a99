"""Hugging Face ``save_pretrained`` folders: config.json, the weights, and preprocessor_config.json.

The model class is the one config.json's ``architectures`` names (else AutoModelForImageClassification,
else AutoModel); transformers reads the weights from the folder alone (``local_files_only``: never the
hub), safetensors or ``torch.load(weights_only=True)``, sharded or not. Class names come from
``id2label``, preprocessing from the image processor's config (without one, from config.json's
``image_size`` and the defaults of the processor class of its model type). The models' forward takes the pixel
batch as its first argument and returns a ModelOutput, which ``activations.first_tensor`` reads by name;
a class whose forward takes text first (CLIPModel: ``input_ids``) is refused before loading, with the
recipe for its vision tower. A failed load is one line: transformers' many-line load report is held back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from netatlas.backend.errors import NetatlasError, first_line
from netatlas.backend.image_towers import image_tower, is_image_text_model
from netatlas.backend.preprocessing import Preprocessing

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def hf_folder(path: Path) -> Path | None:
    """The save_pretrained folder ``path`` is, or holds the weights of (config.json beside them).

    This is the hub's layout, which timm's ``save_for_hf`` writes too: the layout is enough to list a folder
    and hash it, while ``load_checkpoint`` asks ``timm_folder`` first so that transformers never reads timm's."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / CONFIG).is_file() and (path.is_dir() or path.name in _weight_names(folder)) else None


def is_saved_model(folder: Path) -> bool:
    """A folder the sidebar offers: config.json and weights (a stray config.json is not a model)."""
    try:
        return hf_folder(folder) is not None and bool(_weight_names(folder))
    except NetatlasError:   # an unreadable shard index: offered all the same, the load will say why
        return True


def _weight_names(folder: Path) -> set[str]:
    """Weight files of a folder, shards included (model-00001-of-00002.safetensors)."""
    names = {name for name in WEIGHTS if (folder / name).is_file()}
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in names:
            names |= set(read_json_object(folder / index).get("weight_map", {}).values())
    return names


def read_config(folder: Path) -> dict[str, Any]:
    return read_json_object(folder / CONFIG)


def read_json_object(path: Path, label: str | None = None) -> dict[str, Any]:
    """A JSON file holding an object (configs, sidecars); anything else is a NetatlasError naming ``label``."""
    label = label or f"{path.parent.name}/{path.name}"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise NetatlasError(f"cannot read {label}: {exc}") from exc
    except ValueError as exc:   # JSONDecodeError, and UnicodeDecodeError for binary bytes
        raise NetatlasError(f"cannot read {label}: it is not valid JSON ({first_line(exc)}); fix it, or write it again "
                            "(save_pretrained writes config.json; a sidecar is yours to write)") from exc
    if not isinstance(data, dict):
        raise NetatlasError(f"{label} must hold a JSON object")
    return data


def load_hf_model(folder: Path) -> tuple[nn.Module, str, list[str], list[str]]:
    """(model in eval mode, its class name, notes, weights missing from the folder) from a save_pretrained
    folder, offline. transformers initialises missing weights at random (a backbone's folder opened as
    ``*ForImageClassification`` gets a random head): the caller must not take them for trained ones."""
    import torch
    import transformers

    config = read_config(folder)
    if not _weight_names(folder):
        raise NetatlasError(f"{folder.name} has a config.json but no weights (model.safetensors or "
                            "pytorch_model.bin, sharded or not): save the model with save_pretrained")
    named = (config.get("architectures") or [None])[0]
    candidates = [getattr(transformers, str(named), None)] if named else [
        transformers.AutoModelForImageClassification, transformers.AutoModel]
    if not (isinstance(candidates[0], type) and hasattr(candidates[0], "from_pretrained")):
        raise NetatlasError(f"{folder.name}/config.json names the class {named}, which transformers "
                            f"{transformers.__version__} does not have: upgrade transformers, or fix 'architectures'")
    if named and not is_image_text_model(candidates[0]):
        _check_takes_images(candidates[0], folder)
    transformers.utils.logging.disable_progress_bar()
    dtype = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}
    for i, cls in enumerate(candidates):
        with _held_load_report() as report:
            try:
                model, info = cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                                  output_loading_info=True, **dtype)
            except Exception as exc:   # a truncated shard, a mismatched config, a missing file: many types
                if isinstance(exc, ValueError) and i + 1 < len(candidates):
                    continue           # an Auto class that does not map this config type: try the next
                raise NetatlasError(_load_failure(folder, exc, report)) from exc
        break
    if not named and not is_image_text_model(type(model)):
        _check_takes_images(type(model), folder)
    name = type(model).__name__
    notes = [f"loaded with transformers {transformers.__version__} as {name}"]
    missing = sorted(info.get("missing_keys") or ())
    if is_image_text_model(type(model)):         # refused before the report: its table would not be the error
        model, tower_note, missing = image_tower(model, folder.name, missing)
        notes.append(tower_note)
    report.release()
    if missing:
        notes.append(f"{len(missing)} weights are not in the folder and were initialised at random "
                     f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    notes.extend(note for note in [preprocessing_note(folder)] if note)
    return model.eval(), name, notes, missing


NON_IMAGE_INPUTS = ("input_ids", "inputs_embeds", "input_values", "input_features", "decoder_input_ids")


def _check_takes_images(cls: type, folder: Path) -> None:
    """Refuse a class whose forward takes text or audio first (CLIPModel: ``input_ids``, then ``pixel_values``):
    netatlas calls ``model(pixels)``, which such a model cannot answer."""
    import inspect

    try:
        params = [name for name in inspect.signature(cls.forward).parameters if name != "self"]
    except (TypeError, ValueError):
        return
    if not params or params[0] not in NON_IMAGE_INPUTS:
        return
    if "pixel_values" in params:
        import transformers

        tower = cls.__name__.replace("Model", "VisionModel", 1)
        how = (f"transformers.{tower}.from_pretrained(FOLDER).save_pretrained(NEW_FOLDER)"
               if cls.__name__.endswith("Model") and hasattr(transformers, tower)
               else "model.vision_model.save_pretrained(NEW_FOLDER), or the class's vision model")
        raise NetatlasError(f"{folder.name} holds a {cls.__name__}, which takes text and images (its forward needs "
                            f"{params[0]} besides pixel_values), and netatlas feeds it images alone: save its "
                            f"vision tower on its own, e.g. {how}, and open that folder")
    raise NetatlasError(f"{folder.name} holds a {cls.__name__}, which is not an image model (its forward takes "
                        f"{params[0]}): netatlas reads image models; give the folder of a vision model")


class _HeldRecords(logging.Filter):
    """Log records of one thread held back (another thread's loads log as usual)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.thread, self.records = logger, threading.get_ident(), []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.records.append(record)
        return False

    def release(self) -> None:
        """Log what was held (a load that succeeded: its report of missing or unused weights matters)."""
        self.logger.removeFilter(self)
        for record in self.records:
            self.logger.handle(record)
        self.records.clear()


@contextlib.contextmanager
def _held_load_report() -> Iterator[_HeldRecords]:
    """transformers' load report, a many-line table it logs before raising on a config that does not fit the
    weights, held back: a failed load is one line (``_load_failure`` reads the table), a good one logs it."""
    logger = logging.getLogger("transformers.modeling_utils")
    held = _HeldRecords(logger)
    logger.addFilter(held)
    try:
        yield held
    finally:
        logger.removeFilter(held)


MISMATCH = re.compile(r"^\s*(\S+)\s*\|\s*MISMATCH\s*\|.*?ckpt:\s*torch\.Size\((\[[^\]]*\])\)\s*vs\s*"
                      r"model:\s*torch\.Size\((\[[^\]]*\])\)", re.MULTILINE)


def _load_failure(folder: Path, exc: BaseException, report: _HeldRecords) -> str:
    """One line for a failed ``from_pretrained``: which tensors do not fit when the report names them."""
    text = "\n".join(record.getMessage() for record in report.records)
    mismatched = MISMATCH.findall(text)
    if mismatched or "mismatched_sizes" in str(exc) or "size mismatch" in str(exc):
        example = (f", e.g. {mismatched[0][0]}: weights {mismatched[0][1]} vs config {mismatched[0][2]}"
                   if mismatched else "")
        count = f"{len(mismatched)} tensors" if mismatched else "tensors"
        return (f"{folder.name}: config.json does not fit the weights ({count} differ in size{example}): the config "
                "belongs to another model or was edited; save config and weights together with save_pretrained")
    return (f"{folder.name}: transformers could not load it ({first_line(exc)}): a weight file is truncated or "
            "corrupt, or config.json does not match the weights; save the model again with save_pretrained")


def hf_classes(folder: Path) -> list[str] | None:
    """Class names in label order from config.json's ``id2label``."""
    id2label = read_config(folder).get("id2label") or {}
    try:
        ordered = sorted((int(i), str(name)) for i, name in id2label.items())
    except (TypeError, ValueError):
        return None
    return [name for _, name in ordered] if ordered else None


def folder_hash(folder: Path) -> str:
    """Content hash of the config and every weight file (each memoized by path, size and mtime)."""
    from netatlas.backend.checkpoint import file_sha256

    digest = hashlib.sha256(b"hf-folder-v1")
    for name in sorted({CONFIG, *_weight_names(folder)}):
        digest.update(f"{name}\0{file_sha256(folder / name)}\n".encode())
    return digest.hexdigest()


def hf_preprocessing(folder: Path) -> Preprocessing | None:
    """What the folder's image processor does, as a Preprocessing. Without preprocessor_config.json (what
    ``Trainer.save_model`` leaves when no processor was passed), what the processor class transformers
    registers for the model type does by default, at config.json's ``image_size``: a ViT trained at 64 px
    fails on the 224 px its processor class defaults to. None when neither says anything."""
    config = read_config(folder)
    vision = vision_keys(config)
    channels = int(vision.get("num_channels", 3))
    if (folder / PROCESSOR).is_file():
        return _from_processor(read_json_object(folder / PROCESSOR), channels)
    found = processor_defaults(config)
    if found is not None:
        return _from_processor(at_size(found[1], vision.get("image_size")), channels)
    if not vision:
        return None
    size = _pair(vision.get("image_size", 224))
    return Preprocessing(size=size, grayscale=channels == 1)      # ImageNet's mean and std, as torchvision's


def preprocessing_note(folder: Path) -> str | None:
    """Where the input size and normalization came from when the folder has no preprocessor_config.json."""
    if (folder / PROCESSOR).is_file():
        return None
    config = read_config(folder)
    size = vision_keys(config).get("image_size")
    at = f"at config.json's image_size {size}" if size is not None else "at its default size"
    found = processor_defaults(config)
    if found is not None:
        return f"no {PROCESSOR}: the input is {found[0]}'s defaults {at}"
    return f"no {PROCESSOR} and no image processor for model type {config.get('model_type')!r}: " \
           f"ImageNet's mean and std {at}"


def vision_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``image_size`` and ``num_channels`` from config.json, else from a multi-tower config's ``vision_config``
    (CLIP, SigLIP: the image tower's own config)."""
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    found = {key: config.get(key, vision.get(key)) for key in ("image_size", "num_channels")}
    return {key: value for key, value in found.items() if value is not None}


def processor_defaults(config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(class name, its defaults as a preprocessor config) of the image processor transformers registers for
    config.json's ``model_type`` (a lone vision tower, ``clip_vision_model``, takes its model's): what
    AutoImageProcessor would build, read from the class itself, no file and no download."""
    from transformers.models.auto import image_processing_auto as auto

    model_type = str(config.get("model_type", ""))
    names = (auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
             or auto.IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type.removesuffix("_vision_model")))
    if isinstance(names, dict):          # transformers 5: one class per backend; PIL's is what netatlas matches
        name = names.get("pil") or next(iter(names.values()), None)
    elif isinstance(names, (tuple, list)):   # transformers 4: (slow, fast); the slow one works on PIL images
        name = next((n for n in names if n), None)
    else:
        name = names
    cls = auto.get_image_processor_class_from_name(name) if name else None
    if cls is None:
        return None
    try:
        return name, cls().to_dict()
    except Exception:   # a class that needs a backend not installed here (torchvision) or arguments
        return None


def at_size(cfg: dict[str, Any], image_size: Any) -> dict[str, Any]:
    """A processor config that gives ``image_size`` images (config.json's, the size the model was built for).

    A resize straight to a size takes the new one; a shorter-edge resize before a centre crop keeps its
    ratio to the crop (BiT's 256 -> 224 becomes 73 -> 64 at 64 px); a shorter-edge resize alone (ConvNeXt's,
    its crop_pct applied by ``_sizes``) takes the new edge. Other shapes resize straight.
    """
    if image_size is None:
        return cfg
    (height, width), cfg = _pair(image_size), dict(cfg)
    size = cfg.get("size", 224)
    size = {"height": size, "width": size} if isinstance(size, (int, float)) else dict(size)
    crop = cfg.get("crop_size")
    crop = {"height": crop, "width": crop} if isinstance(crop, (int, float)) else crop
    if "shortest_edge" in size and height == width:
        edge = int(size["shortest_edge"])
        if cfg.get("do_center_crop") and crop:
            edge = round(edge * height / int(crop["height"]))
            cfg["crop_size"] = {"height": height, "width": width}
        else:
            edge = height
        cfg["size"] = {"shortest_edge": edge}
    else:
        cfg["size"], cfg["do_center_crop"] = {"height": height, "width": width}, False
    return cfg


def _pair(size: Any) -> tuple[int, int]:
    """(H, W) from config.json's ``image_size``: one number, or two."""
    values = [int(v) for v in (size if isinstance(size, (list, tuple)) else [size])]
    return values[0], values[-1]


def _from_processor(cfg: dict[str, Any], channels: int) -> Preprocessing:
    """An image processor's config as a Preprocessing; one channel takes the mean of an RGB mean and std."""
    size, resize = _sizes(cfg)
    factor = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
    # x * factor on 0..255 pixels is x/255 * (255 * factor): fold that into mean and std
    scale = 255.0 * factor
    if cfg.get("do_normalize", True) and cfg.get("image_mean") is not None:
        mean = [float(m) / scale for m in _listed(cfg["image_mean"])]
        std = [float(s) / scale for s in _listed(cfg.get("image_std", [1.0]))]
    else:
        mean, std = [0.0], [1.0 / scale]
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return Preprocessing(size=size, grayscale=channels == 1, mean=tuple(mean), std=tuple(std), resize=resize,
                         interpolation=PIL_FILTERS.get(cfg.get("resample", 2), "bilinear"))


def _listed(value: Any) -> list[float]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _sizes(cfg: dict[str, Any]) -> tuple[tuple[int, int], int | None]:
    """((H, W) the model sees, shorter-edge resize before the centre crop or None) from an image processor.

    ``size`` is {height, width} (resize straight), {shortest_edge} (resize the shorter edge, then crop
    to ``crop_size``; ConvNeXt's processors crop ``shortest_edge / crop_pct`` back to ``shortest_edge``
    below 384 px) or, in older configs, one number.
    """
    size = cfg.get("size", 224)
    size = {"height": size, "width": size} if isinstance(size, (int, float)) else dict(size)
    crop = cfg.get("crop_size")
    crop = {"height": crop, "width": crop} if isinstance(crop, (int, float)) else crop
    cropped = cfg.get("do_center_crop", False) and crop
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and cfg.get("crop_pct") and edge < 384:
            return (edge, edge), int(edge / float(cfg["crop_pct"]))
        if cropped:
            return (int(crop["height"]), int(crop["width"])), edge
        return (edge, edge), edge       # no crop asked for: a square batch needs one all the same
    hw = (int(size["height"]), int(size["width"]))
    if cropped and (int(crop["height"]), int(crop["width"])) != hw:
        raise NetatlasError(f"{PROCESSOR}: resizing to {hw} and then cropping is not supported; "
                            "give the preprocessing in a sidecar instead")
    return hw, None
