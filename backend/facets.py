"""The facets of a unit (Nguyen, Yosinski & Clune 2016): clusters among the images it responds to.

A unit's top-N dataset images are embedded by their penultimate representation (PCA to 50
dimensions, then a 2-D t-SNE) and split by k-means into k facets; each facet's m images nearest its
centroid are its exemplars, and their mean is where activation maximization starts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn

from netatlas.backend.datasets import ImageDataset
from netatlas.backend.featviz import (FeatvizSettings, Objective, color_correlation, diversity, maximize,
                                      noise_start, to_uint8, unit_activation)
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError


@dataclass(frozen=True)
class FacetSettings:
    k: int = 4             # facets (1-10)
    top_n: int = 200       # the unit's most-activating images that are clustered
    members: int = 15      # exemplars per facet, averaged into its starting image
    pca_dims: int = 50
    start: str = "mean"    # "mean" (the paper) or "noise" (the baseline)
    seed: int = 0


@dataclass
class Facets:
    """Facet structure over the unit's top images (all indices are dataset indices)."""

    top: np.ndarray          # [N] the top images, highest activation first
    embedding: np.ndarray    # [N, 2] their 2-D embedding
    assignment: np.ndarray   # [N] facet of each top image (facets ordered by size, largest first)
    exemplars: list[np.ndarray]  # per facet: the members nearest its centroid, nearest first


def penultimate_layer(model: nn.Module) -> str | None:
    """The leaf module that feeds the last Linear layer (the code the paper clusters), if any."""
    names = [name for name, m in model.named_modules() if name and not any(True for _ in m.children())]
    linear = [i for i, name in enumerate(names) if isinstance(model.get_submodule(name), nn.Linear)]
    if not linear or linear[-1] == 0:
        return None
    return names[linear[-1] - 1]


