"""pykan's state_dicts: MultKAN (0.2.x) and the ``KAN`` class of 0.0.x / 0.1.x.

MultKAN (per layer l): ``act_fun.{l}.{grid [in, G+2k+1], coef [in, out, G+k], mask, scale_base,
scale_sp [in, out]}``, ``symbolic_fun.{l}.{mask [out, in], affine [out, in, 4]}`` and, after the
edge sum, the subnode affine then the node affine (``subnode_*_{l}``, ``node_*_{l}``), which are
folded here into the edges (scales) and the bias (offsets).
The 0.1 layout stores edges flat at index j * in + i (``coef [in*out, G+k]``, 1-D scales), keeps an
unextended grid per edge (``grid [in*out, G+1]``, extended by k at evaluation) and adds
``biases.{l}.weight [1, out]``.
Symbolic edges are c * f(a * x + b) + d with f named only in ``*_config.yml``, hence the options.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from netatlas.backend.kan.base import KANNetwork, Part
from netatlas.backend.kan.families import Family, flag_option
from netatlas.backend.kan.families.bspline import (SplineLayer, base_function, extend_grid, layer_option,
                                                   spline_order, stacked_network)
from netatlas.backend.kan.library import FUNCTIONS
from netatlas.backend.errors import NetatlasError

ANCHOR = "act_fun.0.coef"
OLD_LAYOUT = "pykan (0.1 layout)"
MULT_NODES = ("this pykan model has multiplication nodes (a width like [[n, m], ...] with m > 0): their "
              "output is a product of edge sums, not a sum of edges, so their layers have no per-edge "
              "curves that add up to the output; netatlas reads pykan models whose width is a list of "
              "plain integers (addition nodes only)")


@dataclass(frozen=True)
class _Settings:
    """What a pykan state_dict does not store, from the options (the config's values)."""

    base_fun: Callable[[Tensor], Tensor]
    k: Any
    symbolic_names: list | None
    symbolic_enabled: bool
    depth: int

    @classmethod
    def from_options(cls, options: Mapping[str, Any], depth: int) -> _Settings:
        names = options.get("symbolic_functions")
        if names is not None and len(names) != depth:
            raise NetatlasError(f"symbolic_functions lists {len(names)} layers but the state has {depth}; "
                                "the config does not belong to this checkpoint")
        return cls(base_function(options.get("base_fun", "silu")), options.get("k"), names,
                   flag_option(options, "symbolic_enabled", True), depth)


class PykanLayer(SplineLayer):
    """A pykan layer: SiLU base and B-spline per edge, plus edges fixed to c * f(a * x + b) + d."""

    def __init__(self, grid: Tensor, coef: Tensor, base_weight: Tensor, base_fun: Callable[[Tensor], Tensor],
                 k: int, bias: Tensor, symbolic: dict[tuple[int, int], str], affine: Tensor | None) -> None:
        super().__init__(grid, coef, base_weight, base_fun, k, bias)
        self._symbolic, self.affine = symbolic, affine     # affine [in, out, 4], c and d already scaled
        self.parts = self.parts + ((Part("symbolic"),) if symbolic else ())
        self._groups = []                                   # (function, input ids, output ids): one call each
        for name in sorted(set(symbolic.values())):
            ids = torch.tensor([edge for edge, edge_name in symbolic.items() if edge_name == name])
            self._groups.append((FUNCTIONS[name], ids[:, 0], ids[:, 1]))

    def part_values(self, part: str, t: Tensor) -> Tensor:
        if part != "symbolic":
            return super().part_values(part, t)
        values = t.new_zeros(t.shape[0], self.in_dim, self.out_dim)
        for function, inputs, outputs in self._groups:
            a, b, c, d = self.affine.to(t)[inputs, outputs].unbind(-1)
            values[:, inputs, outputs] = c * function(a * t[:, inputs] + b) + d
        return values

    def symbolic(self) -> dict[tuple[int, int], str]:
        return dict(self._symbolic)


def _root(state: Mapping[str, Tensor]) -> str | None:
    """What precedes ``act_fun.0.coef`` (empty for a bare MultKAN, ``kan.`` inside a wrapper)."""
    return next((key[: -len(ANCHOR)] for key in state if key.endswith(ANCHOR)
                 and (len(key) == len(ANCHOR) or key[-len(ANCHOR) - 1] == ".")), None)


def _matches(state: Mapping[str, Tensor]) -> bool:
    root = _root(state)
    return root is not None and all(f"{root}act_fun.0.{name}" in state for name in ("grid", "scale_base", "scale_sp"))


def _symbolic_edges(local: Mapping[str, Tensor], layer: int, settings: _Settings,
                    scale: Tensor) -> tuple[dict[tuple[int, int], str], Tensor | None]:
    """The layer's active symbolic edges {(i, j): name} and their affines [in, out, 4] with ``scale`` folded in."""
    mask, affine = local.get(f"symbolic_fun.{layer}.mask"), local.get(f"symbolic_fun.{layer}.affine")
    if mask is None or affine is None or not settings.symbolic_enabled or not bool((mask != 0).any()):
        return {}, None
    if settings.symbolic_names is None:
        raise NetatlasError(f"layer {layer} has {int((mask != 0).sum())} edges fixed to symbolic functions, whose "
                            "names pykan keeps only in <name>_config.yml: open the checkpoint by its "
                            "prefix or *_config.yml (or give option symbolic_functions)")
    names = settings.symbolic_names[layer]
    if [len(row) for row in names] != [mask.shape[1]] * mask.shape[0]:
        raise NetatlasError(f"the symbolic function names of layer {layer} are not {mask.shape[0]} rows of "
                            f"{mask.shape[1]}: the config does not belong to this checkpoint")
    edges = {}
    for j, i in (mask != 0).nonzero().tolist():
        if names[j][i] not in FUNCTIONS:
            raise NetatlasError(f"edge ({layer}, {i}, {j}) is fixed to {names[j][i]!r}, which netatlas cannot "
                                f"evaluate; it knows {', '.join(FUNCTIONS)}")
        edges[(i, j)] = names[j][i]
    a, b, c, d = affine.unbind(-1)
    weight = mask * scale[:, None]
    return edges, torch.stack([a, b, c * weight, d * weight], dim=-1).transpose(0, 1)


def _affines(local: Mapping[str, Tensor], layer: int, out_dim: int) -> tuple[Tensor, Tensor]:
    """(scale, offset) [out] that MultKAN's subnode then node affines amount to: y -> scale * y + offset."""
    def get(name: str, fill: float) -> Tensor:
        return local.get(f"{name}_{layer}", torch.full((out_dim,), fill))

    node_scale, sub_scale = get("node_scale", 1.0), get("subnode_scale", 1.0)
    if sub_scale.shape[0] != node_scale.shape[0]:
        raise NetatlasError(MULT_NODES)
    if sub_scale.shape[0] != out_dim:
        raise NetatlasError(f"act_fun.{layer} has {out_dim} outputs but subnode_scale_{layer} has "
                            f"{sub_scale.shape[0]}: the state_dict is damaged")
    return node_scale * sub_scale, node_scale * get("subnode_bias", 0.0) + get("node_bias", 0.0)


def _read_layer(local: Mapping[str, Tensor], layer: int, settings: _Settings) -> PykanLayer:
    """One MultKAN layer, scales and affines folded into the edge weights."""
    p = f"act_fun.{layer}."
    coef, grid = local[p + "coef"], local[p + "grid"]
    where = f"act_fun.{layer}"
    if coef.dim() != 3 or grid.dim() != 2 or grid.shape[0] != coef.shape[0]:
        raise NetatlasError(f"{where}: grid {tuple(grid.shape)} and coef {tuple(coef.shape)} are not "
                            "pykan's [in, knots] and [in, out, G+k]; the state_dict is damaged")
    k = spline_order(grid.shape[1], coef.shape[2], layer_option(settings.k, layer, settings.depth, "k"), where)
    scale, offset = _affines(local, layer, coef.shape[1])
    mask = local.get(p + "mask", torch.ones(coef.shape[:2])) * scale
    symbolic, affine = _symbolic_edges(local, layer, settings, scale)
    return PykanLayer(grid, coef * (mask * local[p + "scale_sp"])[..., None], mask * local[p + "scale_base"],
                      settings.base_fun, k, offset, symbolic, affine)


def _read_old_layer(local: Mapping[str, Tensor], layer: int, settings: _Settings) -> PykanLayer:
    """One 0.1-layout layer: flat edges at j * in + i, per-edge unextended grids, a bias module."""
    p = f"act_fun.{layer}."
    coef, grid, where = local[p + "coef"], local[p + "grid"], f"act_fun.{layer}"
    bias = local.get(f"biases.{layer}.weight")
    if bias is None or coef.shape[0] % bias.shape[-1] or grid.shape[0] != coef.shape[0]:
        raise NetatlasError(f"{where}: cannot tell its inputs from its outputs (need biases.{layer}.weight "
                            "[1, out] and in*out rows of grid and coef); the state_dict is damaged")
    out_dim = bias.shape[-1]
    in_dim = coef.shape[0] // out_dim

    def per_edge(flat: Tensor) -> Tensor:  # [out * in, ...] at j * in + i -> [in, out, ...]
        return flat.reshape(out_dim, in_dim, *flat.shape[1:]).transpose(0, 1)

    k = spline_order(grid.shape[1], coef.shape[1], layer_option(settings.k, layer, settings.depth, "k"),
                     where, extended=False)
    mask = per_edge(local.get(p + "mask", torch.ones(coef.shape[0])))
    symbolic, affine = _symbolic_edges(local, layer, settings, torch.ones(out_dim))
    spline = per_edge(coef) * (mask * per_edge(local[p + "scale_sp"]))[..., None]
    return PykanLayer(per_edge(extend_grid(grid, k)), spline, mask * per_edge(local[p + "scale_base"]),
                      settings.base_fun, k, bias.reshape(-1), symbolic, affine)


def read_pykan(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    """A pykan state_dict (either layout) as edge layers; ``options`` as in ``FAMILY.options``."""
    root = _root(state)
    if root is None:
        raise NetatlasError(f"no key ends in {ANCHOR}: this is not a pykan state_dict")
    local = {key[len(root):]: value for key, value in state.items() if key.startswith(root)}
    depth = 0
    while f"act_fun.{depth}.coef" in local:
        depth += 1
    missing = [f"{root}act_fun.{layer}.{name}" for layer in range(depth)
               for name in ("grid", "scale_base", "scale_sp") if f"act_fun.{layer}.{name}" not in local]
    if missing:
        raise NetatlasError(f"this pykan state_dict lacks {', '.join(missing[:4])}: it is damaged or incomplete")
    old = local[ANCHOR].dim() == 2
    settings = _Settings.from_options(options, depth)
    read = _read_old_layer if old else _read_layer
    layers = [read(local, layer, settings) for layer in range(depth)]
    notes = [OLD_LAYOUT + ": flat edges, per-edge grids, a bias per node" if old else
             "pykan MultKAN: node and subnode affines folded into the edges and the bias"]
    symbolic = sum(len(layer.symbolic()) for layer in layers)
    if symbolic:
        notes.append(f"{symbolic} edges fixed to symbolic functions (part 'symbolic')")
    return stacked_network("pykan", layers, [f"{root}act_fun.{layer}" for layer in range(depth)], notes)


FAMILY = Family(
    name="pykan",
    title="pykan (MultKAN / KAN 0.2, and the 0.1 layout)",
    matches=_matches,
    read=read_pykan,
    network_keys=r"(^|\.)(sub)?node_(bias|scale)_\d+$|(^|\.)symbolic_fun\.\d+\.|(^|\.)biases\.\d+\.weight$",
    options={
        "k": "spline order, one int or one per layer; the shapes fix it, so a different value is refused",
        "base_fun": "the residual function b(x): silu (pykan's default), identity or zero",
        "symbolic_functions": "per layer, the [out][in] names of symbolic functions "
                              "(the config's symbolic.funs_name.{l}); needed when any edge is symbolic",
        "symbolic_enabled": "false when the model ran with symbolic_enabled=False (its symbolic edges are skipped)",
    },
)
