"""WebDataset .tar shards (``name-000000.tar``, ...): ``KEY.jpg|jpeg|png|webp`` with an optional ``KEY.cls``.

Opening walks the tar headers once (``tarfile`` seeks over the data: nothing is extracted and no image
byte is read) and keeps each image's data offset and size; ``read(i)`` seeks there and decodes. The
``.cls`` members (a label as text, a few bytes each) are read on open; ``.txt``/``.json`` are ignored.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netatlas.backend.datasets import DECODE_THREADS, EncodedReader, ImageDataset
from netatlas.backend.errors import NetatlasError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # preference order when a sample has several
LABEL_EXTENSION = "cls"
CLASSES_FILE = "classes.txt"
MAX_LABEL_BYTES = 64
TAIL_CHUNK = 1 << 20


@dataclass
class _ShardIndex:
    """One shard's samples in tar order: key, image data offset and size, label (-1: none)."""

    path: Path
    keys: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray


def find_tar_shards(path: Path) -> list[Path]:
    """The shards ``path`` names: itself when a .tar file, else the .tar files in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".tar" else []
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.suffix == ".tar" and not p.name.startswith(".") and p.is_file())


def webdataset_dataset(path: Path) -> ImageDataset:
    """The samples of one .tar shard or a folder of them, in sorted shard order and tar order."""
    path = Path(path).resolve()
    files = find_tar_shards(path)
    if not files:
        raise NetatlasError(f"no .tar shards in {path}: give a WebDataset .tar file or a folder of them")
    shards = [_index_shard(f) for f in files]
    n = sum(len(s.keys) for s in shards)
    if n == 0:
        where = files[0].name if len(files) == 1 else f"the {len(files)} .tar shards in {path.name}"
        raise NetatlasError(f"no images in {where} (looked for members KEY.{', KEY.'.join(IMAGE_EXTENSIONS)}): "
                            "give WebDataset shards whose samples hold an image")
    labels = np.concatenate([s.labels for s in shards])
    ids = _ids(shards)
    classes = _classes(files[0].parent, labels)
    skipped: list[str] = []
    reader = TarImageReader(path, ids, skipped, [s.path for s in shards],
                            np.repeat(np.arange(len(shards), dtype=np.int32), [len(s.keys) for s in shards]),
                            np.concatenate([s.offsets for s in shards]), np.concatenate([s.sizes for s in shards]))
    name = path.stem if path.is_file() else path.name
    return ImageDataset(name, ids, labels, classes, _manifest_hash(shards, classes), reader, skipped,
                        decode_threads=DECODE_THREADS)


class TarImageReader(EncodedReader):
    """Image i: one seek and one read of its member's data in its shard."""

    def __init__(self, root: Path, ids: list[str], skipped: list[str], shards: list[Path], shard_of: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.shards, self.shard_of, self.offsets, self.sizes = shards, shard_of, offsets, sizes
        super().__init__(root, ids, skipped)

    def encoded(self, i: int) -> bytes:
        if not 0 <= i < len(self.ids):
            raise IndexError(f"image {i} of {len(self.ids)}")
        path, size = self.shards[int(self.shard_of[i])], int(self.sizes[i])
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(int(self.offsets[i]))
                data = f.read(size)
        except OSError as exc:
            raise NetatlasError(f"cannot read {path.name} ({exc}): the shard is gone or unreadable; "
                                "restore it, then reopen the dataset") from exc
        if len(data) != size:
            raise NetatlasError(f"{path.name} ends inside the image of {self.ids[i]}: the shard was truncated "
                                "since it was opened; download or write it again, then reopen")
        return data


# ------------------------------------------------------------------------------------------ opening

def _index_shard(path: Path) -> _ShardIndex:
    """Walk the headers (tarfile seeks over member data), then read the few bytes of each .cls member."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with open(path, "rb") as f:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # tarfile keeps every header; a shard may hold 100k
                    if info.isfile():
                        key, ext = _split_member(info.name)
                        if ext:
                            members.setdefault(key, {}).setdefault(ext, (info.offset_data, info.size))
                end = tar.offset
            _check_tail(f, end)
            return _samples(path, f, members)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise NetatlasError(f"{path.name} is not a readable tar shard ({exc}): it may be truncated or corrupt; "
                            "download or write that shard again") from exc


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _check_tail(f, end: int) -> None:
    """After the last member only the end-of-archive zero blocks may follow: anything else is damage
    that tarfile stops at silently (a truncated or garbled header after the first)."""
    f.seek(0, 2)
    size = f.tell()
    if end >= size:
        raise ValueError("the end-of-archive marker is missing (the file was cut short)")
    f.seek(end)
    while chunk := f.read(TAIL_CHUNK):
        if chunk.count(0) != len(chunk):
            raise ValueError(f"damaged header at byte {end}")


def _samples(path: Path, f, members: dict[str, dict[str, tuple[int, int]]]) -> _ShardIndex:
    """Samples with an image, in tar order; each label read from its .cls member."""
    keys, offsets, sizes, labels = [], [], [], []
    f.seek(0, 2)
    size = f.tell()
    for key, parts in members.items():
        ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if ext is None:
            continue
        offset, length = parts[ext]
        if offset + length > size:
            raise ValueError(f"{key}.{ext} runs past the end of the file")
        keys.append(key)
        offsets.append(offset)
        sizes.append(length)
        labels.append(_read_label(path, f, key, *parts[LABEL_EXTENSION]) if LABEL_EXTENSION in parts else -1)
    return _ShardIndex(path, keys, np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                       np.asarray(labels, dtype=np.int64))


def _read_label(path: Path, f, key: str, offset: int, size: int) -> int:
    f.seek(offset)
    text = f.read(min(size, MAX_LABEL_BYTES)).decode("utf-8", "replace").strip()
    try:
        return max(int(text), -1)
    except ValueError:
        raise NetatlasError(f"{key}.cls in {path.name} holds {text!r}: a .cls member must be an integer class "
                            f"index (names go in a {CLASSES_FILE} beside the shards, one per line)") from None


def _ids(shards: list[_ShardIndex]) -> list[str]:
    """The sample keys when unique across shards (WebDataset's own ids), else ``<shard stem>/<key>``."""
    keys = [k for s in shards for k in s.keys]
    if len(set(keys)) == len(keys):
        return keys
    return [f"{s.path.stem}/{k}" for s in shards for k in s.keys]


def _classes(folder: Path, labels: np.ndarray) -> list[str]:
    """``classes.txt`` beside the shards (one name per line), else the label values as strings."""
    try:
        names = [line.strip() for line in (folder / CLASSES_FILE).read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
    except (OSError, UnicodeDecodeError):
        names = []
    if names:
        return names
    return [str(c) for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []


def _manifest_hash(shards: list[_ShardIndex], classes: list[str]) -> str:
    """Shard names, sizes and mtimes, plus the member index (keys, offsets, sizes, labels) and class names."""
    digest = hashlib.sha256(b"webdataset-v1\0")
    digest.update("\0".join(classes).encode())
    for s in shards:
        st = s.path.stat()
        digest.update(f"\n{s.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        digest.update("\0".join(s.keys).encode())
        for array in (s.offsets, s.sizes, s.labels):
            digest.update(array.tobytes())
    return digest.hexdigest()
