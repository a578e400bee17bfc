"""Frames over pipes between orbitvault and its own worker processes (backup readers, restore
writers): lengths, then a pickle and its out-of-band buffers. Both ends are this package, run by the
same interpreter, so pickle is safe here; it never crosses a network."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
from typing import Any

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
