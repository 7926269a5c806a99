"""Serve the app: ``netatlas serve``, ``python launch.py`` and ``make run`` all land here."""

from __future__ import annotations

import argparse
import os
import sys

import panel as pn

from netatlas.app.config import AppConfig


def serve(args: argparse.Namespace) -> None:
    """Bind to ``args.address`` (loopback by default) and serve one app per browser session."""
    from netatlas.app.main import create_app

    config = AppConfig.from_args(args)
    show = args.show if args.show is not None else bool(os.environ.get("DISPLAY"))
    host = "localhost" if config.loopback else args.address
    origins = [f"localhost:{args.port}", f"127.0.0.1:{args.port}"] if config.loopback else [f"{host}:{args.port}"]
    print(f"netatlas: serving http://{host}:{args.port}/ "
          f"(checkpoint {args.checkpoint}, data {args.data}; Ctrl-C to stop)", file=sys.stderr, flush=True)
    pn.serve(lambda: create_app(config), port=args.port, address=args.address, show=show,
             title="netatlas", websocket_origin=origins, threaded=False, start=True)
