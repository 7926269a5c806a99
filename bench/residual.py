"""Benchmark: the full Residual tab (every residual-path analysis) on the demo and on resnet18.

Prints per-stage wall time and, as the baseline measured in the same run, one plain forward pass
over the same images, so the whole tab and each stage also read as "forward-pass equivalents"
(target for resnet18 at 128 images of 112 px: <= 35 for the tab). Also prints how well the exact
order-k decomposition sums to the model output (target: 1e-4 relative).

    python bench/residual.py [--models demo,resnet18] [--images 256] [--size 224] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision

from netatlas.backend.activations import resolve_device
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.residual.blocks import find_residual_units
from netatlas.backend.residual.paths import PathSettings, analyze_paths


def demo_case(images: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    loaded = load_checkpoint(demo_checkpoint())
    dataset = demo_dataset()
    test = np.flatnonzero(dataset.meta["split"] == "test")[:images]
    return loaded.model, loaded.preprocessing.uint8_to_tensor(dataset.array[test]), torch.as_tensor(dataset.labels[test])


def resnet18_case(images: int, size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(images, 3, size, size)
    return model, x, torch.randint(0, 10, (images,))


def run(name: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
    model = model.to(device).eval()
    units = find_residual_units(model)
    with torch.no_grad():
        model(x[:8].to(device))  # warm-up
        start = time.perf_counter()
        model(x.to(device))
        forward = time.perf_counter() - start
    start = time.perf_counter()
    report = analyze_paths(model, units, x, labels, PathSettings(images=len(x)))
    total = time.perf_counter() - start
    print(f"{name}.units: {len(units)}")
    print(f"{name}.images: {len(x)}x{'x'.join(map(str, x.shape[1:]))}")
    print(f"{name}.baseline_forward_s: {forward:.3f}  (one plain forward over the same images)")
    print(f"{name}.full_tab_s: {total:.1f}  ({total / forward:.0f} forward-pass equivalents)")
    for stage, seconds in report.meta["seconds"].items():
        print(f"{name}.{stage}_s: {seconds:.2f}  ({seconds / forward:.1f} forward-pass equivalents)")
    check = report.meta["decomposition_rel_error"]
    print(f"{name}.decomposition_rel_error: {check if check is None else f'{check:.2e}'}  (target <= 1e-4)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,resnet18")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="resnet18 input size")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}\ntorch_threads: {torch.get_num_threads()}")
    for name in args.models.split(","):
        model, x, labels = demo_case(args.images) if name == "demo" else resnet18_case(args.images, args.size)
        run(name, model, x, labels, device)


if __name__ == "__main__":
    main()
