"""B-spline edge functions, shared by pykan (every layout) and efficient-kan.

Both libraries draw an edge as ``w_ij * base(x) + sum_c coef_ijc B_c(x)`` with Cox-de Boor bases on a
grid extended by k knots on each side; they differ only in how the tensors are stored. One layer
class here serves both, so the two readers only translate their layouts into it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.errors import NetatlasError

BASE_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "identity": lambda x: x,
    "zero": torch.zeros_like,
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def base_function(name: str) -> Callable[[Tensor], Tensor]:
    """The residual function b(x) by name (pykan's ``base_fun_name``; efficient-kan's activation)."""
    key = str(name).lower()
    if key not in BASE_FUNCTIONS:
        raise NetatlasError(f"unknown base function {name!r}; choose one of {', '.join(BASE_FUNCTIONS)}")
    return BASE_FUNCTIONS[key]


def spline_order(grid_len: int, coef_len: int, given: object, where: str, extended: bool = True) -> int:
    """k from the shapes of a grid and its coefficients (G+k), checked against a ``given`` k.

    An extended grid has G+2k+1 knots (pykan 0.2, efficient-kan), an unextended one G+1 (pykan 0.1).
    The shapes fix k, so a user's or a config's k can only confirm it; a different one means the
    option or the config belongs to another model, which is worth saying rather than guessing.
    """
    k = grid_len - coef_len - 1 if extended else coef_len - grid_len + 1
    if k < 0:
        raise NetatlasError(f"{where}: a grid of {grid_len} knots does not fit {coef_len} spline "
                            "coefficients; the checkpoint is not a B-spline KAN or it is damaged")
    if given is not None and given != k:
        raise NetatlasError(f"{where}: spline order k={given} was given, but the grid ({grid_len} knots) "
                            f"and coefficients ({coef_len}) mean k={k}; drop the k option or check "
                            "that the config belongs to this checkpoint")
    return k


def layer_option(value: object, layer: int, depth: int, name: str) -> object:
    """An option given once for every layer or as a list with one entry per layer (pykan's k)."""
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) != depth:
        raise NetatlasError(f"option {name} lists {len(value)} values but the network has {depth} layers")
    return value[layer]


def stacked_network(family: str, layers: list[EdgeLayer], names: list[str], notes: list[str]) -> KANNetwork:
    """The layers as one network, after checking that each reads what the previous one writes.

    A KANNetwork runs its layers in order (the data behind every curve), so layers that do not
    chain, e.g. KAN heads scattered through a larger model, are refused here rather than failing later.
    """
    if not layers:
        raise NetatlasError(f"found no {family} layers in this checkpoint")
    for (before, name_before), (after, name_after) in zip(zip(layers, names), zip(layers[1:], names[1:])):
        if before.out_dim != after.in_dim:
            raise NetatlasError(f"{family} layers {name_before} ({before.out_dim} outputs) and {name_after} "
                                f"({after.in_dim} inputs) do not chain: netatlas reads a KAN as one stack "
                                "of layers; save the KAN part of the model on its own")
    return KANNetwork(family, layers, names, notes)


def extend_grid(grid: Tensor, k: int) -> Tensor:
    """Add k knots on each side at the grid's mean spacing, as pykan's B-splines do before evaluating."""
    h = (grid[..., -1:] - grid[..., :1]) / (grid.shape[-1] - 1)
    steps = torch.arange(1, k + 1, dtype=grid.dtype, device=grid.device)
    return torch.cat([grid[..., :1] - h * steps.flip(0), grid, grid[..., -1:] + h * steps], dim=-1)


def bspline_basis(x: Tensor, grid: Tensor, k: int) -> Tensor:
    """B_c(x_i) for every input and basis: x [B, n], extended grid [n, G+2k+1] -> [B, n, G+k].

    Order-0 bases are half-open intervals [g_c, g_c+1), as in both libraries, so the right end of the
    extended grid evaluates to zero. Where knots repeat, a 0/0 turns the whole basis value into NaN,
    which pykan maps to 0 at every order (``nan_to_num``); we do the same, because that is what a
    pykan model computed (efficient-kan would return NaN there).
    """
    x = x.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for order in range(1, k + 1):
        left = (x - grid[:, :-(order + 1)]) / (grid[:, order:-1] - grid[:, :-(order + 1)])
        right = (grid[:, order + 1:] - x) / (grid[:, order + 1:] - grid[:, 1:-order])
        bases = torch.nan_to_num(left * bases[..., :-1] + right * bases[..., 1:])
    return bases


def spline_curves(t: Tensor, grid: Tensor, coef: Tensor, k: int) -> Tensor:
    """sum_c coef_ijc B_c(t_i) as [B, in, out]; ``grid`` [in, K] is shared by an input's edges, [in, out, K] not.

    Per-edge grids (pykan's 0.1 layout) cost ``out`` times more basis evaluations, so the shared
    case keeps its own path.
    """
    if grid.dim() == 2:
        return torch.einsum("bic,ioc->bio", bspline_basis(t, grid, k), coef)
    n_in, n_out = coef.shape[:2]
    flat = t.unsqueeze(-1).expand(-1, n_in, n_out).reshape(t.shape[0], n_in * n_out)
    basis = bspline_basis(flat, grid.reshape(n_in * n_out, -1), k).reshape(t.shape[0], n_in, n_out, -1)
    return torch.einsum("bioc,ioc->bio", basis, coef)


class SplineLayer(EdgeLayer):
    """phi_ij(x) = base_weight_ij * b(x) + sum_c coef_ijc B_c(x) (+ bias_j after the sum).

    ``grid`` is the extended grid, [in, G+2k+1] or [in, out, G+2k+1]; every scale a library keeps
    apart (masks, scale_sp, spline_scaler, node affines) is already folded into the weights.
    """

    parts = (Part("base"), Part("spline"))

    def __init__(self, grid: Tensor, coef: Tensor, base_weight: Tensor, base_fun: Callable[[Tensor], Tensor],
                 k: int, bias: Tensor | None = None) -> None:
        super().__init__(coef.shape[0], coef.shape[1])
        self.grid, self.coef, self.base_weight = grid, coef, base_weight
        self.base_fun, self.k = base_fun, k
        self._bias = bias if bias is not None else torch.zeros(self.out_dim, dtype=coef.dtype)

    def part_values(self, part: str, t: Tensor) -> Tensor:
        if part == "base":
            return self.base_fun(t).unsqueeze(-1) * self.base_weight.to(t)
        if part == "spline":
            return spline_curves(t, self.grid.to(t), self.coef.to(t), self.k)
        raise KeyError(f"{type(self).__name__} has no part {part!r}")

    @property
    def bias(self) -> Tensor:
        return self._bias

    def _interior(self) -> Tensor:
        """The grid without its k extension knots on each side: what the library calls the grid range."""
        return self.grid[..., self.k: self.grid.shape[-1] - self.k]

    def domain(self) -> Tensor:
        interior = self._interior()
        low, high = interior[..., 0], interior[..., -1]
        if interior.dim() == 3:  # per-edge grids: the span of all edges leaving each input
            low, high = low.min(1).values, high.max(1).values
        return torch.stack([low, high], dim=-1)

    def knots(self) -> Tensor | None:
        """[in, G+1] grid points inside the domain; None when an input's edges have different grids."""
        interior = self._interior()
        if interior.dim() == 2:
            return interior
        first = interior[:, :1]
        return interior[:, 0] if torch.equal(interior, first.expand_as(interior)) else None
