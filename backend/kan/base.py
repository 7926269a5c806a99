"""What every KAN family reduces to: layers whose output is a sum of per-edge univariate functions.

A layer maps x [B, in] to y_j = sum_i phi_ij(x_i) + c_j. Each phi_ij is a sum of named *parts*
(pykan: a SiLU base and a B-spline; FourierKAN: one series), and a part reads one *variable* of its
input: ``x`` itself, or, for FastKAN's RBFs, ``LayerNorm(x)``. Keeping parts separate lets the views
show base and spline apart, and keeping the variable explicit keeps every curve honest about its
x axis. A layer that is not separable per edge (AF-KAN) says so; its curves are probed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

INPUT = "x"


@dataclass(frozen=True)
class Part:
    """One additive piece of every edge function of a layer, and the variable it reads."""

    name: str
    variable: str = INPUT


class EdgeLayer(ABC):
    """One KAN layer as edge functions: ``forward(x) == edges(x).sum(1) + bias``.

    Subclasses (one per family, in ``families``) hold the layer's tensors and implement
    ``part_values``; everything else has defaults that fit most families.
    """

    parts: tuple[Part, ...] = (Part("spline"),)
    separable: bool = True

    def __init__(self, in_dim: int, out_dim: int) -> None:
        self.in_dim, self.out_dim = in_dim, out_dim

    @abstractmethod
    def part_values(self, part: str, t: Tensor) -> Tensor:
        """Part ``part`` of every edge at its variable's values ``t`` [B, in] -> [B, in, out]."""

    def variables(self, x: Tensor) -> dict[str, Tensor]:
        """Each variable the parts read, computed from the layer input x [B, in]."""
        return {INPUT: x}

    @property
    def bias(self) -> Tensor:
        """c_j: what the layer adds after summing its edges [out]."""
        return torch.zeros(self.out_dim)

    def domain(self) -> Tensor:
        """[in, 2]: the range each input's curve is drawn over (the spline grid where there is one)."""
        return torch.tensor([[-1.0, 1.0]]).expand(self.in_dim, 2)

    def knots(self) -> Tensor | None:
        """[in, K] knot positions on each input's axis, or None for families without knots."""
        return None

    def observe(self, x: Tensor) -> None:
        """See this layer's inputs on the sample [N, in]; layers probed around a point set it here."""

    def symbolic(self) -> dict[tuple[int, int], str]:
        """Edges fixed to a symbolic function, {(i, j): "sin"}; pykan only."""
        return {}

    def edges(self, x: Tensor, parts: tuple[str, ...] | None = None) -> Tensor:
        """phi_ij(x_i) for every edge, [B, in, out]; the sum of ``parts`` (all by default)."""
        variables = self.variables(x)
        chosen = [p for p in self.parts if parts is None or p.name in parts]
        values = [self.part_values(p.name, variables[p.variable]) for p in chosen]
        return torch.stack(values).sum(0) if values else x.new_zeros(x.shape[0], self.in_dim, self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """The layer's output rebuilt from its edges, [B, out]."""
        return self.edges(x).sum(1) + self.bias.to(x)

    def curves(self, t: Tensor, parts: tuple[str, ...] | None = None) -> Tensor:
        """Edge functions drawn over values ``t`` [n, in] of their own variable, [n, in, out].

        For separable layers whose parts share a variable this is ``edges``; where parts read
        different variables (FastKAN with LayerNorm), each part is evaluated at ``t`` on its own axis.
        """
        chosen = [p for p in self.parts if parts is None or p.name in parts]
        return torch.stack([self.part_values(p.name, t) for p in chosen]).sum(0)


@dataclass
class KANNetwork:
    """A stack of edge layers read from one checkpoint, with how it was read."""

    family: str
    layers: list[EdgeLayer]
    names: list[str]                      # each layer's state_dict prefix, for labels
    notes: list[str] = field(default_factory=list)
    sample: Tensor | None = None          # a batch of network inputs [N, in0], when one is known
    sample_source: str = ""               # where it came from, said with the sample ("x.npy, the file given")

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    @torch.no_grad()
    def layer_inputs(self, x: Tensor) -> list[Tensor]:
        """The input of every layer when ``x`` goes through the network: the data behind each curve."""
        inputs = []
        for layer in self.layers:
            inputs.append(x)
            x = layer.forward(x)
        return inputs

    @property
    def widths(self) -> list[int]:
        return [self.layers[0].in_dim, *(layer.out_dim for layer in self.layers)]


@torch.no_grad()
def edge_importance(layer: EdgeLayer, x: Tensor) -> Tensor:
    """[out, in]: std of phi_ij(x_i) over the sample over (std of x_i + 0.1), pykan's edge scale.

    pykan draws each edge with alpha = tanh(beta * this) (beta = 3); the +0.1 keeps a constant
    input from making every edge on it look infinitely important.
    """
    output_range = layer.edges(x).std(0)                 # [in, out]
    input_range = x.std(0) + 0.1                         # [in]
    return (output_range / input_range[:, None]).T.contiguous()
