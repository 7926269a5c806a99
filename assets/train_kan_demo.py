"""Train the demo KANs in assets/kan/ (well under a minute on one CPU thread).

Two small KANs on f(x, y) = exp(sin(pi x) + y^2) over [-1, 1]^2, one per family, and one wide KAN on
scikit-learn's 8x8 digits; each is read back by ``netatlas.backend.kan.checkpoint.read_kan``:
- pykan, with its own classes and its own ``saveckpt`` (``pykan_exp_sin_{state,config.yml,cache_data}``):
  width [2, 5, 1] trained with a sparsity penalty, pruned (to [2, 1, 1] for these seeds; the script
  stops if pruning leaves anything else), refined to grid 10 and trained again, as pykan's tutorial does.
- efficient-kan layout: ``KANLinear`` below follows Blealtan/efficient-kan (same tensors, same forward,
  its ``update_grid``), width [2, 1, 1], saved with ``torch.save(state_dict)`` to
  ``efficient_kan_exp_sin.pt``, with the sample batch ``exp_sin_sample.npz`` (array "x" [N, 2]).
  The hidden value (sin(pi x) + y^2 up to an affine map, in [-1, 2]) starts on a grid over [-1, 2] and
  the grid then follows the data by update_grid while Adam trains, so the output edge is drawn where
  it was trained; LBFGS finishes on the final grids.
- digits, efficient-kan layout: width [64, 16, 10] (1,184 edges, what the tab does for wide layers) trained
  with cross-entropy on ``sklearn.datasets.load_digits`` (shipped with scikit-learn, nothing downloaded),
  pixels scaled to [-1, 1], saved to ``efficient_kan_digits.pt`` with its held-out digits
  ``digits_sample.npz`` (arrays "x" [360, 64] and "labels" [360]).
Seeds are fixed and torch runs on one thread, so a rerun writes the same bytes.
Run: ``python assets/train_kan_demo.py [output folder] [--only exp_sin|digits]`` (default: assets/kan next
to this file, every demo); ``--only`` retrains one demo and leaves the other files as they are.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SEED = 0
EFFICIENT_KAN_SEED = 1     # from seed 0 the [2, 1, 1] efficient-kan ends in a local minimum (RMSE 0.73)
SAMPLE_SIZE = 256
MAX_RMSE = 0.05
DIGITS_TEST_SIZE = 360     # 20 % of the 1,797 digits, held out and shipped as the digits demo's sample
MIN_ACCURACY = 0.9


def target(x: torch.Tensor) -> torch.Tensor:
    """f(x, y) = exp(sin(pi x) + y^2), [N, 2] -> [N, 1]."""
    return torch.exp(torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2)


def report(name: str, model: torch.nn.Module, dataset: dict[str, torch.Tensor]) -> None:
    """Print the test RMSE; stop when training failed, so no poor demo is written over a good one."""
    with torch.no_grad():
        rmse = torch.sqrt(torch.mean((model(dataset["test_input"]) - dataset["test_label"]) ** 2)).item()
    print(f"{name}: test RMSE {rmse:.4f}")
    if rmse > MAX_RMSE:
        raise SystemExit(f"{name} did not train (test RMSE {rmse:.3f} > {MAX_RMSE})")


def report_accuracy(name: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """Print the test accuracy; stop when training failed, as ``report`` does."""
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == labels).double().mean().item()
    print(f"{name}: test accuracy {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"{name} did not train (test accuracy {accuracy:.3f} < {MIN_ACCURACY})")


class KANLinear(torch.nn.Module):
    """efficient-kan's layer: SiLU(x) @ base_weight.T + B-splines(x) @ (spline_weight * spline_scaler).T."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), grid_eps: float = 0.02) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order, self.grid_eps = grid_size, spline_order, grid_eps
        step = (grid_range[1] - grid_range[0]) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1) * step + grid_range[0]
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())
        self.base_weight = torch.nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = torch.nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = torch.nn.Parameter(torch.empty(out_features, in_features))
        torch.nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        torch.nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))
        with torch.no_grad():      # small random curves, as efficient-kan's reset_parameters
            noise = (torch.rand(grid_size + 1, in_features, out_features) - 0.5) * 0.1 / grid_size
            self.spline_weight.copy_(self.curve2coeff(self.grid.T[spline_order:-spline_order], noise))

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases [B, in, grid_size + order] by the Cox-de Boor recursion on each input's knots."""
        grid, x = self.grid, x[:, :, None]
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            left = (x - grid[:, :-(k + 1)]) / (grid[:, k:-1] - grid[:, :-(k + 1)])
            right = (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:-k])
            bases = left * bases[:, :, :-1] + right * bases[:, :, 1:]
        return bases

    def curve2coeff(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Spline weights [out, in, coeff] whose curves best match y [B, in, out] at x [B, in]."""
        bases = self.b_splines(x).transpose(0, 1)                          # [in, B, coeff]
        solution = torch.linalg.lstsq(bases, y.transpose(0, 1)).solution   # [in, coeff, out]
        return solution.permute(2, 0, 1).contiguous()

    @property
    def scaled_spline_weight(self) -> torch.Tensor:
        return self.spline_weight * self.spline_scaler[..., None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        spline = F.linear(self.b_splines(x).flatten(1), self.scaled_spline_weight.flatten(1))
        return base + spline

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.01) -> None:
        """Move the knots to x's quantiles (mixed with a uniform grid) and refit the curves onto them."""
        curves = torch.einsum("ibc,ico->ibo", self.b_splines(x).transpose(0, 1),
                              self.scaled_spline_weight.permute(1, 2, 0))          # [in, B, out]
        ordered = torch.sort(x, dim=0)[0]
        adaptive = ordered[torch.linspace(0, x.shape[0] - 1, self.grid_size + 1, dtype=torch.int64)]
        step = (ordered[-1] - ordered[0] + 2 * margin) / self.grid_size
        uniform = torch.arange(self.grid_size + 1, dtype=x.dtype)[:, None] * step + ordered[0] - margin
        grid = self.grid_eps * uniform + (1 - self.grid_eps) * adaptive
        below = grid[:1] - step * torch.arange(self.spline_order, 0, -1)[:, None]
        above = grid[-1:] + step * torch.arange(1, self.spline_order + 1)[:, None]
        self.grid.copy_(torch.cat([below, grid, above]).T)
        self.spline_weight.copy_(self.curve2coeff(x, curves.transpose(0, 1)) / self.spline_scaler[..., None])


class EfficientKAN(torch.nn.Module):
    """A stack of KANLinear layers under ``layers.{i}``, as efficient-kan's ``KAN``."""

    def __init__(self, layers: list[KANLinear]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, update_grid: bool = False) -> torch.Tensor:
        for layer in self.layers:
            if update_grid:
                layer.update_grid(x)
            x = layer(x)
        return x


def mse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((model(x) - y) ** 2)


def cross_entropy(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), labels)


