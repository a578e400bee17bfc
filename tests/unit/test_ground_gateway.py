"""The gateway facade over an in-process constellation: data path, degraded reads, tenants, locks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from orbitvault.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from orbitvault.ground.model import DefaultRetention, DurabilityState, KeyMode, Retention, RetentionMode
from tests.unit.ground_fakes import Env, chunked, random_bytes

PPS = 7 * Env.SEGMENT  # plaintext per stripe with the test geometry
SEG = Env.SEGMENT
BIG = 3 * PPS + 12_345  # four stripes, the last one short


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


# --- round trips and ranges -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, PPS - 1, PPS, PPS + 1, BIG])
def test_round_trip(env: Env, size: int) -> None:
    data = random_bytes(size, size)
    info = env.put("obj", data, content_type="application/octet-stream", metadata={"a": "b"})
    assert info.size == size
    assert info.etag == blake3.blake3(data).digest()
    assert info.durability is DurabilityState.DURABLE
    assert env.get("obj") == data
    head = env.gw.head_object(env.p, "data", "obj")
    assert head.metadata == {"a": "b"} and head.content_type == "application/octet-stream"
    assert head.version_id == info.version_id


def test_unknown_size_stream(env: Env) -> None:
    for size in (0, PPS, 2 * PPS, BIG):  # stripe-aligned ends need the look-ahead
        data = random_bytes(size, 7)
        info = env.gw.put_object(env.p, "data", f"s{size}", chunked(data, 3_000))
        assert info.size == size
        assert env.get(f"s{size}") == data


def test_chunks_are_at_most_a_segment(env: Env) -> None:
    env.put("obj", random_bytes(BIG))
    _, chunks = env.gw.get_object(env.p, "data", "obj")
    sizes = [len(c) for c in chunks]
    assert sum(sizes) == BIG and max(sizes) <= SEG


def _boundaries() -> list[int]:
    row_plain = 16384 * SEG // (SEG + 16)  # a row holds just under two segments
    points = {0, 1, BIG - 1, BIG}
    for base in (SEG, 2 * SEG, row_plain, PPS, 2 * PPS, 3 * PPS):
        points.update({base - 1, base, base + 1})
    return sorted(p for p in points if 0 <= p <= BIG)


def test_ranges_at_every_boundary(env: Env) -> None:
    data = random_bytes(BIG, 1)
    env.put("obj", data)
    points = _boundaries()
    for start in points:
        for end in points:
            if end < start:
                continue
            got = env.get("obj", offset=start, length=end - start)
            assert got == data[start:end], (start, end)
    assert env.get("obj", offset=BIG - 10, length=1000) == data[-10:]  # clipped
    assert env.get("obj", offset=5) == data[5:]


def test_range_reads_only_the_rows_it_needs(env: Env) -> None:
    data = random_bytes(BIG, 2)
    env.put("obj", data)
    before = sum(link.reads for link in env.links)
    assert env.get("obj", offset=2 * PPS + 100, length=10) == data[2 * PPS + 100 : 2 * PPS + 110]
    assert sum(link.reads for link in env.links) - before == 4  # one stripe, one batch, k shards


def test_overwrite_replaces_and_deletes_old_shards(env: Env) -> None:
    env.put("obj", random_bytes(BIG, 1))
    shards_before = sum(link.store.shard_count() for link in env.links)
    new = random_bytes(1000, 2)
    env.put("obj", new)
    assert env.get("obj") == new
    assert sum(link.store.shard_count() for link in env.links) == shards_before - 4 * 6 + 6


def test_delete_and_version_id(env: Env) -> None:
    info = env.put("obj", b"hello")
    with pytest.raises(NotFound, match="not the current"):
        env.gw.head_object(env.p, "data", "obj", version_id=bytes(32))
    assert env.gw.head_object(env.p, "data", "obj", version_id=info.version_id).size == 5
    assert env.gw.delete_object(env.p, "data", "obj", version_id=info.version_id) == info.version_id
    with pytest.raises(NotFound):
        env.get("obj")
    assert sum(link.store.shard_count() for link in env.links) == 0


def test_list_objects_prefix_delimiter_paging(env: Env) -> None:
    keys = ["a/1", "a/2", "a/b/3", "b", "c/x", "c/y", "d"]
    for k in keys:
        env.put(k, k.encode())
    objs, prefixes, token = env.gw.list_objects(env.p, "data")
    assert [o.key for o in objs] == keys and prefixes == [] and token == ""
    objs, prefixes, _ = env.gw.list_objects(env.p, "data", delimiter="/")
    assert [o.key for o in objs] == ["b", "d"] and prefixes == ["a/", "c/"]
    objs, prefixes, _ = env.gw.list_objects(env.p, "data", prefix="a/", delimiter="/")
    assert [o.key for o in objs] == ["a/1", "a/2"] and prefixes == ["a/b/"]
    seen: list[str] = []
    token = ""
    while True:
        objs, prefixes, token = env.gw.list_objects(env.p, "data", delimiter="/", page_size=1, page_token=token)
        seen += [o.key for o in objs] + prefixes
        if not token:
            break
    assert seen == ["a/", "b", "c/", "d"]
    all_keys: list[str] = []
    token = ""
    while True:
        objs, _, token = env.gw.list_objects(env.p, "data", page_size=3, page_token=token)
        all_keys += [o.key for o in objs]
        if not token:
            break
    assert all_keys == keys


def test_long_keys_list_in_bytewise_order(env: Env) -> None:
    stem = "k" * 500
    keys = sorted([stem + "b", stem + "a", stem + "a" * 400, "z", stem], key=str.encode)
    for k in keys:
        env.put(k, b"x")
    objs, _, _ = env.gw.list_objects(env.p, "data")
    assert [o.key for o in objs] == keys
    objs, _, token = env.gw.list_objects(env.p, "data", prefix=stem + "a", page_size=1)
    assert [o.key for o in objs] == [stem + "a"] and token
    objs, _, token = env.gw.list_objects(env.p, "data", prefix=stem + "a", page_token=token)
    assert [o.key for o in objs] == [stem + "a" * 400] and not token
    env.gw.delete_object(env.p, "data", stem + "a")
    assert env.get(stem + "a" * 400) == b"x"


def test_buckets(env: Env) -> None:
    with pytest.raises(AlreadyExists):
        env.gw.create_bucket(env.p, "data")
    b = env.gw.create_bucket(env.p, "other")
    assert (b.storage_class.k, b.storage_class.m) == (4, 2)
    assert b.storage_class.stripe_size <= 17 << 20
    names, token = env.gw.list_buckets(env.p, page_size=1)
    assert [n.name for n in names] == ["data"] and token
    names, token = env.gw.list_buckets(env.p, page_token=token)
    assert [n.name for n in names] == ["other"] and not token
    env.put("x", b"1")
    with pytest.raises(FailedPrecondition, match="not empty"):
        env.gw.delete_bucket(env.p, "data")
    env.gw.delete_object(env.p, "data", "x")
    env.gw.delete_bucket(env.p, "data")
    with pytest.raises(NotFound):
        env.gw.delete_bucket(env.p, "data")


# --- degraded reads -------------------------------------------------------------------------------


def test_m_nodes_down_reads_work(env: Env) -> None:
    data = random_bytes(BIG, 3)
    env.put("obj", data)
    for link in env.links[:2]:
        link.down = True
    assert env.get("obj") == data
    assert env.get("obj", offset=PPS - 5, length=20) == data[PPS - 5 : PPS + 15]


def test_m_plus_one_down_is_unavailable_and_nothing_corrupt(env: Env) -> None:
    data = random_bytes(BIG, 4)
    env.put("obj", data)
    for link in env.links[:3]:
        link.down = True
    with pytest.raises(Unavailable, match="retry when nodes are back"):
        env.get("obj")
    with pytest.raises(Unavailable):  # puts need k+1 = 5 nodes
        env.put("other", b"x")
    for link in env.links[:3]:
        link.down = False
    env.gw.status()  # asks the nodes again
    assert env.get("obj") == data


def test_node_dies_mid_read_switches_shard(env: Env) -> None:
    data = random_bytes(BIG, 5)
    env.put("obj", data)
    stripe = env.gw.catalog.stripe(env.gw.head_object(env.p, "data", "obj").version_id, 0)
    assert stripe is not None
    node0 = stripe.shards[0].node_id  # type: ignore[union-attr]
    victim = next(link for link in env.links if link.store.node_id == node0)
    victim.die_after_reads = 1  # answers the first batch, then dies
    import orbitvault.ground.pipeline as pl

    old = pl.READ_BATCH_BYTES
    pl.READ_BATCH_BYTES = 4096  # one row per batch: the stripe takes several batches
    try:
        assert env.get("obj") == data
    finally:
        pl.READ_BATCH_BYTES = old
    assert victim.down and victim.reads == 1


def test_damaged_rows_are_decoded_from_others_and_queued(env: Env) -> None:
    data = random_bytes(BIG, 6)
    info = env.put("obj", data)
    stripe = env.gw.catalog.stripe(info.version_id, 1)
    assert stripe is not None
    loc = stripe.shards[2]
    assert loc is not None
    link = next(lk for lk in env.links if lk.store.node_id == loc.node_id)
    link.damage(loc.shard_id, 1)
    assert env.get("obj") == data
    items = env.gw.catalog.repair_items(info.version_id)
    assert [(i.stripe, i.shard_index) for i in items] == [(1, 2)]
    assert env.gw.head_object(env.p, "data", "obj").durability is DurabilityState.PARTIAL


def test_put_with_a_failing_node_acks_at_k_plus_one_and_queues_repair(env: Env) -> None:
    env.links[0].fail_puts_after = 0
    data = random_bytes(BIG, 8)
    info = env.put("obj", data)
    assert info.durability is DurabilityState.PARTIAL
    status = env.gw.object_status(env.p, "data", "obj")
    assert (status.shards_in_orbit, status.shards_total, status.stripes_recoverable) == (20, 24, 4)
    assert env.gw.status().repair.shards_missing == 4
    env.links[0].fail_puts_after = None
    env.gw.status()
    report = env.gw.repair_once()
    assert report.shards_rebuilt == 4 and report.backlog == 0
    assert env.gw.object_status(env.p, "data", "obj").state is DurabilityState.DURABLE
    assert env.get("obj") == data


def test_put_refused_below_k_plus_one_leaves_nothing(env: Env) -> None:
    env.links[0].fail_puts_after = 0
    env.links[1].fail_puts_after = 0
    with pytest.raises(Unavailable, match="needed"):
        env.put("obj", random_bytes(BIG, 9))
    with pytest.raises(NotFound):
        env.gw.head_object(env.p, "data", "obj")
    for link in env.links:
        link.fail_puts_after = None
        link.down = False
    env.gw.status()
    env.gw.collect_garbage()
    assert sum(link.store.shard_count() for link in env.links) == 0
    assert env.gw.catalog.pending_uploads() == []


def test_placement_uses_distinct_nodes_and_planes(env: Env) -> None:
    info = env.put("obj", random_bytes(BIG, 10))
    planes = {link.store.node_id: link.plane for link in env.links}
    for s in env.gw.catalog.stripes(info.version_id):
        nodes = [loc.node_id for loc in s.shards if loc is not None]
        assert len(set(nodes)) == 6
        assert sorted(planes[n] for n in nodes) == ["p0", "p0", "p1", "p1", "p2", "p2"]


# --- tenants and keys -------------------------------------------------------------------------------


def test_authentication(env: Env) -> None:
    with pytest.raises(Unauthenticated, match="no API key"):
        env.gw.authenticate(None)
    with pytest.raises(Unauthenticated, match="malformed"):
        env.gw.authenticate("nope")
    wrong = env.key.token[:-1] + ("0" if env.key.token[-1] != "0" else "1")
    with pytest.raises(Unauthenticated, match="unknown"):
        env.gw.authenticate(wrong)
    env.gw.delete_api_key(env.key.key_id)
    with pytest.raises(Unauthenticated):
        env.gw.authenticate(env.key.token)
    with pytest.raises(NotFound):
        env.gw.create_api_key("nobody")
    with pytest.raises(AlreadyExists):
        env.gw.create_tenant("acme")
    with pytest.raises(InvalidArgument):
        env.gw.create_tenant(".system")
    raw = env.gw.catalog.get_key(env.gw.create_api_key("acme").key_id)
    assert raw is not None and len(raw.secret_blake3) == 32  # only the hash is stored


def test_tenant_isolation(env: Env) -> None:
    env.put("secret", b"acme data")
    env.gw.create_tenant("globex")
    other = env.gw.authenticate(env.gw.create_api_key("globex").token)
    assert env.gw.list_buckets(other) == ([], "")
    with pytest.raises(NotFound):
        env.gw.get_object(other, "data", "secret")
    env.gw.create_bucket(other, "data", env.geometry)  # bucket names are per tenant
    with pytest.raises(NotFound):
        env.gw.head_object(other, "data", "secret")
    env.gw.put_object(other, "data", "secret", [b"globex data"])
    assert env.get("secret") == b"acme data"
    _, chunks = env.gw.get_object(other, "data", "secret")
    assert b"".join(chunks) == b"globex data"


def test_read_only_key(env: Env) -> None:
    env.put("obj", b"x")
    ro = env.gw.authenticate(env.gw.create_api_key("acme", KeyMode.READ_ONLY).token)
    _, chunks = env.gw.get_object(ro, "data", "obj")
    assert b"".join(chunks) == b"x"
    assert [o.key for o in env.gw.list_objects(ro, "data")[0]] == ["obj"]
    with pytest.raises(PermissionDenied):
        env.gw.put_object(ro, "data", "new", [b"y"])
    with pytest.raises(PermissionDenied):
        env.gw.delete_object(ro, "data", "obj")
    with pytest.raises(PermissionDenied):
        env.gw.create_bucket(ro, "more")
    with pytest.raises(PermissionDenied):
        env.gw.set_legal_hold(ro, "data", "obj", True)


def test_append_only_key(env: Env) -> None:
    ap = env.gw.authenticate(env.gw.create_api_key("acme", KeyMode.APPEND_ONLY).token)
    env.gw.put_object(ap, "data", "log/1", [b"one"])
    with pytest.raises(PermissionDenied, match="overwrite"):
        env.gw.put_object(ap, "data", "log/1", [b"changed"])
    with pytest.raises(PermissionDenied):
        env.gw.delete_object(ap, "data", "log/1")
    with pytest.raises(PermissionDenied):
        env.gw.delete_bucket(ap, "data")
    now = env.gw.now_ms()
    env.gw.set_retention(ap, "data", "log/1", Retention(RetentionMode.GOVERNANCE, now + 10_000))
    env.gw.set_retention(ap, "data", "log/1", Retention(RetentionMode.GOVERNANCE, now + 20_000))  # extend: ok
    with pytest.raises(PermissionDenied):
        env.gw.set_retention(ap, "data", "log/1", Retention(RetentionMode.GOVERNANCE, now + 5_000))
    env.gw.set_legal_hold(ap, "data", "log/1", True)
    with pytest.raises(PermissionDenied):
        env.gw.set_legal_hold(ap, "data", "log/1", False)
    assert env.get("log/1") == b"one"


# --- object lock ------------------------------------------------------------------------------------


def test_governance_retention(env: Env) -> None:
    now = env.gw.now_ms()
    env.put("obj", b"x", retention=Retention(RetentionMode.GOVERNANCE, now + 60_000))
    with pytest.raises(FailedPrecondition, match="GOVERNANCE"):
        env.gw.delete_object(env.p, "data", "obj")
    with pytest.raises(FailedPrecondition):
        env.put("obj", b"y")
    with pytest.raises(FailedPrecondition, match="bypass"):
        env.gw.set_retention(env.p, "data", "obj", Retention(RetentionMode.GOVERNANCE, now + 1000))
    info = env.gw.set_retention(env.p, "data", "obj", Retention(RetentionMode.GOVERNANCE, now + 120_000))
    assert info.retention == Retention(RetentionMode.GOVERNANCE, now + 120_000)
    env.gw.set_retention(env.p, "data", "obj", None, bypass_governance=True)
    env.gw.set_retention(env.p, "data", "obj", Retention(RetentionMode.GOVERNANCE, now + 60_000))
    env.gw.delete_object(env.p, "data", "obj", bypass_governance=True)


def test_compliance_retention(env: Env) -> None:
    now = env.gw.now_ms()
    env.put("obj", b"x", retention=Retention(RetentionMode.COMPLIANCE, now + 60_000))
    with pytest.raises(FailedPrecondition, match="COMPLIANCE"):
        env.gw.delete_object(env.p, "data", "obj", bypass_governance=True)
    for shorter in (
        Retention(RetentionMode.COMPLIANCE, now + 1000),
        Retention(RetentionMode.GOVERNANCE, now + 120_000),
        None,
    ):
        with pytest.raises(FailedPrecondition, match="extended"):
            env.gw.set_retention(env.p, "data", "obj", shorter, bypass_governance=True)
    env.gw.set_retention(env.p, "data", "obj", Retention(RetentionMode.COMPLIANCE, now + 90_000))
    env.clock.advance(91)
    env.gw.delete_object(env.p, "data", "obj")


def test_legal_hold_and_bucket_default_retention(env: Env) -> None:
    env.gw.create_bucket(env.p, "locked", env.geometry, DefaultRetention(RetentionMode.GOVERNANCE, 5_000))
    info = env.put("obj", b"x", bucket="locked", legal_hold=True)
    assert info.legal_hold and info.retention == Retention(RetentionMode.GOVERNANCE, env.gw.now_ms() + 5_000)
    env.clock.advance(10)
    with pytest.raises(FailedPrecondition, match="legal hold"):
        env.gw.delete_object(env.p, "locked", "obj")
    env.gw.set_legal_hold(env.p, "locked", "obj", False)
    env.gw.delete_object(env.p, "locked", "obj")


# --- SSE-C ------------------------------------------------------------------------------------------


def test_customer_key(env: Env) -> None:
    ck = bytes(range(32))
    data = random_bytes(BIG, 11)
    info = env.put("obj", data, customer_key=ck)
    assert info.customer_key_blake3 == blake3.blake3(ck).digest()
    assert env.get("obj", customer_key=ck) == data
    with pytest.raises(InvalidArgument, match="customer key"):
        env.get("obj")
    with pytest.raises(PermissionDenied):
        env.get("obj", customer_key=bytes(32))
    with pytest.raises(InvalidArgument):
        env.get("obj", customer_key=b"short")
    # The gateway's own keys cannot open the data key: only the customer's key wraps it.
    rec = env.gw.catalog.get_object("acme", "data", "obj")
    assert rec is not None
    from cryptography.exceptions import InvalidTag

    from orbitvault.ground.crypto import data_key_aad, unwrap_key

    with pytest.raises(InvalidTag):
        unwrap_key(env.gw._tenant_key("acme"), rec.wrapped_data_key, data_key_aad("acme", rec.object_id))
    plain = env.put("plain", b"x")
    assert plain.customer_key_blake3 == b""
    with pytest.raises(InvalidArgument, match="not encrypted with a customer key"):
        env.get("plain", customer_key=ck)


# --- bad inputs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "ab", "A-bucket", "-abc", "abc-", "a" * 64, "a..b", "with space", 5])
def test_bad_bucket_names(env: Env, name: object) -> None:
    with pytest.raises(InvalidArgument, match="bucket name"):
        env.gw.create_bucket(env.p, name)  # type: ignore[arg-type]


def test_bad_object_inputs(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="non-empty"):
        env.put("", b"x")
    with pytest.raises(InvalidArgument, match="1024 bytes"):
        env.put("é" * 513, b"x")
    env.put("é" * 512, b"x")  # exactly 1024 bytes
    with pytest.raises(InvalidArgument, match="NUL"):
        env.put("a\x00b", b"x")
    with pytest.raises(InvalidArgument, match="metadata"):
        env.put("m", b"x", metadata={"Bad Key": "v"})
    with pytest.raises(InvalidArgument, match="1024"):
        env.put("m", b"x", metadata={"k": "v" * 1024})
    with pytest.raises(InvalidArgument, match="content_type"):
        env.put("m", b"x", content_type="a" * 256)
    with pytest.raises(InvalidArgument, match="size"):
        env.gw.put_object(env.p, "data", "m", [b"x"], size=-1)
    with pytest.raises(InvalidArgument, match="carried 3 bytes but size said 4"):
        env.gw.put_object(env.p, "data", "m", [b"abc"], size=4)
    with pytest.raises(InvalidArgument, match="more than the 2 bytes"):
        env.gw.put_object(env.p, "data", "m", [b"abc"], size=2)
    with pytest.raises(InvalidArgument, match="content_blake3 does not match"):
        env.gw.put_object(env.p, "data", "m", [b"abc"], content_blake3=bytes(32))
    with pytest.raises(InvalidArgument, match="content_blake3"):
        env.gw.put_object(env.p, "data", "m", [b"abc"], content_blake3=b"short")
    with pytest.raises(InvalidArgument, match="bytes"):
        env.gw.put_object(env.p, "data", "m", ["text"])  # type: ignore[list-item]
    ok = env.gw.put_object(env.p, "data", "m", [b"abc"], content_blake3=blake3.blake3(b"abc").digest())
    assert ok.size == 3
    with pytest.raises(InvalidArgument, match="retain_until"):
        env.put("r", b"x", retention=Retention(RetentionMode.GOVERNANCE, 0))
    with pytest.raises(NotFound, match="bucket"):
        env.put("x", b"x", bucket="nope")
    assert sum(len(link.store.list(limit=1000)) for link in env.links) == 2 * 6  # failed puts left nothing


def test_bad_ranges_and_paging(env: Env) -> None:
    env.put("obj", b"0123456789")
    with pytest.raises(InvalidArgument, match="beyond the end"):
        env.get("obj", offset=11)
    with pytest.raises(InvalidArgument, match="offset"):
        env.get("obj", offset=-1)
    with pytest.raises(InvalidArgument, match="length"):
        env.get("obj", length=-1)
    assert env.get("obj", offset=10) == b""
    assert env.get("obj", offset=3, length=0) == b""
    with pytest.raises(InvalidArgument, match="page_size"):
        env.gw.list_objects(env.p, "data", page_size=1001)
    with pytest.raises(InvalidArgument, match="page_token"):
        env.gw.list_objects(env.p, "data", page_token="!!!")
    with pytest.raises(InvalidArgument, match="version_id"):
        env.gw.head_object(env.p, "data", "obj", version_id=b"1")


def test_bad_geometries(env: Env) -> None:
    from orbitvault.erasure.layout import Geometry

    with pytest.raises(InvalidArgument, match="17 MiB"):
        env.gw.create_bucket(env.p, "huge", Geometry(4, 2))  # 64 MiB stripes
    with pytest.raises(InvalidArgument, match="storage nodes"):
        env.gw.create_bucket(env.p, "wide", env.gw.make_geometry(10, 4))
    with pytest.raises(InvalidArgument):
        env.gw.make_geometry(0, 2)
    with pytest.raises(InvalidArgument):
        env.gw.make_geometry(4, 0)
    with pytest.raises(InvalidArgument):
        env.gw.make_geometry(30, 3)
    with pytest.raises(InvalidArgument, match="fragment_size"):
        env.gw.make_geometry(4, 2, fragment_size=10)
    with pytest.raises(InvalidArgument, match="multiple of the row"):
        env.gw.make_geometry(4, 2, fragment_size=4096, stripe_size=5000)
    with pytest.raises(InvalidArgument, match="retain_for_ms"):
        env.gw.create_bucket(env.p, "ret", env.geometry, DefaultRetention(RetentionMode.GOVERNANCE, 0))
