"""Command-line arguments that name a model, its preprocessing, a dataset, the cache and Dask.

Every ``netatlas`` command and the server (``launch.py``, ``panel serve app --args``) take the same
model and dataset arguments, so they are declared once here, below both, with the functions that turn
them into backend objects. Importing this module imports no torch: ``netatlas --help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_model_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        parser.add_argument("checkpoint", help="checkpoint file, Hugging Face save_pretrained folder, or 'demo'"
                            + (" ('none': the --arch alone, no weights)" if parser.prog.endswith("diagram") else ""))
    parser.add_argument("--arch", help="torchvision model name (resnet18), timm:NAME (timm:resnet50) or "
                        "'package.module:factory'; not needed for a Hugging Face save_pretrained folder")
    parser.add_argument("--arch-kwargs", type=json_object, default=None, metavar="JSON",
                        help="keyword arguments for the architecture, e.g. '{\"num_classes\": 10}'")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow fully pickled checkpoints; unpickling can run arbitrary code")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    pre = parser.add_argument_group("preprocessing (defaults: the sidecar, else the Hugging Face image processor's "
                                    "or the timm model's, else ImageNet 224 RGB)")
    pre.add_argument("--size", type=int, nargs="+", metavar="PX", help="input size: S or H W")
    pre.add_argument("--mean", type=float, nargs="+")
    pre.add_argument("--std", type=float, nargs="+")
    pre.add_argument("--grayscale", action=argparse.BooleanOptionalAction, default=None)


DATA_HELP = ("image folder (class subfolders give labels), .parquet file or folder of shards (the Hugging Face "
             "hub's layout, data/ included), WebDataset .tar shard or folder of them, .npz file, or 'demo'")


def add_data_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """The dataset (positional ``data``, or ``--data`` defaulting to the demo) and its column options."""
    if positional:
        parser.add_argument("data", help=DATA_HELP)
    else:
        parser.add_argument("--data", default="demo", help=f"dataset to open (default: the demo digits): {DATA_HELP}")
    group = parser.add_argument_group("Parquet columns (default: found from the types and the hub's metadata)")
    group.add_argument("--image-column", default=None, metavar="NAME",
                       help="the column holding the images (the hub's Image struct or raw bytes)")
    group.add_argument("--label-column", default=None, metavar="NAME",
                       help="the column holding the labels (integers or class names); default: label/labels "
                            "or the hub's ClassLabel, else unlabeled")


def dataset_from_args(args: argparse.Namespace):
    """The ImageDataset ``data`` and the column options describe."""
    from netatlas.backend.datasets import load_dataset

    return load_dataset(args.data, image_column=args.image_column, label_column=args.label_column)


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
    """The checkpoint's path: the demo's, a cached hub id's snapshot (so that --size and the like apply over
    that model's own preprocessing), or the path given."""
    from netatlas.backend.demo import demo_checkpoint
    from netatlas.backend.hf_cache import local_path

    return demo_checkpoint() if given == "demo" else local_path(given, "model")


def preprocessing_from_args(args: argparse.Namespace, path: Path | None):
    """A Preprocessing when any of --size/--mean/--std/--grayscale is given, over the model's own
    (the sidecar's, the Hugging Face image processor's or the timm model's)."""
    from netatlas.backend.checkpoint import default_preprocessing
    from netatlas.backend.preprocessing import Preprocessing

    given = dict(size=args.size, mean=args.mean, std=args.std, grayscale=args.grayscale)
    if all(v is None for v in given.values()):
        return None
    return Preprocessing.overriding(default_preprocessing(path, args.arch, args.arch_kwargs).to_dict(), **given)


def load_from_args(args: argparse.Namespace):
    """The LoadedModel the model arguments describe (``demo`` resolves to the shipped checkpoint)."""
    from netatlas.backend.checkpoint import load_checkpoint

    path = checkpoint_path(args.checkpoint)
    return load_checkpoint(path, args.arch, args.arch_kwargs, trust_pickle=args.trust_pickle,
                           preprocessing=preprocessing_from_args(args, path), device="cpu")
