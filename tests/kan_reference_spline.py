"""Reference spline KANs written from each library's published code, independent of netatlas's readers.

``EfficientKAN`` follows Blealtan/efficient-kan (src/efficient_kan/kan.py, ``KANLinear``); ``OldPykanKAN``
follows pykan 0.1 (kan/KAN.py, kan/KANLayer.py, kan/spline.py: flat edges at j * in + i, an
unextended grid per edge that ``B_batch`` extends by k, ``biases`` as ``nn.Linear(out, 1)``). Their
state_dicts carry the libraries' key names, so the readers see what they would see in the wild.
Only the forward passes are reproduced; parameters are random, grids non-uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def increasing_knots(rows: int, count: int, low: float = -1.5, high: float = 1.5) -> Tensor:
    """Strictly increasing, unevenly spaced knots from ``low`` to ``high``, one row each [rows, count]."""
    steps = torch.rand(rows, count - 1, dtype=torch.float64) + 0.2
    cumulative = torch.cat([torch.zeros(rows, 1, dtype=torch.float64), steps.cumsum(1)], dim=1)
    return low + (high - low) * cumulative / cumulative[:, -1:]


class EfficientKANLinear(nn.Module):
    """efficient-kan's KANLinear: SiLU base through base_weight plus B-splines through spline_weight."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 standalone_scale: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.spline_order = in_features, out_features, spline_order
        knots = increasing_knots(in_features, grid_size + 2 * spline_order + 1, -2.0, 2.0)
        self.register_buffer("grid", knots.float())
        self.base_weight = nn.Parameter(torch.randn(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.randn(out_features, in_features, grid_size + spline_order))
        self.standalone_scale = standalone_scale
        if standalone_scale:
            self.spline_scaler = nn.Parameter(torch.randn(out_features, in_features))

    def b_splines(self, x: Tensor) -> Tensor:
        grid = self.grid
        x = x.unsqueeze(-1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            bases = ((x - grid[:, :-(k + 1)]) / (grid[:, k:-1] - grid[:, :-(k + 1)]) * bases[:, :, :-1]) + (
                (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:(-k)]) * bases[:, :, 1:])
        return bases.contiguous()

    @property
    def scaled_spline_weight(self) -> Tensor:
        return self.spline_weight * (self.spline_scaler.unsqueeze(-1) if self.standalone_scale else 1.0)

    def forward(self, x: Tensor) -> Tensor:
        base_output = F.linear(F.silu(x), self.base_weight)
        spline_output = F.linear(self.b_splines(x).view(x.size(0), -1),
                                 self.scaled_spline_weight.view(self.out_features, -1))
        return base_output + spline_output


class EfficientKAN(nn.Module):
    def __init__(self, widths: list[int], grid_size: int = 5, spline_order: int = 3,
                 standalone_scale: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EfficientKANLinear(a, b, grid_size, spline_order, standalone_scale)
                                    for a, b in zip(widths, widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def old_extend_grid(grid: Tensor, k_extend: int) -> Tensor:
    """pykan 0.1's B_batch.extend_grid: k knots more on each side at the grid's mean spacing."""
    h = (grid[:, [-1]] - grid[:, [0]]) / (grid.shape[1] - 1)
    for _ in range(k_extend):
        grid = torch.cat([grid[:, [0]] - h, grid], dim=1)
        grid = torch.cat([grid, grid[:, [-1]] + h], dim=1)
    return grid


def old_b_batch(x: Tensor, grid: Tensor, k: int, extend: bool = True) -> Tensor:
    """pykan 0.1's B_batch: x [splines, samples], grid [splines, G+1] -> [splines, G+k, samples]."""
    if extend:
        grid = old_extend_grid(grid, k)
    grid = grid.unsqueeze(dim=2)
    x = x.unsqueeze(dim=1)
    if k == 0:
        return ((x >= grid[:, :-1]) * (x < grid[:, 1:])).to(x.dtype)
    b_km1 = old_b_batch(x[:, 0], grid[:, :, 0], k - 1, extend=False)
    return ((x - grid[:, :-(k + 1)]) / (grid[:, k:-1] - grid[:, :-(k + 1)]) * b_km1[:, :-1]
            + (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:(-k)]) * b_km1[:, 1:])


class OldKANLayer(nn.Module):
    """pykan 0.1's KANLayer: every tensor flat over edges at index j * in_dim + i."""

    def __init__(self, in_dim: int, out_dim: int, num: int = 5, k: int = 3) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.k = in_dim, out_dim, k
        self.size = size = in_dim * out_dim
        self.grid = nn.Parameter(increasing_knots(size, num + 1).float(), requires_grad=False)
        self.coef = nn.Parameter(torch.randn(size, num + k))
        self.scale_base = nn.Parameter(torch.randn(size))
        self.scale_sp = nn.Parameter(torch.randn(size))
        self.mask = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(y [batch, out], postacts [batch, out, in])."""
        batch = x.shape[0]
        ones = torch.ones(self.out_dim, dtype=x.dtype)
        x = torch.einsum("ij,k->ikj", x, ones).reshape(batch, self.size).permute(1, 0)   # [size, batch]
        base = F.silu(x).permute(1, 0)
        y = torch.einsum("ij,ijk->ik", self.coef, old_b_batch(x, self.grid, self.k)).permute(1, 0)
        y = self.mask[None, :] * (self.scale_base[None, :] * base + self.scale_sp[None, :] * y)
        postacts = y.reshape(batch, self.out_dim, self.in_dim)
        return postacts.sum(dim=2), postacts


OLD_SYMBOLIC_LIB = {"0": lambda x: x * 0, "x": lambda x: x, "x^2": lambda x: x ** 2, "sin": torch.sin,
                    "exp": torch.exp, "tanh": torch.tanh}


class OldSymbolicKANLayer(nn.Module):
    """pykan's Symbolic_KANLayer: edge (i, j) adds mask[j, i] * (c * f(a * x_i + b) + d)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mask = nn.Parameter(torch.zeros(out_dim, in_dim), requires_grad=False)
        self.affine = nn.Parameter(torch.zeros(out_dim, in_dim, 4))
        self.funs_name = [["0"] * in_dim for _ in range(out_dim)]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        postacts = torch.stack([torch.stack([
            self.mask[j, i] * (self.affine[j, i, 2] * OLD_SYMBOLIC_LIB[self.funs_name[j][i]](
                self.affine[j, i, 0] * x[:, i] + self.affine[j, i, 1]) + self.affine[j, i, 3])
            for i in range(self.in_dim)], dim=1) for j in range(self.out_dim)], dim=1)
        return postacts.sum(dim=2), postacts


class OldPykanKAN(nn.Module):
    """pykan 0.1's KAN: numeric plus symbolic edges, then a bias per node."""

    def __init__(self, width: list[int], grid: int = 5, k: int = 3) -> None:
        super().__init__()
        pairs = list(zip(width, width[1:]))
        self.act_fun = nn.ModuleList(OldKANLayer(a, b, grid, k) for a, b in pairs)
        self.biases = nn.ModuleList(nn.Linear(b, 1, bias=False) for _, b in pairs)
        self.symbolic_fun = nn.ModuleList(OldSymbolicKANLayer(a, b) for a, b in pairs)

    def fix_symbolic(self, l: int, i: int, j: int, name: str, affine: list[float]) -> None:
        """pykan's set_mode "s": the numeric edge masked off, the symbolic one on."""
        with torch.no_grad():
            self.act_fun[l].mask[j * self.act_fun[l].in_dim + i] = 0.0
            self.symbolic_fun[l].mask[j, i] = 1.0
            self.symbolic_fun[l].affine[j, i] = torch.tensor(affine)
        self.symbolic_fun[l].funs_name[j][i] = name

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(output, the input of every layer, every layer's postacts [batch, out, in])."""
        inputs, postacts = [], []
        for numeric, symbolic, bias in zip(self.act_fun, self.symbolic_fun, self.biases):
            inputs.append(x)
            y_numeric, post_numeric = numeric(x)
            y_symbolic, post_symbolic = symbolic(x)
            postacts.append(post_numeric + post_symbolic)
            x = y_numeric + y_symbolic + bias.weight
        return x, inputs, postacts
