"""FastKAN (ZiyaoLi/fast-kan, ``FastKANLayer``): Gaussian RBFs on LayerNorm(x) plus a SiLU base.

Per layer: ``layernorm.weight/bias`` (absent with ``use_layernorm=False``), ``rbf.grid`` [G],
``spline_linear.weight`` [out, in*G] with flat index i*G + g, and, with ``use_base_update``,
``base_linear.weight/bias``. The layer computes
``spline_linear(exp(-((LayerNorm(x)[..., None] - grid) / h)^2).flatten) + base_linear(silu(x))``,
so phi_ij is a "spline" part reading LayerNorm(x)_i and a "base" part reading x_i; c_j is
base_linear.bias. h (``rbf.denominator``) is a plain attribute, not in the state_dict: the library
sets it to the grid spacing unless told otherwise, hence the "denominator" option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from netatlas.backend.kan.base import INPUT, EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

REQUIRED = {"rbf.grid", "spline_linear.weight"}
NORMALIZED = "LayerNorm(x)"
LAYERNORM_EPS = 1e-5          # nn.LayerNorm's default; FastKANLayer never changes it


class FastKANLayer(EdgeLayer):
    """One FastKANLayer as edges: RBF "spline" on LayerNorm(x) (or x) and an optional SiLU "base"."""

    def __init__(self, tensors: Mapping[str, Tensor], denominator: float | None = None) -> None:
        grid = tensors["rbf.grid"].detach()
        weight = tensors["spline_linear.weight"].detach()
        out_dim, flat = weight.shape
        if flat % len(grid):
            raise NetatlasError(f"FastKAN spline_linear.weight has {flat} columns, not a multiple of the "
                                f"{len(grid)} RBF centres: this is not a FastKANLayer state")
        super().__init__(flat // len(grid), out_dim)
        self.grid = grid
        self.spline_weight = weight.reshape(out_dim, self.in_dim, len(grid))     # [out, in, G]
        self.denominator = denominator if denominator is not None else _grid_spacing(grid)
        self.norm = (tensors["layernorm.weight"].detach(), tensors["layernorm.bias"].detach()) \
            if "layernorm.weight" in tensors else None
        self.base = (tensors["base_linear.weight"].detach(), tensors.get("base_linear.bias")) \
            if "base_linear.weight" in tensors else None
        spline = Part("spline", NORMALIZED if self.norm else INPUT)
        self.parts = (Part("base"), spline) if self.base else (spline,)

    def variables(self, x: Tensor) -> dict[str, Tensor]:
        if self.norm is None:
            return {INPUT: x}
        weight, bias = (t.to(x) for t in self.norm)
        return {INPUT: x, NORMALIZED: F.layer_norm(x, (self.in_dim,), weight, bias, LAYERNORM_EPS)}

    def part_values(self, part: str, t: Tensor) -> Tensor:
        if part == "base":
            return F.silu(t)[:, :, None] * self.base[0].to(t).T[None]
        rbf = torch.exp(-((t[:, :, None] - self.grid.to(t)) / self.denominator) ** 2)    # [B, in, G]
        return torch.einsum("big,jig->bij", rbf, self.spline_weight.to(rbf))

    @property
    def bias(self) -> Tensor:
        if self.base is None or self.base[1] is None:
            return torch.zeros(self.out_dim)
        return self.base[1].detach()

    def domain(self) -> Tensor:
        """The RBF grid span (on the LayerNorm axis where there is a LayerNorm)."""
        return torch.stack([self.grid.min(), self.grid.max()]).float().expand(self.in_dim, 2)

    def knots(self) -> Tensor:
        """The RBF centres, the same for every input."""
        return self.grid.float().expand(self.in_dim, len(self.grid))


def _grid_spacing(grid: Tensor) -> float:
    """(max - min) / (G - 1): what RadialBasisFunction uses when no denominator is given."""
    if len(grid) < 2:
        raise NetatlasError("this FastKAN layer has a single RBF centre, so its width cannot be derived "
                            "from the grid: pass the option denominator (RadialBasisFunction's)")
    return float(grid.max() - grid.min()) / (len(grid) - 1)


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(layer_groups(state, REQUIRED))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = layer_groups(state, REQUIRED)
    if not groups:
        raise NetatlasError("no FastKAN layer here: expected keys ending in rbf.grid and spline_linear.weight")
    denominator = float(options["denominator"]) if options.get("denominator") is not None else None
    layers = [FastKANLayer(tensors, denominator) for _, tensors in groups]
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups])


FAMILY = Family(
    name="fastkan",
    title="FastKAN (Gaussian RBFs, ZiyaoLi/fast-kan)",
    matches=matches,
    read=read,
    options={"denominator": "RBF width h in exp(-((x - c) / h)^2); not stored in the state_dict. "
                            "Default: the grid spacing (max - min) / (num_grids - 1), as FastKAN sets it "
                            "unless RadialBasisFunction was given a denominator."},
)
