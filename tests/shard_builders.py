"""Builders for the Parquet and WebDataset tests: real MNIST digits encoded as PNG/JPEG, written with
pyarrow and tarfile the way the Hugging Face hub and WebDataset's TarWriter lay them out."""

from __future__ import annotations

import functools
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from netatlas.backend.demo import demo_checkpoint, demo_digits

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def spread_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n real digits with every class represented (the demo's digits are grouped by class)."""
    images, labels, _ = demo_digits()
    pick = np.linspace(0, len(images) - 1, n).astype(int)
    return images[pick], labels[pick]


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """PIL's own decoding of encoded bytes, independent of netatlas' readers."""
    return np.asarray(Image.open(io.BytesIO(data)))


def hf_metadata(classes: list[str] | None) -> dict[bytes, bytes]:
    """The schema metadata the `datasets` library writes: features with Image and ClassLabel."""
    label = {"names": classes, "_type": "ClassLabel"} if classes else {"dtype": "int64", "_type": "Value"}
    return {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"},
                                                                "label": label}}}).encode()}


def image_table(encoded: list[bytes], labels: np.ndarray | None, paths: list[str | None] | None = None,
                classes: list[str] | None = None) -> pa.Table:
    """A hub-style table: ``image`` struct {bytes, path}, ``label`` int64, optional features metadata."""
    paths = paths if paths is not None else [None] * len(encoded)
    columns = {"image": pa.array([{"bytes": b, "path": p} for b, p in zip(encoded, paths)], IMAGE_STRUCT)}
    if labels is not None:
        columns["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    table = pa.table(columns)
    return table.replace_schema_metadata(hf_metadata(classes)) if classes is not None else table


def write_shards(folder: Path, table: pa.Table, shards: int, split: str = "train",
                 row_group_size: int = 10) -> list[Path]:
    """``{split}-0000i-of-0000n.parquet`` with small row groups (the hub writes 100 images per group)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, shards + 1).astype(int)
    paths = []
    for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        path = folder / f"{split}-{i:05d}-of-{shards:05d}.parquet"
        pq.write_table(table.slice(start, stop - start), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_tar(path: Path, samples: list[dict[str, bytes]], keys: list[str]) -> Path:
    """One WebDataset shard: members ``KEY.ext`` for every (ext, data) of each sample, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, sample in zip(keys, samples):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def png_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The same digits as a PNG folder with class subfolders; file names sort in row order."""
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"c{label}" / f"{i:04d}.png")
    return root


@functools.cache
def _demo_model():
    """The demo model built by hand from its sidecar and weights (not through load_checkpoint)."""
    from safetensors.torch import load_file

    from netatlas.backend.demo_model import DemoResNet

    sidecar = json.loads(demo_checkpoint().with_suffix(".json").read_text())
    model = DemoResNet(**sidecar["arch_kwargs"])
    model.load_state_dict(load_file(str(demo_checkpoint())))
    return model.eval(), sidecar["preprocessing"]


def demo_logits(images: np.ndarray) -> np.ndarray:
    """The demo model's logits on 28x28 digits, preprocessed by hand."""
    import torch

    from tests.backend_support import preprocess_by_hand

    model, pre = _demo_model()
    with torch.inference_mode():
        return model(preprocess_by_hand(images, pre["mean"], pre["std"])).numpy()


def vectors(table: pa.Table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_pylist()).astype(np.float32)
