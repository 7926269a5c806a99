"""The facets of a unit (Nguyen, Yosinski & Clune 2016): clusters among the images it responds to.

A unit's top-N dataset images are embedded by their penultimate representation (PCA to 50
dimensions, then a 2-D t-SNE) and split by k-means into k facets; each facet's m images nearest its
centroid are its exemplars, and their mean is where activation maximization starts.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn

from netatlas.backend.datasets import ImageDataset
from netatlas.backend.featviz import (FeatvizSettings, Objective, color_correlation, maximize,
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
    ranked = np.where(np.isnan(values), -np.inf, values)     # a NaN activation is no top activation
    top = np.argsort(ranked, kind="stable")[::-1][:settings.top_n]
    if len(top) < settings.k:
        raise NetatlasError(f"facets: {len(top)} images cannot make {settings.k} facets")
    x = codes[top].astype(np.float64)
    dims = min(settings.pca_dims, x.shape[1], len(top) - 1)
    if dims >= 2:
        x = PCA(dims, random_state=settings.seed).fit_transform(x)
    if len(top) > 5 and x.shape[1] > 2:
        perplexity = min(30.0, (len(top) - 1) / 3)
        x = TSNE(2, perplexity=perplexity, init="pca", random_state=settings.seed).fit_transform(x)
    with warnings.catch_warnings():          # duplicate codes: the error below says what to do
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        labels = KMeans(settings.k, n_init=10, random_state=settings.seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=settings.k)
    if (sizes == 0).any():   # duplicate codes: k-means left a facet without images (its mean would be NaN)
        raise NetatlasError(f"facets: the unit's top {len(top)} images form only {int((sizes > 0).sum())} distinct "
                            f"groups of codes (duplicate images or a constant layer): ask for at most "
                            f"{int((sizes > 0).sum())} facets")
    order = np.argsort(-sizes, kind="stable")
    assignment = np.argsort(order)[labels]          # relabel: facet 0 is the largest
    exemplars = []
    for facet in range(settings.k):
        members = np.flatnonzero(assignment == facet)
        centroid = x[members].mean(0)
        nearest = members[np.argsort(np.linalg.norm(x[members] - centroid, axis=1), kind="stable")]
        exemplars.append(top[nearest[:settings.members]])
    return Facets(top, x if x.shape[1] == 2 else np.zeros((len(top), 2)), assignment, exemplars)


SAME_IMAGE_LEVELS = 2  # uint8 images within this many grey levels on every pixel are "the same image"


@dataclass
class FacetReport:
    """One synthetic image per facet, with how far it drives the unit compared with the data.

    The comparison is a rank and a distance in the dataset's standard deviations, both defined
    whatever the sign of the activations (a ratio to the dataset maximum is not: it flips or
    divides by zero when the maximum is negative or zero). Dataset statistics are over the images
    whose activation is finite; ``dataset_nonfinite`` counts the others.
    """

    layer: str
    unit: int
    images: np.ndarray            # uint8 [k, H, W(, 3)]: the optimized images
    starts: np.ndarray            # uint8: where each optimization started
    exemplars: list[np.ndarray]   # dataset indices per facet
    sizes: np.ndarray             # top images in each facet
    activation: np.ndarray        # the unit's activation for each synthetic image
    start_activation: np.ndarray
    dataset_max: float            # largest finite activation over the dataset
    rank: np.ndarray              # 1 + dataset images that activate the unit more; 0: activation not finite
    diversity: float | None       # mean pairwise 1 - correlation of the facets' pixels; None: undefined
    start_diversity: float | None
    dataset_std: float            # population standard deviation of the finite activations (0: all equal)
    dataset_size: int             # images with a finite activation
    dataset_nonfinite: int = 0    # images whose activation is NaN or infinite (left out of the statistics)

    META = b"netatlas.facets.meta"

    @property
    def above_max_sd(self) -> np.ndarray | None:
        """(activation - dataset max) / dataset std per facet: how far past the data the image drives the
        unit (negative: below the max). None when every dataset activation is equal (std 0)."""
        if not self.dataset_std > 0:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            return (np.asarray(self.activation, dtype=np.float64) - self.dataset_max) / self.dataset_std

    @property
    def ratio(self) -> np.ndarray | None:
        """Activation reached / the dataset's largest activation: a ratio only means "how many times the
        data's best" when that maximum is positive, so it is None otherwise (shown nowhere; benchmarks)."""
        return self.activation / self.dataset_max if self.dataset_max > 0 else None

    def same_image_groups(self) -> list[list[int]]:
        """Facets (0-based) whose images are the same to within ``SAME_IMAGE_LEVELS`` grey levels on every
        pixel, as groups of two or more, in facet order."""
        return same_image_groups(self.images)

    def to_table(self) -> pa.Table:
        table = pa.table({
            "facet": np.arange(len(self.images)), "png": [png_bytes(im) for im in self.images],
            "start_png": [png_bytes(im) for im in self.starts],
            "exemplars": [e.astype(np.int64) for e in self.exemplars], "size": self.sizes,
            "activation": self.activation, "start_activation": self.start_activation, "rank": self.rank,
        })
        meta = {"layer": self.layer, "unit": self.unit, "dataset_max": self.dataset_max,
                "dataset_std": self.dataset_std, "dataset_size": self.dataset_size,
                "dataset_nonfinite": self.dataset_nonfinite,
                "diversity": self.diversity, "start_diversity": self.start_diversity}
        return table.replace_schema_metadata({self.META: json.dumps(meta, allow_nan=False).encode()})

    @classmethod
    def from_table(cls, table: pa.Table) -> "FacetReport":
        """The report back from ``to_table``; a table written before the dataset's std was stored raises
        KeyError (the workspace then computes it again)."""
        meta = json.loads(table.schema.metadata[cls.META])
        col = lambda name: table.column(name).to_pylist()  # noqa: E731
        return cls(meta["layer"], meta["unit"], np.stack([png_array(b) for b in col("png")]),
                   np.stack([png_array(b) for b in col("start_png")]),
                   [np.asarray(e, dtype=np.int64) for e in col("exemplars")], np.asarray(col("size")),
                   np.asarray(col("activation"), dtype=np.float64),
                   np.asarray(col("start_activation"), dtype=np.float64), meta["dataset_max"],
                   np.asarray(col("rank"), dtype=np.int64), meta["diversity"], meta["start_diversity"],
                   meta["dataset_std"], meta["dataset_size"], meta["dataset_nonfinite"])


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
    reached = unit_activation(model, optimized, objective).cpu().numpy().astype(np.float64)
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        raise NetatlasError(f"facets: unit {objective.unit} of {objective.layer or 'the logits'} has no finite "
                            f"activation on any of the {len(values):,} images (check the model's numerics)")
    dataset_max = float(finite.max())
    dataset_std = float(finite.std()) if finite.min() < dataset_max else 0.0
    above = (finite[None, :] > reached[:, None]).sum(1)
    rank = np.where(np.isfinite(reached), 1 + above, 0).astype(np.int64)
    images, start_images = to_uint8(optimized, preprocessing), to_uint8(starts, preprocessing)
    return FacetReport(
        objective.layer, objective.unit, images, start_images,
        facets.exemplars, np.bincount(facets.assignment, minlength=k), reached,
        unit_activation(model, starts, objective).cpu().numpy().astype(np.float64), dataset_max, rank,
        pixel_diversity(images), pixel_diversity(start_images), dataset_std, len(finite), len(values) - len(finite))


