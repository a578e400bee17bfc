"""glibc malloc settings for a process that moves data in multi-MiB buffers on several threads.

Python allocates every chunk, compressed blob, sealed blob and pack as a fresh buffer. With
glibc's defaults each thread gets its own arena, and freed memory at the top of an arena is handed
back to the kernel at once, only to be faulted in (and zeroed) again by the next buffer: a backup
spent a quarter of its CPU in page faults and in the kernel's page zeroing. Keeping 32 MiB of
slack at the top of each arena (M_TOP_PAD) and two arenas (M_ARENA_MAX) cut a 256 MiB backup's
system time by 40% (BENCHMARKS.md), at a fixed cost of tens of MiB of RSS.

Environment settings (MALLOC_TOP_PAD_, MALLOC_ARENA_MAX) win: they are applied by glibc itself.
Other C libraries (no `mallopt`) are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
TOP_PAD = 32 << 20
ARENA_MAX = 2
WORKER_MMAP_THRESHOLD = 20 << 20  # above a job's largest buffer (an 8 MiB chunk and its sealed copy)


def tune() -> bool:
    """Apply the settings once, early (before threads start); True if they were applied."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return False
    applied = False
    if "MALLOC_TOP_PAD_" not in os.environ:
        applied |= bool(mallopt(M_TOP_PAD, TOP_PAD))
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied |= bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    return applied


def tune_worker() -> bool:
    """A worker process (backup reader, restore writer) handles one job at a time, with buffers
    of up to two chunks (8 MiB each): a fixed mmap threshold above that keeps every buffer on the
    heap, reused from job to job, and the top pad keeps the heap from being handed back between
    jobs. The earlier threshold of 256 KiB mapped and unmapped each buffer, and the page faults
    and zeroing cost a 1 GiB restore 0.6 s of system time (BENCHMARKS.md); the heap costs the
    two writers 10 MiB of RSS more."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return False
    applied = False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied |= bool(mallopt(M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD))
    if "MALLOC_TOP_PAD_" not in os.environ:
        applied |= bool(mallopt(M_TOP_PAD, TOP_PAD))
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied |= bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    return applied
