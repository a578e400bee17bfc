"""Shared by the benchmark scripts (run as `python bench/NAME.py`, so this imports as `common`)."""

from __future__ import annotations

import os
import platform

from orbitvault import allocator

# Every orbitvault process (CLI, node, gateway) starts with this malloc tuning; the figures must be
# taken with it too. Without it, pyeclib's per-row fragment buffers alone cut encoding 10x.
allocator.tune()


def cpu_seconds(pids: list[int]) -> float:
    """User + system seconds live processes have used so far (from /proc; a process already gone
    counts nothing): a constellation's or a process kind's share of a step."""
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """CPU model, cores and Python version: every recorded figure names the machine it came from."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
