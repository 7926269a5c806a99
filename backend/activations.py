"""One batched forward pass with hooks: per-unit activations of chosen layers, logits, predictions."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from netatlas.backend.cache import vectors_to_arrow
from netatlas.backend.datasets import ImageDataset, decode_or_none
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError, model_failed

Reduction = Literal["mean", "max"]
Progress = Callable[[int, int], None]  # (images done, total)

# Modules whose 3-D outputs are [N, C, L] (channels first); other 3-D outputs are read as
# [N, tokens, features] (transformers) and reduced over tokens.
_CHANNELS_FIRST_1D = (nn.Conv1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)


@dataclass
class Activations:
    """Per-image results of one pass: ``layers[name]`` is [N, units] float32 (conv maps reduced).

    Row i is image ``index[i]`` of the dataset that was passed: unreadable images have no row (``index``
    None: row i is image i). ``predictions`` is None when the model has no classifier head for the
    dataset (backend.classifier): an argmax over other outputs would be a made-up prediction."""

    logits: np.ndarray
    predictions: np.ndarray | None
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    reduction: Reduction = "mean"
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def rows(self) -> np.ndarray:
        """The dataset positions of the rows."""
        return np.arange(len(self)) if self.index is None else self.index


@dataclass
class BatchResult:
    """One batch of a pass: images ``start..stop`` of the dataset, of which those at ``index`` were read."""

    start: int
    stop: int
    index: np.ndarray
    logits: np.ndarray
    layers: dict[str, np.ndarray]


def activation_table(dataset: ImageDataset, activations: Activations, start: int = 0,
                     layers: Iterable[str] | None = None) -> pa.Table:
    """The rows of ``activations`` (images ``start + rows`` of ``dataset``): index, id, label, prediction
    (when the model predicts), logits and one vector column per layer (``layers``, default all): what
    ``netatlas extract`` writes and each Dask part holds."""
    index = activations.rows() + start
    columns = {"index": pa.array(index), "id": pa.array([dataset.ids[i] for i in index], pa.string()),
               "label": pa.array(dataset.labels[index])}
    if activations.predictions is not None:
        columns["prediction"] = pa.array(activations.predictions)
    columns["logits"] = vectors_to_arrow(activations.logits)
    for name in activations.layers if layers is None else layers:
        columns[name] = vectors_to_arrow(activations.layers[name])
    return pa.table(columns)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch (with a clear error)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise NetatlasError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NetatlasError(f"device {device} asked for, but CUDA is not available here; use --device cpu")
    return dev


def reduce_output(output: torch.Tensor, module: nn.Module, reduction: Reduction) -> torch.Tensor:
    """[N, ...] -> [N, units]: conv maps per channel, token sequences per feature."""
    if output.ndim <= 2:
        return output.reshape(len(output), -1)
    if output.ndim == 3 and not isinstance(module, _CHANNELS_FIRST_1D):
        dims: tuple[int, ...] = (1,)
    else:
        dims = tuple(range(2, output.ndim))
    return output.amax(dim=dims) if reduction == "max" else output.mean(dim=dims)


def first_tensor(output: object) -> torch.Tensor:
    """The tensor a module returned: the first element of a tuple; of a dict or a Hugging Face
    ModelOutput, ``logits`` (or ``out``, ``output``, ``pooler_output``), else its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict):
        for key in ("logits", "out", "output", "pooler_output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        found = next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
        if found is not None:
            return found
    raise NetatlasError(f"cannot read activations from a module output of type {type(output).__name__}")


def pooled_output(y: torch.Tensor) -> torch.Tensor:
    """A model's output as [N, D]: class logits and pooled features as they are; a backbone's feature
    maps [N, C, H, W] pooled over space; its token sequence [N, T, D] read at the first (CLS) token,
    the pooled output of ViT-style backbones (HF's pooler_output is read by name before this)."""
    if y.ndim == 4:
        return y.mean(dim=(2, 3))
    if y.ndim == 3:
        return y[:, 0]
    return y.reshape(len(y), -1)


@contextlib.contextmanager
def captured_layers(model: nn.Module, layers: Iterable[str],
                    reduction: Reduction = "mean") -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each layer's reduced [batch, units] output; removed on exit.

    ``with captured_layers(model, ["layer4"]) as out: model(x)`` leaves ``out["layer4"]``.
    """
    layers = list(dict.fromkeys(layers))
    if reduction not in ("mean", "max"):
        raise NetatlasError(f"unknown reduction {reduction!r}: use mean or max")
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise NetatlasError(f"no module named {', '.join(map(repr, unknown))} in this model; "
                            f"`netatlas info` lists the module names")
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            captured[name] = reduce_output(first_tensor(output), module, reduction).float()
        return hook

    handles = []
    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield captured
    except RuntimeError as exc:
        if "hook" in str(exc).lower() and isinstance(model, torch.jit.ScriptModule):
            raise NetatlasError("TorchScript models do not support forward hooks: only the outputs "
                                "(logits) can be extracted from them") from exc
        raise
    finally:
        for handle in handles:
            handle.remove()


def extract_activations(model: nn.Module, dataset: ImageDataset, preprocessing: Preprocessing,
                        layers: Iterable[str] = (), reduction: Reduction = "mean",
                        batch_size: int = 256, device: str | torch.device = "auto",
                        progress: Progress | None = None, rows: range | None = None,
                        num_workers: int | None = None, classify: bool = True) -> Activations:
    """Run ``dataset`` through ``model`` once, capturing ``layers`` with forward hooks.

    Reductions happen on the device, so only [batch, units] crosses to the host. Hooks are removed
    even when the pass fails. ``rows`` (contiguous) limits the pass to those images, row i of the
    result being image ``rows[i]``: a shard of a distributed pass (backend.sharded). ``num_workers``
    goes to ``dataset.batches`` (0: decode files in this process, as a daemonic Dask worker must).
    Unreadable images get no row (``Activations.index``); ``classify`` False: no predictions.
    """
    if rows is not None:
        dataset = row_slice(dataset, rows)
    n = len(dataset)
    results = []
    for result in pass_batches(model, dataset, preprocessing, layers, reduction, batch_size, device, num_workers):
        results.append(result)
        if progress:
            progress(result.stop, n)
    return collect(results, n, reduction, classify, dataset)


def pass_batches(model: nn.Module, dataset: ImageDataset, preprocessing: Preprocessing,
                 layers: Iterable[str] = (), reduction: Reduction = "mean", batch_size: int = 256,
                 device: str | torch.device = "auto", num_workers: int | None = None) -> Iterator[BatchResult]:
    """The pass as it runs: one ``BatchResult`` per ``batch_size`` images, so that a caller can write
    results as they come (a resumable extraction) or gather them (``collect``)."""
    layers = list(dict.fromkeys(layers))
    dev = resolve_device(device)
    model = model.to(dev).eval()
    n, start = len(dataset), 0
    with captured_layers(model, layers, reduction) as captured, torch.inference_mode():
        for indices, x in dataset.batches(preprocessing, batch_size, num_workers):
            stop = min(start + batch_size, n)
            index = indices.numpy().astype(np.int64)
            if not len(index):                  # every image of this batch was unreadable
                yield BatchResult(start, stop, index, np.empty((0, 0), np.float32), {})
                start = stop
                continue
            captured.clear()
            try:
                out = model(x.to(dev, non_blocking=True))
            except Exception as exc:   # the user's forward: other inputs needed, shape or channels, memory
                raise model_failed(exc, f"a {'x'.join(map(str, x.shape))} batch of {dataset.name} "
                                        f"(images {index[0]}-{index[-1]})", model) from exc
            y = pooled_output(first_tensor(out).float())
            yield BatchResult(start, stop, index, y.cpu().numpy(),
                              {name: captured[name].cpu().numpy() for name in layers})
            start = stop


def collect(results: Iterable[BatchResult], n: int, reduction: Reduction = "mean", classify: bool = True,
            dataset: ImageDataset | None = None) -> Activations:
    """The batches of a pass over ``n`` images (of ``dataset``, named in errors) as one Activations, in
    dataset order."""
    results = [r for r in sorted(results, key=lambda r: r.start) if len(r.index)]
    if not results:
        name = f" of {dataset.name}" if dataset is not None else ""
        first = f" (first: {dataset.skipped[0]})" if dataset is not None and dataset.skipped else ""
        raise NetatlasError(f"none of the {n} images{name} could be read{first}: give images that open "
                            f"(png, jpg, webp, bmp)" if n else f"the dataset{name} is empty")
    index = np.concatenate([r.index for r in results])
    logits = np.concatenate([r.logits for r in results])
    layers = {name: np.concatenate([r.layers[name] for r in results]) for name in results[0].layers}
    predictions = logits.argmax(1).astype(np.int64) if classify else None
    return Activations(logits, predictions, layers, reduction, None if len(index) == n else index)


def row_slice(dataset: ImageDataset, rows: range) -> ImageDataset:
    """Images ``rows`` of ``dataset`` as a dataset of their own (a view: arrays are not copied).

    When ``rows.start`` is a multiple of the batch size, its batches hold exactly the images of
    the full dataset's batches, so a pass over the slices equals one pass over the whole.
    """
    if rows.step != 1 or not 0 <= rows.start <= rows.stop <= len(dataset):
        raise ValueError(f"rows must be a contiguous range within 0..{len(dataset)}, got {rows}")
    part = slice(rows.start, rows.stop)
    return dataclasses.replace(
        dataset, ids=dataset.ids[part], labels=dataset.labels[part],
        read=_OffsetReader(dataset.read, rows.start),
        meta={key: values[part] for key, values in dataset.meta.items()},
        array=None if dataset.array is None else dataset.array[part])


class _OffsetReader:
    """``read(i)`` of a slice: image ``start + i`` of the whole (picklable, for DataLoader workers)."""

    def __init__(self, read: Callable[[int], np.ndarray], start: int) -> None:
        self.read, self.start = read, start

    def __call__(self, i: int) -> np.ndarray:
        return self.read(self.start + i)

    def decode(self, i: int) -> np.ndarray | None:
        return decode_or_none(self.read, self.start + i)
