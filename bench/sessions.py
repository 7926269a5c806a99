"""Benchmark: N browser sessions open the demo and its DendroMap at once, on one server and a fresh cache.

For each N (default 1, 5, 10) a fresh server (launch.py, its own empty cache) is started and N
headless Chromium pages open it together; each waits for the sidebar's Load to finish (the model
summary), clicks the DendroMap tab and waits for its tiles. Printed per N:

* ``last_ready_s``: from the first page's request until the last page shows its DendroMap;
* ``ratio``: last_ready_s / the one-session last_ready_s measured in the same run (goal: 10 <= 2.5x);
* ``server_cpu_s``: CPU seconds the server spent from the first request until the last page was
  ready, and ``cpu_ratio`` against one session's: what N sessions cost the server;
* ``clients_cpu_s``: CPU seconds the rest of the machine (the N Chromium pages) spent meanwhile. On a
  small machine the pages compete with the server for the same cores, and their CPU bounds the wall time;
* ``server_rss_mib``: the server's resident memory once every page is ready, and ``rss_ratio`` against
  one session's (sessions on the same files share one model, dataset and Workspace);
* ``failed``: pages that showed an error or no DendroMap (each one's status line is printed).

    python bench/sessions.py [--sessions 1,5,10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serving, when run as a script

from tests.browser.conftest import CHROMIUM, CHROMIUM_FLAGS  # noqa: E402
from tests.serving import start_server, stop  # noqa: E402

TIMEOUT_MS = 600_000


async def one_session(browser, url: str, start: float) -> float | str:
    """Seconds from ``start`` until this page's DendroMap shows its tiles, or what the page said instead."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    try:
        await page.goto(url, timeout=TIMEOUT_MS)
        await expect(page.locator(".na-model-summary")).to_contain_text("demo_resnet", timeout=TIMEOUT_MS)
        await page.get_by_text("DendroMap", exact=True).click()
        await expect(page.locator(".na-tile").first).to_be_visible(timeout=TIMEOUT_MS)
        return time.perf_counter() - start
    except AssertionError:
        return " ".join(await page.locator(".na-status").all_inner_texts()) or "no DendroMap"
    finally:
        await context.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; idle and iowait left out)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def run(n: int) -> dict:
    """One fresh server and cache, ``n`` pages at once: the figures main() prints."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp))
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                pid = server.process.pid
                server_before, machine_before = cpu_s(pid), machine_cpu_s()
                start = time.perf_counter()
                results = await asyncio.gather(*(one_session(browser, server.url, start) for _ in range(n)))
                server_cpu, machine_cpu = cpu_s(pid) - server_before, machine_cpu_s() - machine_before
                memory = rss_mib(pid)
                await browser.close()
        finally:
            stop(server)
    times = [r for r in results if isinstance(r, float)]
    for failure in (r for r in results if isinstance(r, str)):
        print(f"  a page failed: {failure}", file=sys.stderr)
    return {"last": max(times, default=float("nan")), "server_cpu": server_cpu,
            "clients_cpu": machine_cpu - server_cpu, "rss": memory, "failed": n - len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,5,10", help="comma-separated session counts; 1 is the baseline")
    counts = [int(n) for n in parser.parse_args().sessions.split(",")]
    base = None
    for n in sorted(set(counts) | {1}):
        r = asyncio.run(run(n))
        base = base or r
        print(f"sessions={n:3d}  last_ready_s: {r['last']:6.1f}  ratio: {r['last'] / base['last']:4.2f}x  "
              f"server_cpu_s: {r['server_cpu']:6.1f}  cpu_ratio: {r['server_cpu'] / base['server_cpu']:4.2f}x  "
              f"clients_cpu_s: {r['clients_cpu']:6.1f}  server_rss_mib: {r['rss']:7.0f}  "
              f"rss_ratio: {r['rss'] / base['rss']:4.2f}x  failed: {r['failed']}", flush=True)
    print("goal: 10 sessions <= 2.5x one session (before sharing: 5.2x, 87 s against 17 s)")


if __name__ == "__main__":
    main()
