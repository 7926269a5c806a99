"""The folders a served app may read: the demo plus the ``--root`` folders given at launch.

The browser can only choose among files found here, and every chosen path is checked again on
load, so no other path on the server is readable from a page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from netatlas.backend.datasets import DEMO_NAME, IMAGE_SUFFIXES
from netatlas.backend.errors import NetatlasError

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
        """Checkpoint-like files under the roots."""
        return [p for p in self.files() if p.suffix in CHECKPOINT_SUFFIXES]

    def datasets(self) -> list[Path]:
        """``.npz`` files and folders holding images (directly or in class subfolders)."""
        found = []
        for p in self._walk():
            if p.is_file() and p.suffix == ".npz" and self._inside(p):
                found.append(p)
            elif p.is_dir() and _holds_images(p):
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
