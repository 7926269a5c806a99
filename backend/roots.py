"""The folders a served app may read: the demo plus the ``--root`` folders given at launch.

The browser can only choose among files found here, and every chosen path is checked again on
load, so no other path on the server is readable from a page.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from netatlas.backend.datasets import DEMO_NAME, IMAGE_SUFFIXES
from netatlas.backend.errors import NetatlasError
from netatlas.backend.hf_models import hf_folder, is_saved_model

SHARD_SUFFIXES = frozenset({".parquet", ".tar"})
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl"})
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules", ".cache"})
IMAGE_ENDINGS = tuple(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class AllowedRoots:
    """``hub``: a Hugging Face hub cache the page may read too (the one the launch's checkpoint or data is
    in). Its repos are listed by id (``hf_cache.cached_repos``), not walked: a cache holds every blob
    twice over (blobs/ and snapshots/), and a walk of it would spend the entry bound on blob names."""

    roots: tuple[Path, ...]
    max_depth: int = 4
    max_entries: int = 2000
    hub: Path | None = None

    @classmethod
    def of(cls, *roots: str | os.PathLike, hub: Path | None = None) -> "AllowedRoots":
        resolved = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise NetatlasError(f"--root {root}: not a folder")
            resolved.append(path)
        return cls(tuple(dict.fromkeys(resolved)), hub=hub.resolve() if hub is not None else None)

    @property
    def readable(self) -> tuple[Path, ...]:
        """Every folder a page may read from: the roots, and the hub cache when there is one."""
        return self.roots + ((self.hub,) if self.hub is not None else ())

    def check(self, path: str | os.PathLike) -> Path:
        """``path`` resolved (symlinks followed) if it lies inside a root or the hub cache, else NetatlasError."""
        if str(path) == DEMO_NAME:
            return Path(DEMO_NAME)
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in self.readable):
            raise NetatlasError(f"{path} is outside the folders this server may read; "
                                "start it with --root for that folder")
        return resolved

    def files(self) -> list[Path]:
        """Every readable file under the roots (bounded walk, sorted)."""
        return [p for p in self._walk() if p.is_file() and self._inside(p)]

    def checkpoints(self) -> list[Path]:
        """Checkpoint-like files, and Hugging Face save_pretrained folders (one entry each, their weight
        files not listed again), under the roots."""
        found = []
        for p in self._walk():
            if p.is_dir() and is_saved_model(p) and self._inside(p):
                found.append(p)
            elif (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and self._inside(p)
                  and hf_folder(p.parent) is None):
                found.append(p)
        return found

    def datasets(self) -> list[Path]:
        """``.npz``, ``.parquet`` and ``.tar`` files, and folders holding images (directly or in class
        subfolders), Parquet shards (directly or in ``data/``) or .tar shards: a folder of shards is one
        entry, its shards are not listed again."""
        found, shard_folder = [], functools.cache(_shard_folder)  # each folder probed once per scan
        for p in self._walk():
            if p.is_file() and self._inside(p):
                if p.suffix == ".npz" or (p.suffix in SHARD_SUFFIXES and not _in_shard_folder(p, shard_folder)
                                          and (p.suffix != ".parquet" or _image_table(p))):
                    found.append(p)
            elif p.is_dir() and (_holds_images(p) or _saved_dataset(p)
                                 or (shard_folder(p) and not _in_shard_folder(p, shard_folder))):
                found.append(p)
        return found

    def _inside(self, path: Path) -> bool:
        """False for a symlink under a root that points out of every root (check() would refuse it)."""
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def _walk(self) -> list[Path]:
        """Folders and files under the roots in sorted order (each folder before its contents), at
        most ``max_depth`` deep and about ``max_entries`` in all. Symlinked folders are not entered.

        Image files are left out: no listing offers one (a folder of them is found by
        ``_holds_images``), and in a folder of 100,000 they would fill the bound and cost a stat and a
        resolve each. Folder listings are reused while the folder is unchanged (``_listing``), so a
        page load does not read 100,000 names again."""
        out: list[Path] = []

        def walk(folder: Path, depth: int) -> bool:
            try:
                subfolders, files = _listing(str(folder))
            except OSError:                          # unreadable or gone: as os.walk, skip it
                return True
            out.append(folder)
            out.extend(folder / name for name in files)
            if len(out) > self.max_entries:
                return False
            return depth >= self.max_depth or all(
                walk(folder / name, depth + 1) for name in subfolders
                if name not in SKIP_DIRS and not name.startswith("."))

        for root in self.roots:
            if not walk(root, 0):
                break
        return out


# folder -> ((device, inode, mtime_ns), subfolders, files other than images)
_LISTINGS: dict[str, tuple[tuple[int, int, int], list[str], list[str]]] = {}
RACY_NS = 2_000_000_000  # a folder changed this close to its listing is listed again (coarse mtimes)


def _listing(folder: str) -> tuple[list[str], list[str]]:
    """(real subfolders, files other than images) of ``folder``, sorted. Adding, removing or renaming
    an entry changes the folder's mtime, so a listing is reused while the folder's identity and mtime
    are unchanged; one made within ``RACY_NS`` of the folder's last change is not (a change in the
    same tick of a coarse clock would leave the mtime as it was, as git's "racy" entries)."""
    st = os.stat(folder)
    stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
    cached = _LISTINGS.get(folder)
    if cached is not None and cached[0] == stamp:
        return cached[1], cached[2]
    listed_at = time.time_ns()
    subfolders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.name)
            elif not entry.is_dir() and not entry.name.lower().endswith(IMAGE_ENDINGS):
                files.append(entry.name)             # a symlink to a folder is neither
    subfolders.sort()
    files.sort()
    if st.st_mtime_ns < listed_at - RACY_NS:
        _LISTINGS[folder] = (stamp, subfolders, files)
    return subfolders, files


