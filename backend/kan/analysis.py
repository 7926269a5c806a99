"""One opened KAN: its layers' inputs on a sample batch and every edge's importance, computed once.

The views and the CLI all start here, so the sample that draws the data behind each curve is also
the one that ranks the edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from netatlas.backend.kan.base import KANNetwork, edge_importance
from netatlas.backend.kan.symbolic import FormulaFit, suggest_formulas

MAX_SAMPLE = 4096
UNIFORM_SAMPLE = 1024
MIN_SAMPLE = 2            # an edge's importance is a standard deviation over the sample


@dataclass
class KANAnalysis:
    network: KANNetwork
    inputs: list[Tensor]          # per layer, its input on the sample [N, in]
    importance: list[Tensor]      # per layer, [out, in]
    sample_note: str              # where the sample came from, for the page and the CLI

    def suggest(self, index: int, edge: tuple[int, int]) -> list[FormulaFit]:
        """Formulas for edge (i, j) of layer ``index``, fitted on the sample's own inputs to that edge
        (as pykan's suggest_symbolic fits its cached activations), best first."""
        layer, inputs, (i, j) = self.network.layers[index], self.inputs[index], edge
        return suggest_formulas(inputs[:, i].numpy(), layer.curves(inputs)[:, i, j].numpy())

    def layer_label(self, index: int) -> str:
        layer = self.network.layers[index]
        return f"layer {index} ({self.network.names[index].rstrip('.') or 'root'}: {layer.in_dim} -> {layer.out_dim})"


def analyze(network: KANNetwork, sample: Tensor | None = None, seed: int = 0) -> KANAnalysis:
    """Propagate a sample (the given one, the checkpoint's, or a uniform one) and score every edge.

    Without any sample the network's first-layer domain is sampled uniformly, and later layers see
    what that produces: the curves are still exact, only the data behind them is synthetic. So does a
    sample of one input, whose spread (and so every edge's importance) would be undefined.
    """
    source = "the sample given" if sample is not None else network.sample_source or "the checkpoint"
    sample = sample if sample is not None else network.sample
    few = ""
    if sample is not None and len(sample) < MIN_SAMPLE:
        # importance is a standard deviation over the sample: one row has none (torch says NaN)
        few, sample = (f"the sample has {len(sample)} input, too few to measure a spread: ", None)
    if sample is not None:
        note = f"sample: {len(sample):,} inputs from {source}"
        if len(sample) > MAX_SAMPLE:
            keep = torch.randperm(len(sample), generator=torch.Generator().manual_seed(seed))[:MAX_SAMPLE]
            sample, note = sample[keep], note + f" ({MAX_SAMPLE:,} of them drawn at random)"
    else:
        domain = network.layers[0].domain().double()
        u = torch.rand(UNIFORM_SAMPLE, len(domain), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        sample = domain[:, 0] + u * (domain[:, 1] - domain[:, 0])
        note = (f"{few or 'no sample given: '}{UNIFORM_SAMPLE:,} inputs drawn uniformly over the first "
                f"layer's grid{' instead' if few else ''}")
    sample = sample if sample.is_floating_point() else sample.float()
    inputs = network.layer_inputs(sample)
    for layer, x in zip(network.layers, inputs):
        layer.observe(x)
    importance = [edge_importance(layer, x) for layer, x in zip(network.layers, inputs)]
    return KANAnalysis(network, inputs, importance, note)
