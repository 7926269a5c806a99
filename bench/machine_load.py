"""How busy the rest of the machine was while a benchmark case ran.

On a 2-core machine a concurrent test run or browser preempts torch's two worker threads and
timings swing several-fold; each benchmark prints this share so a reader knows when its ratios
are not to be trusted.
"""

from __future__ import annotations

import os
import time

BUSY_SHARE = 0.25
BUSY_NOTE = "busy machine: timings are not trustworthy"


class OtherLoad:
    """Share of all cores that other processes used since creation (Linux; None elsewhere).

    Counts this process and the children it waited for as its own, so a part run in a child
    process is not mistaken for outside load.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # not idle, iowait
        t = os.times()
        return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, mine, wall = (e - s for e, s in zip(end, self.start))
        return max(0.0, busy - mine) / (wall * (os.cpu_count() or 1))


def report_load(load: OtherLoad) -> None:
    """One indented line: how much of the CPU other processes took during the part just timed."""
    share = load.share()
    if share is not None:
        flag = f"  ({BUSY_NOTE})" if share > BUSY_SHARE else ""
        print(f"  other processes used {share:.0%} of the CPU meanwhile{flag}", flush=True)
