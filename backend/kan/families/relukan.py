"""ReLU-KAN (quiqi/relu_kan, ``ReLUKANLayer``): squared ReLU bumps between learned phases.

Per layer ``phase_low`` and ``phase_height`` [in, g+k] and ``equal_size_conv.weight`` [out, 1, g+k, in]
(+ ``.bias`` [out]). For input i and bump m the basis is b_im(x) = (relu(x - low_im) *
relu(high_im - x) * r)^2 with r = 4 g^2 / (k+1)^2 (1 at the top of an untrained bump). The original
then reshapes the [in, g+k] basis *raw* to [1, g+k, in] for a full-size convolution, so weight flat
index f over (g+k, in) multiplies basis (i, m) with i*(g+k) + m = f: the weight is read as
[out, in, g+k] after a raw reshape, not a transpose. The original takes x as [B, in, 1] and returns
[B, out, 1]; these edges work on [B, in] -> [B, out].

g and k are not stored. At init phase_low = (-k .. g-1)/g and high - low = (k+1)/g, so with
g + k bumps (the shape) the mean width w gives g = (g+k+1)/(w+1); options "g" and "k" override.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from netatlas.backend.kan.base import EdgeLayer, KANNetwork, Part
from netatlas.backend.kan.families import Family
from netatlas.backend.kan.families.keys import layer_groups
from netatlas.backend.errors import NetatlasError

REQUIRED = {"phase_low", "phase_height", "equal_size_conv.weight"}


def bumps(x: Tensor, low: Tensor, high: Tensor, activation: Callable[[Tensor], Tensor] = torch.relu
          ) -> tuple[Tensor, Tensor]:
    """activation(x - low) and activation(high - x) for x [B, in] against phases [in, M] -> [B, in, M].

    The two halves of every ReLU-KAN-style bump (AF-KAN combines them with other functions).
    """
    x = x[:, :, None]
    return activation(x - low.to(x)), activation(high.to(x) - x)


class ReLUKANLayer(EdgeLayer):
    """One ReLUKANLayer as edges: phi_ij(x) = sum_m W_jim b_im(x), one "relu" part, c_j the conv bias."""

    parts = (Part("relu"),)

    def __init__(self, tensors: Mapping[str, Tensor], g: int, k: int) -> None:
        self.low, self.high = tensors["phase_low"].detach(), tensors["phase_height"].detach()
        weight = tensors["equal_size_conv.weight"].detach()
        in_dim, bumps_per_input = self.low.shape
        if weight.shape[1:] != (1, bumps_per_input, in_dim):
            raise NetatlasError(f"ReLU-KAN equal_size_conv.weight is {tuple(weight.shape)}, expected "
                                f"[out, 1, {bumps_per_input}, {in_dim}] for phases of shape "
                                f"{tuple(self.low.shape)}: the checkpoint is inconsistent")
        super().__init__(in_dim, weight.shape[0])
        self.weight = weight.reshape(self.out_dim, in_dim, bumps_per_input)   # the raw reshape
        self.conv_bias = tensors.get("equal_size_conv.bias")
        self.g, self.k = g, k
        self.r = 4 * g * g / ((k + 1) * (k + 1))

    def part_values(self, part: str, t: Tensor) -> Tensor:
        rising, falling = bumps(t, self.low, self.high)
        basis = (rising * falling * self.r) ** 2                                  # [B, in, M]
        return torch.einsum("bim,jim->bij", basis, self.weight.to(basis))

    @property
    def bias(self) -> Tensor:
        return self.conv_bias.detach() if self.conv_bias is not None else torch.zeros(self.out_dim)

    def domain(self) -> Tensor:
        """From the first bump's start to the last bump's end, per input: outside it every edge is 0."""
        return torch.stack([self.low.min(1).values, self.high.max(1).values], 1).float()

    def knots(self) -> Tensor:
        """Every phase (bump start and end), sorted, per input."""
        return torch.cat([self.low, self.high], 1).sort(1).values.float()


def infer_grid(low: Tensor, high: Tensor) -> tuple[int, int]:
    """(g, k) from the phases: g + k bumps, each (k+1)/g wide at init (the mean width, once trained)."""
    bumps_per_input = low.shape[1]
    width = float((high - low).double().mean())
    g = round((bumps_per_input + 1) / (width + 1)) if width > -1 else 0
    k = bumps_per_input - g
    if g < 1 or k < 0:
        raise NetatlasError(f"cannot infer ReLU-KAN's g and k from phases of mean width {width:.3g} "
                            f"({bumps_per_input} bumps per input): pass the options g and k")
    return g, k


def _grid(group: Mapping[str, Tensor], options: dict[str, Any]) -> tuple[tuple[int, int], str | None]:
    """(g, k) for one layer from the options or the phases, and a note when they were inferred."""
    bumps_per_input = group["phase_low"].shape[1]
    if options.get("g") is not None or options.get("k") is not None:
        g = int(options["g"]) if options.get("g") is not None else bumps_per_input - int(options["k"])
        k = int(options["k"]) if options.get("k") is not None else bumps_per_input - g
        if g + k != bumps_per_input or g < 1 or k < 0:
            raise NetatlasError(f"ReLU-KAN options g={g}, k={k} do not fit {bumps_per_input} phases per "
                                "input (g + k must equal it, g >= 1, k >= 0)")
        return (g, k), None
    g, k = infer_grid(group["phase_low"], group["phase_height"])
    return (g, k), f"g={g}, k={k}"


def matches(state: Mapping[str, Tensor]) -> bool:
    return bool(layer_groups(state, REQUIRED))


def read(state: Mapping[str, Tensor], options: dict[str, Any]) -> KANNetwork:
    groups = layer_groups(state, REQUIRED)
    if not groups:
        raise NetatlasError("no ReLU-KAN layer here: expected keys ending in phase_low, phase_height and "
                            "equal_size_conv.weight")
    layers, inferred = [], []
    for prefix, group in groups:
        (g, k), note = _grid(group, options)
        layers.append(ReLUKANLayer(group, g, k))
        if note:
            inferred.append(f"{prefix or 'root'}: {note}")
    notes = [f"ReLU-KAN g and k inferred from the phases ({'; '.join(inferred)}); if the curves look "
             "scaled wrongly, pass the options g and k the model was built with"] if inferred else []
    return KANNetwork(FAMILY.name, layers, [prefix for prefix, _ in groups], notes)


FAMILY = Family(
    name="relukan",
    title="ReLU-KAN (squared ReLU bumps, quiqi/relu_kan)",
    matches=matches,
    read=read,
    options={"g": "number of grid intervals of the ReLUKANLayer (its g); not stored. Default: inferred "
                  "from the phases, exact for untrained phases",
             "k": "bump width in intervals (its k; g + k phases per input); not stored. Default: inferred "
                  "with g"},
)
