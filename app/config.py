"""What the server was started with: the model and data to open, the readable roots, the cache."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netatlas.backend.architectures import is_import_path
from netatlas.backend.arguments import checkpoint_path, preprocessing_from_args
from netatlas.backend.checkpoint import read_sidecar
from netatlas.backend.hf_cache import launch_cache
from netatlas.backend.pool import default_max_memory
from netatlas.backend.preprocessing import Preprocessing
from netatlas.backend.demo import assets_dir, demo_checkpoint
from netatlas.backend.roots import AllowedRoots


@dataclass
class AppConfig:
    checkpoint: str = "demo"
    data: str = "demo"
    image_column: str | None = None             # --image-column/--label-column: Parquet columns of --data
    label_column: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    roots: AllowedRoots = field(default_factory=lambda: AllowedRoots.of(assets_dir()))
    cache_dir: Path | None = None
    device: str = "auto"
    trust_pickle: bool = False
    loopback: bool = True
    preprocessing: Preprocessing | None = None  # launch flags; apply to the launch checkpoint only
    dask: str | None = None                     # --dask: scheduler address or "local"
    dask_client: Any = None                     # its Client, connected by the server at start
    max_memory: int = field(default_factory=default_max_memory)  # --max-memory: what sessions may hold at once

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "AppConfig":
        """The ``serve`` arguments; the folders of the given checkpoint and data become roots too.

        A checkpoint or data in the Hugging Face cache (a repo id, a repo folder, a snapshot) makes that
        cache readable, and the sidebar lists its repos by id: the user opened the page with it. A cache
        the launch does not name stays unreadable (it may hold gated or private repos, and a page served
        beyond localhost should read only what the launch named); ``--root`` on it lists it as well."""
        roots = [assets_dir(), *args.root]
        for given in (args.checkpoint, args.data):
            if given != "demo" and Path(given).exists():
                path = Path(given).resolve()
                roots.append(path if path.is_dir() else path.parent)
        hub = launch_cache((args.checkpoint, "model"), (args.data, "dataset"))
        return cls(checkpoint=args.checkpoint, data=args.data, image_column=getattr(args, "image_column", None),
                   label_column=getattr(args, "label_column", None), arch=args.arch,
                   arch_kwargs=args.arch_kwargs, roots=AllowedRoots.of(*roots, hub=hub),
                   cache_dir=args.cache_dir, device=args.device, trust_pickle=args.trust_pickle,
                   loopback=is_loopback(args.address),
                   preprocessing=preprocessing_from_args(args, checkpoint_path(args.checkpoint)),
                   dask=getattr(args, "dask", None),
                   max_memory=getattr(args, "max_memory", None) or default_max_memory())

    @property
    def allow_trust_pickle(self) -> bool:
        """Only the person at this machine may tick 'trust pickled code', unless launched trusting."""
        return self.loopback or self.trust_pickle

    def import_architectures(self) -> list[str]:
        """Import paths the page may build: given at launch, or declared by sidecars under the roots.

        The page cannot type its own import path: that would let it run any importable function.
        """
        found = {self.arch} if self.arch and is_import_path(self.arch) else set()
        for ckpt in [demo_checkpoint(), *self.roots.checkpoints()]:
            try:
                arch = read_sidecar(ckpt).get("architecture")
            except Exception:  # an unreadable sidecar only means one option fewer
                continue
            if isinstance(arch, str) and is_import_path(arch):
                found.add(arch)
        return sorted(found)


def is_loopback(address: str) -> bool:
    """True for localhost and loopback IPs; an empty address binds every interface."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
