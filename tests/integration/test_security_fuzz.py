"""Fuzzing every ShardStore and ObjectStore method with hypothesis, over real servers on loopback.

Requests are random messages built from the proto descriptors (every field of every type, edge
values, nested messages, oneofs, maps), random streams of them, and mutated bytes of valid
requests sent raw (so they need not even parse). For every call: the server answers (no crash, no
hang), with a status a client can act on (never UNKNOWN or INTERNAL), a call that failed stored
nothing, and the process's peak memory stays bounded.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbitvault.grpc import convert
from orbitvault.grpc.v1 import object_store_pb2, shard_store_pb2
from orbitvault.storage.config import load_node_config
from tests.integration.conftest import _make_shard

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# Statuses a client can act on. UNAVAILABLE is not among them: every server here is up, so it
# would mean a crash or a hang.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
MAX_RSS_GROWTH_MIB = 300
F = FieldDescriptor
NAMES = ["", "fuzz-bucket", "photos", "a", "../../etc/passwd", "key/with/slashes", "\x00", "é" * 300, "x" * 2000]
INT_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**62, 2**63 - 1, -(2**63), 2**64 - 1]


# --- random messages from descriptors ---------------------------------------------------------------------


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_ENUM):
        return st.one_of(
            st.integers(-(2**31), 2**31 - 1), st.sampled_from([e for e in INT_EDGES if -(2**31) <= e < 2**31])
        )
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return st.one_of(
            st.integers(-(2**63), 2**63 - 1), st.sampled_from([e for e in INT_EDGES if -(2**63) <= e < 2**63])
        )
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([e for e in INT_EDGES if 0 <= e < 2**64]))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.floats(width=32 if t == F.TYPE_FLOAT else 64)
    if t == F.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.sampled_from(NAMES))
    if t == F.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=80),
            st.binary(min_size=32, max_size=32),
            st.sampled_from([b"", b"\x00" * 32, b"\xff" * 33, b"x" * 70_000]),
        )
    raise AssertionError(f"unhandled field type {t}")


def fill(data: st.DataObject, msg: Any, depth: int = 0) -> Any:
    """Set a random subset of `msg`'s fields (one member per oneof), recursively."""
    desc: Descriptor = msg.DESCRIPTOR
    chosen_oneof = {o.name: data.draw(st.sampled_from([None, *o.fields])) for o in desc.oneofs}
    for field in desc.fields:
        if field.containing_oneof is not None and chosen_oneof[field.containing_oneof.name] is not field:
            continue
        if field.containing_oneof is None and not data.draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for _ in range(data.draw(st.integers(0, 3))):
                k = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(NAMES)))
                getattr(msg, field.name)[k] = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(NAMES)))
            continue
        repeated = field.is_repeated
        count = data.draw(st.integers(0, 4)) if repeated else 1
        for _ in range(count):
            if field.message_type is not None:
                if depth >= 3:
                    break
                target = getattr(msg, field.name).add() if repeated else getattr(msg, field.name)
                if not repeated:
                    target.SetInParent()
                fill(data, target, depth + 1)
            elif repeated:
                getattr(msg, field.name).append(data.draw(_scalar(field)))
            else:
                setattr(msg, field.name, data.draw(_scalar(field)))
    return msg


def mutate(data: st.DataObject, raw: bytes) -> bytes:
    """Flip, cut, insert or duplicate bytes of a valid serialized message."""
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        if op == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut" and b:
            del b[data.draw(st.integers(0, len(b) - 1)) :]
        elif op == "insert":
            i = data.draw(st.integers(0, len(b)))
            b[i:i] = data.draw(st.binary(min_size=1, max_size=12))
        elif op == "dup" and b:
            b += b[: data.draw(st.integers(1, len(b)))]
    return bytes(b)


# --- calling raw ----------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Raw:
    """Calls any method of a service with already-serialized request bytes."""

    channel: grpc.Channel
    service: str
    metadata: tuple[tuple[str, str], ...] = ()

    def call(self, method: Any, requests: list[bytes]) -> grpc.StatusCode:
        path = f"/{self.service}/{method.name}"
        kind = (
            ("stream" if method.client_streaming else "unary")
            + "_"
            + ("stream" if method.server_streaming else "unary")
        )
        fn = getattr(self.channel, kind)(path)  # no serializers: bytes on the wire as given
        try:
            if method.client_streaming:
                arg: Any = iter(requests)
            else:
                arg = requests[0] if requests else b""
            result = fn(arg, timeout=30, metadata=self.metadata)
            if method.server_streaming:
                for _ in result:
                    pass
        except grpc.RpcError as err:
            code = err.code()
            assert code in ALLOWED, f"{method.name}: {code.name}: {err.details()}"
            assert "Traceback" not in (err.details() or "")
            return code
        return grpc.StatusCode.OK