def _holds_images(folder: Path, probe: int = 50) -> bool:
    """True when the folder, or one of its first subfolders, has image files among its first
    ``probe`` entries (a cheap probe: a folder of 100,000 images is not listed for it)."""
    entries = _first_entries(folder, probe)
    return any(map(_is_image, entries)) or any(
        _is_image(e) for sub in entries if sub.is_dir() and not sub.name.startswith(".")
        for e in _first_entries(Path(sub.path), probe))


def _is_image(entry: os.DirEntry) -> bool:
    return entry.name.lower().endswith(IMAGE_ENDINGS) and entry.is_file()


def _first_entries(folder: Path, n: int) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(itertools.islice(it, n))
    except OSError:
        return []


def _shards(folder: Path, suffix: str) -> list[Path]:
    try:
        return [folder / name for name in _listing(str(folder))[1]
                if name.endswith(suffix) and not name.startswith(".") and (folder / name).is_file()]
    except OSError:
        return []


def _saved_dataset(folder: Path) -> bool:
    """A ``datasets`` save_to_disk folder, listed once: a DatasetDict's split folders are part of it."""
    from netatlas.backend.arrow_images import is_arrow_dataset

    return is_arrow_dataset(folder) and not (folder.parent / "dataset_dict.json").is_file()


def _shard_folder(folder: Path) -> bool:
    """Two or more .tar or Parquet image shards, or (the hub's layout) Parquet image shards in ``data/``.

    A single shard is listed as its file; Parquet files count only when they hold images.
    """
    direct = _shards(folder, ".parquet")
    parquet = direct if len(direct) >= 2 else _shards(folder / "data", ".parquet") or _converter_layout(folder)
    return len(_shards(folder, ".tar")) >= 2 or (bool(parquet) and _image_table(parquet[0]))


def _converter_layout(folder: Path) -> list[Path]:
    """The shards of the hub converter's layout (``<config>/<split>/NNNN.parquet``) at ``folder``, if any."""
    from netatlas.backend.parquet_images import find_parquet_shards

    if not any(_shards(split, ".parquet") for config in _subfolders(folder) for split in _subfolders(config)):
        return []                                    # two levels of names only: most folders stop here
    try:
        return find_parquet_shards(folder)
    except NetatlasError:                            # several configs: each is listed on its own
        return []


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []


def _in_shard_folder(path: Path, shard_folder: Callable[[Path], bool]) -> bool:
    """True for a shard, or the ``data/`` folder, of a folder that is listed as one dataset; likewise for the
    config and split folders, and their shards, of a converter layout (``<config>/<split>/NNNN.parquet``)."""
    parent = path.parent
    return (shard_folder(parent) or (parent.name == "data" and shard_folder(parent.parent))
            or any(shard_folder(a) and bool(_converter_layout(a)) for a in list(path.parents)[1:3]))


def _image_table(path: Path) -> bool:
    """A Parquet file with an image column (its footer only): result tables of netatlas are not datasets."""
    from netatlas.backend.parquet_images import has_image_column

    return has_image_column(path)
