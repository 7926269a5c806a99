"""``panel serve app [--args ...]``: the same app as ``python launch.py``, arguments after --args."""

import sys

from netatlas.app.config import AppConfig
from netatlas.app.main import create_app
from netatlas.cli import add_serve_args
import argparse

_parser = argparse.ArgumentParser(prog="panel serve app --args")
add_serve_args(_parser)
create_app(AppConfig.from_args(_parser.parse_args(sys.argv[1:]))).servable()
