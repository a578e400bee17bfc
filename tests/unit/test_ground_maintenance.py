"""Repair, garbage collection, crash safety, checkpoints and rebuild from orbit, encryption at rest."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orbitvault.errors import FailedPrecondition, NotFound, Unavailable
from orbitvault.ground import checkpoint as checkpoint_mod
from orbitvault.ground.gateway import Gateway
from orbitvault.ground.model import (
    SYSTEM_BUCKET,
    DurabilityState,
    KeyMode,
    RebuildReport,
    Retention,
    RetentionMode,
)
from orbitvault.ground.nodes import NodeDirectory
from tests.unit.ground_fakes import Env, FakeLink, SimulatedCrash, chunked, make_links, random_bytes

PPS = 7 * Env.SEGMENT
BIG = 3 * PPS + 12_345


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, n=7)
    yield e
    e.close()


def _node_of(env: Env, node_id: bytes) -> FakeLink:
    return next(link for link in env.links if link.store.node_id == node_id)


# --- repair -------------------------------------------------------------------------------------------


def test_node_lost_for_good_is_repaired(env: Env) -> None:
    objects = {f"o{i}": random_bytes(BIG if i == 0 else 5000 * i, i) for i in range(4)}
    for k, v in objects.items():
        env.put(k, v)
    victim = env.links[1]  # plane p1 has two nodes: this one holds a shard of every stripe
    held = victim.store.shard_count()
    assert held > 0
    victim.down = True
    report = env.gw.repair_once()
    assert report.shards_rebuilt == 0 and report.nodes_gone == ()  # within the grace period
    assert env.gw.status().nodes[0].reachability.name in {"DOWN", "IN_CONTACT"}
    env.clock.advance(env.config.node_grace_s + 1)
    report = env.gw.repair_once()
    assert report.nodes_gone == (victim.store.node_id,)
    assert report.shards_rebuilt == held and report.backlog == 0, report.errors
    assert any(n.reachability.name == "RETIRED" for n in env.gw.status().nodes)
    for k in objects:
        st = env.gw.object_status(env.p, "data", k)
        assert st.state is DurabilityState.DURABLE and st.shards_in_orbit == st.shards_total
        rec = env.gw.catalog.get_object("acme", "data", k)
        assert rec is not None
        for s in env.gw.catalog.stripes(rec.object_id):
            nodes = [loc.node_id for loc in s.shards if loc is not None]
            assert len(nodes) == 6 and len(set(nodes)) == 6 and victim.store.node_id not in nodes
    # every stripe is whole again: reads survive m=2 more nodes down, using the rebuilt shards
    for link in env.links[2:4]:
        link.down = True
    for k, v in objects.items():
        assert env.get(k) == v
    # the node comes back: its stale shards are tombstoned and collected
    for link in env.links[1:4]:
        link.down = False
    env.gw.status()
    env.gw.collect_garbage()
    assert victim.store.shard_count() == 0


def test_repair_without_an_eligible_node_keeps_the_backlog(tmp_path: Path) -> None:
    env = Env(tmp_path, n=6)
    try:
        env.links[5].fail_puts_after = 0
        data = random_bytes(BIG, 3)
        env.put("obj", data)
        report = env.gw.repair_once()  # the only spare is the failing node itself
        assert report.shards_rebuilt == 0 and report.backlog == 4 and report.errors
        backlog = env.gw.status().repair
        assert backlog.shards_missing == 4 and backlog.bytes_pending > 0 and backlog.oldest_pending_unix_ms > 0
        env.links[5].fail_puts_after = None
        assert env.gw.repair_once().shards_rebuilt == 4
        assert env.gw.status().repair.shards_missing == 0
        assert env.get("obj") == data
    finally:
        env.close()


def test_damaged_shard_is_rebuilt_elsewhere(env: Env) -> None:
    data = random_bytes(BIG, 4)
    info = env.put("obj", data)
    stripe = env.gw.catalog.stripe(info.version_id, 2)
    assert stripe is not None and stripe.shards[0] is not None
    holder = _node_of(env, stripe.shards[0].node_id)
    holder.damage(stripe.shards[0].shard_id, 0)
    assert env.get("obj") == data
    assert env.gw.repair_once().shards_rebuilt == 1
    new = env.gw.catalog.stripe(info.version_id, 2)
    assert new is not None and new.shards[0] is not None and new.shards[0].node_id != holder.store.node_id
    assert holder.store.shard_count() == sum(1 for _ in env.gw.catalog.shards_on_node(holder.store.node_id))
    assert env.get("obj") == data


# --- crash safety and GC ----------------------------------------------------------------------------


def test_crash_mid_put_leaves_nothing_visible_and_gc_removes_orphans(env: Env) -> None:
    env.put("kept", b"acknowledged")
    before = {link.address: link.store.shard_count() for link in env.links}
    env.links[1].crash_puts_after = 2  # plane p1 has 2 nodes: this one holds a shard of every stripe
    with pytest.raises(SimulatedCrash):
        env.put("big", random_bytes(6 * PPS, 5))
    env.links[1].crash_puts_after = None
    assert sum(link.store.shard_count() for link in env.links) > sum(before.values())  # shards left behind
    env.reopen()  # the crashed instance is gone; a new one starts on the same state dir
    with pytest.raises(NotFound):
        env.gw.head_object(env.p, "data", "big")
    assert env.get("kept") == b"acknowledged"
    report = env.gw.collect_garbage()
    assert report.pending_uploads_removed == 1 and report.shards_deleted > 0
    assert {link.address: link.store.shard_count() for link in env.links} == before
    assert env.gw.catalog.pending_uploads() == []


def test_uploads_of_a_live_process_wait_for_the_ttl(env: Env) -> None:
    """Another live gateway process's pending upload is left alone until it is older than the TTL."""
    import os

    from orbitvault.ground.catalog import PendingUpload, ShardLoc

    env.gw.catalog.begin_pending(PendingUpload(b"u" * 32, "other-gateway", os.getppid(), env.gw.now_ms()))
    env.gw.catalog.add_pending_shards(b"u" * 32, 0, [(0, ShardLoc(env.links[0].store.node_id, b"s" * 32))])
    assert env.gw.collect_garbage().pending_uploads_removed == 0
    env.clock.advance(env.config.pending_ttl_s + 1)
    assert env.gw.collect_garbage().pending_uploads_removed == 1
    assert env.gw.catalog.pending_uploads() == []


