"""No traceback ever reaches a user: every command, fed broken files of every kind, says in one line which
input is wrong and what to do, and exits 2.

Broken checkpoints (random bytes, zero bytes, cut in half, a folder named x.pt, a config.json that does not
parse, a config that does not fit the weights, a Hugging Face CLIP folder without its vision weights, a model
whose forward needs a second input) and broken datasets (random bytes, zero bytes, cut in half, a folder) go
to each command they fit, in-process; one real process checks the exit code and stderr end to end.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from netatlas.cli import main
from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_SIZE, small_demo_resnet

REPO = Path(__file__).resolve().parents[1]
SMALL_PRE = {"size": [SMALL_SIZE, SMALL_SIZE], "grayscale": True, "mean": [0.4], "std": [0.3]}
TWO_INPUTS = "tests.test_cli_broken_inputs:TwoInputNet"
PROGRESS_BAR = re.compile(r"^(\r?[\w ]+: [^\r]*\[\d\d:\d\d[^\r]*\])+$")   # tqdm's "embed: 0img [00:00, ?img/s]"


class TwoInputNet(nn.Module):
    """A user's model whose forward needs a second input (a mask): it cannot take one image batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(SMALL_SIZE * SMALL_SIZE, 5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) * mask)


def _sidecar(path: Path, arch: str = DEMO_ARCH, **kwargs) -> Path:
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"architecture": arch, "arch_kwargs": kwargs, "preprocessing": SMALL_PRE}))
    return path


def _cut(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _clip_without_its_image_tower(folder: Path) -> Path:
    """A CLIP folder whose saved weights lack the vision model (transformers would make them up)."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = CLIPConfig(text_config=dict(tower, vocab_size=64, max_position_embeddings=16, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("vision_model.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


def _vit_with_a_foreign_config(folder: Path) -> Path:
    """A ViT folder whose config.json was edited after save_pretrained: its weights no longer fit."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                       image_size=32, patch_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(folder)
    fields = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**fields, "hidden_size": 32}))
    return folder


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    """Every broken input by name, plus a good small checkpoint and dataset to pair them with."""
    root = tmp_path_factory.mktemp("broken")
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files: dict[str, Path] = {}
    for suffix in ("safetensors", "pt", "parquet", "arrow", "tar", "npz"):
        files[f"random.{suffix}"] = root / f"random.{suffix}"
        files[f"random.{suffix}"].write_bytes(junk)
    for suffix in ("pt", "safetensors", "parquet", "npz"):
        files[f"empty.{suffix}"] = root / f"empty.{suffix}"
        files[f"empty.{suffix}"].write_bytes(b"")

    model = small_demo_resnet()
    files["good.pt"] = _sidecar(root / "good.pt", **SMALL_KWARGS)
    torch.save(model.state_dict(), files["good.pt"])
    save_file(model.state_dict(), str(root / "whole.safetensors"))
    files["half.pt"] = _sidecar(_cut(files["good.pt"], root / "half.pt"), **SMALL_KWARGS)
    files["half.safetensors"] = _sidecar(_cut(root / "whole.safetensors", root / "half.safetensors"), **SMALL_KWARGS)
    files["misfit.pt"] = _sidecar(root / "misfit.pt", **{**SMALL_KWARGS, "widths": [8, 16]})
    files["misfit.pt"].write_bytes(files["good.pt"].read_bytes())
    files["two_inputs.pt"] = _sidecar(root / "two_inputs.pt", TWO_INPUTS)
    torch.save(TwoInputNet().state_dict(), files["two_inputs.pt"])

    files["folder.pt"] = root / "folder.pt"
    files["folder.pt"].mkdir()
    files["bad_config"] = root / "bad_config"
    files["bad_config"].mkdir()
    (files["bad_config"] / "config.json").write_text('{"architectures": ["ViTModel"],')
    (files["bad_config"] / "model.safetensors").write_bytes(junk)
    files["clip"] = _clip_without_its_image_tower(root / "clip")
    files["vit_misfit"] = _vit_with_a_foreign_config(root / "vit_misfit")

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, SMALL_SIZE, SMALL_SIZE), dtype=np.uint8)
    labels = np.arange(12) % 5
    files["good.npz"] = root / "good.npz"
    np.savez(files["good.npz"], images=images, labels=labels)
    files["half.npz"] = _cut(files["good.npz"], root / "half.npz")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": _png(a), "path": None} for a in images], image_type),
                             "label": labels}), root / "whole.parquet")
    files["half.parquet"] = _cut(root / "whole.parquet", root / "half.parquet")
    with tarfile.open(root / "whole.tar", "w") as tar:
        for i, pixels in enumerate(images):
            for name, data in ((f"{i:04d}.png", _png(pixels)), (f"{i:04d}.cls", str(labels[i]).encode())):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    files["half.tar"] = _cut(root / "whole.tar", root / "half.tar")
    files["empty_folder"] = root / "empty_folder"
    files["empty_folder"].mkdir()
    return files


