"""restic's REST backend protocol (v1 and v2) over HTTP(S), on top of the gateway facade.

`serve_rest(gateway, settings)` binds, starts serving in a background thread and returns a
`RestServer` handle (address, url, metrics, stop). The gateway belongs to the caller: the REST
server never closes it, so it can share a process (and the catalog) with the gRPC gateway.

Why the standard library: `ThreadingHTTPServer` with HTTP/1.1 keep-alive is all restic needs (it
keeps a few connections open and issues one request at a time on each), and streaming is explicit:
request bodies are read in pieces of at most `PIECE` bytes (Content-Length, as restic sends, or
chunked transfer coding) and handed to `Gateway.put_object` as an iterator, responses
are written chunk by chunk from `get_object`'s iterator. A 100 MiB pack never sits in memory:
the gateway holds at most two stripes of a put, a read at most one segment batch.

Authentication: HTTP basic auth, user = tenant, password = an orbitvault API key token
(`ovk_...`). The key must belong to that tenant. Missing or wrong -> 401 with WWW-Authenticate;
the key's mode does the rest: read-only keys cannot write (403), append-only keys get
rest-server's append-only mode (no deletes except locks). Buckets are per tenant, so one tenant
never sees another's repositories.

Errors: every refusal is a status with a one-line text body (`403 Forbidden: ...`); facade errors
map in `http_status`. A failure after a response has started (a node lost mid-read beyond
repair) cannot change the status any more: the connection is closed before the promised length,
so the client sees a truncated body and retries, never wrong bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orbitvault.errors import FailedPrecondition, OrbitVaultError, Status
from orbitvault.ground.gateway import VERSION, Gateway
from orbitvault.ground.ids import RateLimited
from orbitvault.ground.model import Principal
from orbitvault.rest.config import RestSettings
from orbitvault.rest.metrics import AccessLog, RestMetrics
from orbitvault.rest.protocol import (
    MIME_V1,
    MIME_V2,
    Kind,
    PathError,
    RangeNotSatisfiable,
    Target,
    parse_path,
    parse_range,
    wants_v2,
)
from orbitvault.rest.repo import BodyRefused, Download, Repositories, RestError

__all__ = ["RestServer", "http_status", "serve_rest"]

log = logging.getLogger("orbitvault.rest")

PIECE = 1 << 20  # bytes read from a request body at a time, and coalesced from small chunks
MAX_CHUNK_LINE = 4096
MAX_HEADER_VALUE = 8192
REALM = 'Basic realm="orbitvault", charset="UTF-8"'

_STATUS = {
    Status.INVALID_ARGUMENT: 400,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 403,
    Status.DATA_LOSS: 500,
    Status.UNAVAILABLE: 503,
    Status.FAILED_PRECONDITION: 403,  # object lock: retention or legal hold
    Status.RESOURCE_EXHAUSTED: 507,
    Status.UNAUTHENTICATED: 401,
    Status.PERMISSION_DENIED: 403,
    Status.INTERNAL: 500,
}


def http_status(exc: OrbitVaultError) -> int:
    """The HTTP status of a facade error (the one place this mapping lives)."""
    if isinstance(exc, RateLimited):
        return 429
    return _STATUS.get(exc.status, 500)


class _Abort(Exception):
    """The response has started and cannot be completed: close the connection."""


class _ClientGone(Exception):
    """The client stopped sending before the body's end; raised from the upload iterator."""


# --- server --------------------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        gateway: Gateway,
        settings: RestSettings,
        tls: ssl.SSLContext | None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.gateway = gateway
        self.settings = settings
        self.tls = tls
        self.repos = Repositories(gateway, settings)
        self.metrics = RestMetrics()
        self.access_log = AccessLog(settings.access_log)
        self.slots = threading.BoundedSemaphore(settings.max_connections)
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self.stopping = False
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to `max_connections`; beyond that a quick 503."""
        if self.stopping or not self.slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS handshakes run here, in the connection's thread, so a slow client never blocks accept."""
        request.settimeout(self.settings.idle_timeout_s)
        conn = request
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("tls handshake failed peer=%s error=%r", client_address[0], str(exc))
                return
        with self.conn_lock:
            self.connections.add(conn)
        try:
            _Handler(conn, client_address, self)
        finally:
            with self.conn_lock:
                self.connections.discard(conn)
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Our handler answers every error itself; what reaches here is the socket failing under it.
        log.debug("connection error peer=%s", client_address[0] if client_address else "?", exc_info=True)

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