def find_facets(values: np.ndarray, codes: np.ndarray, settings: FacetSettings = FacetSettings()) -> Facets:
    """Cluster the unit's top images (by ``values``) on their ``codes`` into ``settings.k`` facets."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if not 1 <= settings.k <= 10:
        raise NetatlasError(f"facets: k must be between 1 and 10, got {settings.k}")
    top = np.argsort(values, kind="stable")[::-1][:settings.top_n]
    if len(top) < settings.k:
        raise NetatlasError(f"facets: {len(top)} images cannot make {settings.k} facets")
    x = codes[top].astype(np.float64)
    dims = min(settings.pca_dims, x.shape[1], len(top) - 1)
    if dims >= 2:
        x = PCA(dims, random_state=settings.seed).fit_transform(x)
    if len(top) > 5 and x.shape[1] > 2:
        perplexity = min(30.0, (len(top) - 1) / 3)
        x = TSNE(2, perplexity=perplexity, init="pca", random_state=settings.seed).fit_transform(x)
    labels = KMeans(settings.k, n_init=10, random_state=settings.seed).fit_predict(x)
    order = np.argsort(-np.bincount(labels, minlength=settings.k), kind="stable")
    assignment = np.argsort(order)[labels]          # relabel: facet 0 is the largest
    exemplars = []
    for facet in range(settings.k):
        members = np.flatnonzero(assignment == facet)
        centroid = x[members].mean(0)
        nearest = members[np.argsort(np.linalg.norm(x[members] - centroid, axis=1), kind="stable")]
        exemplars.append(top[nearest[:settings.members]])
    return Facets(top, x if x.shape[1] == 2 else np.zeros((len(top), 2)), assignment, exemplars)


@dataclass
class FacetReport:
    """One synthetic image per facet, with how far it drives the unit compared with the data."""

    layer: str
    unit: int
    images: np.ndarray            # uint8 [k, H, W(, 3)]: the optimized images
    starts: np.ndarray            # uint8: where each optimization started
    exemplars: list[np.ndarray]   # dataset indices per facet
    sizes: np.ndarray             # top images in each facet
    activation: np.ndarray        # the unit's activation for each synthetic image
    start_activation: np.ndarray
    dataset_max: float
    rank: np.ndarray              # 1 + dataset images that activate the unit more
    diversity: float              # mean pairwise 1 - correlation of the synthetic images' pixels
    start_diversity: float

    META = b"netatlas.facets.meta"

    @property
    def ratio(self) -> np.ndarray:
        """Activation reached / the dataset's largest activation of the unit."""
        return self.activation / self.dataset_max if self.dataset_max > 0 else np.full(len(self.activation), np.nan)

    def to_table(self) -> pa.Table:
        table = pa.table({
            "facet": np.arange(len(self.images)), "png": [png_bytes(im) for im in self.images],
            "start_png": [png_bytes(im) for im in self.starts],
            "exemplars": [e.astype(np.int64) for e in self.exemplars], "size": self.sizes,
            "activation": self.activation, "start_activation": self.start_activation, "rank": self.rank,
        })
        meta = {"layer": self.layer, "unit": self.unit, "dataset_max": self.dataset_max,
                "diversity": self.diversity, "start_diversity": self.start_diversity}
        return table.replace_schema_metadata({self.META: json.dumps(meta).encode()})

    @classmethod
    def from_table(cls, table: pa.Table) -> "FacetReport":
        meta = json.loads(table.schema.metadata[cls.META])
        col = lambda name: table.column(name).to_pylist()  # noqa: E731
        return cls(meta["layer"], meta["unit"], np.stack([png_array(b) for b in col("png")]),
                   np.stack([png_array(b) for b in col("start_png")]),
                   [np.asarray(e, dtype=np.int64) for e in col("exemplars")], np.asarray(col("size")),
                   np.asarray(col("activation")), np.asarray(col("start_activation")), meta["dataset_max"],
                   np.asarray(col("rank")), meta["diversity"], meta["start_diversity"])


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def build_facets(model: nn.Module, dataset: ImageDataset, preprocessing: Preprocessing, objective: Objective,
                 values: np.ndarray, codes: np.ndarray, facet_settings: FacetSettings,
                 featviz_settings: FeatvizSettings, progress: Callable[[int, int], None] | None = None) -> FacetReport:
    """Find the unit's facets, optimize all k starting images as one batch, and measure the results."""
    facets = find_facets(values, codes, facet_settings)
    k = facet_settings.k
    if facet_settings.start == "mean":
        starts = torch.stack([dataset.inputs(e, preprocessing).mean(0) for e in facets.exemplars])
    else:
        starts = noise_start(k, preprocessing, facet_settings.seed)
    colors = None
    if preprocessing.channels == 3:
        sample = np.random.default_rng(facet_settings.seed).choice(len(dataset), min(256, len(dataset)), replace=False)
        colors = color_correlation(to_uint8(dataset.inputs(sample, preprocessing), preprocessing))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    starts = starts.to(device)
    optimized = maximize(model, starts, objective, preprocessing, featviz_settings, progress, colors)
    reached = unit_activation(model, optimized, objective).cpu().numpy()
    rank = 1 + (values[None, :] > reached[:, None]).sum(1)
    return FacetReport(
        objective.layer, objective.unit, to_uint8(optimized, preprocessing), to_uint8(starts, preprocessing),
        facets.exemplars, np.bincount(facets.assignment, minlength=k), reached,
        unit_activation(model, starts, objective).cpu().numpy(), float(values.max()), rank,
        pixel_diversity(optimized), pixel_diversity(starts))


def pixel_diversity(x: torch.Tensor) -> float:
    """Mean pairwise 1 - Pearson correlation of the images' pixels (0: identical, ~1: unrelated).

    Measured on pixels, not on the penultimate code: maximizing a class logit pulls every facet's
    code towards the same classifier row, so code similarity would call distinct drawings the same.
    """
    flat = x.detach().flatten(1).float()
    return diversity(flat - flat.mean(1, keepdim=True))
