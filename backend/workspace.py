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
    resolve_device
from netatlas.backend.cache import ResultCache, arrow_to_vectors, canonical_json, vectors_to_arrow
from netatlas.backend.checkpoint import LoadedModel
from netatlas.backend.class_stats import chance_hint
from netatlas.backend.classifier import predictions_for
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
from netatlas.backend.resumable import remove_chunks, resumable_pass
from netatlas.backend.errors import NetatlasError

if TYPE_CHECKING:
    from distributed import Client

# Bump when the way activations are computed changes: every cached activation is then recomputed.
ACTIVATIONS_VERSION = 2   # 2: unreadable images have no rows (1 gave them a black image's)
UNREADABLE_VERSION = 1
RESIDUAL_VERSION = 3   # 3: a model without a classifier head is measured against its output
FACETS_VERSION = 3     # 2: rank and SDs above the dataset max, not a ratio to it; 3: no canvas under 32 px
CLUSTER_VERSION = 1
EMBEDDING_VERSION = 2    # 2: UMAP on the exact nearest neighbours up to 50,000 rows (pynndescent before)
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
        self.loaded = loaded
        self.cache = cache or ResultCache()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.dask, self.source = dask, source
        # One computation on the model at a time: residual analyses patch its forwards, and a
        # concurrent extraction (another tab of the same session) must never see those patches.
        self.model_lock = threading.RLock()
        # Every image as opened, and the readable ones that every result is computed on. Opening reads
        # no image, so which are unreadable is known after the first pass over them (and kept in the cache).
        self.source_dataset = self.dataset = dataset
        self._scanned = False
        self._predictions_note: str | None = None
        self.chance_note = ""           # set with the predictions: an accuracy at chance says check the preprocessing
        self._adopt_cached_unreadable()

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

    # ------------------------------------------------------------------ which images, which predictions

    def _unreadable_inputs(self) -> dict[str, object]:
        return {"dataset": self.source_dataset.manifest_hash, "options": self.source_dataset.options,
                "version": UNREADABLE_VERSION}

    def _adopt_cached_unreadable(self) -> bool:
        """Take the unreadable images a pass found (in this or another process) from the cache; False
        when no pass has looked yet. Images held in memory are all readable."""
        if self._scanned:
            return True
        if self.source_dataset.array is not None:
            self._adopt(np.empty(0, np.int64))
            return True
        table = self.cache.read("unreadable", self._unreadable_inputs())
        if table is not None:
            self._adopt(table.column("index").to_numpy().astype(np.int64))
        return self._scanned

    def _adopt(self, unreadable: np.ndarray) -> None:
        self.dataset = self.source_dataset.readable_part(unreadable)
        self._rows = np.setdiff1d(np.arange(len(self.source_dataset)), unreadable)
        self._scanned = True

    def _found_unreadable(self, rows: np.ndarray) -> None:
        """After a pass over every image: keep the ones it read (``rows``) as the dataset, and remember."""
        everything = self.source_dataset
        unreadable = np.setdiff1d(np.arange(len(everything)), rows)
        self.cache.write("unreadable", self._unreadable_inputs(),
                         pa.table({"index": pa.array(unreadable, pa.int64()),
                                   "id": pa.array([everything.ids[i] for i in unreadable], pa.string())}))
        self._adopt(unreadable)

    def readable(self, progress: Progress | None = None) -> ImageDataset:
        """The readable images, after the pass that finds them if none has run; the model's outputs, read
        or computed on the way, also settle ``predicts``."""
        self.activations([], progress=progress)
        return self.dataset

    @property
    def predicts(self) -> bool:
        """Whether the model's outputs are class predictions on this dataset (backend.classifier)."""
        return not self.predictions_note

    @property
    def predictions_note(self) -> str:
        """"" when the model predicts this dataset's classes, else why it has no predictions (for the page)."""
        if self._predictions_note is None:
            return predictions_for(self.loaded.head, self.dataset.classes, self.dataset.labeled)[1]
        return self._predictions_note

    def _predictions(self, logits: np.ndarray) -> np.ndarray | None:
        predicts, self._predictions_note = predictions_for(self.loaded.head, self.dataset.classes,
                                                           self.dataset.labeled, logits.shape[1])
        predictions = logits.argmax(1).astype(np.int64) if predicts else None
        self.chance_note = chance_hint(self.dataset.labels, predictions, len(self.dataset.classes))
        return predictions

    # ------------------------------------------------------------------ activations

    def activations(self, layers: Iterable[str] = (), reduction: Reduction = "mean",
                    progress: Progress | None = None) -> Activations:
        """Outputs, predictions (when the model has a classifier head) and ``layers`` of the readable
        images: read from the cache, the missing ones in one pass.

        The pass runs under the model lock and looks in the cache again once it holds it: a session
        that asked while another session of this shared Workspace computed them reads them instead."""
        layers = list(dict.fromkeys(layers))
        found = self._cached_activations(layers, reduction)
        if found is None:
            with self.model_lock:
                found = self._cached_activations(layers, reduction)
                if found is None:
                    return self._extract(layers, reduction, progress)
        if progress:
            progress(len(self.dataset), len(self.dataset))
        return found

    def _cached_activations(self, layers: list[str], reduction: Reduction) -> Activations | None:
        outputs, cached = self._read_activations(layers, reduction)
        if outputs is None or None in cached.values():
            return None
        logits = arrow_to_vectors(outputs.column("logits"))
        return Activations(logits, self._predictions(logits),
                           {name: arrow_to_vectors(table.column("values")) for name, table in cached.items()},
                           reduction)

    def _read_activations(self, layers: list[str], reduction: Reduction) -> tuple[pa.Table | None, dict]:
        if not self._adopt_cached_unreadable():
            return None, dict.fromkeys(layers)
        outputs = self.cache.read("outputs", self._inputs())
        return outputs, {name: self.cache.read("activations", self._inputs(layer=name, reduction=reduction))
                         for name in layers}

    def _extract(self, layers: list[str], reduction: Reduction, progress: Progress | None) -> Activations:
        """One pass over every image for the layers missing from the cache (and the outputs), written to
        it; the first pass also finds the unreadable images, which no result then includes.

        The pass holds its key's lock (threads and processes): a second process asking for the same pass
        waits, then reads what the first wrote instead of computing it again."""
        _, cached = self._read_activations(layers, reduction)
        missing = [name for name, table in cached.items() if table is None]
        inputs = self._pass_inputs(missing, reduction)
        with self.cache.lock("activations-pass", inputs):
            found = self._cached_activations(layers, reduction)
            if found is not None:                   # another process finished this pass while we waited
                return found
            if self.dask is not None:
                folder, fresh = None, self._extract_on_dask(missing, reduction, progress, inputs)
            else:
                folder = self.cache.parts_dir("activations-pass", inputs)
                fresh = resumable_pass(self.loaded.model, self.source_dataset, self.loaded.preprocessing, missing,
                                       reduction, self.batch_size, self.device, folder, canonical_json(inputs),
                                       progress)
            if not self._scanned:
                self._found_unreadable(fresh.rows())
                cached = dict.fromkeys(layers)      # all of them were computed: nothing was readable before
            elif not np.array_equal(fresh.rows(), self._rows):
                raise NetatlasError(f"images of {self.source_dataset.name} that read before do not read now (or "
                                    "the other way round): reopen the dataset so that its listing is current")
            fresh.index = None                      # its rows are now the readable dataset's rows
            self._write(fresh, missing, reduction)
            if folder is not None:
                remove_chunks(folder)
        values = {name: fresh.layers[name] if table is None else arrow_to_vectors(table.column("values"))
                  for name, table in cached.items()}
        return Activations(fresh.logits, self._predictions(fresh.logits), values, reduction)

    def _pass_inputs(self, layers: list[str], reduction: Reduction) -> dict[str, object]:
        """What a pass over every image computes (its chunks' key): every image listed, this batch size."""
        return {**self.loaded.identity, "dataset": self.source_dataset.manifest_hash,
                "preprocessing": self.loaded.preprocessing.to_dict(), "version": ACTIVATIONS_VERSION,
                "layers": sorted(layers), "reduction": reduction, "batch_size": self.batch_size}

    def _extract_on_dask(self, layers: list[str], reduction: Reduction, progress: Progress | None,
                         inputs: dict[str, object]) -> Activations:
        """The pass sharded over the Dask workers into a parts folder of the cache, then read back.

        Parts already written for the same pass (a killed run, a lost worker's shard) are kept and only
        the missing shards run; the per-layer entries written after it serve later runs without Dask.
        """
        from netatlas.backend.sharded import ModelSpec, extract_sharded, parts_to_activations

        out_dir = self.cache.parts_dir("activations-parts", inputs)
        manifest = extract_sharded(ModelSpec.from_loaded(self.loaded), self._dataset_source(), layers,
                                   reduction, out_dir, self.dask, self.batch_size, progress, inputs)
        if manifest["dataset"] != self.source_dataset.manifest_hash:
            raise NetatlasError(f"the Dask workers read another dataset from {self._dataset_source().path} than "
                                "this process holds: give them the same files at the same path")
        return parts_to_activations(out_dir, layers, reduction)

    def _dataset_source(self) -> DatasetSource:
        """What workers open: the given source, else the demo or the folder's (or shards') root, with the
        column options the dataset was opened with."""
        dataset = self.source_dataset
        root = getattr(dataset.read, "root", None)
        source = self.source or (DEMO_NAME if dataset.name == DEMO_NAME else root)
        if source is None:
            raise NetatlasError("extracting on Dask needs the dataset's path (Workspace source=...)")
        return DatasetSource(str(source), **dataset.options)

    def _write(self, fresh: Activations, layers: list[str], reduction: Reduction) -> None:
        """The pass's cache entries: the outputs, then one per layer."""
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
        self.readable(progress)             # the sample is drawn from readable images only
        targets = "labels" if self.predicts else "output"   # no classifier head: measured on the output
        inputs = self._inputs(analysis="residual-paths", residual_version=RESIDUAL_VERSION,
                              units=[u.key for u in units], settings=asdict(settings), targets=targets)

        def decode(table: pa.Table) -> ResidualReport | None:
            meta = (table.schema.metadata or {}).get(_RESIDUAL_META)
            return None if meta is None else ResidualReport.from_frame(table.to_pandas(), json.loads(meta))

        def compute() -> tuple[ResidualReport, pa.Table]:
            indices = self.sample(settings.images, settings.seed)
            labels = torch.as_tensor(self.dataset.labels[indices])
            with self.model_lock:
                report = analyze_paths(model, units, self.dataset.inputs(indices, self.loaded.preprocessing),
                                       labels, settings, progress, targets=targets)
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
            code_layer = self.representation_layer()
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
        """The default representation to cluster: a classifier's penultimate code, else the model's output
        (""): a backbone's pooled features (``activations.pooled_output``), not an inner Linear's."""
        if not self.loaded.head.declared:
            return ""
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
