"""The ObjectStore through the SDK: a gateway and six real node servers on loopback.

Round trips from 0 bytes to several stripes, byte ranges at every boundary (segments, stripes, the
end), listing, tenants and key modes, object lock, customer keys, and the status codes bad input
gets. Geometry is 4+2 with 4 KiB fragments and 64 KiB stripes (conftest), so everything is small.
"""

from __future__ import annotations

import io
import os
import random
import time
from typing import Any

import blake3
import grpc
import pytest

from orbitvault.client.sdk import (
    DefaultRetention,
    DurabilityState,
    ObjectStoreClient,
    Retention,
    RetentionMode,
    StorageClass,
    blake3_of,
)
from orbitvault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from orbitvault.grpc.v1 import object_store_pb2 as pb
from orbitvault.grpc.v1 import object_store_pb2_grpc
from tests.integration.conftest import GW_PLAIN_PER_STRIPE as PPS
from tests.integration.conftest import GW_SEGMENT as SEG


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


SIZES = [0, 1, SEG - 1, SEG, SEG + 1, PPS - 1, PPS, PPS + 1, 3 * PPS + 12345]


def test_round_trips_from_empty_to_several_stripes(gw: Any) -> None:
    c = gw.client
    bucket = c.create_bucket("sizes")
    assert (bucket.storage_class.k, bucket.storage_class.m) == (4, 2)
    for size in SIZES:
        data = _data(size, size)
        info = c.put("sizes", f"obj-{size}", data, content_type="application/octet-stream", metadata={"n": str(size)})
        assert info.size == size and info.etag == blake3.blake3(data).digest()
        assert info.durability is DurabilityState.DURABLE
        assert c.get("sizes", f"obj-{size}") == data, size
        head = c.head("sizes", f"obj-{size}")
        assert head.metadata == {"n": str(size)} and head.version_id == info.version_id
    st = c.status("sizes", f"obj-{3 * PPS + 12345}")
    assert st.state is DurabilityState.DURABLE and st.stripes_total == 4 and st.shards_in_orbit == 4 * 6
    assert [o.key for o in c.list("sizes")] == sorted(f"obj-{s}" for s in SIZES)


def test_ranges_at_every_boundary(gw: Any) -> None:
    c = gw.client
    c.create_bucket("ranges")
    size = 2 * PPS + 3 * SEG + 7
    data = _data(size, 1)
    c.put("ranges", "r", data)
    points = sorted(
        {0, 1, SEG - 1, SEG, SEG + 1, PPS - 1, PPS, PPS + 1, 2 * PPS - 1, 2 * PPS, size - SEG, size - 1, size}
    )
    for offset in points:
        for length in (0, 1, 2, SEG, PPS + 1, None, size + 10):
            got = c.get("ranges", "r", offset=offset, length=length)
            end = size if length is None else min(size, offset + length)
            assert got == data[offset:end], (offset, length)
    with pytest.raises(InvalidArgument, match="beyond the end"):
        c.get("ranges", "r", offset=size + 1)


def test_streams_files_and_iterators(gw: Any, tmp_path: Any) -> None:
    c = gw.client
    c.create_bucket("streams")
    data = _data(PPS * 2 + 5, 2)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert c.put_file("streams", "from-file", src).size == len(data)
    chunks = (data[i : i + 10_000] for i in range(0, len(data), 10_000))
    assert c.put("streams", "from-iter", chunks).size == len(data)
    assert c.put("streams", "from-stream", io.BytesIO(data), content_blake3=blake3_of(data)).size == len(data)
    # One big chunk from an iterator is split into messages the gateway accepts.
    assert c.put("streams", "one-chunk", iter([data])).size == len(data)
    out = tmp_path / "out.bin"
    info = c.get_file("streams", "from-iter", out)
    assert out.read_bytes() == data and info.size == len(data)
    buf = io.BytesIO()
    c.get_into("streams", "from-stream", buf, offset=PPS - 3, length=10)
    assert buf.getvalue() == data[PPS - 3 : PPS + 7]
    with c.open("streams", "one-chunk") as reader:
        assert reader.info.size == len(data)
        assert b"".join(reader) == data


def test_overwrite_replaces_and_delete_removes(gw: Any) -> None:
    c = gw.client
    c.create_bucket("versions")
    first = c.put("versions", "k", b"one")
    second = c.put("versions", "k", b"two, longer")
    assert first.version_id != second.version_id
    assert c.get("versions", "k") == b"two, longer"
    with pytest.raises(NotFound, match="not the current one"):
        c.get("versions", "k", version_id=first.version_id)
    assert c.get("versions", "k", version_id=second.version_id) == b"two, longer"
    assert c.delete("versions", "k") == second.version_id
    with pytest.raises(NotFound):
        c.head("versions", "k")
    c.create_bucket("full-bucket")
    c.put("full-bucket", "x", b"x")
    with pytest.raises(FailedPrecondition, match="not empty"):
        c.delete_bucket("full-bucket")
    c.delete_bucket("versions")
    assert [b.name for b in c.list_buckets()] == ["full-bucket"]


