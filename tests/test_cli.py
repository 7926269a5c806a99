"""The netatlas command line, run in-process: output checked against direct forward passes."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.demo_model import DemoResNet
from netatlas.cli import main
from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_SIZE, preprocess_by_hand


@pytest.fixture(scope="module")
def demo_model():
    """The demo model built by hand from its sidecar and weights (not through load_checkpoint)."""
    sidecar = json.loads(demo_checkpoint().with_suffix(".json").read_text())
    model = DemoResNet(**sidecar["arch_kwargs"])
    model.load_state_dict(load_file(str(demo_checkpoint())))
    return model.eval(), sidecar["preprocessing"]


@pytest.fixture(scope="module")
def demo_logits(demo_model):
    """Its logits on every demo digit, by a direct forward pass on hand-preprocessed images."""
    model, pre = demo_model
    x = preprocess_by_hand(demo_dataset().array, pre["mean"], pre["std"])
    with torch.inference_mode():
        return torch.cat([model(chunk) for chunk in x.split(256)]).numpy()


def vectors(table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_pylist()).astype(np.float32)


def module_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if line.split() and line.split()[0] == name]
    assert len(lines) == 1, (name, out)
    return lines[0]


def test_info_demo(capsys, demo_model):
    model, _ = demo_model
    assert main(["info", "demo"]) == 0
    out = capsys.readouterr().out
    assert "format=safetensors" in out and f"arch={DEMO_ARCH}" in out and "input=1x1x28x28" in out
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,}" in module_line(out, "(model)")
    for name in ("stem", "stem.0", "blocks", "blocks.0", "blocks.0.conv1", "blocks.2.downsample.0", "fc"):
        module = dict(model.named_modules())[name]
        assert module_line(out, name).split()[-1] == f"{sum(p.numel() for p in module.parameters()):,}"
    assert "Conv2d" in module_line(out, "stem.0") and "1x16x28x28" in module_line(out, "stem.0")
    assert "1x32x14x14" in module_line(out, "blocks.2")
    assert "Linear" in module_line(out, "fc") and "1x10" in module_line(out, "fc")


def test_extract_demo(tmp_path, capsys, demo_logits):
    logits = demo_logits
    out_path = tmp_path / "out.parquet"
    cache = tmp_path / "cache"
    code = main(["extract", "demo", "demo", "--layers", "fc", "-o", str(out_path),
                 "--cache-dir", str(cache), "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "5000 images" in out

    table = pq.read_table(out_path)
    assert table.num_rows == 5000
    assert table.column("index").to_pylist() == list(range(5000))
    np.testing.assert_array_equal(table.column("label").to_numpy(), demo_dataset().labels)
    np.testing.assert_allclose(vectors(table, "logits"), logits, atol=1e-5)
    np.testing.assert_allclose(vectors(table, "fc"), vectors(table, "logits"), atol=1e-5)
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), logits.argmax(1))
    accuracy = float((logits.argmax(1) == demo_dataset().labels).mean())
    assert re.search(r"accuracy (\d\.\d{4})", out).group(1) == f"{accuracy:.4f}"
    # results were cached where we asked, not in ~/.cache
    assert list(cache.rglob("*.parquet"))


def test_extract_npz_with_arch_and_preprocessing_flags(tmp_path, capsys, small_model, small_checkpoint,
                                                       small_npz, small_images):
    images, _ = small_images
    out_path = tmp_path / "sub" / "small.parquet"
    code = main(["extract", str(small_checkpoint), str(small_npz), "--arch", DEMO_ARCH,
                 "--arch-kwargs", json.dumps(SMALL_KWARGS), "--size", str(SMALL_SIZE), "--grayscale",
                 "--mean", "0.25", "--std", "0.5", "--layers", "stem.0", "--reduction", "max",
                 "-o", str(out_path), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                 "--batch-size", "7"])
    assert code == 0, capsys.readouterr().err
    table = pq.read_table(out_path)
    x = preprocess_by_hand(images, (0.25,), (0.5,))
    with torch.no_grad():
        stem = small_model.stem[0](x).amax(dim=(2, 3)).numpy()
        logits = small_model(x).numpy()
    np.testing.assert_allclose(vectors(table, "stem.0"), stem, atol=1e-5)
    np.testing.assert_allclose(vectors(table, "logits"), logits, atol=1e-5)


def test_info_torchscript(tmp_path, capsys, small_model):
    path = tmp_path / "traced.pt"
    torch.jit.trace(small_model, torch.zeros(1, 1, SMALL_SIZE, SMALL_SIZE)).save(str(path))
    assert main(["info", str(path), "--size", str(SMALL_SIZE), "--grayscale"]) == 0
    out = capsys.readouterr().out
    assert "format=torchscript" in out and "input=1x1x12x12" in out
    assert module_line(out, "fc").split()[-1] == f"{sum(p.numel() for p in small_model.fc.parameters()):,}"


@pytest.mark.parametrize("argv", [
    ["info", "{tmp}/nope.pt"],
    ["extract", "{tmp}/nope.pt", "demo", "-o", "{tmp}/o.parquet"],
    ["extract", "demo", "{tmp}/no_such_data", "-o", "{tmp}/o.parquet"],
    ["info", "{tmp}/garbage.pt", "--arch", "resnet18"],
    ["info", "{tmp}/garbage.pt", "--arch", "resnet1800"],
    ["extract", "demo", "demo", "--layers", "no_such_layer", "-o", "{tmp}/o.parquet", "--device", "cpu"],
], ids=["missing-checkpoint", "extract-missing-checkpoint", "missing-data", "corrupt", "unknown-arch",
        "unknown-layer"])
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, argv):
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage" * 20)
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--cache-dir", str(tmp_path / "c")]
                if argv[0] == "extract" else [a.replace("{tmp}", str(tmp_path)) for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines()[-1].startswith("netatlas: error: ")
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "o.parquet").exists()


def test_unsafe_pickle_is_refused_on_the_command_line(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"weights": torch.zeros(2), "payload": Evil()}, tmp_path / "evil.pt")
    assert main(["info", str(tmp_path / "evil.pt"), "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and "open" in err
    assert not marker.exists()


def test_bad_arch_kwargs_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["info", "demo", "--arch-kwargs", "[1, 2]"])
    assert info.value.code == 2
    assert "JSON object" in capsys.readouterr().err
