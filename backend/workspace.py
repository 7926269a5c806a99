"""A model and a dataset together: the object the app, the CLI and notebooks ask for results."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from netatlas.backend.activations import Activations, Progress, Reduction, activation_table, \
    extract_activations, resolve_device
from netatlas.backend.cache import ResultCache, arrow_to_vectors, vectors_to_arrow
from netatlas.backend.checkpoint import LoadedModel
from netatlas.backend.circuit.graph import Circuit
from netatlas.backend.circuit.trace import example_input, trace_circuit
from netatlas.backend.cluster.tree import ClusterTree, TreeSettings, build_cluster_tree
from netatlas.backend.datasets import DEMO_NAME, DatasetSource, ImageDataset
from netatlas.backend.embedding import EmbedSettings, Embedding, embed
from netatlas.backend.facets import FacetReport, FacetSettings, build_facets, penultimate_layer
from netatlas.backend.featviz import FeatvizSettings, Objective
from netatlas.backend.model_info import describe_model
from netatlas.backend.residual.blocks import ResidualUnit, find_residual_units, parse_units
from netatlas.backend.residual.paths import PathSettings, ResidualReport, analyze_paths
from netatlas.backend.errors import NetatlasError

if TYPE_CHECKING:
    from distributed import Client

# Bump when the way activations are computed changes: every cached activation is then recomputed.
ACTIVATIONS_VERSION = 1
RESIDUAL_VERSION = 2
FACETS_VERSION = 1
CLUSTER_VERSION = 1
EMBEDDING_VERSION = 1
_RESIDUAL_META = b"netatlas.residual.meta"
T = TypeVar("T")


class Workspace:
    """Cached activations of ``loaded.model`` on ``dataset``; each layer is its own cache entry.

    With ``dask`` (a distributed Client) missing activations are extracted on its workers, which
    load the dataset from ``source`` (its path, or ``demo``; inferred for the demo and folders).
    """

    def __init__(self, loaded: LoadedModel, dataset: ImageDataset, cache: ResultCache | None = None,
                 device: str = "auto", batch_size: int = 256, dask: Client | None = None,
                 source: str | None = None) -> None:
        self.loaded, self.dataset = loaded, dataset
        self.cache = cache or ResultCache()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.dask, self.source = dask, source
        # One computation on the model at a time: residual analyses patch its forwards, and a
        # concurrent extraction (another tab of the same session) must never see those patches.
        self.model_lock = threading.RLock()

    @cached_property
    def modules(self) -> pd.DataFrame:
        with self.model_lock:
            return describe_model(self.loaded.model.to(self.device), self.loaded.input_shape)

    @cached_property
    def circuit(self) -> Circuit:
        """The model as a neural circuit (the Diagram tab): traced on a meta clone in under a second,
        so it is kept in memory rather than cached on disk."""
        with self.model_lock:  # the clone must not copy forwards that another analysis has patched
            return trace_circuit(self.loaded.model, example_input(self.loaded.input_shape))

    @cached_property
    def residual_units(self) -> list[ResidualUnit]:
        """The model's residual units (the Residual tab's choices): traced once for every session."""
        return find_residual_units(self.loaded.model)

    def _inputs(self, **extra: object) -> dict[str, object]:
        return {**self.loaded.identity, "dataset": self.dataset.manifest_hash,
                "preprocessing": self.loaded.preprocessing.to_dict(),
                "version": ACTIVATIONS_VERSION, **extra}

    def activations(self, layers: Iterable[str] = (), reduction: Reduction = "mean",
                    progress: Progress | None = None) -> Activations:
        """Logits, predictions and ``layers``: read from the cache, the missing ones in one pass.

        The pass runs under the model lock and looks in the cache again once it holds it: a session
        that asked while another session of this shared Workspace computed them reads them instead."""
        layers = list(dict.fromkeys(layers))
        outputs, cached = self._read_activations(layers, reduction)
        if outputs is None or None in cached.values():
            with self.model_lock:
                outputs, cached = self._read_activations(layers, reduction)
                if outputs is None or None in cached.values():
                    return self._extract(layers, cached, reduction, progress)
        if progress:
            progress(len(self.dataset), len(self.dataset))
        values = {name: arrow_to_vectors(table.column("values")) for name, table in cached.items()}
        return Activations(arrow_to_vectors(outputs.column("logits")), outputs.column("prediction").to_numpy(),
                           values, reduction)

    def _read_activations(self, layers: list[str], reduction: Reduction) -> tuple[pa.Table | None, dict]:
        outputs = self.cache.read("outputs", self._inputs())
        return outputs, {name: self.cache.read("activations", self._inputs(layer=name, reduction=reduction))
                         for name in layers}

    def _extract(self, layers: list[str], cached: dict[str, pa.Table | None], reduction: Reduction,
                 progress: Progress | None) -> Activations:
        """One pass for the layers missing from ``cached`` (and the logits), written to the cache."""
        missing = [name for name, table in cached.items() if table is None]
        if self.dask is not None:
            fresh = self._extract_on_dask(missing, reduction, progress)
        else:
            fresh = extract_activations(self.loaded.model, self.dataset, self.loaded.preprocessing,
                                        missing, reduction, self.batch_size, self.device, progress)
        self._write(fresh, missing, reduction)
        values = {name: fresh.layers[name] if table is None else arrow_to_vectors(table.column("values"))
                  for name, table in cached.items()}
        return Activations(fresh.logits, fresh.predictions, values, reduction)

    def _extract_on_dask(self, layers: list[str], reduction: Reduction,
                         progress: Progress | None) -> Activations:
        """The pass sharded over the Dask workers into a parts folder of the cache, then read back.

        A complete parts folder for the same inputs (a run whose per-layer writes were cut short)
        is reused; the per-layer entries written after it serve later runs without Dask.
        """
        from netatlas.backend.sharded import ModelSpec, extract_sharded, parts_to_activations, read_manifest

        inputs = self._inputs(layers=sorted(layers), reduction=reduction)
        out_dir = self.cache.parts_dir("activations-parts", inputs)
        with self.cache.lock("activations-parts", inputs):
            manifest = read_manifest(out_dir, inputs)
            if manifest is None or manifest["dataset"] != self.dataset.manifest_hash:
                manifest = extract_sharded(ModelSpec.from_loaded(self.loaded), self._dataset_source(), layers,
                                           reduction, out_dir, self.dask, self.batch_size, progress, inputs)
            elif progress:
                progress(len(self.dataset), len(self.dataset))
        if manifest["dataset"] != self.dataset.manifest_hash:
            raise NetatlasError(f"the Dask workers read another dataset from {self._dataset_source().path} than "
                                "this process holds: give them the same files at the same path")
        return parts_to_activations(out_dir, layers, reduction)

    def _dataset_source(self) -> DatasetSource:
        """What workers open: the given source, else the demo or the folder's (or shards') root, with the
        column options the dataset was opened with."""
        root = getattr(self.dataset.read, "root", None)
        source = self.source or (DEMO_NAME if self.dataset.name == DEMO_NAME else root)
        if source is None:
            raise NetatlasError("extracting on Dask needs the dataset's path (Workspace source=...)")
        return DatasetSource(str(source), **self.dataset.options)

    def _write(self, fresh: Activations, layers: list[str], reduction: Reduction) -> None:
        self.cache.write("outputs", self._inputs(), activation_table(self.dataset, fresh, layers=()),
                         float_columns=("logits",))
        index = pa.array(np.arange(len(self.dataset)))
        for name in layers:
            self.cache.write("activations", self._inputs(layer=name, reduction=reduction),
                             pa.table({"index": index, "values": vectors_to_arrow(fresh.layers[name])}),
                             float_columns=("values",))

    def table(self, activations: Activations) -> pa.Table:
        """One row per image: ids, labels, prediction, logits and one vector column per layer."""
        return activation_table(self.dataset, activations)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """A seeded sample of image indices, from the held-out split when the dataset has one."""
        pool = np.arange(len(self.dataset))
        split = self.dataset.meta.get("split")
        if split is not None and (split == "test").any():
            pool = pool[split == "test"]
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(pool, min(count, len(pool)), replace=False))

    def _computed_once(self, kind: str, inputs: dict, decode: Callable[[pa.Table], T | None],
                       compute: Callable[[], tuple[T, pa.Table]]) -> T:
        """The result under ``inputs``: decoded from the cache, else computed and written. The computation
        holds the key's lock, and a caller that waited on it reads the result rather than computing it
        again: another session of this shared Workspace, or another process on the same cache."""
        found = self._decoded(kind, inputs, decode)
        if found is not None:
            return found
        with self.cache.lock(kind, inputs):
            found = self._decoded(kind, inputs, decode)
            if found is not None:
                return found
            result, table = compute()
            self.cache.write(kind, inputs, table)
            return result

    def _decoded(self, kind: str, inputs: dict, decode: Callable[[pa.Table], T | None]) -> T | None:
        table = self.cache.read(kind, inputs)
        try:
            return None if table is None else decode(table)
        except (KeyError, ValueError, pa.ArrowException):
            return None                            # an older or foreign table: compute it again

    def residual_paths(self, unit_keys: list[str] | None = None, settings: PathSettings = PathSettings(),
                       progress: Progress | None = None) -> ResidualReport:
        """The residual-path report for the chosen units (default: all found), cached in Parquet."""
        model = self.loaded.model.to(self.device)
        units = self.residual_units if unit_keys is None else parse_units(model, unit_keys, self.residual_units)
        inputs = self._inputs(analysis="residual-paths", residual_version=RESIDUAL_VERSION,
                              units=[u.key for u in units], settings=asdict(settings))

        def decode(table: pa.Table) -> ResidualReport | None:
            meta = (table.schema.metadata or {}).get(_RESIDUAL_META)
            return None if meta is None else ResidualReport.from_frame(table.to_pandas(), json.loads(meta))

        def compute() -> tuple[ResidualReport, pa.Table]:
            indices = self.sample(settings.images, settings.seed)
            labels = torch.as_tensor(self.dataset.labels[indices])
            with self.model_lock:
                report = analyze_paths(model, units, self.dataset.inputs(indices, self.loaded.preprocessing),
                                       labels, settings, progress)
            table = pa.Table.from_pandas(report.to_frame(), preserve_index=False)
            return report, table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                          _RESIDUAL_META: report.meta_json().encode()})
        return self._computed_once("residual", inputs, decode, compute)

    def facets(self, layer: str, unit: int, facet_settings: FacetSettings = FacetSettings(),
               featviz_settings: FeatvizSettings = FeatvizSettings(),
               progress: Progress | None = None) -> FacetReport:
        """Multifaceted feature visualization of one unit (``layer`` "" = class logits), cached."""
        inputs = self._inputs(analysis="facets", facets_version=FACETS_VERSION, layer=layer, unit=unit,
                              facet_settings=asdict(facet_settings), featviz=asdict(featviz_settings))

        def decode(table: pa.Table) -> FacetReport | None:
            return FacetReport.from_table(table) if FacetReport.META in (table.schema.metadata or {}) else None

        def compute() -> tuple[FacetReport, pa.Table]:
            model = self.loaded.model.to(self.device)
            code_layer = penultimate_layer(model) or layer
            acts = self.activations([name for name in (layer, code_layer) if name])
            values = acts.logits if not layer else acts.layers[layer]
            if not 0 <= unit < values.shape[1]:
                raise NetatlasError(f"unit {unit} is out of range: {layer or 'the logits'} has "
                                    f"{values.shape[1]} units")
            with self.model_lock:
                report = build_facets(model, self.dataset, self.loaded.preprocessing, Objective(layer, unit),
                                      values[:, unit], acts.layers.get(code_layer, acts.logits),
                                      facet_settings, featviz_settings, progress)
            return report, report.to_table()
        return self._computed_once("facets", inputs, decode, compute)

    def representation_layer(self) -> str:
        """The default representation to cluster: the penultimate code, else the logits ("")."""
        return penultimate_layer(self.loaded.model) or ""

    def representation(self, layer: str | None = None, reduction: Reduction = "mean",
                       progress: Progress | None = None) -> tuple[str, np.ndarray, Activations]:
        """(layer, [N, D] vectors, activations) of ``layer`` (None: the default; "": the logits)."""
        layer = self.representation_layer() if layer is None else layer
        acts = self.activations([layer] if layer else [], reduction, progress)
        return layer, (acts.layers[layer] if layer else acts.logits), acts

    def cluster_tree(self, layer: str | None = None, reduction: Reduction = "mean",
                     settings: TreeSettings = TreeSettings(), progress: Progress | None = None) -> ClusterTree:
        """The dataset's cluster tree on ``layer``'s representation, cached in Parquet."""
        layer, x, acts = self.representation(layer, reduction, progress)
        inputs = self._inputs(analysis="cluster-tree", cluster_version=CLUSTER_VERSION, layer=layer,
                              reduction=reduction, settings=asdict(settings))

        def compute() -> tuple[ClusterTree, pa.Table]:
            tree = build_cluster_tree(x, self.dataset.labels, acts.predictions, len(self.dataset.classes),
                                      settings, device=str(self.device), progress=progress)
            tree.meta["layer"] = layer
            return tree, tree.to_table()
        return self._computed_once("cluster", inputs, ClusterTree.from_table, compute)

    def embedding(self, layer: str | None = None, reduction: Reduction = "mean",
                  settings: EmbedSettings = EmbedSettings(), progress: Progress | None = None,
                  cached_only: bool = False) -> Embedding | None:
        """The 2-D map of ``layer``'s representation (None: the default, "": the logits), cached.
        ``cached_only``: None unless already cached (the Map shows a PCA preview while a UMAP runs)."""
        layer, x, _ = self.representation(layer, reduction, progress)
        inputs = self._inputs(analysis="embedding", embedding_version=EMBEDDING_VERSION, layer=layer,
                              reduction=reduction, settings=asdict(settings))

        def decode(table: pa.Table) -> Embedding | None:
            if table.num_rows != len(self.dataset):
                return None
            method = (table.schema.metadata or {}).get(b"netatlas.embedding.method", b"umap").decode()
            return Embedding(np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()]),
                             table.column("fitted").to_numpy(), method)

        def compute() -> tuple[Embedding, pa.Table]:
            result = embed(x, settings, progress)
            table = pa.table({"index": np.arange(len(x)), "x": result.xy[:, 0], "y": result.xy[:, 1],
                              "fitted": result.fitted})
            return result, table.replace_schema_metadata({b"netatlas.embedding.method": result.method.encode()})

        if cached_only:
            return self._decoded("embedding", inputs, decode)
        return self._computed_once("embedding", inputs, decode, compute)
