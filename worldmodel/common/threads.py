"""CPU threads that adapt to a shared machine: ``threads=0`` (the default of every CPU-heavy verb).

Why: torch's intra-op pool runs one thread per core and every parallel region waits for all of them.
When another process holds a core, the thread that shares it is descheduled for whole time slices,
and every small op waits for it: on 2 cores one busy process beside a default-threaded dream made it
20-40x slower, while one thread fewer kept 60 % of the quiet speed. So the governor measures how much
CPU the *other* processes use (``/proc/stat`` busy time minus this process's own CPU time) and runs
on the cores they leave free, re-checking every ``interval`` seconds between frames or steps. On a
quiet machine it keeps every core. Thread counts do not change results (the same seed gives the same
dream on 1 or 2 threads), so adapting costs nothing in reproducibility.

    gov = governor(threads)     # at a verb's start: 0 = adapt, N = fixed at N
    gov.tick()                  # between frames / steps: cheap, re-measures every `interval` s
"""

from __future__ import annotations

import os
import time

import torch

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MARGIN = 0.3        # a core counts as free once others leave at least 70 % of it


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _busy_seconds() -> float | None:
    """CPU-seconds all processes spent busy since boot (None where /proc/stat is not readable)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    vals = [int(v) for v in fields[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)              # idle + iowait
    busy = sum(vals[:8]) - idle                                      # user nice system idle iowait irq softirq steal
    return busy / _CLK_TCK


class ThreadGovernor:
    """Sets ``torch.set_num_threads`` to the cores other processes leave free (see the module doc).

    ``requested`` > 0 fixes the count (no measuring); 0 adapts between 1 and :func:`usable_cores`.
    """

    def __init__(self, requested: int = 0, interval: float = 0.5, probe: float = 0.1):
        self.requested = int(requested)
        self.max_threads = usable_cores()
        self.interval = interval
        self.others = 0.0
        self.changes = 0
        if self.requested > 0:
            torch.set_num_threads(self.requested)
            self._last = None
            return
        self._last = self._sample()
        if self._last[1] is None or self.max_threads == 1:
            self._last = None                         # nothing to measure, or nothing to adapt
            torch.set_num_threads(self.max_threads)
            return
        time.sleep(probe)                             # one short look before the first heavy op
        self.tick(force=True)

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        return time.monotonic(), _busy_seconds(), time.process_time()

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def tick(self, force: bool = False) -> int:
        """Re-measure if ``interval`` seconds passed (or ``force``); returns the thread count in use."""
        if self._last is None:
            return torch.get_num_threads()
        now = time.monotonic()
        if not force and now - self._last[0] < self.interval:
            return torch.get_num_threads()
        cur = self._sample()
        wall = cur[0] - self._last[0]
        if wall <= 0 or cur[1] is None:
            return torch.get_num_threads()
        others = max(0.0, ((cur[1] - self._last[1]) - (cur[2] - self._last[2])) / wall)
        self._last, self.others = cur, others
        want = int(min(self.max_threads, max(1, int(self.max_threads - others + _MARGIN))))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            self.changes += 1
        return want


_CURRENT: ThreadGovernor | None = None


def governor(requested: int = 0, **kw) -> ThreadGovernor:
    """Start the process's governor (``requested`` threads, 0 = adapt) and make it the one :func:`tick` uses."""
    global _CURRENT
    _CURRENT = ThreadGovernor(requested, **kw)
    return _CURRENT


def tick() -> None:
    """Let the process's governor re-measure (a no-op before :func:`governor` was called)."""
    if _CURRENT is not None:
        _CURRENT.tick()
