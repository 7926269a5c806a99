"""Load a model from a checkpoint file, safely.

Formats: a state_dict (.pt/.pth/.bin/.ckpt, bare or wrapped in ``state_dict``/``model_state_dict``,
with DataParallel/Lightning/torch.compile prefixes), safetensors, TorchScript, fully pickled
modules, and Hugging Face ``save_pretrained`` folders (``hf_models``). Pickles load with ``weights_only=True`` unless the user explicitly trusts the file, because
unpickling can run arbitrary code. A JSON sidecar next to the checkpoint (``model.json`` or
``model.pt.json``) may give the architecture, its kwargs, the classes and the preprocessing.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netatlas.backend.architectures import build_architecture, is_import_path
from netatlas.backend.classifier import Head, declared_head
from netatlas.backend.errors import NetatlasError, first_line
from netatlas.backend.hf_cache import local_path
from netatlas.backend.hf_models import (folder_hash, hf_classes, hf_folder, hf_preprocessing, load_hf_model,
                                        read_json_object)
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.timm_folder import (TimmFolder, describe_timm_folder, timm_folder, timm_folder_classes,
                                         timm_folder_model, timm_folder_preprocessing)
from netatlas.backend.timm_models import timm_name, timm_preprocessing

STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
KEY_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")
TRUST_PICKLE_HINT = ("If you trust where this file came from, load it with --trust-pickle "
                     "(in the app: tick 'Trust pickled code'); better, re-save it as a state_dict "
                     "or safetensors.")


@dataclass
class LoadedModel:
    """A model ready for inference plus everything the cache key and the views need to know."""

    model: nn.Module
    path: Path
    format: str
    checkpoint_hash: str
    preprocessing: Preprocessing
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing_weights: list[str] = field(default_factory=list)   # initialised at random by the loader

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        pre = self.preprocessing
        return (1, pre.channels, *pre.size)

    @cached_property
    def head(self) -> Head:
        """The classifier head the model declares (or its absence, and why): predictions need one."""
        return declared_head(self.model, self.arch, self.missing_weights)

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two loads the same model: the file's bytes and how it was built."""
        return {"checkpoint": self.checkpoint_hash, "arch": self.arch, "arch_kwargs": self.arch_kwargs}


