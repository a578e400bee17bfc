"""Frames over pipes between orbitvault and its own worker processes (backup readers, restore
writers): a 4-byte little-endian length, then a pickle. Both ends are this package, run by the
same interpreter, so pickle is safe here; it never crosses a network."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
from typing import Any

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_SIZE = 1 << 20
_HEADER = 4


def write_frame(fd: int, obj: Any) -> None:
    body = memoryview(pickle.dumps(obj, protocol=5))
    head = len(body).to_bytes(_HEADER, "little")
    sent = os.writev(fd, [head, body])  # no joined copy of a multi-MiB body
    if sent < _HEADER:
        head, sent = head[sent:], 0
        while head:
            head = head[os.write(fd, head) :]
    else:
        sent -= _HEADER
    rest = body[sent:]
    while rest:
        rest = rest[os.write(fd, rest) :]


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


def read_frame(fd: int) -> Any:
    """The next object; None at the end of the stream."""
    head = _read_exact(fd, _HEADER)
    if head is None:
        return None
    body = _read_exact(fd, int.from_bytes(head, "little"))
    if body is None:
        raise EOFError("stream cut inside a frame")
    return pickle.loads(body)


def widen(fd: int) -> None:
    """A 1 MiB pipe: a message crosses in one or two writes instead of sixteen."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