class Quiet(tuple):
    """A fixture value with a short repr (hypothesis prints its arguments when a test fails)."""

    def __repr__(self) -> str:
        return "<fixture>"


def _methods(module: Any, service: str) -> list[MethodDescriptor]:
    return list(module.DESCRIPTOR.services_by_name[service].methods)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the node ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from orbitvault.grpc.node_server import serve

    d: Path = tmp_path_factory.mktemp("fuzz-node")
    config = load_node_config(
        None,
        env={},
        overrides={"capacity": "256MiB", "data_dir": str(d / "n"), "insecure": True, "listen": "127.0.0.1:0"},
    )
    server = serve(config)
    channel = grpc.insecure_channel(server.address, options=convert.CHANNEL_OPTIONS)
    shard = _make_shard(seed=7)  # one real shard, so ids in the fuzz sometimes exist
    stored = _make_shard(seed=8)
    fn = channel.stream_unary("/orbitvault.v1.ShardStore/PutShard", request_serializer=lambda m: m.SerializeToString())
    fn(stored.requests(), timeout=30)
    yield Quiet((server, Raw(channel, "orbitvault.v1.ShardStore"), shard, stored))
    channel.close()
    server.stop(0)


def _node_state(server: Any) -> tuple[int, int]:
    return server.store.shard_count(), server.store.used_bytes()


SHARD_METHODS = _methods(shard_store_pb2, "ShardStore")


class Named:
    """A method descriptor that prints as its name."""

    def __init__(self, m: MethodDescriptor) -> None:
        self.m = m
        self.name = m.name
        self.client_streaming = m.client_streaming
        self.server_streaming = m.server_streaming
        self.input_type = m.input_type

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(scope="module", autouse=True)
def rss_at_start() -> float:
    """The process's peak RSS before this module's fuzzers ran."""
    return _peak_rss_mib()


@SETTINGS
@given(data=st.data(), method=st.sampled_from(SHARD_METHODS).map(Named))
def test_fuzz_shard_store_random_messages(node: Any, data: st.DataObject, method: MethodDescriptor) -> None:
    server, raw, _, stored = node
    cls = getattr(shard_store_pb2, method.input_type.name)
    n = data.draw(st.integers(0, 5)) if method.client_streaming else 1
    requests = [fill(data, cls()).SerializeToString() for _ in range(n)]
    before = _node_state(server)
    code = raw.call(method, requests)
    server.store.expire_uploads(2**62)  # resumable transfers' partial uploads are kept by design
    if code is not grpc.StatusCode.OK and method.name in ("PutShard", "DeleteShard"):
        assert _node_state(server) == before, "a failed call changed the store"
    if method.name != "DeleteShard" or code is not grpc.StatusCode.OK:
        assert stored.shard_id in set(server.store.shard_ids())


@SETTINGS
@given(data=st.data())
def test_fuzz_put_shard_streams_from_a_valid_start(node: Any, data: st.DataObject) -> None:
    """A real shard's stream with messages replaced, dropped, mutated or added: all or nothing."""
    server, raw, shard, _ = node
    [put] = [m for m in SHARD_METHODS if m.name == "PutShard"]
    msgs = [m.SerializeToString() for m in shard.requests(rows_per_message=data.draw(st.integers(1, 64)))]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(msgs) - 1))
        op = data.draw(st.sampled_from(["mutate", "random", "drop", "repeat"]))
        if op == "mutate":
            msgs[i] = mutate(data, msgs[i])
        elif op == "random":
            msgs[i] = fill(data, shard_store_pb2.PutShardRequest()).SerializeToString()
        elif op == "drop" and len(msgs) > 1:
            del msgs[i]
        elif op == "repeat":
            msgs.insert(i, msgs[i])
    before = _node_state(server)
    ids = set(server.store.shard_ids())
    code = raw.call(put, msgs)
    # A start the mutations gave an upload id is a resumable (scheduled-mode) transfer: by design the
    # node keeps the rows that passed their checks, invisible, with the shard's space reserved, so a
    # resume can continue. Dropping those partial uploads must leave the node exactly as it was.
    partial = server.store.expire_uploads(2**62)
    if code is grpc.StatusCode.OK and not partial:
        # Only a stream that is still the whole shard, byte for byte in its rows, may commit: one
        # new shard, under its id or under the one a flipped bit in the start message made of it
        # (a shard id is the sender's to choose).
        [new] = set(server.store.shard_ids()) - ids
        got = b"".join(r.fragment for r in server.store.read_rows(new, range(len(shard.fragments))))
        assert got == b"".join(shard.fragments)
        server.store.delete(new)
    else:
        assert _node_state(server) == before