def load_checkpoint(path: str | Path, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                    *, trust_pickle: bool = False, preprocessing: Preprocessing | None = None,
                    device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``path`` into an eval-mode model on ``device``; user-fixable problems raise NetatlasError.

    ``path`` may also be a Hugging Face cache repo folder or a repo id (``org/name[@revision]``): both open
    as the snapshot folder they name (``hf_cache``), so they are the same model, by content, as that folder."""
    path = local_path(path, "model")
    if not path.exists():
        raise NetatlasError(f"checkpoint not found: {path}")
    sidecar = read_sidecar(path)
    arch = arch or sidecar.get("architecture")
    found = timm_folder(path)   # timm's hub folder: the hub's layout too, but timm's to build, not transformers'
    if found is not None and (path.is_dir() or not arch or arch == found.arch):
        loaded = _load_timm_folder(found, sidecar, preprocessing, device)
        if arch and arch != found.arch:
            loaded.notes.append(f"--arch {arch} ignored: the architecture comes from config.json")
        return loaded
    folder = hf_folder(path)
    if folder is not None and (path.is_dir() or not arch or arch.startswith("transformers:")):
        loaded = _load_hf_folder(folder, sidecar, preprocessing, device)
        if arch and not arch.startswith("transformers:"):
            loaded.notes.append(f"--arch {arch} ignored: the class comes from config.json")
        return loaded
    if path.is_dir():
        raise NetatlasError(f"{path} is a folder without config.json: give a checkpoint file, or a Hugging "
                            "Face save_pretrained folder (config.json and its weights)")
    if arch_kwargs is None:
        arch_kwargs = dict(sidecar.get("arch_kwargs", {})) if arch == sidecar.get("architecture") else {}
    notes: list[str] = []

    if path.suffix == ".safetensors":
        fmt, model = "safetensors", _model_from_state(read_safetensors(path), arch, arch_kwargs, notes, path.name)
    elif _is_torchscript(path):
        fmt, model = "torchscript", _read_torchscript(path)
    else:
        obj = read_pickle(path, trust_pickle)
        if isinstance(obj, nn.Module):
            fmt, model = "pickled-module", obj
            notes.append("loaded a fully pickled module (trusted by the user)")
        else:
            fmt, model = "state_dict", _model_from_state(find_state_dict(obj, path), arch, arch_kwargs, notes,
                                                         path.name)

    if preprocessing is None:
        preprocessing = default_preprocessing(path, arch, arch_kwargs, sidecar)
    classes = sidecar.get("classes")
    return LoadedModel(model.to(device).eval(), path, fmt, file_sha256(path), preprocessing,
                       arch if fmt in ("state_dict", "safetensors") else None, dict(arch_kwargs),
                       list(classes) if classes else None, sidecar, notes)


def read_sidecar(path: Path) -> dict[str, Any]:
    """``model.json`` or ``model.pt.json`` beside the checkpoint, or {} when there is none."""
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file() and candidate != path:
            return read_json_object(candidate, f"the sidecar {candidate.name}")
    return {}


def _load_hf_folder(folder: Path, sidecar: dict[str, Any], preprocessing: Preprocessing | None,
                    device: str | torch.device) -> LoadedModel:
    model, class_name, notes, missing = load_hf_model(folder)
    if preprocessing is None:
        preprocessing = default_preprocessing(folder, None, None, sidecar)
    classes = sidecar.get("classes") or hf_classes(folder)
    return LoadedModel(model.to(device).eval(), folder, "transformers", folder_hash(folder), preprocessing,
                       f"transformers:{class_name}", {}, list(classes) if classes else None, sidecar, notes, missing)


def _load_timm_folder(found: TimmFolder, sidecar: dict[str, Any], preprocessing: Preprocessing | None,
                      device: str | torch.device) -> LoadedModel:
    """A timm hub folder: its weights read as any checkpoint's (safetensors, or a pickle never trusted with
    code), loaded strictly into the architecture timm builds from config.json."""
    weights = found.weights
    state = (read_safetensors(weights) if weights.suffix == ".safetensors"
             else find_state_dict(read_pickle(weights, trust_pickle=False), weights))
    model = timm_folder_model(found, state)
    if preprocessing is None:
        preprocessing = default_preprocessing(found.path, None, None, sidecar)
    own = timm_folder_classes(found)
    classes = sidecar.get("classes") or own
    return LoadedModel(model.to(device).eval(), found.path, "timm-folder", folder_hash(found.path), preprocessing,
                       found.arch, {}, list(classes) if classes else None, sidecar, [describe_timm_folder(found, own)])


def default_preprocessing(path: Path | None, arch: str | None, arch_kwargs: dict[str, Any] | None = None,
                          sidecar: dict[str, Any] | None = None) -> Preprocessing:
    """What a model expects when nobody says otherwise: the sidecar's block, else the Hugging Face image
    processor's, the timm folder's pretrained_cfg or the timm model's own, else torchvision's ImageNet
    convention (224x224 RGB).

    ``path`` None: an architecture alone, no checkpoint (``netatlas diagram none``)."""
    exists = path is not None and path.exists()
    sidecar = read_sidecar(path) if sidecar is None and exists else (sidecar or {})
    if "preprocessing" in sidecar:
        return Preprocessing.from_dict(sidecar["preprocessing"])
    found = timm_folder(path) if exists else None
    if found is not None and (not arch or arch == found.arch):
        return timm_folder_preprocessing(found)
    folder = hf_folder(path) if exists else None
    if folder is not None and (not arch or arch.startswith("transformers:")):
        return hf_preprocessing(folder) or Preprocessing()
    arch = arch or sidecar.get("architecture")
    name = timm_name(arch) or (dict(arch_kwargs or {}).get("model_name") if arch == "timm:create_model" else None)
    if name:
        return timm_preprocessing(name, arch_kwargs)
    return Preprocessing()


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Content hash of a file, memoized per (path, size, mtime) so that reopening costs nothing."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NetatlasError(f"{path.name} is not a readable safetensors file ({first_line(exc)}): "
                            "it is truncated or corrupt; save or copy it again") from exc


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):   # a damaged archive: torch.load says so next
        return False


def _read_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError mostly; damaged archives fail in other ways too
        raise NetatlasError(f"{path.name} looks like TorchScript but did not load ({first_line(exc)}): it is "
                            "truncated or corrupt, or needs another torch version; save it again") from exc


def read_pickle(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise NetatlasError(f"{path.name} is not a readable torch checkpoint ({first_line(exc)}): "
                                "it is truncated or corrupt; save or copy it again") from exc
        raise NetatlasError(_refusal_message(path, exc)) from None
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise NetatlasError(f"{path.name} refers to code that is not importable here ({first_line(exc)}): "
                            "install the package that defines it, or re-save the model as a state_dict") from exc
    except Exception as exc:  # corrupt bytes fail in many ways: RuntimeError, EOFError, IndexError, ...
        raise NetatlasError(f"{path.name} is not a readable torch checkpoint ({first_line(exc)}): "
                            "it is truncated or corrupt; save or copy it again") from exc


def _refusal_message(path: Path, exc: Exception) -> str:
    """Why a pickle was refused, listing the globals it would import, without loading anything."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) pickles cannot be inspected this way
        unsafe = []
    # Code outside torch (the file's own classes, os, builtins) first: that is what the user must judge.
    unsafe = sorted(set(unsafe), key=lambda name: (name.startswith("torch."), name))
    if not unsafe:  # the safe unpickler names the global it stopped at
        unsafe = re.findall(r"GLOBAL (\S+) was not an allowed global", str(exc))
    if not unsafe:  # it stopped on something else: corrupt bytes, or a pickle torch.save did not write
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()
        return (f"{path.name} is not a readable torch checkpoint (the safe unpickler stopped at: "
                f"{detail[0] if detail else 'unknown'}): it is corrupt, or a pickle not written by "
                "torch.save. If it is a pickle you trust, load it with --trust-pickle.")
    what = f" it would import {', '.join(unsafe[:8])}" + (" ..." if len(unsafe) > 8 else "")
    return (f"refused to unpickle {path.name}:{what}, and unpickling can run arbitrary code. "
            + TRUST_PICKLE_HINT)


