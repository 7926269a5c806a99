"""The module tree of a model: names, types, output shapes and parameter counts."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from netatlas.backend.activations import first_tensor, reduce_output
from netatlas.backend.errors import model_failed


def describe_model(model: nn.Module, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """One row per named module, in definition order, with the output shape of one forward pass.

    ``units`` is the width a layer's activations have after per-channel reduction (what the Neurons
    view indexes). Shapes come from a single zero-input forward on the model's own device.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    units: dict[str, int] = {}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            try:
                t = first_tensor(output)
            except Exception:  # outputs we cannot read (dicts of non-tensors) simply get no shape
                return
            shapes[name] = tuple(t.shape)
            units[name] = int(reduce_output(t[:1], module, "mean").shape[1])
        return hook

    modules = list(model.named_modules())
    scripted = isinstance(model, torch.jit.ScriptModule)
    try:
        if not scripted:
            handles = [m.register_forward_hook(hook_for(name)) for name, m in modules]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.inference_mode():
            try:
                model.eval()(torch.zeros(input_shape, device=device))
            except Exception as exc:  # the user's forward fails in many ways: TypeError, AttributeError, ...
                raise model_failed(exc, f"a {'x'.join(map(str, input_shape))} batch of zeros", model) from exc
    finally:
        for h in handles:
            h.remove()

    rows = []
    for name, module in modules:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = sum(p.numel() for p in module.parameters())
        rows.append({
            "name": name or "(model)",
            "type": type(module).__name__ if not scripted else module.original_name,
            "depth": 0 if not name else name.count(".") + 1,
            "output_shape": "x".join(map(str, shapes[name])) if name in shapes else "",
            "units": units.get(name, 0),
            "params": total,
            "own_params": own,
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "leaf": not any(True for _ in module.children()),
        })
    return pd.DataFrame(rows)