@SETTINGS
@given(data=st.data(), method=st.sampled_from(SHARD_METHODS).map(Named))
def test_fuzz_shard_store_mutated_bytes(node: Any, data: st.DataObject, method: MethodDescriptor) -> None:
    server, raw, shard, stored = node
    valid: dict[str, list[bytes]] = {
        "PutShard": [m.SerializeToString() for m in shard.requests()],
        "GetShard": [
            shard_store_pb2.GetShardRequest(shard_id=stored.shard_id, include_header=True).SerializeToString()
        ],
        "ReadRows": [shard_store_pb2.ReadRowsRequest(shard_id=stored.shard_id, rows=[0, 1]).SerializeToString()],
        "HeadShard": [shard_store_pb2.HeadShardRequest(shard_id=stored.shard_id).SerializeToString()],
        "ListShards": [
            shard_store_pb2.ListShardsRequest(page_size=5, include_catalog_records=True).SerializeToString()
        ],
    }
    msgs = list(valid.get(method.name, [b""]))
    i = data.draw(st.integers(0, len(msgs) - 1))
    msgs[i] = mutate(data, msgs[i])
    before = _node_state(server)
    code = raw.call(method, msgs)
    server.store.expire_uploads(2**62)  # resumable transfers' partial uploads are kept by design
    if code is grpc.StatusCode.OK and method.name == "PutShard":
        server.store.delete(shard.shard_id)
    elif method.name in ("PutShard", "DeleteShard") and code is not grpc.StatusCode.OK:
        assert _node_state(server) == before


# --- the gateway ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from orbitvault.ground.config import GatewayConfig
    from orbitvault.ground.crypto import MasterKey
    from orbitvault.grpc.gateway_server import serve as serve_gateway
    from orbitvault.grpc.node_server import serve

    d: Path = tmp_path_factory.mktemp("fuzz-gw")
    nodes = [
        serve(
            load_node_config(
                None,
                env={},
                overrides={
                    "capacity": "256MiB",
                    "data_dir": str(d / f"n{i}"),
                    "insecure": True,
                    "plane": str(i % 3),
                    "listen": "127.0.0.1:0",
                },
            )
        )
        for i in range(6)
    ]
    key = d / "master.key"
    MasterKey.generate().write_file(key)
    config = GatewayConfig(
        state_dir=d / "gw",
        listen="127.0.0.1:0",
        nodes=tuple(n.address for n in nodes),
        master_key_file=key,
        fragment_size=4096,
        stripe_size=65536,
        segment_size=4096,
        insecure=True,
    )
    server = serve_gateway(config, maintenance=False, shutdown_grace_s=1)
    server.gateway.create_tenant("acme")
    token = server.gateway.create_api_key("acme").token
    channel = grpc.insecure_channel(server.address)
    raw = Raw(channel, "orbitvault.v1.ObjectStore", (("x-orbitvault-api-key", token),))
    from orbitvault.ground.model import Principal

    p: Principal = server.gateway.authenticate(token)
    server.gateway.create_bucket(p, "fuzz-bucket")
    server.gateway.put_object(p, "fuzz-bucket", "photos", [b"kept" * 100])
    yield Quiet((server, raw, p))
    channel.close()
    server.stop(0)
    for n in nodes:
        n.stop(0)


def _gw_state(server: Any) -> tuple[int, int, int]:
    cat = server.gateway.catalog
    objects = sum(1 for _ in cat.scan("objects"))
    return objects, sum(1 for _ in cat.scan("buckets")), len(cat.pending_uploads())


OBJECT_METHODS = _methods(object_store_pb2, "ObjectStore")
MUTATING = {"CreateBucket", "DeleteBucket", "PutObject", "DeleteObject", "SetObjectRetention", "SetLegalHold"}


def _valid_object_requests(method: str) -> list[bytes]:
    pb = object_store_pb2
    base = {"bucket": "fuzz-bucket", "key": "photos"}
    msgs: dict[str, list[Any]] = {
        "CreateBucket": [pb.CreateBucketRequest(bucket="fuzz-new")],
        "PutObject": [
            pb.PutObjectRequest(start=pb.PutObjectStart(bucket="fuzz-bucket", key="fuzz/new", size=10)),
            pb.PutObjectRequest(data=b"0123456789"),
        ],
        "GetObject": [pb.GetObjectRequest(offset=1, length=5, **base)],
        "HeadObject": [pb.HeadObjectRequest(**base)],
        "ListObjects": [pb.ListObjectsRequest(bucket="fuzz-bucket", prefix="p", delimiter="/", page_size=2)],
        "GetObjectStatus": [pb.GetObjectStatusRequest(**base)],
        "SetLegalHold": [pb.SetLegalHoldRequest(legal_hold=False, **base)],
    }
    return [m.SerializeToString() for m in msgs.get(method, [pb.ListBucketsRequest(page_size=3)])]


