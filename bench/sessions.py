"""Benchmark: N browser sessions open the demo and its DendroMap at once, on one server and a fresh cache.

For each N (default 1, 5, 10) a fresh server (launch.py, its own empty cache) is started and N
headless Chromium pages open it together; each waits for the sidebar's Load to finish (the module
table), clicks the DendroMap tab and waits for its tiles. Printed per N:

* ``last_ready_s``: from the first page's request until the last page shows its DendroMap;
* ``ratio``: last_ready_s / the one-session last_ready_s measured in the same run (goal: 10 <= 2.5x);
* ``server_rss_mib``: the server's resident memory once every page is ready, and ``rss_ratio`` against
  one session's (sessions on the same files share one model, dataset and Workspace).

    python bench/sessions.py [--sessions 1,5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serving, when run as a script

from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402
from tests.serving import start_server, stop  # noqa: E402

TIMEOUT_MS = 600_000


async def one_session(browser, url: str, start: float) -> float:
    """Seconds from ``start`` until this page's DendroMap shows its tiles."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    await page.goto(url, timeout=TIMEOUT_MS)
    await expect(page.locator(".na-module-tree")).to_contain_text("DemoResNet", timeout=TIMEOUT_MS)
    await page.get_by_text("DendroMap", exact=True).click()
    await expect(page.locator(".na-tile").first).to_be_visible(timeout=TIMEOUT_MS)
    ready = time.perf_counter() - start
    await context.close()
    return ready


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(n: int) -> tuple[float, float]:
    """(seconds until the last of ``n`` sessions is ready, server RSS then) on a fresh server and cache."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                start = time.perf_counter()
                times = await asyncio.gather(*(one_session(browser, server.url, start) for _ in range(n)))
                memory = rss_mib(server.process.pid)
                await browser.close()
        except Exception:
            print(server.log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(server)
    return max(times), memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,5,10", help="comma-separated session counts; 1 is the baseline")
    counts = [int(n) for n in parser.parse_args().sessions.split(",")]
    base_time = base_rss = None
    for n in sorted(set(counts) | {1}):
        last, memory = asyncio.run(run(n))
        base_time, base_rss = (last, memory) if n == 1 else (base_time, base_rss)
        print(f"sessions={n:3d}  last_ready_s: {last:6.1f}  ratio: {last / base_time:4.2f}x  "
              f"server_rss_mib: {memory:7.0f}  rss_ratio: {memory / base_rss:4.2f}x", flush=True)
    print("goal: 10 sessions <= 2.5x one session (before sharing: 5.2x, 87 s against 17 s)")


if __name__ == "__main__":
    main()