def test_listing_with_prefix_delimiter_and_pages(gw: Any) -> None:
    c = gw.client
    c.create_bucket("listing")
    keys = [f"a/{i:03d}" for i in range(7)] + ["b/x/1", "b/x/2", "b/y", "c"]
    for k in keys:
        c.put("listing", k, k.encode())
    assert [o.key for o in c.list("listing", page_size=3)] == sorted(keys)
    assert [o.key for o in c.list("listing", prefix="a/", page_size=2)] == keys[:7]
    pages = list(c.list_pages("listing", delimiter="/", page_size=2))
    prefixes = [p for page in pages for p in page.common_prefixes]
    objects = [o.key for page in pages for o in page.objects]
    assert prefixes == ["a/", "b/"] and objects == ["c"]
    sub = list(c.list_pages("listing", prefix="b/", delimiter="/"))
    assert sub[0].common_prefixes == ["b/x/"] and [o.key for o in sub[0].objects] == ["b/y"]
    assert all(o.metadata == {} for o in c.list("listing"))


def test_tenants_are_isolated(gw: Any) -> None:
    acme = gw.client
    other = gw.new_client("globex")
    acme.create_bucket("shared-name")
    acme.put("shared-name", "secret", b"acme data")
    with pytest.raises(NotFound):
        other.get("shared-name", "secret")
    assert list(other.list_buckets()) == []
    other.create_bucket("shared-name")  # bucket names are per tenant
    other.put("shared-name", "secret", b"globex data")
    assert acme.get("shared-name", "secret") == b"acme data"
    assert other.get("shared-name", "secret") == b"globex data"
    with pytest.raises(AlreadyExists):
        acme.create_bucket("shared-name")


def test_key_modes_and_authentication(gw: Any) -> None:
    gw.client.create_bucket("modes")
    gw.client.put("modes", "existing", b"x")
    reader = gw.new_client(mode="read-only")
    assert reader.get("modes", "existing") == b"x"
    with pytest.raises(PermissionDenied, match="read-only"):
        reader.put("modes", "new", b"y")
    appender = gw.new_client(mode="append-only")
    appender.put("modes", "appended", b"z")
    with pytest.raises(PermissionDenied, match="append-only"):
        appender.put("modes", "appended", b"overwrite")
    with pytest.raises(PermissionDenied, match="append-only"):
        appender.delete("modes", "appended")
    assert gw.client.get("modes", "appended") == b"z"
    address = gw.server.address
    for token in ("", "not-a-key", "ovk_" + "0" * 16 + "_" + "0" * 64, "x" * 5000):
        with ObjectStoreClient(address, token, retries=0, insecure=True) as bad, pytest.raises(Unauthenticated):
            bad.head("modes", "existing")
    # A revoked key stops working at once.
    key = gw.gateway.create_api_key("acme")
    with ObjectStoreClient(address, key.token, retries=0, insecure=True) as revoked:
        assert revoked.get("modes", "existing") == b"x"
        gw.gateway.delete_api_key(key.key_id)
        with pytest.raises(Unauthenticated):
            revoked.get("modes", "existing")


def test_object_lock(gw: Any) -> None:
    c = gw.client
    c.create_bucket("locked")
    future = int(time.time() * 1000) + 3_600_000
    c.put("locked", "gov", b"g", retention=Retention(RetentionMode.GOVERNANCE, future))
    c.put("locked", "comp", b"c", retention=Retention(RetentionMode.COMPLIANCE, future))
    c.put("locked", "held", b"h", legal_hold=True)
    for key in ("gov", "comp", "held"):
        with pytest.raises(FailedPrecondition):
            c.delete("locked", key)
        with pytest.raises(FailedPrecondition):
            c.put("locked", key, b"overwrite")
    with pytest.raises(FailedPrecondition, match="COMPLIANCE"):
        c.delete("locked", "comp", bypass_governance=True)
    with pytest.raises(FailedPrecondition, match="COMPLIANCE"):
        c.set_retention("locked", "comp", Retention(RetentionMode.COMPLIANCE, future - 1000))
    assert c.set_retention("locked", "comp", Retention(RetentionMode.COMPLIANCE, future + 1)).retention is not None
    appender = gw.new_client(mode="append-only")
    with pytest.raises(PermissionDenied):
        appender.delete("locked", "gov", bypass_governance=True)
    c.delete("locked", "gov", bypass_governance=True)  # a full key may bypass governance
    assert c.set_legal_hold("locked", "held", False).legal_hold is False
    c.delete("locked", "held")
    # Bucket default retention applies to new objects.
    c.create_bucket("worm", default_retention=DefaultRetention(RetentionMode.GOVERNANCE, 60_000))
    info = c.put("worm", "k", b"v")
    assert info.retention is not None and info.retention.mode is RetentionMode.GOVERNANCE
    with pytest.raises(FailedPrecondition):
        c.delete("worm", "k")