def _refuse(request: socket.socket) -> None:
    body = b"503 Service Unavailable: too many connections; retry shortly\n"
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(OSError):
        request.settimeout(1.0)
        request.sendall(head + body)


class RestServer:
    """A running REST endpoint: `address` ("host:port"), `url`, `metrics`; `stop()` to end it."""

    def __init__(self, httpd: _HTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.port: int = port
        self.host: str = f"[{host}]" if ":" in host else host
        self.address = f"{self.host}:{port}"
        self.url = f"{'https' if httpd.tls else 'http'}://{self.address}"
        self.settings = httpd.settings
        self.metrics = httpd.metrics
        self.repos = httpd.repos

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; give requests in flight `grace` seconds, then cut their connections (an
        upload cut off stores nothing). The gateway stays open: it is the caller's."""
        httpd = self._httpd
        if httpd.stopping:
            return
        httpd.stopping = True
        httpd.shutdown()
        deadline = time.monotonic() + grace
        while httpd.metrics.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        httpd.close_connections()
        httpd.server_close()
        self._thread.join(5)
        httpd.access_log.close()
        log.info("rest server stopped address=%s", self.address)

    def __enter__(self) -> RestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_rest(gateway: Gateway, settings: RestSettings | None = None) -> RestServer:
    """Bind `settings.listen` (port 0 picks one), start serving in a thread, return the handle."""
    settings = settings or RestSettings()
    settings.check_plaintext()
    tls = _tls_context(settings) if settings.tls else None
    host, _, port = settings.listen.rpartition(":")
    try:
        httpd = _HTTPServer((host.strip("[]"), int(port)), gateway, settings, tls)
    except OSError as exc:
        raise FailedPrecondition(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="rest-accept")
    thread.daemon = True
    thread.start()
    server = RestServer(httpd, thread)
    log.info(
        "rest server serving url=%s append_only=%s verify_upload=%s max_repo_size=%d",
        server.url,
        settings.append_only,
        not settings.no_verify_upload,
        settings.max_repo_size,
    )
    return server


def _tls_context(settings: RestSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise FailedPrecondition(
            f"cannot load TLS certificate {settings.tls_cert} / key {settings.tls_key}: {exc}"
        ) from None
    return ctx


# --- requests ------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"orbitvault-rest/{VERSION}"
    sys_version = ""

    # per-request state (reset in _begin)
    _status = 0
    _sent = 0
    _user = ""
    _started = 0.0
    _headers_done = False
    _body_left: int | None = 0  # None: chunked, not fully read
    _body_done = True
    _body_iter: Iterator[bytes] | None = None

    def setup(self) -> None:
        self.timeout = self.server.settings.idle_timeout_s
        super().setup()

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    # quiet: the access log is written in _dispatch, errors go through `log`
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors found by http.server (bad request line, unknown method)."""
        self._begin()
        self.close_connection = True
        self._text(code, message or HTTPStatus(code).phrase)
        self._log_access()

    # --- the request cycle -----------------------------------------------------------------------------

    def _begin(self) -> None:
        self._status = 0
        self._sent = 0
        self._user = ""
        self._started = time.time()
        self._headers_done = False
        self._body_left = 0
        self._body_done = True
        self._body_iter = None

    def _dispatch(self) -> None:
        self._begin()
        m = self.server.metrics
        m.started()
        try:
            self._frame_body()
            self._route()
        except _Abort:
            self.close_connection = True
        except RestError as exc:
            if exc.reason:
                m.rejected(self._user or "-", exc.reason)
            self._fail(exc.status, exc.message)
        except BodyRefused as exc:  # the rest of the body is drained (up to max_object_size) first
            m.rejected(self._user or "-", exc.reason)
            self._fail(exc.status, exc.message)
        except _ClientGone:
            m.rejected(self._user or "-", "client_gone")
            self.close_connection = True
            self._fail(400, "the request body ended early; nothing stored")
        except PathError as exc:
            self._fail(exc.status, exc.message)
        except RangeNotSatisfiable as exc:
            extra = {"Content-Range": f"bytes */{exc.size}"} if exc.size is not None else {}
            self._fail(416, str(exc), extra)
        except OrbitVaultError as exc:
            status = http_status(exc)
            if status >= 500:
                log.warning("request failed method=%s path=%s error=%r", self.command, self.path, str(exc))
            retry = {429: "1", 503: "5"}.get(status)
            self._fail(status, str(exc), {"Retry-After": retry} if retry else None)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
            self._status = self._status or 499
        except Exception:
            log.exception("internal error method=%s path=%s", self.command, self.path)
            self._fail(500, "internal error; the server log has the details")
        finally:
            m.finished()
            self._settle_body()
            m.request(self._user or "-", self.command or "-", self._status or 0)
            self._log_access()

    def _fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if self._headers_done:  # too late for a status: cut the connection instead
            self.close_connection = True
            return
        self._text(status, message, headers)

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = f"{status} {phrase}: {message}\n".encode() if message != phrase else f"{status} {phrase}\n".encode()
        hdrs = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        if status == 401:
            hdrs.setdefault("WWW-Authenticate", REALM)
        self._start(status, hdrs, len(body))
        if self.command != "HEAD":
            self._write(body)

    def _start(self, status: int, headers: dict[str, str], length: int | None) -> None:
        self._settle_body()  # before the status: whether the connection stays open depends on it
        self.send_response_only(status)
        self.send_header("Server", self.version_string())
        self.send_header("Date", self.date_time_string())
        for k, v in headers.items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._status = status
        self._headers_done = True

    def _write(self, data: bytes | memoryview) -> None:
        self.wfile.write(data)
        self._sent += len(data)

    def _log_access(self) -> None:
        al = self.server.access_log
        if not al.enabled:
            return
        al.write(
            self.client_address[0] if self.client_address else "-",
            self._user,
            self._started,
            getattr(self, "requestline", ""),
            self._status or 0,
            self._sent,
            self.headers.get("Referer", "") if getattr(self, "headers", None) else "",
            self.headers.get("User-Agent", "") if getattr(self, "headers", None) else "",
        )

    # --- routing -----------------------------------------------------------------------------------------

    def _route(self) -> None:
        url = urlsplit(self.path)
        method = self.command
        if url.path == "/metrics" and self.server.settings.prometheus and method in ("GET", "HEAD"):
            return self._metrics()
        p = self._authenticate()
        target = parse_path(url.path)
        if target.kind is Kind.REPO:
            if method == "POST":
                return self._create(p, target, url.query)
            if method == "DELETE":
                raise RestError(501, "deleting a whole repository is not implemented; delete the bucket instead")
            return self._not_allowed("POST")
        if target.kind is Kind.LIST:
            if method == "GET":
                return self._list(p, target)
            return self._not_allowed("GET")
        if method == "HEAD":
            return self._head(p, target)
        if method == "GET":
            return self._get(p, target)
        if method == "POST":
            return self._save(p, target)
        if method == "DELETE":
            return self._delete(p, target)
        return self._not_allowed("HEAD, GET, POST, DELETE")

    def _not_allowed(self, allowed: str) -> None:
        self._text(405, f"use {allowed}", {"Allow": allowed})

    def _authenticate(self) -> Principal:
        header = self.headers.get("Authorization", "")
        scheme, _, blob = header.partition(" ")
        if scheme.lower() != "basic" or not blob:
            raise RestError(401, "credentials needed: user = tenant, password = API key") from None
        try:
            user, sep, token = base64.b64decode(blob.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise RestError(401, "malformed basic credentials") from None
        if not sep:
            raise RestError(401, "malformed basic credentials")
        gw = self.server.gateway
        host = self.client_address[0]
        try:
            p = gw.authenticate(token, client=f"rest:{host}", source=host)
        except OrbitVaultError:
            raise RestError(401, "wrong user or API key") from None
        if p.tenant != user:  # a real key under another tenant's name counts as a failed login too
            gw.ids.auth_failed(source=host, key_id=p.key_id, tenant=p.tenant)
            raise RestError(401, "wrong user or API key")
        self._user = p.tenant
        return p

    # --- handlers ------------------------------------------------------------------------------------------

    def _create(self, p: Principal, t: Target, query: str) -> None:
        if parse_qs(query).get("create") != ["true"]:
            raise RestError(400, "to create a repository: POST {path}?create=true")
        if self.server.repos.create(p, t.repo):
            log.info("repository created tenant=%s repo=%s", p.tenant, t.repo.label)
        self._start(200, {}, 0)  # empty, as rest-server answers

    def _head(self, p: Principal, t: Target) -> None:
        size = self.server.repos.find(p, t.repo, t.type, t.name).size
        self._start(200, {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}, size)

    def _get(self, p: Principal, t: Target) -> None:
        spec = parse_range(self.headers.get("Range"))
        dl = self.server.repos.open(p, t.repo, t.type, t.name, spec)
        try:
            # The first chunk is fetched before the status goes out: nodes found unreachable now
            # still get an honest 503 (retryable) instead of a cut-off 200.
            first = next(dl.chunks, b"") if dl.length else b""
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if dl.partial:
                last = dl.offset + dl.length - 1
                headers["Content-Range"] = f"bytes {dl.offset}-{last}/{dl.size}" if dl.length else f"bytes */{dl.size}"
            self._start(206 if dl.partial else 200, headers, dl.length)
            if first:
                self._write(first)
            self._stream(dl)
        finally:
            close = getattr(dl.chunks, "close", None)
            if close is not None:
                close()
            self.server.metrics.blob("read", p.tenant, t.repo.label, t.type, self._sent)

    def _stream(self, dl: Download) -> None:
        try:
            for chunk in dl.chunks:
                self._write(chunk)
        except OrbitVaultError as exc:  # a read that fails after the status went out
            log.warning("read failed mid-response path=%s sent=%d error=%r", self.path, self._sent, str(exc))
            raise _Abort from exc
        if self._sent != dl.length:
            log.error("read returned %d bytes, %d promised path=%s", self._sent, dl.length, self.path)
            raise _Abort

    def _save(self, p: Principal, t: Target) -> None:
        repos = self.server.repos
        length = self._body_left  # None for a chunked body
        repos.check_write(p, length)
        self._body_iter = self._body()
        size = repos.save(p, t.repo, t.type, t.name, self._body_iter, length)
        self.server.metrics.blob("write", p.tenant, t.repo.label, t.type, size)
        self._start(200, {}, 0)  # empty, as rest-server answers

    def _delete(self, p: Principal, t: Target) -> None:
        size = self.server.repos.delete(p, t.repo, t.type, t.name)
        self.server.metrics.blob("delete", p.tenant, t.repo.label, t.type, size)
        self._start(200, {}, 0)  # empty, as rest-server answers

    def _list(self, p: Principal, t: Target) -> None:
        items = self.server.repos.list(p, t.repo, t.type)  # first page read: errors still get a status
        v2 = wants_v2(self.headers.get("Accept"))
        self._start(200, {"Content-Type": MIME_V2 if v2 else MIME_V1, "Transfer-Encoding": "chunked"}, None)
        try:
            for piece in _json_array(items, v2):
                self._write_chunk(piece)
            self._write_chunk(b"")
        except OrbitVaultError as exc:
            log.warning("listing failed mid-response path=%s error=%r", self.path, str(exc))
            raise _Abort from exc

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self._sent += len(data)

    def _metrics(self) -> None:
        s = self.server.settings
        user = None if s.prometheus_no_auth else self._authenticate().tenant
        body = self.server.metrics.exposition(user)
        self._start(200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, len(body))
        if self.command != "HEAD":
            self._write(body)

    # --- request bodies ------------------------------------------------------------------------------------

    def _frame_body(self) -> None:
        """How the body is delimited; refuses smuggling-prone or unsupported framings before use."""
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        if te is not None:
            if cl is not None:
                self.close_connection = True
                raise RestError(400, "send Content-Length or Transfer-Encoding, not both")
            if te.strip().lower() != "chunked":
                self.close_connection = True
                raise RestError(501, f"transfer coding {te[:40]!r} is not supported; use chunked or Content-Length")
            self._body_left = None
            self._body_done = False
            return
        if cl is not None:
            if not cl.strip().isdigit() or len(cl) > 20:
                self.close_connection = True
                raise RestError(400, "Content-Length must be a non-negative integer")
            self._body_left = int(cl)
            self._body_done = self._body_left == 0

    def _body(self) -> Iterator[bytes]:
        """The request body in pieces of about PIECE bytes; `_ClientGone` if it ends early."""
        if self._body_left is None:
            yield from _coalesce(self._chunked())
            self._body_done = True
            return
        rfile = self.rfile
        while self._body_left:
            try:
                piece = rfile.read(min(PIECE, self._body_left))
            except (OSError, ValueError) as exc:
                self.close_connection = True
                raise _ClientGone from exc
            if not piece:
                self.close_connection = True
                raise _ClientGone
            self._body_left -= len(piece)
            yield piece
        self._body_done = True

    def _chunked(self) -> Iterator[bytes]:
        rfile = self.rfile
        try:
            while True:
                line = rfile.readline(MAX_CHUNK_LINE + 1)
                if not line.endswith(b"\n"):
                    raise _ClientGone
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _ClientGone from None
                if size < 0:
                    raise _ClientGone
                if size == 0:
                    while True:  # trailers, then the empty line
                        trailer = rfile.readline(MAX_HEADER_VALUE + 1)
                        if trailer in (b"\r\n", b"\n"):
                            return
                        if not trailer.endswith(b"\n"):
                            raise _ClientGone
                while size:
                    piece = rfile.read(min(PIECE, size))
                    if not piece:
                        raise _ClientGone
                    size -= len(piece)
                    yield piece
                if rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise _ClientGone
        except (OSError, ValueError) as exc:
            raise _ClientGone from exc

    def _settle_body(self) -> None:
        """Before answering: read what is left of a refused body and discard it, so the client
        (which may send its whole body before it reads an answer) gets the status rather than a
        reset connection, and the connection stays usable. Bounded by max_object_size; beyond
        that, or if the body is broken, the connection is closed instead."""
        if self._body_done:
            return
        self._body_done = True
        limit = self.server.settings.max_object_size
        if self.close_connection or (self._body_left is not None and self._body_left > limit):
            self.close_connection = True
            return
        body = self._body_iter if self._body_iter is not None else self._body()
        drained = 0
        try:
            for piece in body:
                drained += len(piece)
                if drained > limit:
                    self.close_connection = True
                    return
        except (_ClientGone, OSError):
            self.close_connection = True


def _coalesce(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Join small chunks (Go writes 32 KiB or less) into pieces of about PIECE bytes."""
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) >= PIECE:
            yield piece
            continue
        buf += piece
        if len(buf) >= PIECE:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _json_array(items: Iterator[tuple[str, int]], v2: bool, batch: int = 1000) -> Iterator[bytes]:
    """The listing as JSON, in pieces: v1 an array of names, v2 of {"name", "size"} objects."""
    parts: list[str] = []
    first = True
    yield b"["
    for name, size in items:
        entry = json.dumps({"name": name, "size": size}) if v2 else json.dumps(name)
        parts.append(entry if first else "," + entry)
        first = False
        if len(parts) >= batch:
            yield "".join(parts).encode()
            parts.clear()
    parts.append("]")
    yield "".join(parts).encode()
