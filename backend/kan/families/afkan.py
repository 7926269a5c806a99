"""AF-KAN (hoangthangta/All-KAN, models/af_kan.py, ``AF_KANLayer``): not separable per edge.

Per layer: phases ``phase_low``/``phase_high`` [g+k] (shared by all inputs), ``temperature``,
``base_weight`` [out, in], ``gk_linear`` (g+k -> 1), ``conv1d`` (depthwise over inputs), a norm
(``norm.weight/bias``: LayerNorm, plus ``running_mean/var``: BatchNorm; neither: Identity), and
attention modules the default method never uses. The forward with the default method
``global_attn``:
  f = func(act(x - low), act(high - x))            [B, in, g+k]   (quad1: (a * b)^2)
  f = min-max normalised over the WHOLE batch       (after an L2 normalisation it cancels)
  w = softmax over the inputs of gk_linear(f) / max(temperature, 1)
  y = base_weight @ act(norm(sum_m f * w))          (no bias)
The softmax and the norm mix the inputs and the min-max mixes the batch, so y_j is no sum of
phi_ij(x_i). What is drawn is a probed *conditional curve*: x_i varied over its domain while the other
inputs stay at a reference point (zeros, or the median of its inputs once ``observe`` has seen the sample), reporting
y_j(x) - y_j(reference). Each probe point is normalised on its own (a batch of one), as the layer
answers a single input; ``forward`` keeps the published whole-batch behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family, flag_option
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.kan.families.relukan import bumps
from netatlas.backend.errors import NetatlasError

REQUIRED = {"phase_low", "phase_high", "temperature", "base_weight", "gk_linear.weight"}
NORM_EPS = 1e-5               # nn.LayerNorm's and nn.BatchNorm1d's default eps
PROBE_ELEMENTS = 1 << 22      # feature entries per probe chunk, to bound memory on wide layers

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "softplus": F.softplus, "sigmoid": torch.sigmoid, "silu": F.silu, "relu": F.relu,
    "leaky_relu": F.leaky_relu, "elu": F.elu, "gelu": F.gelu, "selu": F.selu, "tanh": torch.tanh,
    "identity": lambda x: x,  # AF_KANLayer falls back to the identity for names it does not know
}
FUNCS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "quad1": lambda a, b: (a * b) ** 2,
    "quad2": lambda a, b: a * b + a * a + b * b,
    "sum": lambda a, b: a + b,
    "prod": lambda a, b: a * b,
    "sum_prod": lambda a, b: a + b + a * b,
    "cubic1": lambda a, b: (a + b) * (a * a + b * b),
    "cubic2": lambda a, b: (a * b) ** 3,
}
METHODS = ("global_attn", "spatial_attn", "multistep")


class AFKANLayer(EdgeLayer):
    """One AF_KANLayer: its own forward, and conditional curves probed around ``reference``."""

    parts = (Part("conditional"),)
    separable = False

    def __init__(self, tensors: Mapping[str, Tensor], method: str, activation: str, func: str,
                 func_norm: bool) -> None:
        weight = tensors["base_weight"].detach()
        super().__init__(weight.shape[1], weight.shape[0])
        self.base_weight = weight
        phases = (tensors[f"phase_{end}"].detach() for end in ("low", "high"))
        self.low, self.high = (phase.expand(self.in_dim, -1) for phase in phases)    # [g+k] or [in, g+k]
        self.temperature = tensors["temperature"].detach()
        self.gk = tensors["gk_linear.weight"].detach()[0], tensors["gk_linear.bias"].detach()[0]
        self.conv = tensors.get("conv1d.weight"), tensors.get("conv1d.bias")
        self.norm = {key: tensors[f"norm.{key}"].detach() for key in
                     ("weight", "bias", "running_mean", "running_var") if f"norm.{key}" in tensors}
        self.method, self.func_norm = method, func_norm
        self.activation, self.func = ACTIVATIONS[activation], FUNCS[func]
        self.reference = torch.zeros(self.in_dim)

    def observe(self, x: Tensor) -> None:
        """Probe around the median of ``x`` [N, in] (this layer's inputs) instead of zeros."""
        self.reference = x.detach().median(0).values

    def output(self, x: Tensor, per_row: bool = False) -> Tensor:
        """AF_KANLayer's forward on x [B, in]; ``per_row`` normalises each row as its own batch."""
        features = self.func(*bumps(x, self.low, self.high, self.activation))       # [B, in, M]
        if self.func_norm:
            dims = (1, 2) if per_row else (0, 1, 2)
            low, high = features.amin(dims, keepdim=True), features.amax(dims, keepdim=True)
            features = (features - low) / (high - low)
        hidden = self._norm(self._combine(features))
        return self.activation(hidden) @ self.base_weight.to(hidden).T

    def _combine(self, features: Tensor) -> Tensor:
        """The method's reduction of the g+k features of every input to one number, [B, in]."""
        weight, bias = (t.to(features) for t in self.gk)
        scores = features @ weight + bias                                             # [B, in]
        if self.method == "multistep":
            return scores
        temperature = self.temperature.to(features).clamp(min=1.0)
        if self.method == "global_attn":
            attention = torch.softmax(scores / temperature, dim=1)[:, :, None]        # over inputs
        else:                                                                         # spatial_attn
            conv_weight, conv_bias = (t.to(features) for t in self.conv)
            spatial = F.conv1d(features.transpose(1, 2), conv_weight, conv_bias, padding=1,
                               groups=features.shape[2])                              # [B, M, in]
            attention = torch.softmax(spatial / temperature, dim=1).transpose(1, 2)   # over the g+k
        return (features * attention).sum(-1)

    def _norm(self, x: Tensor) -> Tensor:
        norm = {key: t.to(x) for key, t in self.norm.items()}
        if "running_mean" in norm:        # BatchNorm1d, as in eval mode
            return F.batch_norm(x, norm["running_mean"], norm["running_var"], norm.get("weight"),
                                norm.get("bias"), training=False, eps=NORM_EPS)
        if "weight" in norm:
            return F.layer_norm(x, (self.in_dim,), norm["weight"], norm.get("bias"), NORM_EPS)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The published forward: min-max over the whole batch, so rows depend on their batchmates."""
        return self.output(x)

    def part_values(self, part: str, t: Tensor) -> Tensor:
        """y_j(reference with x_i := t[n, i]) - y_j(reference) for every (n, i, j), [n, in, out]."""
        count = len(t)
        reference = self.reference.to(t)
        at_reference = self.output(reference[None], per_row=True)                    # [1, out]
        chunk = max(1, PROBE_ELEMENTS // max(1, count * self.in_dim * self.low.shape[1]))
        values = []
        for start in range(0, self.in_dim, chunk):
            inputs = torch.arange(start, min(start + chunk, self.in_dim), device=t.device)
            probes = reference.repeat(len(inputs), count, 1)                          # [c, n, in]
            probes[torch.arange(len(inputs)), :, inputs] = t[:, inputs].T
            outputs = self.output(probes.reshape(-1, self.in_dim), per_row=True)
            values.append(outputs.reshape(len(inputs), count, self.out_dim))
        return (torch.cat(values) - at_reference).transpose(0, 1)

    def domain(self) -> Tensor:
        """From the first bump's start to the last bump's end."""
        return torch.stack([self.low.min(1).values, self.high.max(1).values], 1).float()

    def knots(self) -> Tensor:
        return torch.cat([self.low, self.high], 1).sort(1).values.float()


def _choice(options: dict[str, Any], name: str, default: str, allowed: Collection[str]) -> str:
    value = str(options.get(name) or default)
    if value not in allowed:
        raise NetatlasError(f"AF-KAN option {name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _layer(group: Mapping[str, Tensor], options: dict[str, Any]) -> AFKANLayer:
    method = _choice(options, "method", "global_attn", METHODS)
    if method == "spatial_attn" and "conv1d.weight" not in group:
        raise NetatlasError("AF-KAN method spatial_attn needs the layer's conv1d weights, which this "
                            "checkpoint lacks: choose method global_attn or multistep")
    return AFKANLayer(group, method, _choice(options, "base_activation", "relu", ACTIVATIONS),
                      _choice(options, "func", "quad1", FUNCS), flag_option(options, "func_norm", True))


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(layer_groups(state, REQUIRED))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = layer_groups(state, REQUIRED)
    if not groups:
        raise NetatlasError("no AF-KAN layer here: expected keys ending in phase_low, phase_high, "
                            "temperature, base_weight and gk_linear.weight")
    layers = [_layer(group, options) for _, group in groups]
    notes = ["AF-KAN layers are not sums of edge functions (attention over inputs, min-max over the "
             "batch): curves are conditional, each input varied with the others at a reference point"]
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups], notes)


FAMILY = Family(
    name="afkan",
    title="AF-KAN (activation-function KAN with attention, hoangthangta/All-KAN)",
    matches=matches,
    read=read,
    options={
        "method": "the layer's method: global_attn (default: AF_KAN never passes its methods to its "
                  "layers, so they all run global_attn), spatial_attn or multistep; not stored",
        "base_activation": "activation in the bumps and before base_weight: relu (AF_KAN's default; "
                           f"AF_KANLayer alone defaults to silu), or {', '.join(ACTIVATIONS)}; not stored",
        "func": f"how the two bump halves combine: quad1 (default), {', '.join(FUNCS)}; not stored",
        "func_norm": "whether the features are min-max normalised over the batch: true (default) or "
                     "false; not stored",
    },
)
