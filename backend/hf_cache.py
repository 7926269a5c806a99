"""The Hugging Face hub cache, read offline: a repo folder or a repo id becomes the snapshot folder it names.

The hub downloads into ``<cache>/models--org--name/`` (``datasets--org--name/`` for datasets): ``refs/main``
holds the commit hash of the revision last downloaded, ``snapshots/<hash>/`` holds the repo's files as
symlinks into ``blobs/``. A snapshot folder is an ordinary model or dataset folder (every reader follows
the symlinks, and hashes by content), so opening a repo folder or an id is only finding that folder:
path logic, never a network request and no huggingface_hub call (a user without the cached files is told
how to fetch them; netatlas itself never downloads).

Which cache: ``HF_HUB_CACHE``, else the legacy ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``: huggingface_hub's own order, so
the files ``hf download`` wrote are the ones found.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from netatlas.backend.errors import NetatlasError

KINDS = ("model", "dataset")
# huggingface_hub's repo id rule (letters, digits, '-', '_', '.'; no '--' or '..'), with the owner required:
# a bare name ("resnet18", "demo") is a torchvision name or a file, not an id.
_PART = r"\w(?:[\w.-]*\w)?"
_REPO_ID = re.compile(rf"^(?P<id>{_PART}/{_PART})(?:@(?P<revision>[\w./-]+))?$")


@dataclass(frozen=True)
class CachedRepo:
    """A repo found in the cache, at the snapshot it opens at."""

    repo_id: str          # org/name
    kind: str             # model or dataset
    snapshot: Path        # snapshots/<hash>
    main: bool            # the snapshot refs/main names (or the only one)

    @property
    def label(self) -> str:
        """``org/name``, or ``org/name@<hash>`` for a snapshot other than the one it opens at by default."""
        return self.repo_id if self.main else f"{self.repo_id}@{self.snapshot.name[:12]}"


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub would use here (see the module docstring for the order)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _cache_origin() -> str:
    """Which setting chose the cache, for messages that say where netatlas looked."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(variable):
            return f"${variable}"
    return "the default"


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """(``org/name``, revision or None) when ``text`` has the form of a hub id, else None."""
    match = _REPO_ID.match(text)
    if match is None or "--" in match["id"] or ".." in match["id"]:
        return None
    return match["id"], match["revision"]


def repo_folder_name(repo_id: str, kind: str) -> str:
    """``models--org--name``: how the hub names a repo's folder in its cache."""
    return f"{kind}s--" + repo_id.replace("/", "--")


def is_repo_folder(path: Path) -> bool:
    """A cache repo folder (``models--org--name``): the hub's name and one of its own subfolders."""
    return (path.name.startswith(tuple(f"{kind}s--" for kind in KINDS)) and path.is_dir()
            and any((path / sub).is_dir() for sub in ("snapshots", "refs", "blobs")))


def local_path(source: str | os.PathLike, kind: str) -> Path:
    """The folder or file ``source`` opens: a path on disk as it is (a cache repo folder at its snapshot),
    else a hub id looked up in the cache. A path that exists wins over an id of the same spelling.

    Anything else comes back unchanged, for the caller to say it was not found."""
    path = Path(source).expanduser()
    if path.exists():
        return snapshot_folder(path) if is_repo_folder(path) else path
    parsed = parse_repo_id(os.fspath(source))
    return path if parsed is None else cached_snapshot(*parsed, kind)


def cached_snapshot(repo_id: str, revision: str | None, kind: str) -> Path:
    """The snapshot of ``repo_id`` at ``revision`` (default: main) in the cache, or a NetatlasError that
    says where netatlas looked and how to fetch it (netatlas itself never downloads)."""
    cache = hub_cache_dir()
    folder = cache / repo_folder_name(repo_id, kind)
    if not folder.is_dir():
        fetch = f"hf download {repo_id}" + (" --repo-type dataset" if kind == "dataset" else "")
        raise NetatlasError(
            f"{repo_id} is not a path, nor a {kind} in the Hugging Face cache: there is no {folder} (the cache "
            f"{cache} comes from {_cache_origin()}; set HF_HUB_CACHE or HF_HOME to look elsewhere). netatlas "
            f"never downloads: fetch it with `{fetch}` first, or give the folder it is in")
    return snapshot_folder(folder, revision, repo_id)


