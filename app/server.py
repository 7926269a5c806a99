"""Serve the app: ``netatlas serve``, ``python launch.py`` and ``make run`` all land here."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import socket
import sys

import panel as pn
from tornado.web import RequestHandler

from netatlas.app import thumbnails
from netatlas.app.config import AppConfig

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


class _ForbiddenHost(RequestHandler):
    """Answers requests whose Host header names another site (DNS rebinding) with 403."""

    def prepare(self) -> None:
        self.set_status(403)
        self.finish("netatlas: this server does not answer for that host name "
                    "(start it with --allow-host NAME to add one)\n")


def allowed_hosts(config: AppConfig, address: str, extra: list[str]) -> list[str]:
    hosts = list(LOOPBACK_HOSTS) if config.loopback else [address, socket.gethostname(), socket.getfqdn()]
    return [h for h in dict.fromkeys([*hosts, *extra]) if h and h not in ("0.0.0.0", "::")]


def restrict_hosts(server, hosts: list[str]) -> None:
    """Route every request for a Host outside ``hosts`` to a 403, before Bokeh's own handlers.

    Bokeh's websocket-origin check does not stop DNS rebinding (a forged Host with a matching
    Origin gets the page and the websocket), so the Host header itself is checked here.
    """
    names = "|".join(re.escape(h.strip("[]")) for h in hosts)
    server._tornado.add_handlers(rf"^(?!(?:{names})$).*$", [(r".*", _ForbiddenHost)])


def log_to_stderr() -> None:
    """netatlas's own log lines (models loaded and released, failures with tracebacks) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("netatlas: %(message)s"))
    logger = logging.getLogger("netatlas")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False       # once, here; not again through a handler bokeh set on the root


def serve(args: argparse.Namespace) -> None:
    """Bind to ``args.address`` (loopback by default) and serve one app per browser session."""
    from netatlas.app.page import create_app

    config = AppConfig.from_args(args)
    log_to_stderr()
    hosts = allowed_hosts(config, args.address, args.allow_host)
    show = args.show if args.show is not None else bool(os.environ.get("DISPLAY"))
    origins = [f"{h}:{args.port}" for h in hosts if ":" not in h.strip("[]")]
    server = pn.serve(lambda: create_app(config), port=args.port, address=args.address, show=False,
                      title="netatlas", websocket_origin=origins, threaded=False, start=False,
                      extra_patterns=[(thumbnails.ROUTE, thumbnails.ThumbnailHandler)])
    thumbnails.enable_route()
    restrict_hosts(server, hosts)
    url = f"http://{'localhost' if config.loopback else hosts[0]}:{args.port}/"
    print(f"netatlas: serving {url} (checkpoint {args.checkpoint}, data {args.data}; Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    with contextlib.ExitStack() as resources:
        if config.dask:                      # every session extracts on these workers
            from netatlas.backend.sharded import connect

            config.dask_client = resources.enter_context(connect(config.dask))
            print(f"netatlas: extracting on Dask at {config.dask}", file=sys.stderr, flush=True)
        server.start()
        if show:
            server.io_loop.add_callback(server.show, "/")
        try:
            server.io_loop.start()
        except KeyboardInterrupt:
            print("netatlas: stopped", file=sys.stderr)