def find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: the object itself or under a common wrapper key."""
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPERS:
            if _is_tensor_mapping(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(map(str, list(obj)[:8]))
        raise NetatlasError(f"{path.name} holds a dict without a state_dict (top-level keys: {keys})")
    raise NetatlasError(f"{path.name} holds a {type(obj).__name__}, not a state_dict or a module")


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _model_from_state(state: dict[str, torch.Tensor], arch: str | None, arch_kwargs: dict[str, Any],
                      notes: list[str], name: str = "this checkpoint") -> nn.Module:
    if not arch:
        raise NetatlasError(
            f"{name} holds only weights: say which architecture they belong to with --arch "
            "(a torchvision name like resnet18, or 'package.module:factory'), or add a JSON sidecar.")
    model = build_architecture(arch, arch_kwargs)
    expected = model.state_dict()
    state, stripped = strip_prefixes(state, set(expected))
    if stripped:
        notes.append(f"stripped key prefix {stripped!r}")
    check_keys(state, expected, arch, name=name)
    model.load_state_dict(state, strict=True)
    return model


def strip_prefixes(state: dict[str, torch.Tensor], expected: set[str],
                   max_depth: int = 3) -> tuple[dict[str, torch.Tensor], str]:
    """Remove wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``) when that matches more keys.

    Wrappers nest (DDP around torch.compile: ``module._orig_mod.``), and stripping only the outer
    prefix matches nothing yet, so every chain of up to ``max_depth`` prefixes is tried.
    """
    best_state, best_removed, best_overlap = state, "", len(expected & state.keys())
    frontier = [(state, "")]
    for _ in range(max_depth):
        deeper = []
        for current, removed in frontier:
            for prefix in KEY_PREFIXES:
                if any(k.startswith(prefix) for k in current):
                    candidate = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in current.items()}
                    deeper.append((candidate, removed + prefix))
                    overlap = len(expected & candidate.keys())
                    if overlap > best_overlap:
                        best_state, best_removed, best_overlap = candidate, removed + prefix, overlap
        frontier = deeper
    return best_state, best_removed


def head_width(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """The checkpoint's number of classes when every mis-shaped tensor is one module's (the classifier) and
    they agree on their first dimension (its outputs); else "N"."""
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    widths = {state[k].shape[0] for k in wrong if state[k].ndim}
    modules = {k.rpartition(".")[0] for k in wrong}
    return str(widths.pop()) if len(widths) == 1 and len(modules) == 1 else "N"


def check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], arch: str,
               show: int = 5, name: str = "the checkpoint") -> None:
    """Raise one readable error listing the first missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{name} does not fit architecture {arch!r}"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:show])}{more}")
    if shapes and not (missing or unexpected) and not is_import_path(arch):
        classes = head_width(state, expected)
        parts.append(f"if only the classifier differs, pass --arch-kwargs '{{\"num_classes\": {classes}}}'")
    parts.append("give the architecture and kwargs it was trained with (--arch, --arch-kwargs or the sidecar)")
    raise NetatlasError("; ".join(parts) + ".")
