"""Command-line arguments that name a model, its preprocessing, the cache and Dask.

Every ``netatlas`` command and the server (``launch.py``, ``panel serve app --args``) take the same
model arguments, so they are declared once here, below both, with the functions that turn them into
backend objects. Importing this module imports no torch: ``netatlas --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_model_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("checkpoint", help="checkpoint file, or 'demo'"
                            + (" ('none': the --arch alone, no weights)" if parser.prog.endswith("diagram") else ""))
    parser.add_argument("--arch", help="torchvision model name (resnet18) or 'package.module:factory'")
    parser.add_argument("--arch-kwargs", type=json_object, default=None, metavar="JSON",
                        help="keyword arguments for the architecture, e.g. '{\"num_classes\": 10}'")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow fully pickled checkpoints; unpickling can run arbitrary code")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    pre = parser.add_argument_group("preprocessing (defaults: the sidecar, else ImageNet 224 RGB)")
    pre.add_argument("--size", type=int, nargs="+", metavar="PX", help="input size: S or H W")
    pre.add_argument("--mean", type=float, nargs="+")
    pre.add_argument("--std", type=float, nargs="+")
    pre.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None)


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where computed results live (default: $NETATLAS_CACHE_DIR or ~/.cache/netatlas)")


def add_dask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dask", metavar="ADDRESS", default=None,
                        help="extract sharded over the Dask scheduler at ADDRESS (tcp://host:8786; every "
                             "worker needs the checkpoint and data at the same paths), or 'local' for a "
                             "2-worker LocalCluster; default: this process only")


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return value


def checkpoint_path(given: str) -> Path:
    from netatlas.backend.demo import demo_checkpoint

    return demo_checkpoint() if given == "demo" else Path(given)


def preprocessing_from_args(args: argparse.Namespace, path: Path):
    """A Preprocessing when any of --size/--mean/--std/--grayscale is given (over the sidecar's)."""
    from netatlas.backend.checkpoint import read_sidecar
    from netatlas.backend.preprocessing import Preprocessing

    base = read_sidecar(path).get("preprocessing", {}) if path.is_file() else {}
    return Preprocessing.overriding(base, size=args.size, mean=args.mean, std=args.std, grayscale=args.grayscale)


def load_from_args(args: argparse.Namespace):
    """The LoadedModel the model arguments describe (``demo`` resolves to the shipped checkpoint)."""
    from netatlas.backend.checkpoint import load_checkpoint

    path = checkpoint_path(args.checkpoint)
    return load_checkpoint(path, args.arch, args.arch_kwargs, trust_pickle=args.trust_pickle,
                           preprocessing=preprocessing_from_args(args, path), device="cpu")