def test_customer_keys(gw: Any) -> None:
    c = gw.client
    c.create_bucket("ssec")
    key = os.urandom(32)
    data = _data(PPS + 100, 3)
    info = c.put("ssec", "k", data, customer_key=key)
    assert info.customer_key_blake3 == blake3.blake3(key).digest()
    assert c.get("ssec", "k", customer_key=key, offset=PPS - 1, length=5) == data[PPS - 1 : PPS + 4]
    with pytest.raises((InvalidArgument, PermissionDenied)):
        c.get("ssec", "k")
    with pytest.raises(PermissionDenied):
        c.get("ssec", "k", customer_key=os.urandom(32))


def _raw(gw: Any) -> object_store_pb2_grpc.ObjectStoreStub:
    channel = grpc.insecure_channel(gw.server.address)
    gw.sky.clients.append(channel)
    return object_store_pb2_grpc.ObjectStoreStub(channel)


def _code(fn: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc_info:
        fn()
    return exc_info.value.code()


def test_bad_inputs_get_the_right_status(gw: Any) -> None:
    c = gw.client
    c.create_bucket("inputs")
    for name in ("ab", "UPPER", "-dash", "a" * 64, "with space", "a..b"):
        with pytest.raises(InvalidArgument):
            c.create_bucket(name)
    for sc in (StorageClass(30, 3), StorageClass(4, 0), StorageClass(6, 2)):  # >32, no parity, > nodes
        with pytest.raises(InvalidArgument):
            c.create_bucket("geometry", storage_class=sc)
    with pytest.raises(InvalidArgument):
        c.put("inputs", "k" * 1025, b"x")
    with pytest.raises(InvalidArgument):
        c.put("inputs", "nul\x00key", b"x")
    with pytest.raises(InvalidArgument):
        c.put("inputs", "meta", b"x", metadata={"big": "v" * 2000})
    with pytest.raises(InvalidArgument):
        c.put("inputs", "meta", b"x", metadata={"Bad Key": "v"})
    with pytest.raises(InvalidArgument, match="announced"):
        c.put("inputs", "short", iter([b"12345"]), size=10)
    with pytest.raises(InvalidArgument):
        c.put("inputs", "long", iter([b"12345"]), size=3)
    with pytest.raises(InvalidArgument):
        c.put("inputs", "hash", b"data", content_blake3=bytes(32))
    with pytest.raises(NotFound):
        c.put("no-such-bucket", "k", b"x")
    with pytest.raises(InvalidArgument):
        c.head("inputs", "k", version_id=b"short")
    assert [o.key for o in c.list("inputs")] == []  # nothing half-stored by any of the above

    stub = _raw(gw)
    md = (("x-orbitvault-api-key", gw.token),)

    def put(messages: list[pb.PutObjectRequest]) -> Any:
        return stub.PutObject(iter(messages), metadata=md, timeout=10)

    start = pb.PutObjectRequest(start=pb.PutObjectStart(bucket="inputs", key="raw"))
    assert _code(lambda: put([])) is grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: put([pb.PutObjectRequest(data=b"x")])) is grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: put([start, start])) is grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: put([start, pb.PutObjectRequest(data=b"x" * (4 << 20 | 1))])) in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    missing = pb.GetObjectRequest(bucket="inputs", key="k", offset=5)
    assert _code(lambda: list(stub.GetObject(missing, metadata=md, timeout=10))) is grpc.StatusCode.NOT_FOUND
    for bad_list in (
        pb.ListObjectsRequest(bucket="inputs", page_size=1001),
        pb.ListObjectsRequest(bucket="inputs", page_token="!" * 2000),
        pb.ListObjectsRequest(bucket="inputs", delimiter="/" * 17),
    ):
        assert _code(lambda r=bad_list: stub.ListObjects(r, metadata=md)) is grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: stub.HeadObject(pb.HeadObjectRequest(bucket="inputs", key="k"))) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert [o.key for o in c.list("inputs")] == []


