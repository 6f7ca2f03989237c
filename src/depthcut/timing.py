"""Whether a timing can be trusted: the spread of its repeats and the CPU other processes
used while it ran (two cores are easily contended, and a busy machine makes a pruned model
look slower than its dense original, or faster than removing weights can make it)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

SPREAD_LIMIT = 0.10  # (max − min) / median of the repeats above this: unreliable
BUSY_LIMIT = 20.0  # other processes' CPU use (% of one core) above this: unreliable


def spread(values: list[float]) -> float:
    """(max − min) / median of repeated measurements (0 for one)."""
    return (max(values) - min(values)) / statistics.median(values)


def _cpu_seconds(children: bool = False) -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, of this process — with its finished children
    when ``children``) now; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    who = [resource.RUSAGE_SELF] + ([resource.RUSAGE_CHILDREN] if children else [])
    own = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))
    return busy / os.sysconf("SC_CLK_TCK"), own


class CpuWatch:
    """The CPU other processes use between ``start()`` and ``stop()``, in % of one core
    (``children``: the subprocesses this one ran and waited for meanwhile are its own)."""

    def __init__(self, children: bool = False) -> None:
        self.children = children

    def start(self) -> None:
        self.begin, self.t0 = _cpu_seconds(self.children), time.perf_counter()

    def stop(self) -> float | None:
        end, wall = _cpu_seconds(self.children), time.perf_counter() - self.t0
        if self.begin is None or end is None or wall <= 0:
            return None
        others = (end[0] - self.begin[0]) - (end[1] - self.begin[1])
        return max(0.0, 100.0 * others / wall)


def reliability(spread: dict[str, float], other_cpu: float | None) -> list[str]:
    """Why a set of timings should not be trusted (empty when nothing says so)."""
    reasons = []
    if other_cpu is not None and other_cpu > BUSY_LIMIT:
        reasons.append(f"machine busy: other processes used {other_cpu:.0f}% CPU meanwhile")
    noisy = {k: v for k, v in spread.items() if v > SPREAD_LIMIT}
    if noisy:
        worst = max(noisy, key=lambda k: noisy[k])
        reasons.append(
            f"{len(noisy)} figure(s) spread over {SPREAD_LIMIT:.0%} between repeats "
            f"({worst}: {noisy[worst]:.0%})"
        )
    return reasons


def timing_quality(values: list[float], other_cpu: float | None) -> dict:
    """{"spread", "other_cpu", "unreliable"} of one repeated measurement, as tables store it."""
    s = spread(values)
    return {"spread": s, "other_cpu": other_cpu, "unreliable": reliability({"total": s}, other_cpu)}


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1
) -> tuple[dict[str, list[float]], float | None]:
    """Seconds of each call over ``repeats`` interleaved rounds (A, B, A, B, …) after
    ``warmup`` untimed rounds, and the CPU other processes used meanwhile (% of one core)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    watch = CpuWatch()
    watch.start()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds, watch.stop()
