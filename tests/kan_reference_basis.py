"""Reference modules for the basis-function KAN families, written from each library's published code.

They reproduce the published forwards and the published parameter names, so ``state_dict()`` of one
of them is a realistic checkpoint; nothing here imports netatlas. Sources:
FastKAN: ZiyaoLi/fast-kan fastkan/fastkan.py; ChebyKAN: SynodicMonth/ChebyKAN ChebyKANLayer.py;
FourierKAN: GistNoesis/FourierKAN fftKAN.py; ReLU-KAN: quiqi/relu_kan torch_relu_kan.py (with the
``train_ab`` switch later forks added); TruKAN: alibayeh/trukan src/trukan/trukan_layer.py, trukan.py;
AF-KAN: hoangthangta/All-KAN models/af_kan.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- FastKAN
class RadialBasisFunction(nn.Module):
    def __init__(self, grid_min=-2.0, grid_max=2.0, num_grids=8, denominator=None):
        super().__init__()
        self.grid = nn.Parameter(torch.linspace(grid_min, grid_max, num_grids), requires_grad=False)
        self.denominator = denominator or (grid_max - grid_min) / (num_grids - 1)

    def forward(self, x):
        return torch.exp(-((x[..., None] - self.grid) / self.denominator) ** 2)


class FastKANLayer(nn.Module):
    def __init__(self, input_dim, output_dim, grid_min=-2.0, grid_max=2.0, num_grids=8,
                 use_base_update=True, use_layernorm=True, denominator=None):
        super().__init__()
        self.layernorm = nn.LayerNorm(input_dim) if use_layernorm else None
        self.rbf = RadialBasisFunction(grid_min, grid_max, num_grids, denominator)
        self.spline_linear = nn.Linear(input_dim * num_grids, output_dim, bias=False)
        nn.init.trunc_normal_(self.spline_linear.weight, mean=0, std=0.1)
        self.use_base_update = use_base_update
        if use_base_update:
            self.base_linear = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        basis = self.rbf(self.layernorm(x) if self.layernorm is not None else x)
        out = self.spline_linear(basis.view(*basis.shape[:-2], -1))
        if self.use_base_update:
            out = out + self.base_linear(F.silu(x))
        return out


class FastKAN(nn.Module):
    def __init__(self, widths, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList(FastKANLayer(a, b, **kwargs) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------- ChebyKAN
class ChebyKANLayer(nn.Module):
    def __init__(self, input_dim, output_dim, degree):
        super().__init__()
        self.inputdim, self.outdim, self.degree = input_dim, output_dim, degree
        self.cheby_coeffs = nn.Parameter(torch.empty(input_dim, output_dim, degree + 1))
        nn.init.normal_(self.cheby_coeffs, mean=0.0, std=1 / (input_dim * (degree + 1)))

    def forward(self, x):
        x = torch.tanh(torch.reshape(x, (-1, self.inputdim)))
        cheby = torch.ones(x.shape[0], self.inputdim, self.degree + 1, dtype=x.dtype)
        if self.degree > 0:
            cheby[:, :, 1] = x
        for d in range(2, self.degree + 1):
            cheby[:, :, d] = 2 * x * cheby[:, :, d - 1].clone() - cheby[:, :, d - 2].clone()
        return torch.einsum("bid,iod->bo", cheby, self.cheby_coeffs).view(-1, self.outdim)


class ChebyKAN(nn.Module):
    def __init__(self, widths, degree):
        super().__init__()
        self.layers = nn.ModuleList(ChebyKANLayer(a, b, degree) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------- FourierKAN
class NaiveFourierKANLayer(nn.Module):
    def __init__(self, inputdim, outdim, gridsize, addbias=True):
        super().__init__()
        self.gridsize, self.addbias, self.inputdim, self.outdim = gridsize, addbias, inputdim, outdim
        self.fouriercoeffs = nn.Parameter(torch.randn(2, outdim, inputdim, gridsize)
                                          / (np.sqrt(inputdim) * np.sqrt(gridsize)))
        if addbias:
            self.bias = nn.Parameter(torch.zeros(1, outdim))

    def forward(self, x):
        outshape = x.shape[:-1] + (self.outdim,)
        x = torch.reshape(x, (-1, self.inputdim))
        k = torch.reshape(torch.arange(1, self.gridsize + 1), (1, 1, 1, self.gridsize))
        xr = torch.reshape(x, (x.shape[0], 1, x.shape[1], 1))
        y = torch.sum(torch.cos(k * xr) * self.fouriercoeffs[0:1], (-2, -1))
        y = y + torch.sum(torch.sin(k * xr) * self.fouriercoeffs[1:2], (-2, -1))
        if self.addbias:
            y = y + self.bias
        return torch.reshape(y, outshape)


class FourierKAN(nn.Module):
    def __init__(self, widths, gridsize, addbias=True):
        super().__init__()
        self.layers = nn.ModuleList(NaiveFourierKANLayer(a, b, gridsize, addbias)
                                    for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------- ReLU-KAN
class ReLUKANLayer(nn.Module):
    """Takes x [B, in, 1], returns [B, out, 1], as the original does."""

    def __init__(self, input_size, g, k, output_size, train_ab=False):
        super().__init__()
        self.g, self.k, self.r = g, k, 4 * g * g / ((k + 1) * (k + 1))
        self.input_size, self.output_size = input_size, output_size
        phase_low = np.arange(-k, g) / g
        phase_height = phase_low + (k + 1) / g
        self.phase_low = nn.Parameter(torch.Tensor(np.array([phase_low] * input_size)), requires_grad=train_ab)
        self.phase_height = nn.Parameter(torch.Tensor(np.array([phase_height] * input_size)),
                                         requires_grad=train_ab)
        self.equal_size_conv = nn.Conv2d(1, output_size, (g + k, input_size))

    def forward(self, x):
        x = torch.relu(x - self.phase_low) * torch.relu(self.phase_height - x) * self.r
        x = (x * x).reshape((len(x), 1, self.g + self.k, self.input_size))
        return self.equal_size_conv(x).reshape((len(x), self.output_size, 1))


class ReLUKAN(nn.Module):
    def __init__(self, width, grid, k, train_ab=False):
        super().__init__()
        self.rk_layers = nn.ModuleList(ReLUKANLayer(width[i], grid, k, width[i + 1], train_ab)
                                       for i in range(len(width) - 1))

    def forward(self, x):
        for layer in self.rk_layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------- TruKAN
class TruKanLayer(nn.Module):
    def __init__(self, in_dim, out_dim, degree=3, num_knots=6, learn_knots=False, shared_knots=True,
                 knots_range=(-1.0, 1.0), eps=1e-8):
        super().__init__()
        self.in_dim, self.out_dim, self.degree, self.num_knots = in_dim, out_dim, degree, num_knots
        self.learn_knots, self.shared_knots = learn_knots, shared_knots
        self.eps, self.knots_range = eps, knots_range
        self.coeffs = nn.Parameter(torch.randn(in_dim, out_dim, degree + 1 + num_knots) * 1e-2)
        self.bias_out = nn.Parameter(torch.zeros(out_dim))
        lo, hi = knots_range
        knot_shape = (in_dim, num_knots) if shared_knots else (in_dim, out_dim, num_knots)
        if learn_knots:
            raw_init = torch.log(torch.exp(torch.tensor((hi - lo) / (num_knots + 1))) - 1)
            self.raw_knots = nn.Parameter(torch.ones(*knot_shape) * raw_init)
        else:
            uniform = torch.linspace(lo, hi, steps=num_knots + 2)[1:-1]
            self.register_buffer("fixed_knots", uniform.expand(*knot_shape))
        if degree != 3:
            self.register_buffer("exponents", torch.arange(degree + 1))

    def get_knots(self):
        if not self.learn_knots:
            return self.fixed_knots
        lo, hi = self.knots_range
        cum = torch.cumsum(F.softplus(self.raw_knots) + self.eps, dim=-1)
        return lo + (hi - lo) * cum / cum[..., -1:].clamp_min(self.eps)

    def basis(self, u, knots):
        if self.degree == 3:
            poly = torch.stack([torch.ones_like(u), u, u.square(), u.square() * u], dim=-1)
            trunc = torch.relu(u.unsqueeze(-1) - knots).pow(3)
        else:
            poly = u.unsqueeze(-1).pow(self.exponents)
            trunc = torch.relu(u.unsqueeze(-1) - knots.unsqueeze(0)).pow(self.degree)
        return torch.cat([poly, trunc], dim=-1)

    def forward(self, x):
        if self.shared_knots:
            return torch.einsum("bid,iod->bo", self.basis(x, self.get_knots()), self.coeffs) + self.bias_out
        expanded = x.unsqueeze(2).expand(-1, -1, self.out_dim)
        return torch.einsum("biod,iod->bo", self.basis(expanded, self.get_knots()), self.coeffs) + self.bias_out


class TruKan(nn.Module):
    def __init__(self, widths, **kwargs):
        super().__init__()
        self.layers = nn.ModuleDict({f"TruKanLayer_{i}": TruKanLayer(a, b, **kwargs)
                                     for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))})

    def forward(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x


# ---------------------------------------------------------------- AF-KAN
AF_ACTIVATIONS = {"softplus": F.softplus, "sigmoid": F.sigmoid, "silu": F.silu, "relu": F.relu,
                  "leaky_relu": F.leaky_relu, "elu": F.elu, "gelu": F.gelu, "selu": F.selu, "tanh": F.tanh}


class AF_KANLayer(nn.Module):
    """Takes X [n_methods, B, in] and runs method m on X[m], as the original does."""

    def __init__(self, input_size, g, k, output_size, norm_type="layer", base_activation="silu",
                 methods=("global_attn",), window_size=2, step=2, func="quad1", func_norm=True):
        super().__init__()
        self.g, self.k, self.input_size, self.output_size = g, k, input_size, output_size
        self.base_activation, self.func, self.func_norm, self.methods = base_activation, func, func_norm, methods
        phase_low = torch.arange(-k, g) / g
        self.phase_low = nn.Parameter(phase_low)
        self.phase_high = nn.Parameter(phase_low + (k + 1) / g)
        self.temperature = nn.Parameter(torch.tensor(math.sqrt(input_size)))
        self.base_weight = nn.Parameter(torch.empty(output_size, input_size))
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        self.base_weight_bias = nn.Parameter(torch.zeros(1, output_size))
        self.norm = {"layer": nn.LayerNorm(input_size), "batch": nn.BatchNorm1d(input_size)}.get(norm_type,
                                                                                                 nn.Identity())
        n = g + k
        self.query_self, self.key_self, self.value_self = nn.Linear(n, n), nn.Linear(n, n), nn.Linear(n, n)
        self.conv1d = nn.Conv1d(n, n, kernel_size=3, stride=1, padding=1, groups=n)
        self.mh_attn = nn.MultiheadAttention(embed_dim=n, num_heads=n, batch_first=True)
        self.query_local = nn.Linear(window_size, window_size)
        self.key_local = nn.Linear(window_size, window_size)
        self.value_local = nn.Linear(window_size, window_size)
        self.local_linear = nn.Linear(int((n - window_size) / step + 1) * window_size, 1)
        self.gk_linear = nn.Linear(n, 1)

    def activation(self, x):
        return AF_ACTIVATIONS.get(self.base_activation, lambda v: v)(x)

    def forward(self, X):
        output = torch.zeros(X.shape[0], X.shape[1], self.output_size, dtype=X.dtype)
        for i, method in zip(range(X.shape[0]), self.methods):
            x = self.extract_features(X[i, :, :].squeeze(0))
            output[i] = getattr(self, method)(x)
        return output

    def extract_features(self, x):
        low = self.phase_low[None, :].expand(self.input_size, -1)
        high = self.phase_high[None, :].expand(self.input_size, -1)
        if x.dim() == 2:
            x = x.unsqueeze(2).expand(-1, -1, low.size(1))
        else:
            x = x.unsqueeze(0).unsqueeze(-1).expand(-1, -1, low.size(1))
        x1, x2 = self.activation(x - low), self.activation(high - x)
        values = {"quad1": lambda: (x1 * x2) ** 2, "quad2": lambda: x1 * x2 + x1 * x1 + x2 * x2,
                  "sum": lambda: x1 + x2, "prod": lambda: x1 * x2, "sum_prod": lambda: x1 + x2 + x1 * x2,
                  "cubic1": lambda: (x1 + x2) * (x1 * x1 + x2 * x2), "cubic2": lambda: (x1 * x2) ** 3}[self.func]()
        if self.func_norm:
            values = F.normalize(values, p=2, dim=None)
            values = (values - values.min()) / (values.max() - values.min())
        return values

    def multistep(self, x):
        x = self.gk_linear(x)
        x = self.norm(x.reshape(x.size(0), -1))
        return F.linear(self.activation(x), self.base_weight)

    def global_attn(self, x):
        weights = F.softmax(self.gk_linear(x) / self.temperature.clamp(min=1.0), dim=-2)
        x = self.norm(torch.sum(x * weights, dim=-1))
        return F.linear(self.activation(x), self.base_weight)

    def spatial_attn(self, x):
        scores = self.conv1d(x.permute(0, 2, 1))
        weights = F.softmax(scores / self.temperature.clamp(min=1.0), dim=1)
        x = self.norm(torch.sum(x * weights.permute(0, 2, 1), dim=-1))
        return F.linear(self.activation(x), self.base_weight)


class AF_KAN(nn.Module):
    """The network: stacks x once per method; its layers keep their own default methods (global_attn)."""

    def __init__(self, width, grid=5, k=3, norm_type="layer", base_activation="relu", func="quad1",
                 func_norm=True, methods=("local_attn",)):
        super().__init__()
        self.methods = methods
        self.rk_layers = nn.ModuleList(
            AF_KANLayer(width[i], grid, k, width[i + 1], norm_type=norm_type, base_activation=base_activation,
                        func=func, func_norm=func_norm) for i in range(len(width) - 1))

    def forward(self, x):
        X = torch.stack([x] * len(self.methods))
        for layer in self.rk_layers:
            X = layer(X)
        return X[0]