def test_orphans_are_collected_after_the_ttl(env: Env) -> None:
    env.put("obj", random_bytes(20_000, 6))
    rec = env.gw.catalog.get_object("acme", "data", "obj")
    assert rec is not None
    # forget the object behind the gateway's back: its shards become orphans
    with env.gw.catalog.write() as txn:
        txn.drop(env.gw.catalog.db("shard_index"), delete=False)
    assert env.gw.collect_garbage().orphans_deleted == 0  # too young
    env.clock.advance(env.config.pending_ttl_s + 1)
    assert env.gw.collect_garbage().orphans_deleted == 6
    assert sum(link.store.shard_count() for link in env.links) == 0


def test_delete_with_a_node_down_tombstones_then_collects(env: Env) -> None:
    env.put("obj", random_bytes(BIG, 7))
    env.links[2].down = True
    env.gw.delete_object(env.p, "data", "obj")
    held = env.links[2].store.shard_count()
    assert held > 0
    assert env.gw.collect_garbage().tombstones_left == held
    env.links[2].down = False
    env.gw.status()
    report = env.gw.collect_garbage()
    assert report.tombstones_left == 0 and env.links[2].store.shard_count() == 0


# --- encryption at rest -------------------------------------------------------------------------------


def test_nodes_hold_no_plaintext(env: Env) -> None:
    marker = b"ORBITVAULT-PLAINTEXT-MARKER-5f1d3c"
    data = (marker + b" some text that repeats. ") * 20_000
    env.put("doc.txt", data, metadata={"owner": "marker-owner-name"})
    env.put("secret-key-name-visible?", marker)
    for link in env.links:
        link.store.close()
    try:
        for link in env.links:
            raw = b"".join(p.read_bytes() for p in (link.store.path / "lmdb").iterdir())
            assert len(raw) > 0
            assert marker not in raw and marker[:16] not in raw
            assert b"marker-owner-name" not in raw and b"secret-key-name" not in raw and b"doc.txt" not in raw
    finally:
        for i, link in enumerate(env.links):
            from orbitvault.storage.store import ShardStore

            link.store = ShardStore(env.root / "nodes" / f"node{i}", sync=False)


def test_wrong_master_key_is_refused(env: Env) -> None:
    from orbitvault.ground.crypto import MasterKey

    env.gw.close()
    with pytest.raises(FailedPrecondition, match="master key"):
        Gateway(env.config, env.directory, MasterKey.generate(), clock=env.clock)
    env.gw = env.open()


# --- checkpoints and rebuild -------------------------------------------------------------------------


