"""Benchmark: multifaceted feature visualization on the demo.

1. Batching: k = 4 facets optimized as one batch vs 4 sequential single-image runs with the same
   steps, in the same run (target on a GPU: <= 1.5x the cost of one facet; here, the CPU figure).
2. Quality: for each class logit, the mean activation the facets reach divided by the dataset
   maximum (target >= 1.0), and the facets' diversity against the baseline that optimizes noise
   with Distill's diversity term instead of starting from facet mean images.

    python bench/featviz.py [--steps 200] [--optimizer paper|lucid] [--classes 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from netatlas.backend.cache import ResultCache
from netatlas.backend.checkpoint import load_checkpoint
from netatlas.backend.datasets import demo_dataset
from netatlas.backend.demo import demo_checkpoint
from netatlas.backend.facets import FacetSettings
from netatlas.backend.featviz import FeatvizSettings, Objective, maximize
from netatlas.backend.workspace import Workspace


def batching(workspace: Workspace, steps: int, optimizer: str) -> None:
    loaded = workspace.loaded
    starts = workspace.dataset.inputs(np.arange(4), loaded.preprocessing)
    objective, settings = Objective("", 3), FeatvizSettings(optimizer=optimizer, steps=steps)
    maximize(loaded.model, starts[:1], objective, loaded.preprocessing, FeatvizSettings(steps=5))  # warm-up
    start = time.perf_counter()
    maximize(loaded.model, starts, objective, loaded.preprocessing, settings)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(4):
        maximize(loaded.model, starts[i:i + 1], objective, loaded.preprocessing, settings)
    sequential = time.perf_counter() - start
    print(f"batching.k4_one_batch_s: {batched:.2f}")
    print(f"batching.k4_sequential_s: {sequential:.2f}")
    print(f"batching.one_facet_s: {sequential / 4:.2f}")
    print(f"batching.batch_vs_one_facet: {batched / (sequential / 4):.2f}  (GPU target <= 1.5; CPU work grows with k)")
    print(f"batching.speedup_vs_sequential: {sequential / batched:.2f}")


def quality(workspace: Workspace, steps: int, optimizer: str, classes: int) -> None:
    ratios, ours, baseline = [], [], []
    for c in range(classes):
        report = workspace.facets("", c, FacetSettings(k=4), FeatvizSettings(optimizer=optimizer, steps=steps))
        noise = workspace.facets("", c, FacetSettings(k=4, start="noise"),
                                 FeatvizSettings(optimizer=optimizer, steps=steps, diversity=1.0))
        ratios.append(report.ratio.mean())
        ours.append(report.diversity)
        baseline.append(noise.diversity)
        print(f"quality.logit_{c}: ratio {report.ratio.mean():.2f} (min {report.ratio.min():.2f}), "
              f"diversity {report.diversity:.3f} vs noise+diversity baseline {noise.diversity:.3f} "
              f"(its ratio {noise.ratio.mean():.2f})")
    print(f"quality.mean_ratio: {np.mean(ratios):.2f}  (target >= 1.0)")
    print(f"quality.classes_at_or_above_1: {int(np.sum(np.asarray(ratios) >= 1.0))}/{classes}")
    print(f"quality.mean_diversity: {np.mean(ours):.3f}  vs baseline {np.mean(baseline):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", choices=("paper", "lucid"), default="paper")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    print(f"device: cpu\ntorch_threads: {torch.get_num_threads()}\noptimizer: {args.optimizer}\nsteps: {args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(load_checkpoint(demo_checkpoint()), demo_dataset(), ResultCache(tmp), "cpu")
        batching(workspace, args.steps, args.optimizer)
        quality(workspace, args.steps, args.optimizer, args.classes)


if __name__ == "__main__":
    main()
