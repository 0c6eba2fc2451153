"""Timing a throughput run: wall time, this process's CPU and the whole host's CPU.

The host's CPU (every process: PostgreSQL, the broker, the kernel's I/O, this one) is what
decides how far a path could go if its stages ran in processes of their own: no layout moves
a run past ``cores / host CPU per event``. Read from ``/proc/stat`` (Linux); ``None`` elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Cores this host can run processes on: the bound :func:`host_bound` divides.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def host_busy() -> float | None:
    """CPU seconds all cores have spent busy since boot, or ``None`` where unknown.

    Busy is user, nice, system, irq and softirq time (``proc(5)``); idle, I/O wait and the time
    a hypervisor gave to other guests (steal) are not.
    """
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Lap:
    """One timed run: events per second, and CPU seconds per event of this process and host."""

    rate: float
    cpu: float
    host: float | None


class Stopwatch:
    """Started when made; :meth:`lap` reads all three clocks for ``count`` events."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.host = time.perf_counter(), time.process_time(), host_busy()

    def lap(self, count: int) -> Lap:
        elapsed, cpu, host = time.perf_counter(), time.process_time(), host_busy()
        used = None if host is None or self.host is None else (host - self.host) / count
        return Lap(count / (elapsed - self.wall), (cpu - self.cpu) / count, used)


def host_bound(host_cpu: float | None) -> float | None:
    """The events per second all cores together could give at ``host_cpu`` seconds each."""
    return None if not host_cpu else CORES / host_cpu


def process_cpu(pid: int) -> float | None:
    """CPU seconds process ``pid`` (all its threads) has used, or ``None`` where unknown."""
    return stat_cpu(f"/proc/{pid}/stat")


def stat_cpu(path: str) -> float | None:
    """CPU seconds in a ``proc(5)`` stat file (a process's or a thread's), ``None`` if unread."""
    try:
        with open(path) as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # utime and stime: the 14th and 15th fields of proc(5), 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_for(condition: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Return once ``condition()`` holds; stop the benchmark (naming ``what``) after ``limit``
    seconds."""
    deadline = time.perf_counter() + limit
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"bench stalled: {what}")
        await asyncio.sleep(0.002)
