"""Blealtan/efficient-kan's ``KANLinear``: ``grid [in, G+2k+1]`` (a buffer), ``base_weight [out, in]``,
``spline_weight [out, in, G+k]`` and, with ``enable_standalone_scale_spline``, ``spline_scaler [out, in]``.

Its forward, F.linear(SiLU(x), base_weight) + F.linear(B(x), spline_weight * spline_scaler), is the
same edge function as pykan's without masks or a bias, stored (out, in) instead of (in, out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from torch import Tensor

from netatlas.backend.kan.base import KANNetwork
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.bspline import (SplineLayer, base_function, layer_option, spline_order,
                                                   stacked_network)
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

REQUIRED = {"grid", "base_weight", "spline_weight"}


def _layers(state: Mapping[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
    """Every KANLinear in ``state``, by the three tensors it always has and their ranks.

    FastKAN (``rbf.grid``, ``spline_linear``), ChebyKAN, FourierKAN and ReLU-KAN name their tensors
    otherwise, and pykan keeps ``act_fun.{l}.coef``, so none of them has all three under one prefix.
    """
    return [(prefix, tensors) for prefix, tensors in layer_groups(state, REQUIRED)
            if (tensors["grid"].dim(), tensors["base_weight"].dim(), tensors["spline_weight"].dim()) == (2, 2, 3)]


def _matches(state: Mapping[str, Tensor]) -> bool:
    return bool(_layers(state))


def _read_layer(prefix: str, tensors: dict[str, Tensor], k: object,
                base_fun: Callable[[Tensor], Tensor]) -> SplineLayer:
    grid, base, spline = tensors["grid"], tensors["base_weight"], tensors["spline_weight"]
    scaler = tensors.get("spline_scaler")
    where = prefix.rstrip(".") or "the KANLinear"
    if base.shape != spline.shape[:2] or grid.shape[0] != spline.shape[1] or (
            scaler is not None and scaler.shape != base.shape):
        raise NetatlasError(f"{where}: grid {tuple(grid.shape)}, base_weight {tuple(base.shape)} and "
                            f"spline_weight {tuple(spline.shape)} do not fit one KANLinear; the file is damaged")
    order = spline_order(grid.shape[1], spline.shape[2], k, where)
    if scaler is not None:
        spline = spline * scaler[..., None]
    return SplineLayer(grid, spline.permute(1, 0, 2), base.T, base_fun, order)


def read_efficient_kan(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    """Every KANLinear of ``state`` in natural key order, as one stack of layers."""
    found = _layers(state)
    base_fun = base_function(options.get("base_activation", "silu"))
    layers = [_read_layer(prefix, tensors, layer_option(options.get("k"), index, len(found), "k"), base_fun)
              for index, (prefix, tensors) in enumerate(found)]
    notes = ["spline_scaler folded into the spline weights"] if any("spline_scaler" in t for _, t in found) else []
    return stacked_network("efficient-kan", layers, [prefix.rstrip(".") or "layer" for prefix, _ in found], notes)


FAMILY = Family(
    name="efficient-kan",
    title="efficient-kan (KANLinear)",
    matches=_matches,
    read=read_efficient_kan,
    options={
        "k": "spline order (spline_order), one int or one per layer; the shapes fix it, "
             "so a different value is refused",
        "base_activation": "the base activation: silu (efficient-kan's default), identity, relu, gelu, tanh, sigmoid",
    },
)