def _check_gateway(server: Any, method: MethodDescriptor, code: grpc.StatusCode, before: tuple[int, int, int]) -> None:
    if code is not grpc.StatusCode.OK and method.name in MUTATING:
        assert _gw_state(server) == before, f"a failed {method.name} changed the catalog"
    assert _gw_state(server)[2] == 0, "a put left a pending upload behind"


@SETTINGS
@given(data=st.data(), method=st.sampled_from(OBJECT_METHODS).map(Named))
def test_fuzz_object_store_random_messages(gateway: Any, data: st.DataObject, method: MethodDescriptor) -> None:
    server, raw, _ = gateway
    cls = getattr(object_store_pb2, method.input_type.name)
    if method.client_streaming:
        requests = [fill(data, cls()).SerializeToString() for _ in range(data.draw(st.integers(0, 4)))]
        if data.draw(st.booleans()):  # a plausible start, then random messages: go deeper than the first check
            start = object_store_pb2.PutObjectStart(bucket="fuzz-bucket", key=data.draw(st.sampled_from(NAMES[1:6])))
            fill(data, start)
            requests.insert(0, object_store_pb2.PutObjectRequest(start=start).SerializeToString())
    else:
        requests = [fill(data, cls()).SerializeToString()]
    before = _gw_state(server)
    code = raw.call(method, requests)
    _check_gateway(server, method, code, before)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(OBJECT_METHODS).map(Named))
def test_fuzz_object_store_mutated_bytes(gateway: Any, data: st.DataObject, method: MethodDescriptor) -> None:
    server, raw, _ = gateway
    msgs = _valid_object_requests(method.name)
    i = data.draw(st.integers(0, len(msgs) - 1))
    msgs[i] = mutate(data, msgs[i])
    before = _gw_state(server)
    code = raw.call(method, msgs)
    _check_gateway(server, method, code, before)


def test_fuzz_object_store_without_credentials(gateway: Any) -> None:
    _server, raw, _ = gateway
    anonymous = Raw(raw.channel, raw.service)
    for method in OBJECT_METHODS:
        msgs = _valid_object_requests(method.name)
        assert anonymous.call(method, msgs) is grpc.StatusCode.UNAUTHENTICATED, method.name


def test_huge_claims_allocate_nothing(node: Any, gateway: Any) -> None:
    """Sizes, counts and ranges announced by a request are checked before anything is reserved."""
    _server, raw, _, stored = node
    by = {m.name: m for m in SHARD_METHODS}
    header = _make_shard(seed=9).proto_header()
    header.stripe_data_len = 2**62
    header.geometry.fragment_size = 2**31 - 1
    start = shard_store_pb2.PutShardRequest(start=shard_store_pb2.PutShardStart(header=header)).SerializeToString()
    assert raw.call(by["PutShard"], [start]) is grpc.StatusCode.INVALID_ARGUMENT
    big_rows = shard_store_pb2.ReadRowsRequest(shard_id=stored.shard_id, rows=list(range(10**5))).SerializeToString()
    assert raw.call(by["ReadRows"], [big_rows]) in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
    page = shard_store_pb2.ListShardsRequest(page_size=2**32 - 1).SerializeToString()
    assert raw.call(by["ListShards"], [page]) is grpc.StatusCode.INVALID_ARGUMENT
    _gw, graw, _ = gateway
    gby = {m.name: m for m in OBJECT_METHODS}
    pb = object_store_pb2
    put = [
        pb.PutObjectRequest(start=pb.PutObjectStart(bucket="fuzz-bucket", key="huge", size=2**62)).SerializeToString(),
        pb.PutObjectRequest(data=b"x").SerializeToString(),
    ]
    assert graw.call(gby["PutObject"], put) is grpc.StatusCode.INVALID_ARGUMENT
    get = pb.GetObjectRequest(bucket="fuzz-bucket", key="photos", offset=2**62, length=2**62).SerializeToString()
    assert graw.call(gby["GetObject"], [get]) in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)
    lst = pb.ListObjectsRequest(bucket="fuzz-bucket", page_size=2**31 - 1).SerializeToString()
    assert graw.call(gby["ListObjects"], [lst]) is grpc.StatusCode.INVALID_ARGUMENT


def test_memory_stayed_bounded(rss_at_start: float) -> None:
    """Runs after the fuzzers in this module (file order): how far they pushed the peak."""
    grown = _peak_rss_mib() - rss_at_start
    assert grown < MAX_RSS_GROWTH_MIB, f"peak RSS grew {grown:.0f} MiB while fuzzing"
