"""ChebyKAN (SynodicMonth/ChebyKAN, ``ChebyKANLayer``): Chebyshev series of tanh(x) on every edge.

Per layer one tensor, ``cheby_coeffs`` [in, out, degree+1]; the layer computes
y_j = sum_i sum_d C_ijd T_d(tanh x_i) with T_0 = 1, T_1 = t, T_d = 2 t T_{d-1} - T_{d-2}, and no bias.
tanh squashes every input into (-1, 1), where the polynomials live; past |x| ~ 3 the curve is flat.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

KEY = "cheby_coeffs"
DOMAIN = 3.0                  # tanh(3) = 0.995: the curve barely changes beyond this


class ChebyKANLayer(EdgeLayer):
    """One ChebyKANLayer as edges: a single "chebyshev" part, phi_ij(x) = sum_d C_ijd T_d(tanh x)."""

    parts = (Part("chebyshev"),)

    def __init__(self, coeffs: Tensor) -> None:
        super().__init__(coeffs.shape[0], coeffs.shape[1])
        self.coeffs = coeffs.detach()                                   # [in, out, D+1]

    def part_values(self, part: str, t: Tensor) -> Tensor:
        return torch.einsum("bid,ijd->bij", chebyshev(torch.tanh(t), self.coeffs.shape[2] - 1),
                            self.coeffs.to(t))

    def domain(self) -> Tensor:
        return torch.tensor([[-DOMAIN, DOMAIN]]).expand(self.in_dim, 2)


def chebyshev(u: Tensor, degree: int) -> Tensor:
    """T_0(u) .. T_degree(u) by the three-term recurrence, [..., degree+1]."""
    polys = [torch.ones_like(u), u][: degree + 1]
    while len(polys) <= degree:
        polys.append(2 * u * polys[-1] - polys[-2])
    return torch.stack(polys, dim=-1)


def _groups(state: Mapping[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
    return [(prefix, group) for prefix, group in layer_groups(state, {KEY}) if group[KEY].dim() == 3]


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(_groups(state))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = _groups(state)
    if not groups:
        raise NetatlasError("no ChebyKAN layer here: expected keys ending in cheby_coeffs [in, out, degree+1]")
    layers = [ChebyKANLayer(group[KEY]) for _, group in groups]
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups])


FAMILY = Family(
    name="chebykan",
    title="ChebyKAN (Chebyshev polynomials of tanh x, SynodicMonth/ChebyKAN)",
    matches=matches,
    read=read,
)
