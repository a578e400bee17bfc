"""Prometheus metrics of the REST endpoint and its access log.

The blob counters carry rest-server's names and labels (`rest_server_blob_{read,write,delete}
_total` and `..._bytes_total` by `user`, `repo`, `type`), so dashboards made for rest-server work
unchanged; `user` is the tenant. Requests are counted by method and status code. Counters live in
one plain dict per server (not the process-wide registry), so several servers in one process
(tests) do not collide, and a scrape can be narrowed to one tenant: /metrics shows a tenant only
its own series unless the server allows unauthenticated scrapes.

The access log is the combined log format rest-server writes with `--log` (gorilla's
CombinedLoggingHandler), with the tenant as the user field; credentials never appear in it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

_BLOB_OPS = {
    "read": "Total number of blobs read",
    "write": "Total number of blobs written",
    "delete": "Total number of blobs deleted",
}
_BLOB_BYTES = {
    "read": "Total number of bytes read from blobs",
    "write": "Total number of bytes written to blobs",
    "delete": "Total number of bytes of blobs deleted",
}


class RestMetrics:
    """Thread-safe counters; `exposition(user)` renders them in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str, str, str], list[int]] = {}  # (op, user, repo, type) -> [n, bytes]
        self._requests: dict[tuple[str, str, str], int] = {}  # (user, method, code) -> n
        self._rejected: dict[tuple[str, str], int] = {}  # (user, reason) -> n
        self.in_flight = 0

    def blob(self, op: str, user: str, repo: str, type_: str, nbytes: int) -> None:
        with self._lock:
            c = self._blobs.setdefault((op, user, repo, type_), [0, 0])
            c[0] += 1
            c[1] += nbytes

    def request(self, user: str, method: str, code: int) -> None:
        with self._lock:
            key = (user, method, str(code))
            self._requests[key] = self._requests.get(key, 0) + 1

    def rejected(self, user: str, reason: str) -> None:
        """An upload refused after its body started (hash mismatch, quota, client gone)."""
        with self._lock:
            key = (user, reason)
            self._rejected[key] = self._rejected.get(key, 0) + 1

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def value(self, op: str, user: str, repo: str, type_: str) -> tuple[int, int]:
        """(count, bytes) of one blob series (tests, status)."""
        with self._lock:
            n, b = self._blobs.get((op, user, repo, type_), (0, 0))
            return n, b

    def exposition(self, user: str | None = None) -> bytes:
        """Prometheus text format; only `user`'s series when given."""
        return generate_latest(_View(self, user))  # type: ignore[arg-type]

    def collect(self, user: str | None) -> Iterator[Any]:
        with self._lock:
            blobs = {k: tuple(v) for k, v in self._blobs.items() if user is None or k[1] == user}
            requests = {k: v for k, v in self._requests.items() if user is None or k[0] == user}
            rejected = {k: v for k, v in self._rejected.items() if user is None or k[0] == user}
            in_flight = self.in_flight
        for op in _BLOB_OPS:
            count = CounterMetricFamily(f"rest_server_blob_{op}", _BLOB_OPS[op], labels=["user", "repo", "type"])
            nbytes = CounterMetricFamily(
                f"rest_server_blob_{op}_bytes", _BLOB_BYTES[op], labels=["user", "repo", "type"]
            )
            for (o, u, repo, t), (n, b) in sorted(blobs.items()):
                if o == op:
                    count.add_metric([u, repo, t], n)
                    nbytes.add_metric([u, repo, t], b)
            yield count
            yield nbytes
        req = CounterMetricFamily(
            "orbitvault_rest_requests",
            "HTTP requests answered, by method and status code",
            labels=["user", "method", "code"],
        )
        for (u, method, code), n in sorted(requests.items()):
            req.add_metric([u, method, code], n)
        yield req
        rej = CounterMetricFamily(
            "orbitvault_rest_uploads_rejected", "Uploads refused after their body started", labels=["user", "reason"]
        )
        for (u, reason), n in sorted(rejected.items()):
            rej.add_metric([u, reason], n)
        yield rej
        if user is None:
            yield GaugeMetricFamily("orbitvault_rest_requests_in_flight", "Requests being served", value=in_flight)


class _View:
    """A registry-like object for generate_latest: the metrics as one user may see them."""

    def __init__(self, metrics: RestMetrics, user: str | None) -> None:
        self.metrics = metrics
        self.user = user

    def collect(self) -> Iterator[Any]:
        return self.metrics.collect(self.user)


class AccessLog:
    """Combined log format lines to a file (appended), stderr ("-"), or nowhere ("")."""

    def __init__(self, target: str) -> None:
        self._lock = threading.Lock()
        self._own = False
        self._out: TextIO | None
        if not target:
            self._out = None
        elif target == "-":
            self._out = sys.stderr
        else:
            self._out = open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives with the server
            self._own = True

    @property
    def enabled(self) -> bool:
        return self._out is not None

    def write(
        self,
        host: str,
        user: str,
        when: float,
        request_line: str,
        status: int,
        size: int,
        referer: str,
        agent: str,
    ) -> None:
        if self._out is None:
            return
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(when))
        line = (
            f'{host} - {_field(user)} [{stamp}] "{_quote(request_line)}" {status} {size} '
            f'"{_quote(referer)}" "{_quote(agent)}"\n'
        )
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (OSError, ValueError):  # a full disk or closed log never fails a request
                pass

    def close(self) -> None:
        with self._lock:
            if self._own and self._out is not None:
                self._out.close()
            self._out = None


def _field(value: str) -> str:
    return _quote(value).replace(" ", "%20") or "-"


def _quote(value: str) -> str:
    """Escape quotes, backslashes and control characters (log injection)."""
    out = []
    for ch in value[:2048]:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)
