"""extract_activations: hooked, batched, reduced activations equal a direct forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.backend_support import SMALL_SIZE, preprocess_by_hand
from netatlas.backend.activations import extract_activations
from netatlas.backend.datasets import npz_dataset
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError

PRE = Preprocessing(size=(SMALL_SIZE, SMALL_SIZE), grayscale=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))


class ConvNet(nn.Module):
    """conv -> bn -> relu -> pool -> flatten -> fc1 -> relu -> fc2, with every step a named module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(24, 9)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu2(self.fc1(self.flatten(self.pool(self.relu(self.bn(self.conv(x))))))))


class TokenNet(nn.Module):
    """Image -> [N, T, D] patch tokens -> linear -> transformer layer -> mean over tokens -> head."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)  # [N, D, 3, 3] -> 9 tokens
        self.proj = nn.Linear(dim, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=16, dropout=0.0,
                                                  batch_first=True)
        self.head = nn.Linear(dim, 3)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.proj(self.tokens(x))).mean(1))


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")


@pytest.fixture
def rgb_images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(23, SMALL_SIZE, SMALL_SIZE, 3), dtype=np.uint8)


@pytest.fixture
def rgb_dataset(tmp_path, rgb_images):
    path = tmp_path / "rgb.npz"
    np.savez(path, images=rgb_images, labels=np.arange(len(rgb_images)) % 4)
    return npz_dataset(path)


@pytest.fixture
def conv_net():
    torch.manual_seed(0)
    model = ConvNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def assert_close(actual: np.ndarray, expected: torch.Tensor) -> None:
    expected = expected.detach().numpy()
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def all_hooks(model: nn.Module) -> list:
    return [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]


def test_conv_and_linear_activations_match_direct_forward(conv_net, rgb_dataset, rgb_images):
    x = preprocess_by_hand(rgb_images, PRE.mean, PRE.std)
    with torch.no_grad():
        conv = conv_net.conv(x)  # the conv's own output, before bn
        fc1 = conv_net.fc1(conv_net.flatten(conv_net.pool(conv_net.relu(conv_net.bn(conv)))))
        logits = conv_net(x)

    for reduction, reduce in (("mean", lambda t: t.mean(dim=(2, 3))), ("max", lambda t: t.amax(dim=(2, 3)))):
        acts = extract_activations(conv_net, rgb_dataset, PRE, ["conv", "fc1"], reduction,
                                   batch_size=5, device="cpu")  # 23 images: 5 batches, the last short
        assert acts.reduction == reduction
        assert list(acts.layers) == ["conv", "fc1"]
        assert_close(acts.layers["conv"], reduce(conv))
        assert_close(acts.layers["fc1"], fc1)  # 2-D outputs are not reduced
        assert_close(acts.logits, logits)
        np.testing.assert_array_equal(acts.predictions, logits.argmax(1).numpy())
        assert len(acts) == len(rgb_images)


def test_mean_and_max_differ(conv_net, rgb_dataset):
    mean = extract_activations(conv_net, rgb_dataset, PRE, ["conv"], "mean", device="cpu")
    peak = extract_activations(conv_net, rgb_dataset, PRE, ["conv"], "max", device="cpu")
    assert (peak.layers["conv"] > mean.layers["conv"]).all()


def test_activations_of_a_hook_based_reference(conv_net, rgb_dataset, rgb_images):
    """Cross-check with our own hook on a module deep in the pass (bn output, mean per channel)."""
    seen = []
    handle = conv_net.bn.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        conv_net(preprocess_by_hand(rgb_images, PRE.mean, PRE.std))
    handle.remove()
    acts = extract_activations(conv_net, rgb_dataset, PRE, ["bn"], "mean", batch_size=8, device="cpu")
    assert_close(acts.layers["bn"], seen[0].mean(dim=(2, 3)))


def test_logits_only(conv_net, rgb_dataset, rgb_images):
    acts = extract_activations(conv_net, rgb_dataset, PRE, device="cpu")
    with torch.no_grad():
        logits = conv_net(preprocess_by_hand(rgb_images, PRE.mean, PRE.std))
    assert acts.layers == {}
    assert_close(acts.logits, logits)
    np.testing.assert_array_equal(acts.predictions, logits.argmax(1).numpy())


def test_progress_reports_every_batch(conv_net, rgb_dataset):
    calls = []
    extract_activations(conv_net, rgb_dataset, PRE, ["fc1"], batch_size=10, device="cpu",
                        progress=lambda done, total: calls.append((done, total)))
    assert calls == [(10, 23), (20, 23), (23, 23)]


def test_hooks_removed_after_success(conv_net, rgb_dataset):
    assert all_hooks(conv_net) == []
    extract_activations(conv_net, rgb_dataset, PRE, ["conv", "bn", "fc1", "fc2"], device="cpu")
    assert all_hooks(conv_net) == []


def test_hooks_removed_after_an_exception_mid_pass(conv_net, rgb_dataset):
    conv_net.relu2 = Boom()  # fc1 runs (its hook fires), then the pass raises
    with pytest.raises(NetatlasError, match="ConvNet failed on a 23x3x12x12 batch of rgb .*ValueError: boom") as err:
        extract_activations(conv_net, rgb_dataset, PRE, ["conv", "fc1", "relu2"], device="cpu")
    assert isinstance(err.value.__cause__, ValueError)      # the user's exception, kept for a debugger
    for name, module in conv_net.named_modules():
        assert not module._forward_hooks, name
    # the model still works normally afterwards, with nothing captured behind our back
    conv_net.relu2 = nn.ReLU()
    x = preprocess_by_hand(np.zeros((1, SMALL_SIZE, SMALL_SIZE, 3), np.uint8), PRE.mean, PRE.std)
    with torch.no_grad():
        conv_net(x)


def test_unknown_layer_is_a_netatlas_error(conv_net, rgb_dataset):
    with pytest.raises(NetatlasError, match="no_such_layer"):
        extract_activations(conv_net, rgb_dataset, PRE, ["conv", "no_such_layer"], device="cpu")
    assert all_hooks(conv_net) == []


def test_unknown_reduction_is_a_netatlas_error(conv_net, rgb_dataset):
    with pytest.raises(NetatlasError, match="median"):
        extract_activations(conv_net, rgb_dataset, PRE, ["conv"], "median", device="cpu")


def test_token_outputs_reduce_over_tokens(rgb_dataset, rgb_images):
    torch.manual_seed(1)
    model = TokenNet().eval()
    x = preprocess_by_hand(rgb_images, PRE.mean, PRE.std)
    with torch.no_grad():
        proj = model.proj(model.tokens(x))
        encoded = model.encoder(proj)
        logits = model(x)
    assert proj.shape == (len(rgb_images), 9, 8)  # [N, T, D]
    for reduction, reduce in (("mean", lambda t: t.mean(dim=1)), ("max", lambda t: t.amax(dim=1))):
        acts = extract_activations(model, rgb_dataset, PRE, ["proj", "encoder", "patch"], reduction,
                                   batch_size=7, device="cpu")
        assert_close(acts.layers["proj"], reduce(proj))
        assert_close(acts.layers["encoder"], reduce(encoded))
        # the patch conv is channels-first [N, D, 3, 3]: reduced over space, not over D
        with torch.no_grad():
            patch = model.patch(x)
        assert_close(acts.layers["patch"], patch.mean(dim=(2, 3)) if reduction == "mean"
                     else patch.amax(dim=(2, 3)))
        assert_close(acts.logits, logits)


def test_conv1d_outputs_reduce_over_length(rgb_dataset, rgb_images):
    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1d = nn.Conv1d(3, 5, 3)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.conv1d(x.flatten(2)).mean(2))

    torch.manual_seed(2)
    model = Seq().eval()
    x = preprocess_by_hand(rgb_images, PRE.mean, PRE.std)
    with torch.no_grad():
        out = model.conv1d(x.flatten(2))  # [N, C=5, L]
    acts = extract_activations(model, rgb_dataset, PRE, ["conv1d"], "max", device="cpu")
    assert_close(acts.layers["conv1d"], out.amax(dim=2))


def test_tuple_and_dict_outputs(rgb_dataset, rgb_images):
    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            y = self.lin(x.mean(dim=(2, 3)))
            return y, y * 2

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = TupleOut()

        def forward(self, x):
            first, _ = self.body(x)
            return {"aux": first * 0, "logits": first + 1}

    torch.manual_seed(4)
    model = DictModel().eval()
    x = preprocess_by_hand(rgb_images, PRE.mean, PRE.std)
    with torch.no_grad():
        body = model.body.lin(x.mean(dim=(2, 3)))
    acts = extract_activations(model, rgb_dataset, PRE, ["body"], device="cpu")
    assert_close(acts.layers["body"], body)
    assert_close(acts.logits, body + 1)


def test_grayscale_model_on_resized_rgb_images(tmp_path):
    """Preprocessing converts RGB to gray and resizes; the hooked pass sees exactly that input."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(6, 20, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb20.npz", images=images)
    dataset = npz_dataset(tmp_path / "rgb20.npz")
    pre = Preprocessing(size=(10, 8), grayscale=True, mean=(0.45,), std=(0.2,))
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        model(torch.zeros(1, 1, 10, 8))
    model.eval()

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    gray = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    gray = torch.nn.functional.interpolate(gray, size=(10, 8), mode="bilinear", antialias=True,
                                           align_corners=False)
    x = (gray - 0.45) / 0.2
    with torch.no_grad():
        conv = model[0](x)
        logits = model(x)
    acts = extract_activations(model, dataset, pre, ["0"], device="cpu")
    assert_close(acts.layers["0"], conv.mean(dim=(2, 3)))
    assert_close(acts.logits, logits)
    assert dataset.labeled is False
