#!/usr/bin/env python
"""Serve netatlas: ``python launch.py [--checkpoint C --arch A --data D --root DIR ... --port P]``.

Defaults to the embedded demo on http://localhost:5006. ``python launch.py --help`` lists options.
"""

import sys

from netatlas.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
