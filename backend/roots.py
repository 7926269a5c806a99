"""The folders a served app may read: the demo plus the ``--root`` folders given at launch.

The browser can only choose among files found here, and every chosen path is checked again on
load, so no other path on the server is readable from a page.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from netatlas.backend.datasets import DEMO_NAME, IMAGE_SUFFIXES
from netatlas.backend.errors import NetatlasError
from netatlas.backend.hf_models import hf_folder, is_saved_model

SHARD_SUFFIXES = frozenset({".parquet", ".tar"})
CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl"})
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules", ".cache"})


@dataclass(frozen=True)
class AllowedRoots:
    roots: tuple[Path, ...]
    max_depth: int = 4
    max_entries: int = 2000

    @classmethod
    def of(cls, *roots: str | os.PathLike) -> "AllowedRoots":
        resolved = []
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise NetatlasError(f"--root {root}: not a folder")
            resolved.append(path)
        return cls(tuple(dict.fromkeys(resolved)))

    def check(self, path: str | os.PathLike) -> Path:
        """``path`` resolved (symlinks followed) if it lies inside a root, else NetatlasError."""
        if str(path) == DEMO_NAME:
            return Path(DEMO_NAME)
        resolved = Path(path).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
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
            elif p.is_dir() and (_holds_images(p)
                                 or (shard_folder(p) and not _in_shard_folder(p, shard_folder))):
                found.append(p)
        return found

    def _inside(self, path: Path) -> bool:
        """False for a symlink under a root that points out of every root (check() would refuse it)."""
        resolved = path.resolve()
        return any(resolved.is_relative_to(root) for root in self.roots)

    def _walk(self) -> list[Path]:
        out: list[Path] = []
        for root in self.roots:
            base_depth = len(root.parts)
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
                if len(here.parts) - base_depth >= self.max_depth:
                    dirnames[:] = []
                out.append(here)
                out.extend(here / f for f in sorted(filenames))
                if len(out) > self.max_entries:
                    return out
        return out


def _holds_images(folder: Path, probe: int = 50) -> bool:
    """True when the folder, or one of its first subfolders, has image files (a cheap probe)."""
    try:
        entries = list(os.scandir(folder))[:probe]
    except OSError:
        return False
    if any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in entries):
        return True
    for sub in (e for e in entries if e.is_dir() and not e.name.startswith(".")):
        try:
            if any(Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in list(os.scandir(sub))[:probe]):
                return True
        except OSError:
            continue
    return False


def _shards(folder: Path, suffix: str) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder)
                      if e.name.endswith(suffix) and not e.name.startswith(".") and e.is_file())
    except OSError:
        return []


def _shard_folder(folder: Path) -> bool:
    """Two or more .tar or Parquet image shards, or (the hub's layout) Parquet image shards in ``data/``.

    A single shard is listed as its file; Parquet files count only when they hold images.
    """
    direct = _shards(folder, ".parquet")
    parquet = direct if len(direct) >= 2 else _shards(folder / "data", ".parquet")
    return len(_shards(folder, ".tar")) >= 2 or (bool(parquet) and _image_table(parquet[0]))


def _in_shard_folder(path: Path, shard_folder: Callable[[Path], bool]) -> bool:
    """True for a shard, or the ``data/`` folder, of a folder that is listed as one dataset."""
    parent = path.parent
    return shard_folder(parent) or (parent.name == "data" and shard_folder(parent.parent))


def _image_table(path: Path) -> bool:
    """A Parquet file with an image column (its footer only): result tables of netatlas are not datasets."""
    from netatlas.backend.parquet_images import has_image_column

    return has_image_column(path)
