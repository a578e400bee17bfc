"""glibc malloc settings for a process that moves data in multi-MiB buffers on several threads.

Python allocates every chunk, compressed blob, sealed blob and pack as a fresh buffer. With
glibc's defaults each thread gets its own arena, and freed memory at the top of an arena is handed
back to the kernel at once, only to be faulted in (and zeroed) again by the next buffer: a backup
spent a quarter of its CPU in page faults and in the kernel's page zeroing. Keeping 32 MiB of
slack at the top of each arena (M_TOP_PAD) and two arenas (M_ARENA_MAX) cut a 256 MiB backup's
system time by 40% (BENCHMARKS.md), at a fixed cost of tens of MiB of RSS.

Every process gets that (`tune`); a backup-client command also a fixed 128 KiB mmap threshold
(`tune_client`), its worker processes a fixed 20 MiB one (`tune_worker`).

Environment settings (MALLOC_TOP_PAD_, MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ for workers) win:
they are applied by glibc itself. Other C libraries (no `mallopt`) are left alone.
"""

from __future__ import annotations

import ctypes
import os

M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
TOP_PAD = 32 << 20
ARENA_MAX = 2
CLIENT_MMAP_THRESHOLD = 128 << 10
WORKER_MMAP_THRESHOLD = 20 << 20  # above a job's largest buffer (an 8 MiB chunk and its sealed copy)


def tune() -> bool:
    """Apply the settings once, early (before threads start); True if they were applied."""
    return _apply((M_TOP_PAD, TOP_PAD, "MALLOC_TOP_PAD_"), (M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"))


def tune_worker() -> bool:
    """A worker process (backup reader, restore writer) handles one job at a time, with buffers
    of up to two chunks (8 MiB each): a fixed mmap threshold above that keeps every buffer on the
    heap, reused from job to job, and the top pad keeps the heap from being handed back between
    jobs. The earlier threshold of 256 KiB mapped and unmapped each buffer, and the page faults
    and zeroing cost a 1 GiB restore 0.6 s of system time (BENCHMARKS.md); the heap costs the
    two writers 10 MiB of RSS more."""
    return _apply(
        (M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
        (M_TOP_PAD, TOP_PAD, "MALLOC_TOP_PAD_"),
        (M_ARENA_MAX, ARENA_MAX, "MALLOC_ARENA_MAX"),
    )


def tune_client() -> None:
    """A backup-client command's own process: glibc's mmap threshold fixed at 128 KiB.

    glibc raises the threshold dynamically after large frees, after which the many 1-16 MiB
    buffers of a backup come from the heap and fragment it: peak RSS of a 1 GiB backup fell from
    ~320 to ~190 MiB with a fixed threshold, at no cost in speed. A 4 or 20 MiB threshold made a
    backup 0.1-0.3 s faster for 25-40 MiB more RSS (session 4), too close to the 400 MiB bound.
    """
    _apply((M_MMAP_THRESHOLD, CLIENT_MMAP_THRESHOLD, None))


def _apply(*settings: tuple[int, int, str | None]) -> bool:
    """mallopt(param, value) for each setting whose environment variable is unset (glibc applied
    that one itself; None: applied whatever the environment says); True if any was applied,
    False without glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return False
    applied = False
    for param, value, env in settings:
        if env is None or env not in os.environ:
            applied |= bool(mallopt(param, value))
    return applied