def _pixels(images: np.ndarray) -> np.ndarray:
    return np.asarray(images).reshape(len(images), -1).astype(np.int16)


def same_image_groups(images: np.ndarray) -> list[list[int]]:
    """Groups (two or more, each in order) of uint8 images equal to within ``SAME_IMAGE_LEVELS`` grey
    levels on every pixel; an image joins the group of the first earlier image it matches."""
    flat = _pixels(images)
    group = list(range(len(flat)))
    for j in range(len(flat)):
        for i in range(j):
            if group[i] == i and np.abs(flat[j] - flat[i]).max(initial=0) <= SAME_IMAGE_LEVELS:
                group[j] = i
                break
    groups: dict[int, list[int]] = {}
    for j, g in enumerate(group):
        groups.setdefault(g, []).append(j)
    return [members for members in groups.values() if len(members) > 1]


def flat_images(images: np.ndarray) -> list[int]:
    """Images (0-based) whose pixels span at most ``SAME_IMAGE_LEVELS`` grey levels: a flat image has no
    pattern, so its correlation with another image is undefined (or noise)."""
    flat = _pixels(images)
    return [i for i, row in enumerate(flat) if row.max(initial=0) - row.min(initial=0) <= SAME_IMAGE_LEVELS]


def pixel_diversity(images: np.ndarray) -> float | None:
    """Mean pairwise 1 - Pearson correlation of the uint8 images' pixels (0: identical, ~1: unrelated).

    Measured on pixels, not on the penultimate code: maximizing a class logit pulls every facet's
    code towards the same classifier row, so code similarity would call distinct drawings the same.
    Images that are the same (``same_image_groups``) count 0 for their pair. None when undefined: fewer
    than two images, or a pair of different images one of which is flat (no correlation to measure).
    """
    if len(images) < 2:
        return None
    flat = _pixels(images).astype(np.float64)
    same = np.zeros((len(flat), len(flat)), dtype=bool)
    for members in same_image_groups(images):
        same[np.ix_(members, members)] = True
    flats = set(flat_images(images))
    centred = flat - flat.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    total, pairs = 0.0, 0
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            pairs += 1
            if same[i, j]:
                continue
            if i in flats or j in flats:
                return None
            total += 1.0 - float(centred[i] @ centred[j]) / (norms[i] * norms[j])
    return total / pairs
