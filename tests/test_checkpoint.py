"""load_checkpoint: every supported format gives back the very model that was saved; bad input is refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_PRE, SMALL_SIZE, preprocess_by_hand, randomize_batchnorm
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError


def small_input(seed: int = 1, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, SMALL_SIZE, SMALL_SIZE, generator=torch.Generator().manual_seed(seed))


def assert_same_function(original: nn.Module, loaded: nn.Module, x: torch.Tensor) -> None:
    original.eval()
    with torch.no_grad():
        expected = original(x)
        got = loaded(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    # and the comparison itself can fail: a freshly initialized model of the same shape differs
    assert not torch.allclose(expected, torch.zeros_like(expected))


class TinyNet(nn.Module):
    """Scriptable: conv -> relu -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


# --------------------------------------------------------------------------- state_dict formats

def _plain(sd):
    return sd


def _wrapped_state_dict(sd):
    return {"state_dict": sd, "epoch": 3}


def _wrapped_model_state_dict(sd):
    return {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 7}


def _lightning(sd):
    return {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1, "global_step": 10}


def _data_parallel(sd):
    return {f"module.{k}": v for k, v in sd.items()}


def _compiled_in_data_parallel(sd):
    return {f"module._orig_mod.{k}": v for k, v in sd.items()}


@pytest.mark.parametrize("wrap", [_plain, _wrapped_state_dict, _wrapped_model_state_dict, _lightning,
                                  _data_parallel, _compiled_in_data_parallel])
def test_state_dict_variants_load_identically(tmp_path, small_model, wrap):
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(small_model.state_dict()), path)
    loaded = load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)
    assert loaded.format == "state_dict"
    assert loaded.arch == DEMO_ARCH
    assert not loaded.model.training
    assert_same_function(small_model, loaded.model, small_input())


def test_checkpoint_hash_is_the_file_sha256(small_checkpoint):
    loaded = load_checkpoint(small_checkpoint, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)
    assert loaded.checkpoint_hash == hashlib.sha256(small_checkpoint.read_bytes()).hexdigest()
    assert loaded.identity["checkpoint"] == loaded.checkpoint_hash


def test_safetensors(tmp_path, small_model):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in small_model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)
    assert loaded.format == "safetensors"
    assert_same_function(small_model, loaded.model, small_input())


def test_safetensors_with_prefix(tmp_path, small_model):
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in small_model.state_dict().items()}, str(path))
    loaded = load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS), preprocessing=SMALL_PRE)
    assert_same_function(small_model, loaded.model, small_input())


def test_torchscript_scripted(tmp_path):
    torch.manual_seed(0)
    model = TinyNet().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(path))
    loaded = load_checkpoint(path)
    assert loaded.format == "torchscript"
    assert_same_function(model, loaded.model, small_input())


def test_torchscript_traced(tmp_path, small_model):
    path = tmp_path / "traced.pt"
    torch.jit.trace(small_model, small_input(seed=5)).save(str(path))
    loaded = load_checkpoint(path, preprocessing=SMALL_PRE)
    assert loaded.format == "torchscript"
    assert_same_function(small_model, loaded.model, small_input(seed=6))


def test_pickled_module_needs_trust(tmp_path, small_model):
    path = tmp_path / "full.pt"
    torch.save(small_model, path)
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "--trust-pickle" in message
    assert "DemoResNet" in message  # the global it would have imported
    loaded = load_checkpoint(path, trust_pickle=True, preprocessing=SMALL_PRE)
    assert loaded.format == "pickled-module"
    assert_same_function(small_model, loaded.model, small_input())


# --------------------------------------------------------------------------- architectures and sidecars

def test_torchvision_architecture_by_name(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path, "resnet18", {"num_classes": 10})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_function(model, loaded.model, x)
    assert loaded.model.fc.out_features == 10


def test_import_path_architecture_with_kwargs(small_checkpoint, small_model):
    loaded = load_checkpoint(small_checkpoint, DEMO_ARCH, dict(SMALL_KWARGS))
    assert loaded.arch_kwargs == SMALL_KWARGS
    assert_same_function(small_model, loaded.model, small_input())


