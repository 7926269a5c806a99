"""Activation maximization: the objective equals a direct forward pass, the optimizers raise it for all
k images in one batch, and the model is left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from netatlas.backend.activations import extract_activations
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset, npz_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.featviz import (FeatvizSettings, Objective, color_correlation, diversity, maximize,
                                      noise_start, to_uint8, unit_activation)
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError

OPTIMIZERS = ("paper", "lucid")
RGB_PRE = Preprocessing(size=(32, 32), grayscale=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))


class TinyRGB(nn.Module):
    """conv -> bn -> in-place relu -> strided conv -> relu -> pool -> fc1 -> relu -> fc2: any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)  # rewrites bn1's output: the objective must read it first
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, 12)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(12, 5)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu3(self.fc1(self.trunk(x))))


class Cancelled(Exception):
    """What the app's progress callback raises to stop a run."""


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    loaded = load_checkpoint(demo_checkpoint())
    images = demo_dataset().array[::10]  # 500 digits, 50 per class
    return loaded.model, loaded.preprocessing, images


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyRGB()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def demo_inputs(demo, n: int | None = None) -> torch.Tensor:
    _, pre, images = demo
    return pre.uint8_to_tensor(images[:n])


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The demo's fc input, computed without hooks."""
    with torch.no_grad():
        return model.flatten(model.pool(model.blocks(model.stem(x))))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def model_state(model: nn.Module):
    return ({name: m.training for name, m in model.named_modules()},
            {name: p.requires_grad for name, p in model.named_parameters()},
            {name: t.detach().clone() for name, t in model.state_dict().items()})


def assert_same_state(model: nn.Module, before) -> None:
    training, flags, tensors = model_state(model)
    assert training == before[0]
    assert flags == before[1]
    assert all(torch.equal(tensors[name], before[2][name]) for name in tensors)  # BN stats included
    assert hook_count(model) == 0


def test_unit_activation_equals_direct_forward(demo, tiny, tmp_path):
    model, pre, images = demo
    x = demo_inputs(demo, 7)
    with torch.no_grad():
        conv = model.blocks[1].conv1(model.blocks[0](model.stem(x))).mean(dim=(2, 3))[:, 5]
        logit = model(x)[:, 7]
    torch.testing.assert_close(unit_activation(model, x, Objective("blocks.1.conv1", 5)), conv)
    torch.testing.assert_close(unit_activation(model, x, Objective("", 7)), logit)
    torch.testing.assert_close(unit_activation(model, x, Objective("fc", 7)), logit)

    xr = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feature = tiny.fc1(tiny.trunk(xr))[:, 4]
        before_relu = tiny.bn1(tiny.conv1(xr)).mean(dim=(2, 3))[:, 6]
    torch.testing.assert_close(unit_activation(tiny, xr, Objective("fc1", 4)), feature)
    assert (before_relu < 0).any()
    torch.testing.assert_close(unit_activation(tiny, xr, Objective("bn1", 6)), before_relu)

    # A ReLU module that runs twice per block: the same number the Neurons view shows.
    np.savez(tmp_path / "d.npz", images=images[:9])
    neurons = extract_activations(model, npz_dataset(tmp_path / "d.npz"), pre, ["blocks.0.relu"], device="cpu")
    got = unit_activation(model, pre.uint8_to_tensor(images[:9]), Objective("blocks.0.relu", 3))
    np.testing.assert_allclose(got.numpy(), neurons.layers["blocks.0.relu"][:, 3], rtol=1e-5, atol=1e-6)
    assert hook_count(model) == 0 and hook_count(tiny) == 0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("objective", [Objective("", 3), Objective("blocks.3", 5)], ids=["logit", "conv"])