def test_sdk_retries_unavailable_with_backoff_only_when_it_may() -> None:
    slept: list[float] = []
    with ObjectStoreClient("127.0.0.1:1", "ovk_x", retries=3, backoff_s=0.1, sleep=slept.append, insecure=True) as c:
        with pytest.raises(Unavailable):
            c.head("bucket", "key")
        assert len(slept) == 3 and slept[0] <= 0.1 and slept[2] > slept[0]
        slept.clear()
        with pytest.raises(Unavailable):
            c.put("bucket", "key", b"replayable")
        assert len(slept) == 3
        slept.clear()
        with pytest.raises(Unavailable):
            c.put("bucket", "key", iter([b"one-shot"]))
        assert slept == []  # an iterator cannot be replayed: not retried
        with pytest.raises(Unavailable):
            c.create_bucket("bucket")
        assert slept == []  # not idempotent: not retried


def test_status_and_restore(gw: Any) -> None:
    c = gw.client
    c.create_bucket("status")
    c.put("status", "k", b"x" * 1000)
    st = c.gateway_status()
    assert len(st.nodes) == 6 and all(n.reachability == "in_contact" for n in st.nodes)
    assert st.repair.shards_missing == 0
    assert c.restore("status", "k").ready
    with pytest.raises(NotFound):
        c.restore("status", "missing")
    counters = gw.server.counters.snapshot()
    assert counters["puts"] >= 1 and counters["put_bytes"] >= 1000


def test_resource_exhausted_is_typed(gw: Any) -> None:
    # The SDK maps every status to its orbitvault error; RESOURCE_EXHAUSTED from grpc's own
    # message-size check is one the gateway never raises itself.
    stub = _raw(gw)
    md = (("x-orbitvault-api-key", gw.token),)
    gw.client.create_bucket("limits")
    start = pb.PutObjectRequest(start=pb.PutObjectStart(bucket="limits", key="k"))
    huge = pb.PutObjectRequest(data=b"x" * (6 << 20))
    code = _code(lambda: stub.PutObject(iter([start, huge]), metadata=md, timeout=10))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    from orbitvault.grpc.status import ERROR_FOR_CODE

    assert ERROR_FOR_CODE[code] is ResourceExhausted


def test_metrics_and_maintenance(constellation: Any) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = constellation.start_gateway(metrics_port=port, maintenance=True, repair_interval_s=0.2)
    server.gateway.create_tenant("acme")
    c = constellation.client(server.address, server.gateway.create_api_key("acme").token)
    c.create_bucket("metrics")
    c.put("metrics", "k", b"m" * 5000)
    assert c.get("metrics", "k") == b"m" * 5000
    deadline = time.monotonic() + 10
    while server.maintenance.stats.checkpoints < 1 or server.maintenance.stats.repair_sweeps < 1:
        assert time.monotonic() < deadline, server.maintenance.stats  # admin changes call for a checkpoint
        time.sleep(0.05)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "orbitvault_gateway_puts_total 1.0" in text
    assert "orbitvault_gateway_put_bytes_total 5000.0" in text
    assert "orbitvault_gateway_get_bytes_total 5000.0" in text
    assert "orbitvault_gateway_nodes_up 6.0" in text
    assert "orbitvault_gateway_repair_shards_missing 0.0" in text
    assert "orbitvault_gateway_checkpoints_total" in text


class _FlakyStore(object_store_pb2_grpc.ObjectStoreServicer):
    """Serves one object, but the first GetObject stream breaks with UNAVAILABLE halfway."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[pb.GetObjectRequest] = []

    def GetObject(self, request: pb.GetObjectRequest, context: Any) -> Any:
        self.requests.append(request)
        end = len(self.data) if not request.HasField("length") else request.offset + request.length
        yield pb.GetObjectResponse(info=pb.ObjectInfo(key="k", version_id=b"v" * 32, size=len(self.data)))
        for i in range(request.offset, end, 1000):
            if len(self.requests) == 1 and i >= request.offset + 3000:
                context.abort(grpc.StatusCode.UNAVAILABLE, "node went away")
            yield pb.GetObjectResponse(data=self.data[i : min(i + 1000, end)])


def test_sdk_resumes_an_interrupted_get_on_the_same_version() -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = _data(10_000, 9)
    store = _FlakyStore(data)
    server = grpc.server(ThreadPoolExecutor(2))
    object_store_pb2_grpc.add_ObjectStoreServicer_to_server(store, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with ObjectStoreClient(f"127.0.0.1:{port}", "ovk_x", retries=2, backoff_s=0.01, insecure=True) as c:
            assert c.get("bucket", "k", offset=500, length=8000) == data[500:8500]
    finally:
        server.stop(0)
    first, second = store.requests
    assert first.version_id == b"" and second.version_id == b"v" * 32  # pinned: never mixes versions
    assert (second.offset, second.length) == (3500, 5000)