@pytest.mark.parametrize("sidecar_name", ["model.json", "model.pt.json"])
def test_json_sidecar_supplies_architecture_and_preprocessing(tmp_path, small_model, sidecar_name):
    path = tmp_path / "model.pt"
    torch.save(small_model.state_dict(), path)
    (tmp_path / sidecar_name).write_text(json.dumps({
        "architecture": DEMO_ARCH, "arch_kwargs": SMALL_KWARGS, "classes": list("abcde"),
        "preprocessing": {"size": [SMALL_SIZE, SMALL_SIZE], "grayscale": True, "mean": [0.4], "std": [0.3]},
    }))
    loaded = load_checkpoint(path)
    assert loaded.arch == DEMO_ARCH
    assert loaded.classes == list("abcde")
    assert loaded.preprocessing == SMALL_PRE
    assert loaded.input_shape == (1, 1, SMALL_SIZE, SMALL_SIZE)
    assert_same_function(small_model, loaded.model, small_input())


def test_sidecar_that_is_not_json_is_an_error(tmp_path, small_checkpoint):
    small_checkpoint.with_name(small_checkpoint.name + ".json").write_text("{not json")
    with pytest.raises(NetatlasError, match="sidecar"):
        load_checkpoint(small_checkpoint)


def test_weights_without_architecture_ask_for_arch(small_checkpoint):
    with pytest.raises(NetatlasError, match="--arch"):
        load_checkpoint(small_checkpoint)


# --------------------------------------------------------------------------- unsafe pickles

class _OpenMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemTouch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _assert_refused(path, marker, global_pattern):
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))
    message = str(info.value)
    assert "--trust-pickle" in message
    assert re.search(global_pattern, message), message
    assert not marker.exists(), "unpickling ran the payload"


OPEN_GLOBAL = r"\b(io|builtins)\.open\b"
SYSTEM_GLOBAL = r"\b(os|posix|nt)\.system\b"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_unsafe_pickle_alone_is_refused(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_OpenMarker(marker), path, _use_new_zipfile_serialization=not legacy)
    _assert_refused(path, marker, OPEN_GLOBAL)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_unsafe_pickle_inside_state_dict_is_refused(tmp_path, small_model, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_model.state_dict(), "extra": _OpenMarker(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    _assert_refused(path, marker, OPEN_GLOBAL)


def test_os_system_pickle_is_refused(tmp_path, small_model):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"weights": torch.zeros(3), "hook": _SystemTouch(marker)}, path)
    _assert_refused(path, marker, SYSTEM_GLOBAL)


def test_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_OpenMarker(marker), protocol=2))
    _assert_refused(path, marker, OPEN_GLOBAL)


# --------------------------------------------------------------------------- mismatches

@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("r18") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def test_resnet18_weights_into_resnet34_list_missing_keys(resnet18_checkpoint):
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(resnet18_checkpoint, "resnet34", {"num_classes": 10})
    message = str(info.value)
    assert "resnet34" in message
    assert "missing" in message
    assert "layer1.2.conv1.weight" in message  # resnet34 has three blocks in layer1, resnet18 two
    assert "more" in message  # the list is truncated, with a count


def test_num_classes_mismatch_lists_shapes_and_hint(resnet18_checkpoint):
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(resnet18_checkpoint, "resnet18", {"num_classes": 7})
    message = str(info.value)
    assert "shape mismatch" in message
    assert "fc.weight" in message and "fc.bias" in message
    assert "(10, 512)" in message and "(7, 512)" in message
    assert "num_classes" in message
    assert "conv1.weight" not in message.replace("fc.weight", "")  # only the head is reported


