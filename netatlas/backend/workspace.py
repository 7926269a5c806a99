"""A model and a dataset together: the object the app, the CLI and notebooks ask for results."""

from __future__ import annotations

from functools import cached_property
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from netatlas.backend.activations import Activations, Progress, Reduction, extract_activations, \
    resolve_device
from netatlas.backend.cache import ResultCache, arrow_to_vectors, vectors_to_arrow
from netatlas.backend.checkpoint import LoadedModel
from netatlas.backend.datasets import ImageDataset
from netatlas.backend.model_info import describe_model

# Bump when the way activations are computed changes: every cached activation is then recomputed.
ACTIVATIONS_VERSION = 1


class Workspace:
    """Cached activations of ``loaded.model`` on ``dataset``; each layer is its own cache entry."""

    def __init__(self, loaded: LoadedModel, dataset: ImageDataset, cache: ResultCache | None = None,
                 device: str = "auto", batch_size: int = 256) -> None:
        self.loaded, self.dataset = loaded, dataset
        self.cache = cache or ResultCache()
        self.device = resolve_device(device)
        self.batch_size = batch_size

    @cached_property
    def modules(self) -> pd.DataFrame:
        return describe_model(self.loaded.model.to(self.device), self.loaded.input_shape)

    def _inputs(self, **extra: object) -> dict[str, object]:
        return {**self.loaded.identity, "dataset": self.dataset.manifest_hash,
                "preprocessing": self.loaded.preprocessing.to_dict(),
                "version": ACTIVATIONS_VERSION, **extra}

    def activations(self, layers: Iterable[str] = (), reduction: Reduction = "mean",
                    progress: Progress | None = None) -> Activations:
        """Logits, predictions and ``layers``: read from the cache, the missing ones in one pass."""
        layers = list(dict.fromkeys(layers))
        outputs = self.cache.read("outputs", self._inputs())
        cached = {name: self.cache.read("activations", self._inputs(layer=name, reduction=reduction))
                  for name in layers}
        missing = [name for name, table in cached.items() if table is None]
        if outputs is None or missing:
            fresh = extract_activations(self.loaded.model, self.dataset, self.loaded.preprocessing,
                                        missing, reduction, self.batch_size, self.device, progress)
            self._write(fresh, missing, reduction)
            logits, predictions = fresh.logits, fresh.predictions
            values = {name: fresh.layers[name] for name in missing}
        else:
            logits = arrow_to_vectors(outputs.column("logits"))
            predictions = outputs.column("prediction").to_numpy()
            values = {}
            if progress:
                progress(len(self.dataset), len(self.dataset))
        for name, table in cached.items():
            if table is not None:
                values[name] = arrow_to_vectors(table.column("values"))
        return Activations(logits, predictions, {name: values[name] for name in layers}, reduction)

    def _write(self, fresh: Activations, layers: list[str], reduction: Reduction) -> None:
        index = pa.array(np.arange(len(self.dataset)))
        self.cache.write("outputs", self._inputs(), pa.table({
            "index": index, "id": pa.array(self.dataset.ids), "label": pa.array(self.dataset.labels),
            "prediction": pa.array(fresh.predictions), "logits": vectors_to_arrow(fresh.logits),
        }), float_columns=("logits",))
        for name in layers:
            self.cache.write("activations", self._inputs(layer=name, reduction=reduction),
                             pa.table({"index": index, "values": vectors_to_arrow(fresh.layers[name])}),
                             float_columns=("values",))

    def table(self, activations: Activations) -> pa.Table:
        """One row per image: ids, labels, prediction, logits and one vector column per layer."""
        columns = {
            "index": pa.array(np.arange(len(self.dataset))), "id": pa.array(self.dataset.ids),
            "label": pa.array(self.dataset.labels), "prediction": pa.array(activations.predictions),
            "logits": vectors_to_arrow(activations.logits),
        }
        columns.update({name: vectors_to_arrow(v) for name, v in activations.layers.items()})
        return pa.table(columns)