def snapshot_folder(folder: Path, revision: str | None = None, repo_id: str | None = None) -> Path:
    """The snapshot of cache repo ``folder`` that ``revision`` names (a ref such as a branch or tag, or a
    commit hash); without one, the snapshot refs/main names, else the only snapshot."""
    what = repo_id or folder.name
    snapshots = _snapshots(folder)
    if not snapshots:
        raise NetatlasError(f"{what} is in the Hugging Face cache ({folder}) but has no snapshot: its download "
                            "did not finish; download it again")
    commit = _read_ref(folder, revision or "main")
    if revision and commit is None and revision not in snapshots:
        raise NetatlasError(f"{what} has no revision {revision} in the Hugging Face cache ({folder}): cached are "
                            f"{_listed(folder, snapshots)}")
    if commit is None and revision is None:
        if len(snapshots) > 1:
            raise NetatlasError(f"{what} has {len(snapshots)} snapshots in the Hugging Face cache ({folder}) and no "
                                f"refs/main: choose one as {what if repo_id else 'org/name'}@<revision> "
                                f"({_listed(folder, snapshots)}) or give its snapshot folder")
        commit = snapshots[0]
    commit = commit or revision
    if commit not in snapshots:
        raise NetatlasError(f"{what}: the Hugging Face cache ({folder}) names the snapshot {commit} for "
                            f"{revision or 'main'}, but it is not there: download the repo again")
    return folder / "snapshots" / commit


def _snapshots(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in (folder / "snapshots").iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _read_ref(folder: Path, ref: str) -> str | None:
    """The commit hash ``refs/<ref>`` holds (a branch, a tag, ``pr/1``), or None when there is no such ref."""
    refs = folder / "refs"
    path = refs / ref
    if not path.is_file() or not path.resolve().is_relative_to(refs.resolve()):   # no refs/../../elsewhere
        return None
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _listed(folder: Path, snapshots: list[str]) -> str:
    """The refs and snapshots a user may choose from, for a message."""
    refs_dir = folder / "refs"
    refs = sorted(p.relative_to(refs_dir).as_posix() for p in refs_dir.rglob("*") if p.is_file())
    return ", ".join([*(f"ref {r}" for r in refs), *(f"snapshot {s}" for s in snapshots)])


def repo_of(path: Path) -> tuple[CachedRepo, str] | None:
    """(the cache repo, the part of ``path`` inside its snapshot) when ``path`` lies in a snapshot folder
    of a hub cache, else None: how the sidebar names ``.../snapshots/<hash>/data`` as ``org/name/data``."""
    parts = path.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(tuple(f"{kind}s--" for kind in KINDS)):
            folder = Path(*parts[:i])
            kind, _, name = folder.name.partition("s--")
            repo = CachedRepo(name.replace("--", "/", 1), kind, Path(*parts[:i + 2]),
                              _default_snapshot(folder) == parts[i + 1])
            return repo, "/".join(parts[i + 2:])
    return None


def repo_label(path: Path) -> str | None:
    """How the sidebar names a path inside a cache snapshot (``org/name``, ``org/name/sub/file``), else None."""
    found = repo_of(path)
    if found is None:
        return None
    repo, inside = found
    return f"{repo.label}/{inside}" if inside else repo.label


def _default_snapshot(folder: Path) -> str | None:
    """The snapshot the repo opens at with no revision, or None when that is ambiguous or missing."""
    try:
        return snapshot_folder(folder).name
    except NetatlasError:
        return None


def cached_repos(cache: Path, kind: str) -> list[CachedRepo]:
    """The ``kind`` repos of ``cache`` that open with no revision (refs/main, or a single snapshot), by id:
    the sidebar's entries. Only the cache's top folder and each repo's refs are read."""
    prefix = f"{kind}s--"
    try:
        folders = sorted(p for p in cache.iterdir() if p.name.startswith(prefix) and p.is_dir())
    except OSError:
        return []
    found = []
    for folder in folders:
        snapshot = _default_snapshot(folder)
        if snapshot is not None:
            found.append(CachedRepo(folder.name[len(prefix):].replace("--", "/", 1), kind,
                                    folder / "snapshots" / snapshot, True))
    return found


def cache_holding(path: Path) -> Path | None:
    """The hub cache folder ``path`` lies in (the parent of its repo folder), or None."""
    for folder in (path, *path.parents):
        if is_repo_folder(folder):
            return folder.parent
    return None


def launch_cache(*given: tuple[str, str]) -> Path | None:
    """The hub cache that a launch argument, (text, kind) with kind model or dataset, names (an id, a repo
    folder, a snapshot or a file in one), resolved; None when none does. The server makes that cache
    readable by its page."""
    for text, kind in given:
        if text == "demo":
            continue
        path = Path(text).expanduser()
        if path.exists():
            found = cache_holding(path.resolve())
        else:
            parsed = parse_repo_id(text)
            cache = hub_cache_dir()
            found = cache if parsed and (cache / repo_folder_name(parsed[0], kind)).is_dir() else None
        if found is not None:
            return found.resolve()
    return None