def test_unexpected_and_missing_keys_are_named(tmp_path, small_model):
    state = small_model.state_dict()
    state["extra_head.weight"] = torch.zeros(2, 2)
    del state["fc.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))
    message = str(info.value)
    assert "unexpected" in message and "extra_head.weight" in message
    assert "missing" in message and "fc.bias" in message


def test_import_path_kwargs_mismatch_is_a_netatlas_error(small_checkpoint):
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(small_checkpoint, DEMO_ARCH, {**SMALL_KWARGS, "widths": [4, 16]})
    assert "blocks.1.conv1.weight" in str(info.value)


def test_dict_without_state_dict(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(NetatlasError, match="epoch"):
        load_checkpoint(path, "resnet18")


# --------------------------------------------------------------------------- bad paths and bytes

def test_missing_file(tmp_path):
    with pytest.raises(NetatlasError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", "resnet18")


def test_unknown_architecture_name(small_checkpoint):
    with pytest.raises(NetatlasError) as info:
        load_checkpoint(small_checkpoint, "resnet1800")
    assert "resnet1800" in str(info.value)
    assert "resnet18" in str(info.value).replace("resnet1800", "")  # a suggestion


def test_unknown_import_path(small_checkpoint):
    with pytest.raises(NetatlasError, match="cannot import"):
        load_checkpoint(small_checkpoint, "netatlas.no_such_module:Model")
    with pytest.raises(NetatlasError, match="cannot import"):
        load_checkpoint(small_checkpoint, "netatlas.backend.demo_model:NoSuchModel")


def test_bad_torchvision_kwargs(small_checkpoint):
    with pytest.raises(NetatlasError, match="resnet18"):
        load_checkpoint(small_checkpoint, "resnet18", {"no_such_argument": 1})


@pytest.mark.parametrize("trust", [False, True], ids=["safe", "trusted"])
def test_random_bytes_are_a_netatlas_error(tmp_path, trust):
    # Random bytes make the unpickler fail in many ways (UnpicklingError, IndexError, KeyError,
    # UnicodeDecodeError, OverflowError, ...): every one must come out as a NetatlasError.
    path = tmp_path / "garbage.pt"
    for seed in range(60):
        path.write_bytes(random.Random(seed).randbytes(500))
        with pytest.raises(NetatlasError) as info:
            load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS), trust_pickle=trust)
        # corrupt bytes are not "Python objects beyond tensors": say the file is unreadable
        assert "garbage.pt" in str(info.value)
        assert "Python objects" not in str(info.value)


def test_corrupt_zip_checkpoint(tmp_path, small_checkpoint):
    data = small_checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NetatlasError, match="truncated.pt"):
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))
    path.write_bytes(b"PK\x03\x04" + random.Random(0).randbytes(1000))
    with pytest.raises(NetatlasError, match="truncated.pt"):
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(NetatlasError):
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))


def test_truncated_and_garbage_safetensors(tmp_path, small_model):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in small_model.state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(NetatlasError, match="safetensors"):
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))
    path.write_bytes(random.Random(1).randbytes(300))
    with pytest.raises(NetatlasError, match="safetensors"):
        load_checkpoint(path, DEMO_ARCH, dict(SMALL_KWARGS))


# --------------------------------------------------------------------------- the shipped demo

def test_demo_checkpoint_loads_from_sidecar_and_is_accurate():
    from netatlas.backend.datasets import demo_dataset
    from netatlas.backend.demo import demo_checkpoint

    loaded = load_checkpoint(demo_checkpoint())
    assert loaded.format == "safetensors"
    assert loaded.arch == DEMO_ARCH
    assert loaded.preprocessing == Preprocessing(size=(28, 28), grayscale=True, mean=(0.1307,), std=(0.3081,))

    dataset = demo_dataset()
    test = dataset.meta["split"] == "test"
    x = preprocess_by_hand(dataset.array[test], mean=(0.1307,), std=(0.3081,))
    with torch.no_grad():
        predictions = loaded.model(x).argmax(1).numpy()
    accuracy = float(np.mean(predictions == dataset.labels[test]))
    assert test.sum() == 1000
    assert accuracy >= 0.97, accuracy