# The name a message must mention for each input (a folder's own name; a file's name).
def _named(path: Path) -> str:
    return path.name


MODEL_INPUTS = ["random.safetensors", "random.pt", "empty.pt", "empty.safetensors", "half.pt", "half.safetensors",
                "folder.pt", "bad_config", "misfit.pt", "clip", "vit_misfit"]
DATA_INPUTS = ["random.parquet", "random.arrow", "random.tar", "random.npz", "empty.parquet", "empty.npz",
               "half.parquet", "half.tar", "half.npz", "folder.pt", "good.pt"]
DATA_COMMANDS = ["extract", "cluster", "embed", "paths", "featviz"]


def _argv(command: str, checkpoint: Path, data: Path, out: Path) -> list[str]:
    cache = ["--cache-dir", str(out / "cache")]
    extra = {
        "info": [],
        "diagram": ["-o", str(out / "circuit.svg")],
        "extract": ["-o", str(out / "acts.parquet"), *cache],
        "cluster": cache,
        "embed": ["--method", "pca", *cache],
        "paths": ["-o", str(out), "--images", "8", "--samples", "1", "--formats", "svg", *cache],
        "featviz": ["--unit", "0", "-k", "2", "--steps", "2", "-o", str(out), *cache],
    }[command]
    positional = [str(checkpoint)] if command in ("info", "diagram") else [str(checkpoint), str(data)]
    return [command, *positional, *extra, "--device", "cpu"]