def adam_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 0.02,
               loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = mse) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model, x, y).backward()
        optimizer.step()


def lbfgs_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Full-batch LBFGS, as pykan's ``fit`` trains."""
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, history_size=10, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-32, tolerance_change=1e-32)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = mse(model, x, y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)


def train_efficient_kan(train_x: torch.Tensor, train_y: torch.Tensor) -> EfficientKAN:
    """[2, 1, 1]: Adam while the grids follow the data (5 updates), then LBFGS on the final grids."""
    torch.manual_seed(EFFICIENT_KAN_SEED)
    model = EfficientKAN([KANLinear(2, 1), KANLinear(1, 1, grid_range=(-1.0, 2.0))])
    for _ in range(5):
        model(train_x, update_grid=True)
        adam_steps(model, train_x, train_y, 100)
    lbfgs_steps(model, train_x, train_y, 50)
    return model


@torch.no_grad()
def follow_hidden_grid(model: EfficientKAN, x: torch.Tensor) -> None:
    """Move the second layer's grid to the hidden values it now receives."""
    model.layers[1].update_grid(model.layers[0](x))


def train_digits_kan(x: torch.Tensor, labels: torch.Tensor) -> EfficientKAN:
    """[64, 16, 10]: Adam while the hidden layer's grid follows its inputs (5 updates, and a last one so its
    curves are drawn where the final hidden values lie). The pixels already fill the first grid, [-1, 1];
    updating it would squeeze the knots of the always-blank pixels onto one point."""
    torch.manual_seed(SEED)
    model = EfficientKAN([KANLinear(64, 16), KANLinear(16, 10)])
    for _ in range(5):
        follow_hidden_grid(model, x)
        adam_steps(model, x, labels, 40, lr=0.005, loss=cross_entropy)
    follow_hidden_grid(model, x)
    return model


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train labels, test x, test labels): scikit-learn's 8x8 digits, pixels 0..16 mapped to [-1, 1],
    split by a fixed stratified draw (every class in the held-out sample)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data / 8.0 - 1.0, dtype=torch.float32)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=digits.target,
                                   random_state=SEED)
    return x[train], labels[train], x[test], labels[test]


