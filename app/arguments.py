"""The server's command-line arguments, shared by ``netatlas serve``, launch.py and ``panel serve app``."""

from __future__ import annotations

import argparse
from pathlib import Path

from netatlas.backend.arguments import add_cache_args, add_dask_args, add_data_args, add_model_args


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="demo", help="checkpoint to open (default: the demo)")
    add_data_args(parser, positional=False)
    parser.add_argument("--root", action="append", default=[], type=Path, metavar="DIR",
                        help="a folder the page may read checkpoints and images from (repeatable)")
    parser.add_argument("--port", type=int, default=5006)
    parser.add_argument("--address", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; serving wider exposes your files)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="another host name the page may be reached by (repeatable)")
    add_dask_args(parser)
    parser.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                        help="models and datasets all sessions may hold at once, e.g. 8G (default: half "
                             "of this machine's memory); sessions on the same files share one copy")
    parser.add_argument("--show", action=argparse.BooleanOptionalAction, default=None,
                        help="open a browser (default: when a display is available)")
    add_model_args(parser, positional=False)
    add_cache_args(parser)


def _memory_size(text: str) -> int:
    from netatlas.backend.pool import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
