"""Frames over pipes between orbitvault and its own worker processes (backup readers, restore
writers): lengths, then a pickle and its out-of-band buffers. Both ends are this package, run by the
same interpreter, so pickle is safe here; it never crosses a network."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from orbitvault.errors import OrbitVaultError

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_SIZE = 1 << 20
_IOV_MAX = 512


def write_frame(fd: int, obj: Any) -> None:
    """`obj` pickled; `pickle.PickleBuffer`s in it (multi-MiB payloads) go out of band, written
    straight from their memory: a frame is [header length][buffer count][buffer lengths]
    [header][buffers]."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    prefix = struct.pack(f"<II{len(raws)}Q", len(head), len(raws), *(r.nbytes for r in raws))
    parts = [memoryview(prefix), memoryview(head), *raws]
    while parts:
        sent = os.writev(fd, parts[:_IOV_MAX])
        while parts and sent >= parts[0].nbytes:
            sent -= parts[0].nbytes
            parts.pop(0)
        if sent:
            parts[0] = parts[0][sent:]


def _read_exact(fd: int, n: int) -> bytearray | None:
    """n bytes, or None at end of stream before the first byte; a cut frame is an error."""
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [mv[got:]])
        if k == 0:
            if got == 0:
                return None
            raise EOFError("stream cut inside a frame")
        got += k
    return buf


def _need(fd: int, n: int) -> bytearray:
    buf = _read_exact(fd, n)
    if buf is None:
        raise EOFError("stream cut inside a frame")
    return buf


def read_frame(fd: int) -> Any:
    """The next object (out-of-band buffers arrive as read-only memoryviews); None at the end
    of the stream."""
    first = _read_exact(fd, 8)
    if first is None:
        return None
    head_len, count = struct.unpack("<II", first)
    lengths = struct.unpack(f"<{count}Q", _need(fd, 8 * count)) if count else ()
    head = _need(fd, head_len)
    buffers = [_need(fd, n) for n in lengths]
    return pickle.loads(head, buffers=buffers)


def widen(fd: int) -> None:
    """A 1 MiB pipe: a message crosses in one or two writes instead of sixteen."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)


class Worker:
    """One worker process (`python -m module`), its pipes, and the thread reading its answers.
    It gets `setup` first; the end of its stdin tells it to exit."""

    def __init__(self, module: str, setup: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.inp = self.proc.stdin.fileno()
        self.out = self.proc.stdout.fileno()
        widen(self.inp)
        self.thread: threading.Thread | None = None
        try:
            write_frame(self.inp, setup)
        except BaseException:  # it died at once: leave nothing behind
            kill_workers([self])
            raise


def close_workers(workers: list[Any]) -> None:
    """Everything asked has been answered: end the workers' input and wait for them."""
    for w in workers:
        if w.proc.stdin is not None:
            with contextlib.suppress(OSError):
                w.proc.stdin.close()
    for w in workers:
        if w.thread is not None:
            w.thread.join()
        w.proc.wait()
        if w.proc.stdout is not None:
            w.proc.stdout.close()


def kill_workers(workers: list[Any]) -> None:
    """Stop at once (the job failed or was cancelled)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
    for w in workers:
        w.proc.wait()
        if w.thread is not None:
            w.thread.join(timeout=5)
        for f in (w.proc.stdin, w.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class WorkerPool:
    """What the reader and writer pools share: their workers, the first error (raised to the
    caller at its next call) and the end."""

    what = "worker"

    def __init__(self) -> None:
        self.workers: list[Any] = []
        self.error: BaseException | None = None
        self._closed = False

    def _start(self, make: Callable[[], Worker], processes: int, collect: Callable[[Any], None], name: str) -> None:
        """Spawn `processes` workers (at least one; all or none: a failure stops those started)
        and a result thread `collect(worker)` for each."""
        try:
            for _ in range(max(1, processes)):
                self.workers.append(make())
        except BaseException:
            self.kill()
            raise
        for i, w in enumerate(self.workers):
            w.thread = threading.Thread(target=collect, args=(w,), name=f"{name}-{i}", daemon=True)
            w.thread.start()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _ended(self, w: Worker, owed: bool) -> None:
        """A worker's output ended: fine after `close` with nothing owed, else an error."""
        if owed or not self._closed:
            code = w.proc.wait()
            raise OrbitVaultError(f"a {self.what} process exited unexpectedly (status {code})")

    def close(self) -> None:
        """Everything asked has been answered: end the workers and wait for them."""
        self._closed = True
        close_workers(self.workers)
        self._check()

    def kill(self) -> None:
        """Stop at once (the job failed or was cancelled)."""
        self._closed = True
        kill_workers(self.workers)


def default_processes() -> int:
    """Worker processes to use when none is asked for: two on a machine with two or more cores."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def serve(inp: int, out: int, start: Callable[[Any, int], Callable[..., None]]) -> int:
    """A worker's loop: the setup frame makes a handler (`start(setup, out)`), then each request
    frame is handled in order until the end of `inp`. Requests are taken in by a thread of their
    own, so the parent's write of a request returns as soon as it is copied, not when this worker
    has finished the one before (while another worker might be idle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    widen(out)
    setup = read_frame(inp)
    if setup is None:
        return 0
    handle = start(setup, out)
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def take() -> None:
        try:
            while (req := read_frame(inp)) is not None:
                requests.put(req)
        finally:
            requests.put(None)

    threading.Thread(target=take, daemon=True).start()
    try:
        while (req := requests.get()) is not None:
            handle(*req)
    except BrokenPipeError:  # the parent is gone: nothing left to do
        return 1
    return 0


def worker_main(start: Callable[[Any, int], Callable[..., None]]) -> None:
    """A worker's entry point: stdout is kept for frames (a stray print goes to stderr), and the
    allocator returns big buffers to the kernel when they are freed."""
    from orbitvault import allocator

    allocator.tune_worker()
    out = os.dup(1)
    os.dup2(2, 1)
    sys.exit(serve(0, out, start))
