"""restic's REST protocol over an in-process gateway on fake nodes: routes, statuses, auth, streaming.

Plain `http.client` requests, so every status, header and body is checked as restic and
rest-server define them (doc/REST_backend.rst, rest-server's repo/repo.go). The real restic binary
runs in test_rest_restic.py.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.ground.model import KeyMode
from orbitvault.rest import RestServer, RestSettings, load_rest_settings, serve_rest
from orbitvault.rest import repo as repo_mod
from orbitvault.rest.protocol import (
    Kind,
    PathError,
    RangeNotSatisfiable,
    RangeSpec,
    parse_path,
    parse_range,
    resolve_range,
)
from tests.unit.ground_fakes import Env, random_bytes

MiB = 1 << 20
V2 = "application/vnd.x.restic.rest.v2"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Client:
    """One keep-alive connection, as restic uses them; basic auth user = tenant, password = token."""

    def __init__(self, server: RestServer, user: str | None, token: str | None, *, tls: ssl.SSLContext | None = None):
        if tls is None:
            self.conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        else:
            self.conn = http.client.HTTPSConnection("localhost", server.port, timeout=30, context=tls)
        self.auth = None if user is None else base64.b64encode(f"{user}:{token}".encode()).decode()

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        h = dict(headers or {})
        if self.auth is not None:
            h.setdefault("Authorization", f"Basic {self.auth}")
        chunked = body is not None and not isinstance(body, bytes)
        self.conn.request(method, path, body=body, headers=h, encode_chunked=chunked)
        r = self.conn.getresponse()
        return Reply(r.status, r.headers, r.read())

    def close(self) -> None:
        self.conn.close()


@dataclass
class Rig:
    env: Env
    server: RestServer
    acme: Client

    @property
    def gw(self) -> Any:
        return self.env.gw

    def client(self, mode: KeyMode = KeyMode.FULL, tenant: str = "acme") -> Client:
        key = self.gw.create_api_key(tenant, mode)
        return Client(self.server, tenant, key.token)


def _start(env: Env, **settings: Any) -> RestServer:
    return serve_rest(env.gw, RestSettings(listen="127.0.0.1:0", **settings))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # 4+2, 64 KiB fragments, 1 MiB stripes (960 KiB of plaintext each): multi-stripe objects stay small
    e = Env(tmp_path, 6, segment_size=64 * 1024, stripe_size=MiB)
    yield e
    e.close()


@pytest.fixture
def rig(env: Env) -> Iterator[Rig]:
    server = _start(env)
    acme = Client(server, "acme", env.key.token)
    try:
        assert acme.request("POST", "/repo1/?create=true").status == 200
        yield Rig(env, server, acme)
    finally:
        acme.close()
        server.stop()


def put(c: Client, path: str, data: bytes, **kw: Any) -> Reply:
    return c.request("POST", path, data, **kw)


# --- protocol pieces ----------------------------------------------------------------------------------


def test_parse_path() -> None:
    n = "ab" * 32
    t = parse_path("/bkp/")
    assert (t.kind, t.repo.bucket, t.repo.prefix) == (Kind.REPO, "bkp", "")
    t = parse_path(f"/bkp/team/a/data/{n}")
    assert (t.kind, t.repo.prefix, t.type, t.name) == (Kind.OBJECT, "team/a/", "data", n)
    assert t.repo.key("data", n) == f"team/a/data/{n}" and t.repo.label == "bkp/team/a"
    assert parse_path("/bkp/x/config").kind is Kind.CONFIG
    assert parse_path("/bkp/x/config").repo.key("config") == "x/config"
    assert parse_path("/bkp/locks/").kind is Kind.LIST
    for bad, status in [
        ("/", 404),
        ("/Bad_Bucket/", 400),
        ("/bkp/../x/", 400),
        ("/bkp//x/", 400),
        ("/bkp/data/xyz", 400),
        (f"/bkp/data/{n.upper()}", 400),
        (f"/bkp/data/ab/{n}", 404),
        ("/bkp/config/x", 404),
        ("/bkp/" + "s/" * 9, 400),
        ("/bkp/%ff/", 400),
    ]:
        with pytest.raises(PathError) as exc:
            parse_path(bad)
        assert exc.value.status == status, bad


def test_ranges() -> None:
    assert parse_range(None) is None
    assert parse_range("bytes=0-9") == RangeSpec(0, 9)
    assert parse_range("bytes=5-") == RangeSpec(5, None)
    assert parse_range("bytes=-7") == RangeSpec(None, 7)
    assert parse_range("bytes=0-1,5-6") is None  # several: the whole object, as RFC 9110 allows
    assert parse_range("items=0-1") is None
    for bad in ("bytes=x-1", "bytes=9-3", "bytes=-"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad)
    assert resolve_range(RangeSpec(0, 99), 10) == (0, 10)
    assert resolve_range(RangeSpec(None, 3), 10) == (7, 3)
    assert resolve_range(RangeSpec(None, 30), 10) == (0, 10)
    with pytest.raises(RangeNotSatisfiable):
        resolve_range(RangeSpec(10, None), 10)


def test_settings_load_and_refuse_plaintext(tmp_path: Path) -> None:
    s = load_rest_settings(
        {"listen": "127.0.0.1:0", "max_repo_size": "1MiB", "append_only": True},
        env={"ORBITVAULT_REST_NO_VERIFY_UPLOAD": "yes"},
        overrides={"access_log": "-", "listen": None},
    )
    assert (s.max_repo_size, s.append_only, s.no_verify_upload, s.access_log) == (MiB, True, True, "-")
    with pytest.raises(InvalidArgument, match="unknown rest setting 'max_size'"):
        load_rest_settings({"max_size": 1}, env={})
    with pytest.raises(InvalidArgument, match="both tls_cert and tls_key"):
        RestSettings(tls_cert=tmp_path / "c")

    class Gw:  # the gateway's TLS pair is the default
        tls_cert, tls_key, insecure = tmp_path / "gw.crt", tmp_path / "gw.key", False

    s = load_rest_settings({}, env={}, gateway=Gw())
    assert (s.tls_cert, s.tls_key) == (tmp_path / "gw.crt", tmp_path / "gw.key")
    with pytest.raises(InvalidArgument, match="without TLS"):
        RestSettings(listen="0.0.0.0:0").check_plaintext()
    RestSettings(listen="0.0.0.0:0", insecure=True).check_plaintext()
    RestSettings(listen="127.0.0.1:0").check_plaintext()


# --- repository, config, objects --------------------------------------------------------------------


def test_create_repository(rig: Rig) -> None:
    c = rig.acme
    assert c.request("POST", "/repo1/?create=true").status == 200  # exists already: still 200
    assert c.request("POST", "/repo1/").status == 400
    r = c.request("GET", "/repo1/")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert c.request("DELETE", "/repo1/").status == 501
    assert c.request("GET", "/nothere/keys/").status == 404
    assert c.request("POST", "/Bad/?create=true").status == 400


def test_config(rig: Rig) -> None:
    c = rig.acme
    assert c.request("HEAD", "/repo1/config").status == 404
    assert c.request("GET", "/repo1/config").status == 404
    assert put(c, "/repo1/config", b"cfg-bytes").status == 200  # config is not hash-checked
    r = c.request("HEAD", "/repo1/config")
    assert r.status == 200 and r.headers["Content-Length"] == "9" and r.body == b""
    assert c.request("GET", "/repo1/config").body == b"cfg-bytes"
    assert put(c, "/repo1/config", b"other").status == 403  # never overwritten
    assert c.request("GET", "/repo1/config").body == b"cfg-bytes"
    r = c.request("PUT", "/repo1/config", b"x")
    assert r.status == 405 and "POST" in r.headers["Allow"]


def test_object_round_trip_ranges_and_no_overwrite(rig: Rig) -> None:
    c = rig.acme
    data = random_bytes(3 * MiB + 12345, 1)  # four stripes
    name = sha(data)
    path = f"/repo1/data/{name}"
    assert c.request("HEAD", path).status == 404
    assert put(c, path, data).status == 200
    r = c.request("HEAD", path)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
    r = c.request("GET", path)
    assert r.status == 200 and r.body == data
    size = len(data)
    for header, lo, hi in [
        ("bytes=10-19", 10, 19),
        (f"bytes={size - 5}-", size - 5, size - 1),
        ("bytes=-7", size - 7, size - 1),
        (f"bytes=1000000-{size + 50}", 1000000, size - 1),  # clipped at the end
        ("bytes=983000-2000000", 983000, 2000000),  # across stripes
    ]:
        r = c.request("GET", path, headers={"Range": header})
        assert r.status == 206, header
        assert r.headers["Content-Range"] == f"bytes {lo}-{hi}/{size}"
        assert r.body == data[lo : hi + 1]
    r = c.request("GET", path, headers={"Range": f"bytes={size}-"})
    assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    assert c.request("GET", path, headers={"Range": "bytes=zz"}).status == 416
    r = c.request("GET", path, headers={"Range": "bytes=0-1,4-5"})
    assert r.status == 200 and r.body == data
    r = put(c, path, data)
    assert r.status == 403 and "already exists" in r.text
    assert c.request("DELETE", path).status == 200
    assert c.request("GET", path).status == 404
    assert c.request("DELETE", path).status == 404


def test_upload_must_match_its_name(rig: Rig) -> None:
    c = rig.acme
    data = random_bytes(2 * MiB, 2)
    wrong = sha(b"something else")
    r = put(c, f"/repo1/data/{wrong}", data)
    assert r.status == 400 and "SHA-256" in r.text
    assert c.request("HEAD", f"/repo1/data/{wrong}").status == 404
    objects, _, _ = rig.gw.list_objects(rig.env.p, "repo1")
    assert objects == []
    assert rig.gw.catalog.pending_uploads() == []  # the put was aborted, its shards discarded
    assert sum(link.store.shard_count() for link in rig.env.links) == 0
    # and chunked bodies of unknown length are checked the same way
    r = c.request("POST", f"/repo1/index/{wrong}", iter([data[:1000], data[1000:]]))
    assert r.status == 400
    r = c.request("POST", f"/repo1/index/{sha(data)}", iter([data[:1000], data[1000:]]))
    assert r.status == 200
    assert c.request("GET", f"/repo1/index/{sha(data)}").body == data


def test_no_verify_upload(env: Env) -> None:
    with _start(env, no_verify_upload=True) as server:
        c = Client(server, "acme", env.key.token)
        assert c.request("POST", "/rr1/?create=true").status == 200
        assert put(c, f"/rr1/data/{sha(b'x')}", b"not x").status == 200
        c.close()


def test_bad_names_and_methods(rig: Rig) -> None:
    c = rig.acme
    r = put(c, "/repo1/data/xyz", b"x")
    assert r.status == 400 and "64 lowercase hex" in r.text
    assert c.request("GET", f"/repo1/data/{'0' * 63}").status == 400
    assert c.request("HEAD", "/repo1/keys/").status == 405
    r = c.request("BREW", "/repo1/config")
    assert r.status == 501 and b"Traceback" not in r.body


def test_listing_v1_v2_paged_and_nested(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    c = rig.acme
    blobs = [random_bytes(100 + i, 10 + i) for i in range(5)]
    for b in blobs:
        assert put(c, f"/repo1/data/{sha(b)}", b).status == 200
    # a pack where rest-server keeps it on disk (data/ab/ab...), e.g. a copied rest-server repository
    nested = random_bytes(77, 99)
    rig.env.put(f"data/{sha(nested)[:2]}/{sha(nested)}", nested, bucket="repo1")
    rig.env.put("data/not-a-restic-name", b"zz", bucket="repo1")  # ignored by listings
    monkeypatch.setattr(repo_mod, "LIST_PAGE", 2)  # several pages
    r = c.request("GET", "/repo1/data/")
    assert r.status == 200 and r.headers["Content-Type"] == "application/vnd.x.restic.rest.v1"
    expect = {sha(b): len(b) for b in [*blobs, nested]}
    assert sorted(json.loads(r.body)) == sorted(expect)
    r = c.request("GET", "/repo1/data/", headers={"Accept": V2})
    assert r.status == 200 and r.headers["Content-Type"] == V2
    assert {o["name"]: o["size"] for o in json.loads(r.body)} == expect
    assert c.request("GET", f"/repo1/data/{sha(nested)}").body == nested  # read through the nested key
    r = c.request("GET", f"/repo1/data/{sha(nested)}", headers={"Range": "bytes=1-2"})
    assert r.status == 206 and r.body == nested[1:3]
    assert json.loads(c.request("GET", "/repo1/snapshots/").body) == []


def test_nested_repositories(rig: Rig) -> None:
    c = rig.acme
    assert c.request("POST", "/repo1/team/alice/?create=true").status == 200
    data = b"alice's key"
    assert put(c, f"/repo1/team/alice/keys/{sha(data)}", data).status == 200
    keys = [o.key for o in rig.gw.list_objects(rig.env.p, "repo1")[0]]
    assert keys == [f"team/alice/keys/{sha(data)}"]
    assert json.loads(c.request("GET", "/repo1/keys/").body) == []  # the outer repository is separate
    assert json.loads(c.request("GET", "/repo1/team/alice/keys/").body) == [sha(data)]


# --- auth and modes -----------------------------------------------------------------------------------


def test_credentials(rig: Rig) -> None:
    s = rig.server
    for user, token in [(None, None), ("acme", "ovk_0000000000000000_" + "0" * 64), ("acme", "garbage")]:
        c = Client(s, user, token)
        r = c.request("GET", "/repo1/keys/")
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic realm=")
        c.close()
    rig.gw.create_tenant("other")
    other_key = rig.gw.create_api_key("other").token
    c = Client(s, "acme", other_key)  # a valid key of another tenant under acme's name
    assert c.request("GET", "/repo1/keys/").status == 401
    c.close()
    c = rig.acme
    r = c.request("GET", "/repo1/keys/", headers={"Authorization": "Basic !!!"})
    assert r.status == 401


def test_tenants_see_only_their_repositories(rig: Rig) -> None:
    data = b"acme key file"
    assert put(rig.acme, f"/repo1/keys/{sha(data)}", data).status == 200
    rig.gw.create_tenant("other")
    other = rig.client(tenant="other")
    assert other.request("GET", "/repo1/keys/").status == 404
    assert other.request("GET", f"/repo1/keys/{sha(data)}").status == 404
    assert other.request("POST", "/repo1/?create=true").status == 200  # its own bucket of that name
    assert json.loads(other.request("GET", "/repo1/keys/").body) == []
    other.close()


def test_read_only_and_append_only_keys(rig: Rig) -> None:
    data = b"pack"
    lock = b"lock file"
    assert put(rig.acme, f"/repo1/data/{sha(data)}", data).status == 200
    ro = rig.client(KeyMode.READ_ONLY)
    assert ro.request("GET", f"/repo1/data/{sha(data)}").body == data
    assert put(ro, f"/repo1/locks/{sha(lock)}", lock).status == 403
    assert ro.request("DELETE", f"/repo1/data/{sha(data)}").status == 403
    assert ro.request("POST", "/ro-new/?create=true").status == 403
    ao = rig.client(KeyMode.APPEND_ONLY)
    assert put(ao, f"/repo1/locks/{sha(lock)}", lock).status == 200
    r = ao.request("DELETE", f"/repo1/data/{sha(data)}")
    assert r.status == 403 and "append-only" in r.text
    assert ao.request("DELETE", "/repo1/config").status == 403
    assert ao.request("DELETE", f"/repo1/locks/{sha(lock)}").status == 200  # locks may go
    ro.close()
    ao.close()


def test_append_only_server(env: Env) -> None:
    with _start(env, append_only=True) as server:
        c = Client(server, "acme", env.key.token)
        assert c.request("POST", "/rr1/?create=true").status == 200
        for t in ("data", "locks"):
            assert put(c, f"/rr1/{t}/{sha(t.encode())}", t.encode()).status == 200
        assert c.request("DELETE", f"/rr1/data/{sha(b'data')}").status == 403
        assert c.request("DELETE", f"/rr1/locks/{sha(b'locks')}").status == 200
        c.close()


def test_quota(env: Env) -> None:
    with _start(env, max_repo_size=1000) as server:
        c = Client(server, "acme", env.key.token)
        assert c.request("POST", "/qq1/?create=true").status == 200
        a, b = random_bytes(600, 1), random_bytes(600, 2)
        assert put(c, f"/qq1/data/{sha(a)}", a).status == 200
        r = put(c, f"/qq1/data/{sha(b)}", b)  # declared: refused before reading, as rest-server
        assert r.status == 507 and "quota" in r.text
        r = c.request("POST", f"/qq1/data/{sha(b)}", iter([b[:300], b[300:]]))  # undeclared: cut off
        assert r.status == 413
        assert server.repos.usage(env.p, parse_path("/qq1/").repo) == 600
        assert c.request("DELETE", f"/qq1/data/{sha(a)}").status == 200
        assert put(c, f"/qq1/data/{sha(b)}", b).status == 200
        assert c.request("HEAD", f"/qq1/data/{sha(b)}").status == 200
        c.close()


# --- streaming, failures, metrics, logs, TLS ---------------------------------------------------------


def test_100_mib_pack_streams_both_ways(rig: Rig) -> None:
    """A 100 MiB upload and download never hold the object: peak traced memory stays far below it."""
    block = random_bytes(MiB, 7)
    total = 100
    h = hashlib.sha256()
    for _ in range(total):
        h.update(block)
    name = h.hexdigest()

    def body() -> Iterator[bytes]:
        for _ in range(total):
            yield block

    c = rig.acme
    tracemalloc.start()
    try:
        r = c.request("POST", f"/repo1/data/{name}", body(), headers={"Content-Length": str(total * MiB)})
        assert r.status == 200, r.text
        _, up_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        c.conn.request("GET", f"/repo1/data/{name}", headers={"Authorization": f"Basic {c.auth}"})
        resp = c.conn.getresponse()
        assert resp.status == 200
        got = hashlib.sha256()
        n = 0
        while piece := resp.read(MiB):
            got.update(piece)
            n += len(piece)
        _, down_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == total * MiB and got.hexdigest() == name
    assert up_peak < 24 * MiB, f"upload peaked at {up_peak / MiB:.1f} MiB"
    assert down_peak < 24 * MiB, f"download peaked at {down_peak / MiB:.1f} MiB"


def test_client_gone_mid_upload_stores_nothing(rig: Rig) -> None:
    data = random_bytes(3 * MiB, 5)
    s = socket.create_connection(("127.0.0.1", rig.server.port))
    head = (
        f"POST /repo1/data/{sha(data)} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {rig.acme.auth}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    s.sendall(head + data[: 2 * MiB])
    s.close()
    for _ in range(100):  # the server notices, aborts the put
        if not rig.server.metrics.in_flight:
            break
        time.sleep(0.05)
    assert rig.acme.request("HEAD", f"/repo1/data/{sha(data)}").status == 404
    assert put(rig.acme, f"/repo1/data/{sha(data)}", data).status == 200  # and a retry works


def test_degraded_reads_and_lost_nodes(rig: Rig) -> None:
    data = random_bytes(3 * MiB, 6)
    path = f"/repo1/data/{sha(data)}"
    assert put(rig.acme, path, data).status == 200
    links = rig.env.links
    links[0].down = links[1].down = True  # m = 2 nodes down: reads still succeed
    assert rig.acme.request("GET", path).body == data
    r = rig.acme.request("GET", path, headers={"Range": "bytes=1000000-1000099"})
    assert r.status == 206 and r.body == data[1000000:1000100]
    links[2].down = True  # below k: refused before the first byte, retryable
    r = rig.acme.request("GET", path)
    assert r.status == 503 and r.headers["Retry-After"]
    links[0].down = links[1].down = links[2].down = False


def test_read_failing_mid_response_is_cut_not_wrong(rig: Rig) -> None:
    data = random_bytes(3 * MiB, 8)
    path = f"/repo1/data/{sha(data)}"
    assert put(rig.acme, path, data).status == 200
    rig.gw.refresh_nodes(force=True)
    for link in rig.env.links:
        link.die_after_reads = 1  # every node answers once, then is gone: the first stripe only
    c = rig.acme
    c.conn.request("GET", path, headers={"Authorization": f"Basic {c.auth}"})
    resp = c.conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
    with pytest.raises(http.client.IncompleteRead) as exc:
        resp.read()
    assert data.startswith(exc.value.partial)


def test_metrics_and_access_log(env: Env, tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with _start(env, access_log=str(log_path)) as server:
        c = Client(server, "acme", env.key.token)
        assert c.request("POST", "/mm1/?create=true").status == 200
        data = b"metric me"
        assert put(c, f"/mm1/data/{sha(data)}", data).status == 200
        assert c.request("GET", f"/mm1/data/{sha(data)}").body == data
        env.gw.create_tenant("other")
        other = Client(server, "other", env.gw.create_api_key("other").token)
        assert other.request("POST", "/mm2/?create=true").status == 200
        assert put(other, f"/mm2/keys/{sha(b'k')}", b"k").status == 200
        assert Client(server, None, None).request("GET", "/metrics").status == 401
        text = c.request("GET", "/metrics").text
        assert 'rest_server_blob_write_total{repo="mm1",type="data",user="acme"} 1.0' in text
        assert 'rest_server_blob_write_bytes_total{repo="mm1",type="data",user="acme"} 9.0' in text
        assert 'rest_server_blob_read_bytes_total{repo="mm1",type="data",user="acme"} 9.0' in text
        assert 'user="other"' not in text  # a tenant sees only its own series
        assert server.metrics.value("write", "other", "mm2", "keys") == (1, 1)
        c.close()
        other.close()
    lines = log_path.read_text().splitlines()
    assert any(
        line.startswith("127.0.0.1 - acme [") and f'"POST /mm1/data/{sha(data)} HTTP/1.1" 200 0' in line
        for line in lines
    )
    assert env.key.token not in log_path.read_text()


def test_prometheus_without_auth_shows_every_tenant(env: Env) -> None:
    with _start(env, prometheus_no_auth=True) as server:
        c = Client(server, "acme", env.key.token)
        assert c.request("POST", "/mm1/?create=true").status == 200
        assert put(c, f"/mm1/keys/{sha(b'k')}", b"k").status == 200
        text = Client(server, None, None).request("GET", "/metrics").text
        assert 'user="acme"' in text and "orbitvault_rest_requests_in_flight" in text
        c.close()


def test_tls_with_the_gateways_certificate(env: Env, tmp_path: Path) -> None:
    from orbitvault.ground import pki

    pki.init(tmp_path / "pki")
    issued = pki.issue(tmp_path / "pki", "gateway", "gw")
    with _start(env, tls_cert=issued.cert_path, tls_key=issued.key_path) as server:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
        c = Client(server, "acme", env.key.token, tls=ctx)
        assert c.request("POST", "/tt1/?create=true").status == 200
        assert put(c, f"/tt1/keys/{sha(b'k')}", b"k").status == 200
        c.close()
        with pytest.raises(ssl.SSLError):  # a client that does not trust the CA
            Client(server, "acme", env.key.token, tls=ssl.create_default_context()).request("GET", "/tt1/keys/")
        plain = Client(server, "acme", env.key.token)  # plaintext to a TLS port: no answer
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            plain.request("GET", "/tt1/keys/")


def test_rate_limited_tenant_gets_429(tmp_path: Path) -> None:
    env = Env(tmp_path, 6, rate_limit_per_s=1.0, rate_limit_burst=5)
    try:
        with _start(env) as server:
            c = Client(server, "acme", env.key.token)
            statuses = [c.request("GET", "/data/keys/").status for _ in range(12)]
            assert statuses[0] == 200 and 429 in statuses, statuses
            r = c.request("GET", "/data/keys/")
            assert r.status == 429 and r.headers["Retry-After"] and "rate limit" in r.text
            c.close()
    finally:
        env.close()


def test_mfa_tenant_with_locks_exempt(rig: Rig) -> None:
    """A tenant with MFA delete: restic cannot send codes, so its locks must be exempt (README)."""
    rig.gw.mfa_enable("acme", exempt=["*locks/*"])
    data, lock = b"pack", b"lock"
    assert put(rig.acme, f"/repo1/data/{sha(data)}", data).status == 200
    assert put(rig.acme, f"/repo1/locks/{sha(lock)}", lock).status == 200
    assert rig.acme.request("DELETE", f"/repo1/locks/{sha(lock)}").status == 200
    r = rig.acme.request("DELETE", f"/repo1/data/{sha(data)}")
    assert r.status == 403 and "MFA" in r.text
