"""Benchmark: the first DendroMap in a notebook against the served page, on the same warm cache.

* ``notebook_s``: ``na.open("demo", "demo")`` then ``atlas.dendromap()`` until the treemap is drawn;
* ``page_s`` (the baseline): what the server does for a browser session opening the page and then its
  DendroMap tab: the session's state and views, the sidebar's Load (checkpoint, dataset, Workspace)
  and the work it sets off in the views (module table, the Neurons tab's activations), then the
  DendroMap's build, until its treemap is drawn.

Both run in this process after an untimed warm-up that fills the cache, alternating order between
repeats; each is the best of ``--repeats``. ``ratio`` = notebook_s / page_s (goal <= 1.0: no slower).
This times the server side of the page, not the browser's drawing of it, which a notebook pays too.

    python bench/notebook.py [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine_load, when run as a script

import netatlas as na  # noqa: E402
from machine_load import OtherLoad, report_load  # noqa: E402
from netatlas.app.config import AppConfig  # noqa: E402
from netatlas.app.loader_view import LoaderView  # noqa: E402
from netatlas.app.page import build_views, load_extensions  # noqa: E402
from netatlas.app.state import AppState  # noqa: E402


def notebook(cache: Path) -> float:
    start = time.perf_counter()
    view = na.open("demo", "demo", cache_dir=cache).dendromap()
    assert "na-tile" in view.treemap.html
    return time.perf_counter() - start


def page(cache: Path) -> float:
    start = time.perf_counter()
    state = AppState(AppConfig(cache_dir=cache))
    loader, views = LoaderView(state), build_views(state)
    dendromap = views["DendroMap"]

    async def session() -> None:
        await loader.load()
        await settled()              # the views' watchers the load started (Neurons, Model) finish too
        dendromap.shown = True
        await dendromap.activate()
        await settled()

    asyncio.run(session())
    assert "na-tile" in dendromap.treemap.html
    return time.perf_counter() - start


async def settled() -> None:
    """Wait until no other task is left on the loop: a served session's watchers run to the end."""
    me = asyncio.current_task()
    while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
        await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.sleep(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    load_extensions()
    with tempfile.TemporaryDirectory(prefix="netatlas-bench-") as d:
        cache = Path(d)
        notebook(cache)          # warm-up: computes and caches the activations and the tree
        page(cache)
        load = OtherLoad()
        times: dict[str, list[float]] = {"notebook": [], "page": []}
        for r in range(args.repeats):
            for name, run in (("notebook", notebook), ("page", page))[:: 1 if r % 2 == 0 else -1]:
                times[name].append(run(cache))
        best = {name: min(values) for name, values in times.items()}
        for name in ("page", "notebook"):
            print(f"{name}_s: {best[name]:.3f}  (best of: {', '.join(f'{t:.3f}' for t in times[name])})")
        ratio = best["notebook"] / best["page"]
        print(f"ratio: {ratio:.2f}  (notebook / page; goal <= 1.0; {'ok' if ratio <= 1.0 else 'MISSED'})")
        report_load(load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