def _one_line_error(capsys, code: int, named: str) -> str:
    """The command's stderr ends in exactly one ``netatlas: error:`` line naming ``named``; no traceback."""
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "Traceback" not in text, text
    lines = [line for line in captured.err.split("\n") if line.strip()]
    errors = [line for line in lines if line.startswith("netatlas: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], captured.err
    assert all(PROGRESS_BAR.search(line) for line in lines[:-1]), captured.err   # only a progress bar may precede it
    assert "failed unexpectedly" not in errors[0], errors[0]    # converted where it happened, not by the net
    assert named in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["info", "diagram", *DATA_COMMANDS])
@pytest.mark.parametrize("checkpoint", MODEL_INPUTS)
def test_a_broken_checkpoint_is_one_line(broken, tmp_path, capsys, command, checkpoint):
    code = main(_argv(command, broken[checkpoint], broken["good.npz"], tmp_path))
    _one_line_error(capsys, code, _named(broken[checkpoint]))


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("data", DATA_INPUTS)
def test_a_broken_dataset_is_one_line(broken, tmp_path, capsys, command, data):
    code = main(_argv(command, broken["good.pt"], broken[data], tmp_path))
    _one_line_error(capsys, code, _named(broken[data]))


def test_what_the_messages_say(broken, tmp_path, capsys):
    """The CLIP folder without its vision weights says so, a config that does not fit names a tensor, corrupt
    bytes say so: each message says what to do, not only what went wrong."""
    said = {name: (main(_argv("info", broken[name], broken["good.npz"], tmp_path)), capsys.readouterr().err)
            for name in ("clip", "vit_misfit", "half.pt", "random.safetensors", "bad_config")}
    assert all(code == 2 for code, _ in said.values())
    assert "clip's image tower is not in its weights" in said["clip"][1] and "vision_model." in said["clip"][1]
    assert "does not fit the weights" in said["vit_misfit"][1] and "torch.Size" not in said["vit_misfit"][1]
    assert "truncated or corrupt" in said["half.pt"][1] and "truncated or corrupt" in said["random.safetensors"][1]
    assert "not valid JSON" in said["bad_config"][1]


@pytest.mark.parametrize("command", ["info", "diagram", *DATA_COMMANDS])
def test_a_forward_that_needs_other_inputs_is_one_line(broken, tmp_path, capsys, command):
    code = main(_argv(command, broken["two_inputs.pt"], broken["good.npz"], tmp_path))
    line = _one_line_error(capsys, code, "TwoInputNet")
    assert "mask" in line and "image batch" in line


@pytest.mark.parametrize("checkpoint", ["random.safetensors", "random.pt", "empty.pt", "half.pt", "folder.pt",
                                        "bad_config", "clip", "good.pt"])
def test_kan_with_a_broken_checkpoint_is_one_line(broken, tmp_path, capsys, checkpoint):
    code = main(["kan", str(broken[checkpoint]), "-o", str(tmp_path / "out")])
    _one_line_error(capsys, code, _named(broken[checkpoint]))


@pytest.mark.parametrize("sample", ["random.npz", "random.pt", "empty.npz", "half.npz", "half.pt", "folder.pt"])
def test_kan_with_a_broken_sample_is_one_line(broken, tmp_path, capsys, sample):
    code = main(["kan", "demo", "--sample", str(broken[sample]), "-o", str(tmp_path / "out")])
    _one_line_error(capsys, code, _named(broken[sample]))


def test_the_last_net_catches_a_bug_in_one_line(monkeypatch, tmp_path, capsys):
    """An exception no code converted (a bug) is still one line and exit 2; NETATLAS_DEBUG=1 shows it whole."""
    import netatlas.backend.model_info as model_info

    def bug(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(model_info, "describe_model", bug)
    monkeypatch.delenv("NETATLAS_DEBUG", raising=False)
    assert main(["info", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["netatlas: error: info failed unexpectedly (ZeroDivisionError: division by zero); "
                                "set NETATLAS_DEBUG=1 for the traceback"]
    monkeypatch.setenv("NETATLAS_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["info", "demo"])


def test_the_real_process_exits_2_without_a_traceback(broken):
    """``python -m netatlas.cli info <CLIP folder without its vision weights>``: exit code 2 and one line on
    stderr, nothing else."""
    env = {**os.environ, "NETATLAS_DEBUG": ""}
    done = subprocess.run([sys.executable, "-m", "netatlas.cli", "info", str(broken["clip"])], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [line for line in done.stderr.strip().splitlines()
                                                if line.startswith("netatlas: error: clip's image tower")]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_model_failed_says_which_model_on_what_and_what_to_do():
    from netatlas.backend.errors import NetatlasError, model_failed

    said = str(model_failed(TypeError("forward() missing 1 required positional argument: 'input_ids'\nmore"),
                            "a 1x3x224x224 batch of zeros", TwoInputNet()))
    assert said.startswith("the model TwoInputNet failed on a 1x3x224x224 batch of zeros (TypeError: forward() "
                           "missing 1 required positional argument: 'input_ids'): ")
    assert "\n" not in said and "vision tower" in said and "--size" in said
    out_of_memory = str(model_failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                     "images 0-255 of digits"))
    assert "ran out of memory on images 0-255 of digits" in out_of_memory and "--batch-size" in out_of_memory
    ours = NetatlasError("no module named 'x'")
    assert model_failed(ours, "anything") is ours          # our own hooks' errors pass through unchanged
