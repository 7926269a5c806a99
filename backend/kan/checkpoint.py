"""Finding and reading KAN checkpoint files: pykan's ``saveckpt`` triple, state_dicts and safetensors.

pykan's ``MultKAN.saveckpt(p)`` writes ``p_state`` (the state_dict), ``p_config.yml`` (what the
keys do not store: k, base function, symbolic function names, width) and ``p_cache_data`` (the last
input batch, a ready sample). Any of the three names or the bare prefix opens all three. Other
files go through the same safe loaders as every checkpoint (``netatlas.backend.checkpoint``).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from netatlas.backend.checkpoint import KEY_PREFIXES, find_state_dict, read_pickle, read_safetensors
from netatlas.backend.kan.base import KANNetwork
from netatlas.backend.kan.families import detect, read_network
from netatlas.backend.kan.families.pykan import MULT_NODES
from netatlas.backend.errors import NetatlasError, first_line

PYKAN_SUFFIXES = ("_state", "_config.yml", "_cache_data")
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
SAMPLE_HINT = ("give one batch [N, inputs] of numbers: a tensor saved with torch.save (.pt), an array "
               "(.npy, or .npz under 'x'), or comma-separated numbers (.csv)")
PEEK_FULL_LOAD_BYTES = 32 << 20   # legacy (non-zip) torch files cannot be memory-mapped; load small ones


@dataclass(frozen=True)
class KANFiles:
    """Where a KAN's tensors are, and pykan's config and cached sample when it has them."""

    state: Path
    config: Path | None = None
    cache_data: Path | None = None


def find_kan_files(path: str | Path) -> KANFiles:
    """The files behind ``path``: one of pykan's three, its bare prefix, or a state_dict file."""
    path = Path(path).expanduser()
    for suffix in PYKAN_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix) and path.is_file():
            return _pykan_files(path.with_name(path.name[: -len(suffix)]))
    if path.is_file():
        return KANFiles(path)
    if path.with_name(path.name + "_state").is_file():
        return _pykan_files(path)
    if path.is_dir():
        raise NetatlasError(f"{path} is a folder: give a KAN file, pykan's <name>_state (beside its _config.yml and "
                            "_cache_data) or a state_dict/.safetensors file")
    raise NetatlasError(f"KAN checkpoint not found: {path} (neither that file nor pykan's {path.name}_state)")


def _pykan_files(prefix: Path) -> KANFiles:
    state, config, cache = (prefix.with_name(prefix.name + suffix) for suffix in PYKAN_SUFFIXES)
    if not state.is_file():
        raise NetatlasError(f"pykan checkpoint {prefix.name}: {state.name} is missing (saveckpt writes "
                            f"{', '.join(prefix.name + s for s in PYKAN_SUFFIXES)}); copy it next to the others")
    return KANFiles(state, config if config.is_file() else None, cache if cache.is_file() else None)


def read_kan(path: str | Path, family: str | None = None, options: dict[str, Any] | None = None,
             sample: str | Path | None = None, trust_pickle: bool = False) -> KANNetwork:
    """The KAN in ``path`` as edge layers, with a sample batch when one is given or cached by pykan.

    ``options`` override what pykan's config says; ``sample`` (.pt, .npy, .npz, .csv) overrides
    pykan's cache_data. ``trust_pickle`` lets a pickled module load (its code runs) and reads its
    state_dict. Every problem a user can fix is a NetatlasError.
    """
    files = find_kan_files(path)
    state = read_state(files.state, trust_pickle)
    config = read_pykan_config(files.config) if files.config else {}
    if family is None:
        try:
            family = detect(state).name
        except NetatlasError as exc:   # name the file: the sample and the config are files too
            raise NetatlasError(f"{files.state.name}: {exc}") from None
    if config and family == "pykan":
        options = {**pykan_options(config), **(options or {})}
    network = read_network(state, family, options)
    if config:
        _check_width(config, network, files.config)
    if sample is not None:
        network.sample = _checked_sample(read_sample(sample), network, Path(sample).name)
        network.sample_source = f"{Path(sample).name}, the file given"
    elif files.cache_data is not None:
        cached = _read_cache_data(files.cache_data)
        network.sample = None if cached is None else _checked_sample(cached, network, files.cache_data.name)
        network.sample_source = f"the checkpoint's {files.cache_data.name} (pykan's cached training inputs)"
    return network


