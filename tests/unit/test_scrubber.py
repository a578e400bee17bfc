"""The scrubber on real LMDB stores: six nodes holding 4+2 stripe sets, peers faked in process.

Damage comes from `irradiate` (random bits, exactly reported) or targeted `flip_bit` calls; the
checks are exact: every damaged unit counted once, repaired in place or from peers, data byte-
identical afterwards, unrecoverable rows named.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import CHECKSUM_LEN, coder_for
from orbitvault.errors import FailedPrecondition, NotFound, Unavailable
from orbitvault.storage.header import ShardHeader, Sibling
from orbitvault.storage.irradiate import irradiate
from orbitvault.storage.scrubber import (
    STATE_KEY,
    PeerRows,
    RateLimiter,
    Scrubber,
    ScrubState,
    load_state,
)
from orbitvault.storage.store import HEADER, RowBatch, RowRead, RowStatus, ShardStore

GEOMETRY = Geometry(4, 2, fragment_size=64, stripe_size=4 * 64 * 32)  # 32 rows per full stripe
CAPACITY = 64 << 20


def wreck(store: ShardStore, sid: bytes, row: int, bit: int = 256 + 77) -> None:
    """Damage a row's fragment beyond what the node corrects alone (three flipped bits in one
    4 KiB block), so only its siblings on other nodes can rebuild it. `bit` counts from the start
    of the stored value (a 32-byte checksum, then the fragment)."""
    for b in (bit, bit + 2, bit + 5):
        store.flip_bit(sid, row, b)


@dataclass
class Cluster:
    """n stores, the shards placed on them, and what each shard holds (the originals)."""

    root: Path
    stores: list[ShardStore]
    headers: dict[bytes, ShardHeader] = field(default_factory=dict)
    fragments: dict[bytes, list[bytes]] = field(default_factory=dict)
    checksums: dict[bytes, list[bytes]] = field(default_factory=dict)
    home: dict[bytes, int] = field(default_factory=dict)  # shard id -> store index
    down: set[bytes] = field(default_factory=set)  # node ids the fake network cannot reach

    def store_of(self, node_id: bytes) -> ShardStore:
        return next(s for s in self.stores if s.node_id == node_id)

    def peers(self) -> FakePeers:
        return FakePeers(self)

    def reopen(self, i: int) -> ShardStore:
        self.stores[i].close()
        self.stores[i] = ShardStore(self.root / f"node{i}", capacity_bytes=CAPACITY, create=False)
        return self.stores[i]

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def assert_pristine(self) -> None:
        """Every shard's header, checksums and fragments are exactly the originals."""
        for sid, header in self.headers.items():
            store = self.stores[self.home[sid]]
            assert store.check_header(sid) == 0
            assert store.header(sid) == header
            check = store.verify_rows(sid)
            assert check.damaged == [] and check.checksums_fixed == 0
            reads = list(store.read_rows(sid, range(header.row_count)))
            assert [r.status for r in reads] == [RowStatus.OK] * header.row_count
            assert [r.fragment for r in reads] == self.fragments[sid]
            assert [r.checksum for r in reads] == self.checksums[sid]


