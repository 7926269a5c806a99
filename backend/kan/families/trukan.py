"""TruKAN (alibayeh/trukan, ``TruKanLayer``): a polynomial plus truncated powers on every edge.

Per layer ``coeffs`` [in, out, (d+1) + K], ``bias_out`` [out] and the knots, one of
``fixed_knots`` (buffer) or ``raw_knots`` (learnable), [in, K] when shared by an input's edges or
[in, out, K] per edge. The basis is 1, x, .., x^d followed by relu(x - t_m)^d, so
phi_ij(x) = sum_p C_ijp x^p + sum_m C_ij(d+1+m) relu(x - t_ijm)^d, with d = len(coeffs) - K - 1.
The two sums are the parts "polynomial" and "truncated" (TruKanLayer.forward_traced's split).
Learnable knots are stored raw: t = lo + (hi - lo) * cumsum(softplus(raw) + eps) / total, with
(lo, hi) the layer's ``knots_range``, which is not stored (option "knots_range").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

REQUIRED = {"coeffs", "bias_out"}
KNOT_KEYS = ("fixed_knots", "raw_knots")
KNOTS_RANGE = (-1.0, 1.0)     # TruKan's and TruKanLayer's default knots_range
EPS = 1e-8                    # TruKanLayer's default eps in the learnable-knot transform


class TruKANLayer(EdgeLayer):
    """One TruKanLayer as edges: parts "polynomial" and "truncated", c_j = bias_out."""

    parts = (Part("polynomial"), Part("truncated"))

    def __init__(self, coeffs: Tensor, bias: Tensor, knots: Tensor, knots_range: tuple[float, float] | None
                 ) -> None:
        super().__init__(coeffs.shape[0], coeffs.shape[1])
        self.coeffs, self._bias, self.edge_knots = coeffs.detach(), bias.detach(), knots.detach()
        self.degree = coeffs.shape[2] - knots.shape[-1] - 1
        self.knots_range = knots_range           # set for learnable knots, which live inside it
        if self.degree < 0:
            raise NetatlasError(f"TruKAN coeffs have {coeffs.shape[2]} basis functions for "
                                f"{knots.shape[-1]} knots: the checkpoint is inconsistent")

    def part_values(self, part: str, t: Tensor) -> Tensor:
        coeffs = self.coeffs.to(t)
        if part == "polynomial":
            powers = t[:, :, None] ** torch.arange(self.degree + 1, dtype=t.dtype, device=t.device)
            return torch.einsum("bip,ijp->bij", powers, coeffs[:, :, : self.degree + 1])
        knots = self.edge_knots.to(t)
        if knots.dim() == 2:                                            # shared: [in, K]
            trunc = torch.relu(t[:, :, None] - knots) ** self.degree
            return torch.einsum("bim,ijm->bij", trunc, coeffs[:, :, self.degree + 1:])
        trunc = torch.relu(t[:, :, None, None] - knots) ** self.degree  # per edge: [B, in, out, K]
        return torch.einsum("bijm,ijm->bij", trunc, coeffs[:, :, self.degree + 1:])

    @property
    def bias(self) -> Tensor:
        return self._bias

    def domain(self) -> Tensor:
        """knots_range for learnable knots; otherwise the knot span widened by one knot spacing.

        Fixed knots are the interior points of linspace(lo, hi, K + 2), so this recovers (lo, hi)
        (a single knot is widened by 1).
        """
        if self.knots_range is not None:
            return torch.tensor([self.knots_range]).expand(self.in_dim, 2)
        knots = self.edge_knots.reshape(self.in_dim, -1).double()
        count = self.edge_knots.shape[-1]
        lo, hi = knots.min(1).values, knots.max(1).values
        gap = (hi - lo) / (count - 1) if count > 1 else torch.ones_like(lo)
        return torch.stack([lo - gap, hi + gap], 1).float()

    def knots(self) -> Tensor:
        """[in, K] (shared) or every edge's knots of an input, sorted, [in, out*K]."""
        return self.edge_knots.reshape(self.in_dim, -1).sort(1).values.float()


def learned_knots(raw: Tensor, knots_range: tuple[float, float]) -> Tensor:
    """TruKanLayer's knots from raw_knots: ordered, positive increments spread over knots_range."""
    lo, hi = knots_range
    steps = F.softplus(raw) + EPS
    cumulative = steps.cumsum(-1)
    return lo + (hi - lo) * cumulative / cumulative[..., -1:].clamp_min(EPS)


def _knots_range(options: dict[str, Any]) -> tuple[float, float]:
    value = options.get("knots_range")
    if value is None:
        return KNOTS_RANGE
    parts = value.split(",") if isinstance(value, str) else list(value)
    if len(parts) != 2 or not float(parts[0]) < float(parts[1]):
        raise NetatlasError(f"TruKAN option knots_range must be two increasing numbers 'lo,hi', not {value!r}")
    return float(parts[0]), float(parts[1])


def _layer(group: Mapping[str, Tensor], options: dict[str, Any]) -> TruKANLayer:
    if "fixed_knots" in group:
        return TruKANLayer(group["coeffs"], group["bias_out"], group["fixed_knots"], None)
    knots_range = _knots_range(options)
    knots = learned_knots(group["raw_knots"].detach(), knots_range)
    return TruKANLayer(group["coeffs"], group["bias_out"], knots, knots_range)


def _groups(state: Mapping[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
    return [(prefix, group) for prefix, group in layer_groups(state, REQUIRED)
            if any(key in group for key in KNOT_KEYS)]


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(_groups(state))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = _groups(state)
    if not groups:
        raise NetatlasError("no TruKAN layer here: expected keys ending in coeffs, bias_out and "
                            "fixed_knots or raw_knots")
    layers = [_layer(group, options) for _, group in groups]
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups])


FAMILY = Family(
    name="trukan",
    title="TruKAN (polynomial + truncated powers, alibayeh/trukan)",
    matches=matches,
    read=read,
    options={"knots_range": "'lo,hi' the layer's knots_range, used only with learnable knots (raw_knots), "
                            "whose positions are spread over it; not stored. Default: -1,1 (TruKan's "
                            "default)"},
)