def train_pykan(dataset: dict[str, torch.Tensor], workdir: str):
    """pykan's tutorial recipe: sparse [2, 5, 1], prune, refine the grid, train again."""
    from kan import KAN

    model = KAN(width=[2, 5, 1], grid=5, k=3, seed=SEED, ckpt_path=workdir, auto_save=False)
    model.fit(dataset, opt="LBFGS", steps=50, lamb=0.001)
    model = model.prune()
    model.fit(dataset, opt="LBFGS", steps=50)
    model = model.refine(10)
    model.fit(dataset, opt="LBFGS", steps=50)
    return model


def write_exp_sin(out: Path) -> None:
    """The pykan and efficient-kan [2, 1, 1] demos and their shared sample batch."""
    from kan.utils import create_dataset

    dataset = create_dataset(target, n_var=2, train_num=1000, test_num=1000, seed=SEED)
    sample = dataset["test_input"][:SAMPLE_SIZE]

    with tempfile.TemporaryDirectory() as workdir:       # prune() and refine() write history there
        pykan = train_pykan(dataset, workdir)
    widths = [w[0] if isinstance(w, list) else w for w in pykan.width]
    if widths != [2, 1, 1]:
        raise SystemExit(f"pruning left width {widths}, not [2, 1, 1]: change SEED or train [2, 1, 1] directly")
    report(f"pykan {widths}", pykan, dataset)
    pykan.auto_save, pykan.ckpt_path = False, "./model"   # no temporary path in the saved config
    pykan(sample)                                        # cache_data: the sample batch, pykan's own way
    pykan.saveckpt(str(out / "pykan_exp_sin"))

    efficient = train_efficient_kan(dataset["train_input"], dataset["train_label"])
    report("efficient-kan [2, 1, 1]", efficient, dataset)
    torch.save(efficient.state_dict(), out / "efficient_kan_exp_sin.pt")
    np.savez(out / "exp_sin_sample.npz", x=sample.numpy())


def write_digits(out: Path) -> None:
    """The efficient-kan [64, 16, 10] digits classifier and its held-out digits with their labels."""
    train_x, train_labels, test_x, test_labels = digits_split()
    model = train_digits_kan(train_x, train_labels)
    report_accuracy("efficient-kan [64, 16, 10] digits", model, test_x, test_labels)
    torch.save(model.state_dict(), out / "efficient_kan_digits.pt")
    np.savez(out / "digits_sample.npz", x=test_x.numpy(), labels=test_labels.numpy())


DEMOS = {"exp_sin": write_exp_sin, "digits": write_digits}


def main(out: Path, demos: list[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    for name in demos:
        DEMOS[name](out)
    for path in sorted(out.iterdir()):
        print(f"{path.name}: {path.stat().st_size / 1024:.1f} KB")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the demo KANs in assets/kan/.")
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).resolve().parent / "kan",
                        help="output folder (default: assets/kan next to this script)")
    parser.add_argument("--only", choices=list(DEMOS),
                        help="train this demo alone and leave the other demos' files as they are")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    main(args.out, [args.only] if args.only else list(DEMOS))