def test_maximize_raises_the_unit_for_all_k_in_one_batch(demo, optimizer, objective):
    model, pre, _ = demo
    x = demo_inputs(demo)
    values = unit_activation(model, x, objective)
    top = values.argsort(descending=True)
    means = torch.stack([x[top[5 * i:5 * (i + 1)]].mean(0) for i in range(3)])
    starts = torch.cat([means, noise_start(2, pre, seed=1)])
    batches: list[int] = []
    counter = model.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
    try:
        out = maximize(model, starts, objective, pre, FeatvizSettings(optimizer, steps=40))
    finally:
        counter.remove()
    assert batches == [5] * 40  # one forward of the whole batch per step
    assert hook_count(model) == 0
    gain = unit_activation(model, out, objective) - unit_activation(model, starts, objective)
    assert (gain > 0.3 * values.max()).all(), gain


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("size", [(32, 32), (27, 41)])
def test_rgb_any_size(tiny, optimizer, size):
    pre = Preprocessing(size=size, grayscale=False, mean=RGB_PRE.mean, std=RGB_PRE.std)
    start = noise_start(3, pre, seed=2)
    assert start.shape == (3, 3, *size)
    objective = Objective("conv2", 3)
    colors = color_correlation(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    out = maximize(tiny, start, objective, pre, FeatvizSettings(optimizer, steps=30), colors=colors)
    assert out.shape == start.shape
    pixels = out * torch.tensor(pre.std).view(1, 3, 1, 1) + torch.tensor(pre.mean).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    images = pre.uint8_to_tensor(np.random.default_rng(1).integers(0, 256, (100, *size, 3), dtype=np.uint8))
    best = max(unit_activation(tiny, images, objective).max(), unit_activation(tiny, start, objective).max())
    assert (unit_activation(tiny, out, objective) > 2 * best).all()
    assert to_uint8(out, pre).shape == (3, *size, 3)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_same_seed_same_images(demo, optimizer):
    model, pre, _ = demo
    start = noise_start(2, pre, seed=0)

    def run(seed: int) -> torch.Tensor:
        return maximize(model, start, Objective("", 5), pre, FeatvizSettings(optimizer, steps=12, seed=seed))

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.allclose(first, run(1))
    assert torch.equal(noise_start(2, pre, seed=4), noise_start(2, pre, seed=4))
    assert not torch.equal(noise_start(2, pre, seed=4), noise_start(2, pre, seed=5))


def test_paper_batch_equals_images_one_at_a_time(demo):
    """Each image's step is normalized by its own gradient: batching does not mix the facets."""
    model, pre, _ = demo
    start = torch.cat([demo_inputs(demo, 2), noise_start(1, pre)])
    settings = FeatvizSettings("paper", steps=15)
    batch = maximize(model, start, Objective("", 2), pre, settings)
    alone = torch.cat([maximize(model, start[i:i + 1], Objective("", 2), pre, settings) for i in range(3)])
    # Batched and single convolutions round differently, and 15 normalized steps amplify a few of those
    # roundings past 1e-4 on some CPUs; mixing the facets' normalization would move nearly every pixel.
    differ = (batch - alone).abs()
    assert float(differ.max()) < 1e-2 and float((differ > 1e-4).float().mean()) < 0.02


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_zero_steps_return_the_start(tiny, optimizer):
    """The lucid parameters are initialized by inverting sigmoid, colour mix and FFT exactly."""
    pixels = torch.rand(2, 3, 32, 31, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    pre = Preprocessing(size=(32, 31), grayscale=False, mean=RGB_PRE.mean, std=RGB_PRE.std)
    start = (pixels - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    colors = torch.tensor([[0.3, 0.1, 0.05], [0.1, 0.25, 0.1], [0.05, 0.1, 0.2]])
    out = maximize(tiny, start, Objective("", 1), pre, FeatvizSettings(optimizer, steps=0), colors=colors)
    torch.testing.assert_close(out, start, atol=1e-4, rtol=0)


def test_to_uint8_round_trips(demo):
    _, pre, images = demo
    np.testing.assert_array_equal(to_uint8(pre.uint8_to_tensor(images[:6]), pre), images[:6])
    rgb = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(RGB_PRE.uint8_to_tensor(rgb), RGB_PRE), rgb)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_model_state_restored_after_success_and_cancel(optimizer):
    from tests.backend_support import small_demo_resnet, SMALL_PRE

    model = small_demo_resnet()
    model.train()
    model.blocks[0].eval()
    model.stem[0].weight.requires_grad_(False)
    model.fc.bias.requires_grad_(False)
    before = model_state(model)
    start = noise_start(2, SMALL_PRE)
    settings = FeatvizSettings(optimizer, steps=6)
    maximize(model, start, Objective("blocks.1", 2), SMALL_PRE, settings)
    assert_same_state(model, before)

    calls = []

    def cancel(step: int, total: int) -> None:
        calls.append((step, total))
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        maximize(model, start, Objective("blocks.1", 2), SMALL_PRE, settings, progress=cancel)
    assert calls == [(1, 6), (2, 6), (3, 6)]
    assert_same_state(model, before)
    unit_activation(model, start, Objective("", 1))
    assert_same_state(model, before)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_diversity_term_on_a_layer_rewritten_in_place(tiny, optimizer):
    start = noise_start(3, RGB_PRE, seed=3)
    objective = Objective("bn1", 6)
    out = maximize(tiny, start, objective, RGB_PRE, FeatvizSettings(optimizer, steps=10, diversity=0.02))
    assert (unit_activation(tiny, out, objective) > unit_activation(tiny, start, objective)).all()
    assert not torch.allclose(out, maximize(tiny, start, objective, RGB_PRE, FeatvizSettings(optimizer, steps=10)))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_diversity_term_spreads_the_facets(demo, optimizer):
    model, pre, _ = demo
    start = noise_start(4, pre, seed=0)
    objective = Objective("blocks.5", 7)
    plain = maximize(model, start, objective, pre, FeatvizSettings(optimizer, steps=40))
    diverse = maximize(model, start, objective, pre, FeatvizSettings(optimizer, steps=40, diversity=1.0))
    assert diversity(penultimate(model, diverse)) > diversity(penultimate(model, plain)) + 0.2


def test_diversity_number():
    assert diversity(torch.tensor([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    assert diversity(torch.tensor([[1.0, 0.0], [-3.0, 0.0]])) == pytest.approx(2.0)
    assert diversity(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])) == pytest.approx(0.0, abs=1e-12)
    assert diversity(torch.tensor([[1.0, 2.0]])) == 0.0
    rows = np.random.default_rng(0).normal(size=(5, 7))
    cos = (rows @ rows.T) / np.outer(np.linalg.norm(rows, axis=1), np.linalg.norm(rows, axis=1))
    expected = np.mean([1 - cos[i, j] for i in range(5) for j in range(5) if i != j])
    assert diversity(torch.from_numpy(rows)) == pytest.approx(expected)


def test_color_correlation_is_the_square_root_of_the_channel_covariance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (6, 9, 11, 1))
    rgb = np.clip(base + rng.integers(0, 56, (6, 9, 11, 3)) * np.array([0, 1, 2]) // 2, 0, 255).astype(np.uint8)
    cov = np.cov(rgb.reshape(-1, 3).T / 255.0)
    root = color_correlation(rgb).double().numpy()
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(cov).real, atol=1e-6)
    np.testing.assert_allclose(root @ root, cov, atol=1e-6)
    assert color_correlation(rgb[..., 0]).tolist() == [[1.0]]
    assert color_correlation(rgb[..., :1]).tolist() == [[1.0]]


def test_bad_objectives_are_user_errors(demo):
    model, pre, _ = demo
    start = noise_start(1, pre)
    with pytest.raises(NetatlasError, match="no module named 'blocks.9'"):
        maximize(model, start, Objective("blocks.9", 0), pre)
    with pytest.raises(NetatlasError, match="no module named"):
        unit_activation(model, start, Objective("nope", 0))
    with pytest.raises(NetatlasError, match="unit 10 is out of range.*10 units"):
        maximize(model, start, Objective("", 10), pre, FeatvizSettings(steps=3))
    with pytest.raises(NetatlasError, match="unit -1 is out of range"):
        unit_activation(model, start, Objective("blocks.3", -1))
    with pytest.raises(NetatlasError, match="unit 64 is out of range.*64 units"):
        maximize(model, start, Objective("blocks.5", 64), pre, FeatvizSettings("lucid", steps=3))
    with pytest.raises(NetatlasError, match="starting images"):
        maximize(model, torch.zeros(1, 3, 28, 28), Objective("", 0), pre)
    with pytest.raises(NetatlasError, match="unknown optimizer"):
        maximize(model, start, Objective("", 0), pre, FeatvizSettings("adam"))  # type: ignore[arg-type]
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())


def test_the_canvas_never_starts_below_32_pixels():
    from netatlas.backend.featviz import canvas_stages

    assert canvas_stages(28) == 1 and canvas_stages(224) == 4
    assert all(side / 1.2 ** (canvas_stages(side) - 1) >= 32 for side in (28, 40, 64, 100, 224) if side >= 32)


def test_default_facets_on_the_demo_are_at_least_as_diverse_as_their_starts(tmp_path):
    """The page's first facets (the Neurons tab's default unit, blocks.5 unit 0, the paper's optimizer) keep
    the variety of their starting digits: with a 16 px first canvas they were 4 grey smears (0.079 < 0.093)."""
    from netatlas.backend.cache import ResultCache
    from netatlas.backend.checkpoint import load_checkpoint
    from netatlas.backend.datasets import demo_dataset
    from netatlas.backend.demo import demo_checkpoint
    from netatlas.backend.facets import pixel_diversity
    from netatlas.backend.workspace import Workspace

    ws = Workspace(load_checkpoint(demo_checkpoint()), demo_dataset(), ResultCache(tmp_path), "cpu")
    report = ws.facets("blocks.5", 0)
    assert report.diversity >= report.start_diversity > 0
    assert report.diversity == pytest.approx(pixel_diversity(report.images))   # measured on what is shown
