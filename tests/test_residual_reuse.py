"""Prefix reuse in the residual analysis: passes that share work give the numbers plain passes give.

``analyze_paths(reuse=False)`` runs every pass in full (a forward pass per mask, per lesion set, per
order and per gradient route); each test compares the reusing analysis against it, number by number.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import netatlas.backend.residual.paths as rp
from netatlas.backend.residual import reuse
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.residual.blocks import find_residual_units, gated
from netatlas.backend.residual.paths import PathSettings, analyze_paths
from tests.backend_support import randomize_batchnorm
from tests.test_residual import Residual, tanh_mlp

SETTINGS = PathSettings(images=24, gradient_images=8, decomposition_images=4, samples=3, lesion_draws=4,
                        reorder_trials=6)


def assert_same_report(found: rp.ResidualReport, expected: rp.ResidualReport, rtol: float = 1e-5) -> None:
    """Every column of every table and every meta number agree (times aside)."""
    for section in expected.SECTIONS:
        a, b = getattr(found, section), getattr(expected, section)
        assert list(a.columns) == list(b.columns), section
        for column in b.columns:
            if pd.api.types.is_numeric_dtype(b[column]):
                np.testing.assert_allclose(a[column].to_numpy(float), b[column].to_numpy(float), rtol=rtol,
                                           atol=1e-7, equal_nan=True, err_msg=f"{section}.{column}")
            else:
                assert a[column].tolist() == b[column].tolist(), f"{section}.{column}"
    assert found.meta.keys() == expected.meta.keys()
    for key, value in expected.meta.items():
        if key == "seconds":
            assert found.meta[key].keys() == value.keys()
        elif isinstance(value, float):
            assert found.meta[key] == pytest.approx(value, rel=rtol, abs=1e-12), key
        else:
            assert found.meta[key] == value, key


@pytest.fixture
def plans(monkeypatch) -> list[reuse.Plan]:
    """The plans analyze_paths builds, to see which reuse a model got."""
    built: list[reuse.Plan] = []
    real = reuse.Plan.build.__func__

    def build(cls, *args, **kwargs):
        built.append(real(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(reuse.Plan, "build", classmethod(build))
    return built


def analyses(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, settings: PathSettings = SETTINGS):
    units = find_residual_units(model)
    return (analyze_paths(model, units, x, labels, settings, reuse=True),
            analyze_paths(model, units, x, labels, settings, reuse=False))


def demo_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return randomize_batchnorm(DemoResNet()).eval(), torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))


def resnet_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    return model, torch.randn(12, 3, 40, 40), torch.randint(0, 10, (12,))


@pytest.mark.parametrize("case", [demo_case, resnet_case], ids=["demo", "resnet18"])
def test_reuse_gives_the_numbers_of_plain_passes(case, plans):
    model, x, labels = case()
    with torch.no_grad():
        before = model(x)
    reused, plain = analyses(model, x, labels)
    assert plans[0].passes and plans[0].chain       # the reuse really ran
    assert_same_report(reused, plain)
    assert reused.meta["decomposition_rel_error"] <= 1e-4
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_reuse_in_chunks_matches_one_chunk(monkeypatch, plans):
    model, x, labels = demo_case()
    whole = analyze_paths(model, find_residual_units(model), x, labels, SETTINGS)
    monkeypatch.setattr(reuse, "MEMO_BYTES", 1)        # one image per chunk
    chunked = analyze_paths(model, find_residual_units(model), x, labels, SETTINGS)
    assert plans[-1].chunk == 1
    assert_same_report(chunked, whole)


def test_reuse_skips_the_stem_and_switched_off_branches():
    """Counted by forward hooks on leaf modules: they fire only when the module really computes."""
    model, x, labels = demo_case()
    counts: dict[str, int] = {}
    for name in ("stem.0", "blocks.5.conv1"):
        model.get_submodule(name).register_forward_hook(
            lambda *_, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
    found = {}
    for reused in (True, False):
        counts.clear()
        analyze_paths(model, find_residual_units(model), x, labels, SETTINGS, reuse=reused)
        found[reused] = dict(counts)
    assert found[True]["stem.0"] * 4 < found[False]["stem.0"]
    assert found[True]["blocks.5.conv1"] < found[False]["blocks.5.conv1"]


def test_a_switched_off_branch_is_not_computed():
    model, x, _ = demo_case()
    units = find_residual_units(model)
    calls = []
    model.blocks[2].conv1.register_forward_hook(lambda *_: calls.append(1))
    with gated(model, units) as gate, torch.no_grad():
        model(x[:2])
        gate.mask[2] = 0
        lesioned = model(x[:2])
        gate.mask[2] = 1
        block = model.blocks[2]
        h = model.blocks[:2](model.stem(x[:2]))
        expected = model.fc(model.flatten(model.pool(model.blocks[3:](torch.relu(block.downsample(h))))))
    assert len(calls) == 1
    assert torch.allclose(lesioned, expected, atol=1e-6)


@pytest.mark.parametrize("norm_first", [False, True])
def test_reuse_on_transformer_layers(norm_first, plans):
    """Two adds per layer, computed lazily in the gate's own forward of nn.TransformerEncoderLayer."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model = nn.Sequential(nn.TransformerEncoder(layer, 3, enable_nested_tensor=False), nn.Flatten(),
                          nn.Linear(8 * 5, 4)).eval()
    x = torch.randn(10, 5, 8, generator=torch.Generator().manual_seed(1))
    reused, plain = analyses(model, x, torch.randint(0, 4, (10,)))
    assert plans[0].passes and plans[0].chain
    assert_same_report(reused, plain)


