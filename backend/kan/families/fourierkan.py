"""FourierKAN (GistNoesis/FourierKAN, ``NaiveFourierKANLayer``): a Fourier series on every edge.

Per layer ``fouriercoeffs`` [2, out, in, gridsize] and, with ``addbias``, ``bias`` [1, out]; the layer
computes y_j = sum_i sum_k (A_0jik cos(k x_i) + A_1jik sin(k x_i)) + bias_j for k = 1..gridsize.
There is no constant term per edge (k starts at 1): each curve has zero mean over a period.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

KEY = "fouriercoeffs"


class FourierKANLayer(EdgeLayer):
    """One NaiveFourierKANLayer as edges: a single "fourier" part, and the layer's bias as c_j."""

    parts = (Part("fourier"),)

    def __init__(self, coeffs: Tensor, bias: Tensor | None) -> None:
        super().__init__(coeffs.shape[2], coeffs.shape[1])
        self.coeffs = coeffs.detach()                                   # [2, out, in, K]
        self._bias = bias.detach().reshape(-1) if bias is not None else torch.zeros(self.out_dim)

    def part_values(self, part: str, t: Tensor) -> Tensor:
        k = torch.arange(1, self.coeffs.shape[3] + 1, dtype=t.dtype, device=t.device)
        kx = t[:, :, None] * k                                          # [B, in, K]
        coeffs = self.coeffs.to(t)
        return (torch.einsum("bik,jik->bij", torch.cos(kx), coeffs[0])
                + torch.einsum("bik,jik->bij", torch.sin(kx), coeffs[1]))

    @property
    def bias(self) -> Tensor:
        return self._bias

    def domain(self) -> Tensor:
        """One period, [-pi, pi]: every edge repeats itself outside it."""
        return torch.tensor([[-math.pi, math.pi]]).expand(self.in_dim, 2)


def _groups(state: Mapping[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
    return [(prefix, group) for prefix, group in layer_groups(state, {KEY})
            if group[KEY].dim() == 4 and group[KEY].shape[0] == 2]


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(_groups(state))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = _groups(state)
    if not groups:
        raise NetatlasError("no FourierKAN layer here: expected keys ending in fouriercoeffs "
                            "[2, out, in, gridsize]")
    layers = [FourierKANLayer(group[KEY], group.get("bias")) for _, group in groups]
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups])


FAMILY = Family(
    name="fourierkan",
    title="FourierKAN (cos/sin series, GistNoesis/FourierKAN)",
    matches=matches,
    read=read,
)