def is_kan_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` opens as a KAN; cheap (tensors memory-mapped or only their shapes) and never raises."""
    try:
        files = find_kan_files(path)
        if not files.state.name.endswith((*STATE_SUFFIXES, PYKAN_SUFFIXES[0])):
            return False                 # images, tables, text: not worth opening
        detect(_peek_state(files.state))
        return True
    except Exception:  # a listing must survive any file: unreadable, foreign, half-written
        return False


def read_state(path: Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a state_dict or safetensors file, without wrapper prefixes; unsafe pickles refused
    unless trusted (a trusted pickled module gives its state_dict)."""
    if path.suffix == ".safetensors":
        return _strip_wrappers(read_safetensors(path))
    obj = read_pickle(path, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return _strip_wrappers(find_state_dict(obj, path))


def _peek_state(path: Path) -> Mapping[str, Tensor]:
    """Enough of a state to detect its family: shapes only (safetensors) or memory-mapped tensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        if path.stat().st_size > PEEK_FULL_LOAD_BYTES:
            raise
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return _strip_wrappers(find_state_dict(obj, path))


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop DataParallel / Lightning / torch.compile prefixes that every key shares, for cleaner layer names."""
    while True:
        prefix = next((p for p in KEY_PREFIXES if all(k.startswith(p) and len(k) > len(p) for k in state)), None)
        if prefix is None:
            return state
        state = {key[len(prefix):]: value for key, value in state.items()}


def read_pykan_config(path: Path) -> dict[str, Any]:
    """pykan's ``*_config.yml`` (plain YAML, read with safe_load)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = (f"YAML: {exc.problem} at line {mark.line + 1}" if mark is not None and getattr(exc, "problem", None)
                 else first_line(exc))
        raise NetatlasError(f"cannot read the pykan config {path.name} ({where}): it is damaged; "
                            "save the model again with saveckpt, or leave the config out and give --option") from exc
    if not isinstance(config, dict):
        raise NetatlasError(f"the pykan config {path.name} is not a YAML mapping; it is damaged")
    return config


def pykan_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The pykan family's options from its config: k, base function, symbolic names and switch."""
    options: dict[str, Any] = {}
    if "k" in config:
        options["k"] = config["k"]
    if "base_fun_name" in config:
        options["base_fun"] = config["base_fun_name"]
    if "symbolic_enabled" in config:
        options["symbolic_enabled"] = bool(config["symbolic_enabled"])
    names, layer = [], 0
    while f"symbolic.funs_name.{layer}" in config:
        names.append(config[f"symbolic.funs_name.{layer}"])
        layer += 1
    if names:
        options["symbolic_functions"] = names
    return options


def _check_width(config: Mapping[str, Any], network: KANNetwork, path: Path) -> None:
    """The config's width against the layers read from the state: a config from another model is refused."""
    width = config.get("width")
    if width is None:
        return
    try:
        nodes = [[int(w), 0] if np.isscalar(w) else [int(w[0]), int(w[1])] for w in width]
    except (TypeError, ValueError, IndexError) as exc:
        raise NetatlasError(f"{path.name}: width {width!r} is not pykan's list of widths") from exc
    if any(mult for _, mult in nodes):
        raise NetatlasError(MULT_NODES)
    if [n for n, _ in nodes] != network.widths:
        raise NetatlasError(f"{path.name} says width {[n for n, _ in nodes]} but the state has "
                            f"{network.widths}: the config belongs to another checkpoint")


def _read_cache_data(path: Path) -> Tensor | None:
    """pykan's cached input batch, or None when the model never ran (saveckpt then saves None)."""
    cached = read_pickle(path, trust_pickle=False)
    if cached is not None and not isinstance(cached, Tensor):
        raise NetatlasError(f"{path.name} holds a {type(cached).__name__}, not pykan's cached input tensor")
    return cached


def read_sample(path: str | Path) -> Tensor:
    """A batch of network inputs [N, in0] from .pt (a tensor), .npy, .npz ("x" or its only array) or .csv."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NetatlasError(f"sample file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            data = _find_sample_tensor(torch.load(path, map_location="cpu", weights_only=True), path)
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            data = _npz_array(path)
        elif suffix == ".csv":
            data = _read_csv(path)
        else:
            raise NetatlasError(f"{path.name}: a sample must be .pt, .npy, .npz or .csv")
        return _as_float_tensor(data, path.name)
    except NetatlasError:
        raise
    except ValueError as exc:  # numpy's refusal of object arrays suggests unpickling: never do that here
        if suffix in (".npy", ".npz"):
            raise NetatlasError(f"cannot read the sample {path.name}: it is not a NumPy file of numbers (corrupt, or "
                                "it holds Python objects, which netatlas does not unpickle)") from exc
        raise NetatlasError(f"cannot read the sample {path.name} ({first_line(exc)}): {SAMPLE_HINT}") from exc
    except pickle.UnpicklingError as exc:   # torch's safe unpickler: its message suggests weights_only=False
        raise NetatlasError(f"cannot read the sample {path.name}: it is not a torch.save file of tensors (corrupt, "
                            f"or it holds Python objects, which netatlas does not unpickle); {SAMPLE_HINT}") from exc
    except Exception as exc:  # corrupt or foreign bytes fail in many ways
        raise NetatlasError(f"cannot read the sample {path.name} ({first_line(exc)}): {SAMPLE_HINT}") from exc


def _find_sample_tensor(obj: Any, path: Path) -> Tensor:
    if isinstance(obj, Mapping) and isinstance(obj.get("x"), Tensor):
        return obj["x"]
    if not isinstance(obj, Tensor):
        raise NetatlasError(f"{path.name} holds a {type(obj).__name__}; save the sample batch as one tensor")
    return obj


def _npz_array(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        if "x" in archive.files:
            return archive["x"]
        if len(archive.files) == 1:
            return archive[archive.files[0]]
        raise NetatlasError(f"{path.name} holds arrays {', '.join(archive.files)}; name the inputs 'x'")


def _read_csv(path: Path) -> np.ndarray:
    """Numbers separated by commas, with or without one header row."""
    try:
        return np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError:
        return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=1)


def _as_float_tensor(data: Any, name: str) -> Tensor:
    tensor = torch.as_tensor(data)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise NetatlasError(f"the sample {name} is not real numbers ({tensor.dtype})")
    return tensor if tensor.is_floating_point() else tensor.float()


def _checked_sample(sample: Tensor, network: KANNetwork, name: str) -> Tensor:
    """``sample`` as [N, in0] in the network's dtype; a wrong width or non-finite values are the user's to fix."""
    width = network.widths[0]
    if sample.dim() == 1 and width == 1:
        sample = sample[:, None]
    if sample.dim() != 2 or sample.shape[1] != width or sample.shape[0] == 0:
        raise NetatlasError(f"the sample {name} has shape {tuple(sample.shape)}, but this KAN takes a batch "
                            f"[N, {width}]: give one row per example and one column per input")
    if not bool(torch.isfinite(sample).all()):
        raise NetatlasError(f"the sample {name} holds NaN or infinite values; remove those rows")
    return sample.to(network.layers[0].bias.dtype)