class TwoTowers(nn.Module):
    """Two residual towers side by side on the same input: the blocks are not one chain."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)

        def tower() -> nn.Sequential:
            return nn.Sequential(*(Residual(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6)))
                                   for _ in range(2)))

        self.left, self.right = tower(), tower()
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


def test_blocks_that_are_not_a_chain_fall_back_to_whole_backward_passes(plans):
    model = TwoTowers().eval()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    assert [u.module for u in find_residual_units(model)] == ["left.0", "left.1", "right.0", "right.1"]
    reused, plain = analyses(model, x, torch.full((16,), -1))
    assert plans[0].passes and not plans[0].chain
    assert_same_report(reused, plain)


def test_a_model_that_is_one_unit_has_nothing_to_skip(plans):
    model = Residual(nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))).eval()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    reused, plain = analyses(model, x, torch.full((8,), -1))
    assert not plans[0].chain and plans[0].points == {}
    assert_same_report(reused, plain)


def test_a_misread_probe_falls_back_to_plain_passes(monkeypatch, plans):
    """If the kept outputs were wrong (here: every output called unread), the check on two images
    turns the memo off and the analysis still gives the plain numbers."""
    real = reuse._frontier
    monkeypatch.setattr(reuse, "_frontier",
                        lambda probe, start, banned: [(c, e, False) for c, e, _ in real(probe, start, banned)])
    model = tanh_mlp(5, classes=3, seed=4, gain=2.0)
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    reused, plain = analyses(model, x, torch.full((20,), -1))
    assert not plans[0].passes and plans[0].chain
    assert_same_report(reused, plain)


def test_a_model_the_probe_cannot_follow_runs_plain_passes(monkeypatch, plans):
    def no_storage(t: torch.Tensor) -> int:
        raise RuntimeError("a tensor without storage")

    monkeypatch.setattr(reuse, "_storage", no_storage)
    model = tanh_mlp(4, classes=3, seed=5)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(0))
    reused, plain = analyses(model, x, torch.full((12,), -1))
    assert plans == [None]
    assert_same_report(reused, plain)
    assert all("forward" not in m.__dict__ for m in model.modules())
