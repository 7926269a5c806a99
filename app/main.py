"""``panel serve app [--args ...]``: the same app as ``python launch.py``, arguments after --args."""

import argparse
import sys

from netatlas.app.arguments import add_serve_args
from netatlas.app.config import AppConfig
from netatlas.app.page import create_app

_parser = argparse.ArgumentParser(prog="panel serve app --args")
add_serve_args(_parser)
create_app(AppConfig.from_args(_parser.parse_args(sys.argv[1:]))).servable()