class FakePeers:
    """PeerRows over the other stores of the cluster, with nodes that can be marked down."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.calls: list[tuple[bytes, bytes, list[int]]] = []

    def read_rows(self, node_id: bytes, shard_id: bytes, rows: Sequence[int]) -> list[RowRead]:
        self.calls.append((node_id, shard_id, list(rows)))
        if node_id in self.cluster.down:
            raise Unavailable(f"node {node_id.hex()} is down")
        return list(self.cluster.store_of(node_id).read_rows(shard_id, rows))


def build_cluster(
    root: Path, *, nodes: int = 6, stripes: int = 4, seed: int = 7, stores: list[ShardStore] | None = None
) -> Cluster:
    """`stripes` stripes (of various lengths) of 4+2, shard i of stripe s on node (s + i) % nodes.

    New simulation stores under `root` unless `stores` are given (e.g. those of running servers).
    """
    rng = random.Random(seed)
    if stores is None:
        stores = [ShardStore(root / f"node{i}", capacity_bytes=CAPACITY, simulation=True) for i in range(nodes)]
    nodes = len(stores)
    cluster = Cluster(root, stores)
    coder = coder_for(GEOMETRY)
    for s in range(stripes):
        length = GEOMETRY.stripe_size - rng.randrange(0, 3 * GEOMETRY.row_size)  # a short last row, mostly
        data = rng.randbytes(length)
        encoded = coder.encode(data)
        object_id = rng.randbytes(32)
        shard_ids = [rng.randbytes(32) for _ in range(GEOMETRY.n)]  # seeded: irradiation is repeatable
        placement = [(s + i) % nodes for i in range(GEOMETRY.n)]
        siblings = tuple(Sibling(i, stores[placement[i]].node_id, shard_ids[i]) for i in range(GEOMETRY.n))
        for i, shard in enumerate(encoded.shards):
            header = ShardHeader(shard_ids[i], object_id, s, stripes, i, GEOMETRY, length, siblings, 1_700_000_000_000)
            stores[placement[i]].put(header, [RowBatch(0, list(shard.fragments), list(shard.checksums))])
            cluster.headers[shard_ids[i]] = header
            cluster.fragments[shard_ids[i]] = list(shard.fragments)
            cluster.checksums[shard_ids[i]] = list(shard.checksums)
            cluster.home[shard_ids[i]] = placement[i]
    return cluster


@pytest.fixture
def cluster(tmp_path: Path):
    c = build_cluster(tmp_path)
    yield c
    c.close()


def scrub_all(cluster: Cluster, **kwargs) -> list:
    return [Scrubber(store, cluster.peers(), **kwargs).run_pass() for store in cluster.stores]


# --- random damage, fully repairable -------------------------------------------------------------


def irradiate_and_repair(cluster: Cluster, peers_for: Callable[[int], PeerRows]) -> None:
    """Random bits across every node, a scrub of every node: all repaired, counters exact.

    Shared with the integration test, which runs it with real nodes and gRPC peers.
    """
    # Seeds chosen so that no stripe row loses more than m fragments and every kind of stored
    # value is hit (headers, checksum copies, fragments, block CRC records).
    hits = [irradiate(store, count=8, seed=600 + i) for i, store in enumerate(cluster.stores)]
    flips = [f for h in hits for f in h.flips]
    assert len(flips) == 48 and len({(f.shard_id, f.target, f.row, f.bit) for f in flips}) == 48

    # What the flips should cost, unit by unit: a header, or a row where only a checksum copy or the
    # block CRC record was hit (fixed in place); a row whose fragment was hit (corrected in place
    # when `_correctable`, else rebuilt from peers).
    units: dict[tuple[bytes, int | None], set[str]] = {}
    for f in flips:
        units.setdefault((f.shard_id, f.row), set()).add(f.target if f.target != "row" else f.region)
    headers = {u for u in units if u[1] is None}
    fragment_rows = {u for u, kinds in units.items() if "fragment" in kinds}
    checksum_only = {u for u, kinds in units.items() if u[1] is not None and "fragment" not in kinds}
    # The scenario must be repairable: at most m damaged fragments per stripe row, and no row with
    # both checksum copies hit but an intact fragment (the store cannot tell which copy is right).
    per_row: dict[tuple[bytes, int], int] = {}
    for sid, row in fragment_rows:
        key = (cluster.headers[sid].object_id, row)
        per_row[key] = per_row.get(key, 0) + 1
    assert max(per_row.values()) <= GEOMETRY.m
    for u in checksum_only:
        kinds = {(f.target, f.region) for f in flips if (f.shard_id, f.row) == u}
        assert not {("row", "checksum"), ("checksums", "checksum")} <= kinds
    assert headers and fragment_rows and checksum_only  # the seeds exercise all three kinds
    assert any(f.target == "crcs" for f in flips)

    corrected = {u for u in fragment_rows if _correctable([f for f in flips if (f.shard_id, f.row) == u])}

    results = [Scrubber(store, peers_for(i)).run_pass() for i, store in enumerate(cluster.stores)]
    assert all(r.completed for r in results)
    states = [load_state(s) for s in cluster.stores]
    assert sum(st.damaged_found for st in states) == len(units)
    assert sum(st.repaired_in_place for st in states) == len(headers) + len(checksum_only) + len(corrected)
    assert sum(st.repaired_from_peers for st in states) == len(fragment_rows - corrected)
    assert sum(st.unrecoverable for st in states) == 0
    assert all(st.open_damage == [] for st in states)
    assert sum(st.shards_verified for st in states) == len(cluster.headers)
    assert sum(st.rows_verified for st in states) == sum(h.row_count for h in cluster.headers.values())
    assert sum(st.bytes_verified for st in states) == sum(h.shard_len() for h in cluster.headers.values())
    assert all(st.passes_completed == 1 and not st.pass_in_progress for st in states)
    cluster.assert_pristine()

    again = [Scrubber(store, peers_for(i)).run_pass() for i, store in enumerate(cluster.stores)]
    assert sum(r.damaged_found for r in again) == 0  # a clean store: nothing found, nothing counted twice
    assert all(load_state(s).passes_completed == 2 for s in cluster.stores)


def _correctable(flips: list) -> bool:
    """Whether the node alone can undo these flips of one row: at most two per 4 KiB block of the
    fragment, its block CRC record intact, and a checksum copy left intact to confirm the result."""
    per_block: dict[int, int] = {}
    for f in flips:
        if f.target == "row" and f.region == "fragment":
            block = (f.bit - 8 * CHECKSUM_LEN) // (8 * 4096)
            per_block[block] = per_block.get(block, 0) + 1
    copies_hit = {(f.target, f.region) for f in flips} >= {("row", "checksum"), ("checksums", "checksum")}
    record_hit = any(f.target == "crcs" for f in flips)
    return max(per_block.values(), default=0) <= 2 and not copies_hit and not record_hit


def test_irradiated_cluster_is_repaired_exactly(cluster: Cluster) -> None:
    peers = cluster.peers()
    irradiate_and_repair(cluster, lambda i: peers)


def test_wrecked_fragments_come_from_peers_flipped_bits_are_corrected_alone(cluster: Cluster) -> None:
    shards = _stripe_shards(cluster, 0)
    for i, sid in enumerate(shards[:2]):
        cluster.stores[cluster.home[sid]].flip_bit(sid, 1, 8 * CHECKSUM_LEN + 9 + i)  # one bit each
    wreck(cluster.stores[cluster.home[shards[2]]], shards[2], 1)
    peers = cluster.peers()
    results = [Scrubber(store, peers).run_pass() for store in cluster.stores]
    assert sum(r.repaired_in_place for r in results) == 2
    assert sum(r.repaired_from_peers for r in results) == 1
    assert peers.calls  # the wrecked row really came from the other nodes
    cluster.assert_pristine()


def test_damaged_header_is_corrected_in_place_without_peers(cluster: Cluster) -> None:
    store = cluster.stores[0]
    sid = next(store.shard_ids())
    for bit in (3, 4000, 5000):
        store.flip_bit(sid, HEADER, bit)
    peers = cluster.peers()
    result = Scrubber(store, peers).run_pass()
    assert (result.damaged_found, result.repaired_in_place, result.repaired_from_peers) == (1, 1, 0)
    assert peers.calls == []
    assert store.check_header(sid) == 0


# --- beyond repair ---------------------------------------------------------------------------------


def _stripe_shards(cluster: Cluster, stripe: int) -> list[bytes]:
    """Shard ids of one stripe, by shard index."""
    ids = [sid for sid, h in cluster.headers.items() if h.stripe_index == stripe]
    return sorted(ids, key=lambda sid: cluster.headers[sid].shard_index)


def test_more_than_m_damaged_siblings_reported_exactly(cluster: Cluster) -> None:
    shards = _stripe_shards(cluster, 1)
    row = 5
    victims = shards[: GEOMETRY.m + 1]  # m + 1 fragments of one row: k healthy ones no longer exist
    for sid in victims:
        wreck(cluster.stores[cluster.home[sid]], sid, row)
    results = scrub_all(cluster)
    damage = [d for r in results for d in r.unrecoverable_damage]
    assert sorted((d.shard_id, tuple(d.rows)) for d in damage) == sorted((sid, (row,)) for sid in victims)
    for d in damage:
        h = cluster.headers[d.shard_id]
        assert (d.object_id, d.stripe_index, d.shard_index, d.header) == (h.object_id, 1, h.shard_index, False)
        assert "healthy sibling fragment" in d.reason
    states = {s.node_id: load_state(s) for s in cluster.stores}
    assert sum(st.unrecoverable for st in states.values()) == GEOMETRY.m + 1
    assert sum(st.damaged_found for st in states.values()) == GEOMETRY.m + 1
    for sid in victims:
        store = cluster.stores[cluster.home[sid]]
        st = states[store.node_id]
        assert [(d.shard_id, d.rows) for d in st.open_damage] == [(sid, [row])]
        assert store.head(sid).damaged_rows == 1

    # Found again on the next pass, but not counted again.
    scrub_all(cluster)
    assert sum(load_state(s).unrecoverable for s in cluster.stores) == GEOMETRY.m + 1
    assert sum(load_state(s).damaged_found for s in cluster.stores) == GEOMETRY.m + 1
    assert sum(len(load_state(s).open_damage) for s in cluster.stores) == GEOMETRY.m + 1


def test_unreachable_peers_then_repaired_when_they_return(cluster: Cluster) -> None:
    shards = _stripe_shards(cluster, 2)
    target = shards[0]
    store = cluster.stores[cluster.home[target]]
    wreck(store, target, 3, 300)
    # Three of the five siblings down: only two healthy fragments of the four needed are reachable.
    cluster.down = {cluster.headers[target].siblings[i].node_id for i in (1, 2, 3)}
    result = Scrubber(store, cluster.peers()).run_pass()
    [d] = result.unrecoverable_damage
    assert (d.shard_id, d.rows) == (target, [3])
    assert "unreachable" in d.reason
    assert load_state(store).unrecoverable == 1

    cluster.down = set()
    result = Scrubber(store, cluster.peers()).run_pass()
    assert (result.damaged_found, result.repaired_from_peers, result.unrecoverable) == (0, 1, 0)
    st = load_state(store)
    assert (st.damaged_found, st.repaired_from_peers, st.unrecoverable, st.open_damage) == (1, 1, 1, [])
    assert store.head(target).damaged_rows == 0
    cluster.assert_pristine()


def test_one_unreachable_sibling_is_skipped(cluster: Cluster) -> None:
    target = _stripe_shards(cluster, 0)[2]
    store = cluster.stores[cluster.home[target]]
    wreck(store, target, 0, 1000)
    cluster.down = {cluster.headers[target].siblings[0].node_id}
    result = Scrubber(store, cluster.peers()).run_pass()
    assert (result.repaired_from_peers, result.unrecoverable) == (1, 0)
    cluster.assert_pristine()


def test_header_beyond_repair_is_reported(cluster: Cluster) -> None:
    store = cluster.stores[3]
    sid = next(store.shard_ids())
    n = store.stored_value_len(sid, HEADER)
    for byte in range(n):  # every byte of the record damaged
        store.flip_bit(sid, HEADER, byte * 8)
    result = Scrubber(store, cluster.peers()).run_pass()
    assert result.completed
    [d] = result.unrecoverable_damage
    assert (d.shard_id, d.header, d.object_id) == (sid, True, None)
    st = load_state(store)
    assert (st.damaged_found, st.unrecoverable, st.shards_verified) == (1, 1, store.shard_count() - 1)
    again = Scrubber(store, cluster.peers()).run_pass()  # still reported, not counted twice
    assert [d.shard_id for d in again.unrecoverable_damage] == [sid] and again.unrecoverable == 0
    assert load_state(store).unrecoverable == 1


def test_no_peers_configured(cluster: Cluster) -> None:
    target = _stripe_shards(cluster, 0)[0]
    store = cluster.stores[cluster.home[target]]
    wreck(store, target, 1, 400)
    [d] = Scrubber(store, None).run_pass().unrecoverable_damage
    assert "no peers configured" in d.reason


# --- resume, state -------------------------------------------------------------------------------


def test_resumes_from_persisted_position_after_restart(tmp_path: Path) -> None:
    cluster = build_cluster(tmp_path, nodes=1, stripes=2)  # all 12 shards on one node
    try:
        store = cluster.stores[0]
        ids = list(store.shard_ids())
        assert len(ids) == 12
        stop = threading.Event()
        seen: list[bytes] = []

        def after(sid: bytes) -> None:
            seen.append(sid)
            if len(seen) == 5:
                stop.set()

        first = Scrubber(store, None, checkpoint_s=3600, on_shard=after).run_pass(stop)
        assert not first.completed and seen == ids[:5]
        st = load_state(store)
        assert (st.pass_in_progress, st.cursor_shard_id, st.pass_shards_done, st.activity) == (True, ids[4], 5, "idle")

        store = cluster.reopen(0)  # a new process, in effect
        seen.clear()
        second = Scrubber(store, None, on_shard=seen.append).run_pass()
        assert second.completed and seen == ids[5:]
        st = load_state(store)
        assert (st.passes_completed, st.pass_in_progress, st.shards_verified) == (1, False, 12)
        assert st.pass_shards_total == 12 and st.pass_shards_done == 12
        third = Scrubber(store, None).run_pass()  # a new pass starts from the beginning
        assert third.shards_verified == 12
    finally:
        cluster.close()


def test_state_json_round_trip_and_tolerance(cluster: Cluster) -> None:
    store = cluster.stores[0]
    target = next(sid for sid in store.shard_ids() if cluster.headers[sid].row_count > 3)
    others = [sid for sid in _stripe_shards(cluster, cluster.headers[target].stripe_index) if sid != target]
    for row in (1, 2, 3):
        for sid in [target, *others[:2]]:  # three damaged fragments of each row: beyond repair
            wreck(cluster.stores[cluster.home[sid]], sid, row, 999)
    Scrubber(store, cluster.peers()).run_pass()
    raw = store.get_meta(STATE_KEY)
    assert raw is not None
    st = ScrubState.from_json(raw)
    assert ScrubState.from_json(st.to_json()) == st
    d = json.loads(raw)
    assert d["version"] == 1 and d["open_damage"][0]["rows"] == [[1, 3]]
    d["future_field"] = 1
    del d["passes_completed"]
    assert ScrubState.from_json(json.dumps(d).encode()).passes_completed == 0


def test_deleted_shard_damage_is_forgotten(cluster: Cluster) -> None:
    target = _stripe_shards(cluster, 0)[0]
    store = cluster.stores[cluster.home[target]]
    wreck(store, target, 1, 400)
    Scrubber(store, None).run_pass()
    assert len(load_state(store).open_damage) == 1
    store.delete(target)
    Scrubber(store, None).run_pass()
    assert load_state(store).open_damage == []
    with pytest.raises(NotFound):
        store.head(target)


# --- rate limit (injected clock: no real time) ----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_rate_limiter_long_run_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1_000_000, burst_bytes=250_000, monotonic=clock.monotonic, sleep=clock.sleep)
    for _ in range(100):
        limiter.acquire(100_000)
    # 10 MB at 1 MB/s; the bucket starts empty, so not even a burst runs ahead.
    assert clock.t - 1000.0 == pytest.approx(10.0)


def test_rate_limiter_refills_with_idle_time_up_to_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1_000_000, burst_bytes=500_000, monotonic=clock.monotonic, sleep=clock.sleep)
    assert limiter.acquire(500_000) == pytest.approx(0.5)  # starts empty
    assert limiter.acquire(100_000) == pytest.approx(0.1)
    clock.t += 100.0  # idle: refills, but only to the burst size
    assert limiter.acquire(500_000) == 0.0
    assert limiter.acquire(1_000_000) == pytest.approx(1.0)
    # A request larger than the bucket passes and is paid for by sleeping.
    assert limiter.acquire(4_000_000) == pytest.approx(4.0)


def test_rate_limiter_unthrottled() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0, monotonic=clock.monotonic, sleep=clock.sleep)
    for _ in range(10):
        assert limiter.acquire(10**9) == 0.0
    assert clock.slept == []


def test_scrubber_honours_the_rate(cluster: Cluster) -> None:
    clock = FakeClock()
    store = cluster.stores[0]
    rate = 10_000  # bytes/s
    result = Scrubber(store, None, rate_bytes_per_s=rate, monotonic=clock.monotonic, sleep=clock.sleep).run_pass()
    elapsed = clock.t - 1000.0
    assert result.bytes_verified > 0
    assert elapsed == pytest.approx(result.bytes_verified / rate)  # no real time passes on the fake clock
    assert load_state(store).throttle_bytes_per_sec == rate


def test_run_forever_stops_and_records_idle(cluster: Cluster) -> None:
    store = cluster.stores[0]
    stop = threading.Event()
    passes: list[bytes] = []
    scrubber = Scrubber(store, None, interval_s=3600, on_shard=passes.append)
    t = threading.Thread(target=scrubber.run_forever, args=(stop,))
    t.start()
    # The first pass runs, then the scrubber waits out its interval; stop interrupts the wait.
    for _ in range(200):
        if load_state(store).passes_completed == 1:
            break
        threading.Event().wait(0.05)
    stop.set()
    t.join(10)
    assert not t.is_alive()
    st = load_state(store)
    assert st.passes_completed == 1 and st.activity == "idle" and st.next_pass_unix_ms > 0


def test_a_second_scrubber_on_the_same_store_is_refused(cluster: Cluster) -> None:
    store = cluster.stores[0]
    Scrubber(store, None).run_pass()
    st = load_state(store)
    st.activity, st.pid = "running", os.getppid()  # a live process other than this one
    st.updated_unix_ms = int(time.time() * 1000)
    store.put_meta(STATE_KEY, st.to_json())
    with pytest.raises(FailedPrecondition, match="another scrubber"):
        Scrubber(store, None).run_pass()
    st.updated_unix_ms -= 2 * 3600_000  # stale: that scrubber died and its pid was reused
    store.put_meta(STATE_KEY, st.to_json())
    assert Scrubber(store, None).run_pass().completed
