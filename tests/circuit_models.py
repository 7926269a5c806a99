"""Small models of the kinds the Diagram tab must draw: transformer, MLP, KAN, dict I/O, untraceable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyTransformer(nn.Module):
    """Embedding, a 3-layer nn.TransformerEncoder (Python control flow fx cannot trace), a head."""

    def __init__(self, d_in: int = 8, d_model: int = 32, layers: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10, bias=False))


class KANLayer(nn.Module):
    """An efficient-kan layer: SiLU base plus a B-spline per edge, y_j = sum_i phi_ij(x_i)."""

    def __init__(self, d_in: int, d_out: int, grid_size: int = 5, order: int = 3) -> None:
        super().__init__()
        h = 2 / grid_size
        grid = torch.arange(-order, grid_size + order + 1) * h - 1
        self.register_buffer("grid", grid.expand(d_in, -1).contiguous())
        self.order = order
        self.base_weight = nn.Parameter(torch.randn(d_out, d_in) * 0.1)
        self.spline_weight = nn.Parameter(torch.randn(d_out, d_in, grid_size + order) * 0.1)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        grid, x = self.grid, x.unsqueeze(-1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.order + 1):
            bases = ((x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * bases[:, :, :-1]
                     + (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:-k]) * bases[:, :, 1:])
        return bases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        spline = F.linear(self.b_splines(x).flatten(1), self.spline_weight.flatten(1))
        return base + spline


class TinyKAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(KANLayer(2, 5), KANLayer(5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DictModel(nn.Module):
    """Takes {"image": x}, returns {"logits": ..., "features": ...}, as detection/HF-style models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.pool(torch.relu(self.conv(batch["image"]))).flatten(1)
        return {"logits": self.fc(features), "features": features}


class Untraceable(nn.Module):
    """Branches on a tensor's value at the top level: fx cannot trace it, hooks must."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 1e9:  # never true; a data-dependent branch all the same
            h = h * 2
        return self.b(h)