def test_checkpoints_rotate_and_are_due(env: Env) -> None:
    assert env.gw.checkpoint_due()  # tenant, key and bucket creation are urgent
    seqs = [env.gw.checkpoint() for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    system = env.gw._system_principal()
    keys = [o.key for o in env.gw.list_objects(system, SYSTEM_BUCKET)[0]]
    assert keys == [f"catalog/{s:016d}" for s in (3, 4, 5)]
    assert not env.gw.checkpoint_due()
    env.put("x", b"1")
    assert not env.gw.checkpoint_due()  # one change, interval not reached
    env.clock.advance(env.config.checkpoint_interval_s + 1)
    assert env.gw.checkpoint_due()
    env.gw.checkpoint()
    env.gw.set_legal_hold(env.p, "data", "x", True)
    assert env.gw.checkpoint_due()  # lock changes are urgent


def _wipe_and_rebuild(env: Env) -> RebuildReport:
    env.gw.close()
    shutil.rmtree(env.config.state_dir)
    fresh = NodeDirectory(env.links, clock=env.clock)  # an empty machine knows only addresses
    env.directory = fresh
    report = Gateway.rebuild(env.config, fresh, env.master, clock=env.clock)
    env.gw = env.open()
    return report


def test_rebuild_from_orbit(env: Env) -> None:
    objects = {f"dir/o{i}": random_bytes(s, i) for i, s in enumerate([0, 1, 5000, BIG])}
    for k, v in objects.items():
        env.put(k, v)
    env.gw.create_tenant("globex")
    gk = env.gw.create_api_key("globex", KeyMode.APPEND_ONLY)
    gp = env.gw.authenticate(gk.token)
    env.gw.create_bucket(gp, "logs", env.geometry)
    env.gw.put_object(gp, "logs", "l1", [b"globex"])
    retention = Retention(RetentionMode.COMPLIANCE, env.gw.now_ms() + 3_600_000)
    env.gw.set_retention(env.p, "data", "dir/o2", retention)
    ck = bytes(range(32))
    env.put("sse", b"customer secret", customer_key=ck)
    env.gw.checkpoint()
    # after the checkpoint: a new object, a replaced one, a deleted one, a new tenant
    env.put("after", random_bytes(70_000, 99))
    objects["dir/o1"] = b"replaced"
    env.put("dir/o1", objects["dir/o1"])
    env.gw.delete_object(env.p, "data", "dir/o0")
    del objects["dir/o0"]
    env.gw.create_tenant("late")
    lp = env.gw.authenticate(env.gw.create_api_key("late").token)
    env.gw.create_bucket(lp, "lbk", env.geometry)
    env.gw.put_object(lp, "lbk", "k", [b"late data"], metadata={"m": "v"})

    report = _wipe_and_rebuild(env)
    assert report.checkpoint_seq == 1 and report.nodes_listed == 7 and not report.errors, report
    assert report.objects_from_headers >= 3
    # keys from the checkpoint work; the tenant created after it is back but its key is not
    p = env.gw.authenticate(env.key.token)
    assert env.gw.authenticate(gk.token).mode is KeyMode.APPEND_ONLY
    for k, v in objects.items():
        _, chunks = env.gw.get_object(p, "data", k)
        assert b"".join(chunks) == v, k
    _, chunks = env.gw.get_object(p, "data", "after")
    assert b"".join(chunks) == random_bytes(70_000, 99)
    with pytest.raises(NotFound):
        env.gw.head_object(p, "data", "dir/o0")
    assert env.gw.head_object(p, "data", "dir/o2").retention == retention
    _, chunks = env.gw.get_object(p, "data", "sse", customer_key=ck)
    assert b"".join(chunks) == b"customer secret"
    _, chunks = env.gw.get_object(env.gw.authenticate(gk.token), "logs", "l1")
    assert b"".join(chunks) == b"globex"
    late = env.gw.catalog.get_object("late", "lbk", "k")
    assert late is not None and late.metadata == {"m": "v"}
    assert env.gw.status().repair.shards_missing == 0
    # leftovers (old version of dir/o1) are orphans, collected after the TTL
    env.clock.advance(env.config.pending_ttl_s + 1)
    env.gw.collect_garbage()
    total = sum(link.store.shard_count() for link in env.links)
    assert total == sum(1 for _ in env.gw.catalog.scan("shard_index"))


def test_rebuild_without_checkpoint_and_with_nodes_down(env: Env) -> None:
    data = random_bytes(BIG, 12)
    env.put("obj", data)
    env.links[1].down = True  # plane p1 has two nodes: this one holds a shard of every stripe
    report = _wipe_and_rebuild(env)
    assert report.checkpoint_seq == 0 and report.nodes_unreachable == 1 and report.objects == 1
    assert report.shards_missing > 0  # the down node's shards are queued for repair
    p = env.gw.authenticate(env.key.token) if env.gw.catalog.get_key(env.key.key_id) else None
    assert p is None  # keys live only in checkpoints: the operator issues new ones
    key = env.gw.create_api_key("acme")
    _, chunks = env.gw.get_object(env.gw.authenticate(key.token), "data", "obj")
    assert b"".join(chunks) == data


def test_rebuild_refuses_a_non_empty_state_dir(env: Env) -> None:
    env.gw.close()
    with pytest.raises(FailedPrecondition, match="empty"):
        Gateway.rebuild(env.config, env.directory, env.master, clock=env.clock)
    env.gw = env.open()


def test_rebuild_with_a_wrong_master_key_recovers_nothing(tmp_path: Path) -> None:
    from orbitvault.ground.config import GatewayConfig
    from orbitvault.ground.crypto import MasterKey

    env = Env(tmp_path)
    try:
        env.put("obj", b"data")
        env.gw.checkpoint()
        cfg = GatewayConfig(state_dir=tmp_path / "other", segment_size=Env.SEGMENT)
        report = Gateway.rebuild(cfg, NodeDirectory(env.links, clock=env.clock), MasterKey.generate(), clock=env.clock)
        assert report.objects == 0 and report.tenants == 0 and report.orphan_shards == report.shards_seen
    finally:
        env.close()


def test_many_nodes_default_to_10_plus_4(tmp_path: Path) -> None:
    from orbitvault.ground.config import GatewayConfig
    from orbitvault.ground.crypto import MasterKey
    from orbitvault.orbit.clock import SimulatedClock

    links = make_links(tmp_path / "nodes", 14, capacity=64 << 20)
    clock = SimulatedClock(1e9)
    gw = Gateway(GatewayConfig(state_dir=tmp_path / "gw", fragment_size=4096), NodeDirectory(links, clock=clock),
                 MasterKey.generate(), clock=clock)  # fmt: skip
    try:
        gw.create_tenant("t")
        p = gw.authenticate(gw.create_api_key("t").token)
        b = gw.create_bucket(p, "big")
        assert (b.storage_class.k, b.storage_class.m) == (10, 4)
        data = random_bytes(300_000, 1)
        gw.put_object(p, "big", "x", chunked(data))
        for link in links[:4]:
            link.down = True
        assert b"".join(gw.get_object(p, "big", "x")[1]) == data
        links[4].down = True
        with pytest.raises(Unavailable):
            b"".join(gw.get_object(p, "big", "x")[1])
    finally:
        gw.close()
        for link in links:
            link.store.close()


def test_rebuild_does_not_count_pruned_checkpoints_as_lost(env: Env) -> None:
    """Checkpoint N lists the checkpoints before it, and the oldest of those is pruned right
    after N is written: gone from the nodes by design, not data the rebuild failed to recover."""
    env.put("obj", b"kept")
    seqs = [env.gw.checkpoint() for _ in range(checkpoint_mod.KEEP + 2)]
    report = _wipe_and_rebuild(env)
    assert report.checkpoint_seq == seqs[-1] and not report.errors, report
    assert report.objects_dropped == (), report.objects_dropped
    system = env.gw._system_principal()
    keys = [o.key for o in env.gw.list_objects(system, SYSTEM_BUCKET)[0]]
    assert keys == [f"catalog/{s:016d}" for s in seqs[-checkpoint_mod.KEEP :]]
    _, chunks = env.gw.get_object(env.gw.authenticate(env.key.token), "data", "obj")
    assert b"".join(chunks) == b"kept"


def test_rebuild_asks_a_slow_node_again(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that misses its first NodeInfo deadline, and one whose listing is cut once, are
    asked again: on a loaded host neither is gone, and counting it unreachable loses a catalog."""
    data = random_bytes(BIG, 13)
    env.put("obj", data)
    slow, cut = env.links[1], env.links[2]
    misses = {"info": 1, "list": 1}

    def flaky(what: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if misses[what]:
                misses[what] -= 1
                raise Unavailable("deadline exceeded")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(slow, "info", flaky("info", slow.info))
    monkeypatch.setattr(cut, "list_shards", flaky("list", cut.list_shards))
    report = _wipe_and_rebuild(env)
    assert misses == {"info": 0, "list": 0}
    assert report.nodes_unreachable == 0 and report.nodes_listed == len(env.links) and not report.errors, report
    assert report.shards_missing == 0
    key = env.gw.create_api_key("acme")
    _, chunks = env.gw.get_object(env.gw.authenticate(key.token), "data", "obj")
    assert b"".join(chunks) == data
