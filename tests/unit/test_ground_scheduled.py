"""Scheduled mode's parts without a network: config keys, the spool files, catalog spool entries,
contact pieces left free by a re-plan."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import StripeCoder
from orbitvault.errors import InvalidArgument, NotFound
from orbitvault.ground.catalog import (
    BucketRecord,
    Catalog,
    ObjectRecord,
    ShardLoc,
    SpoolEntry,
    SpoolObject,
    StripeRecord,
)
from orbitvault.ground.config import GatewayConfig, load_gateway_config
from orbitvault.ground.scheduled import _free, granule_of, make_clock
from orbitvault.ground.spool import GroundCopies, GroundShards
from orbitvault.orbit.clock import SimulatedClock, WallClock
from orbitvault.orbit.plan import Contact, ContactPlan

G = Geometry(4, 2, 4096, 4 * 4096 * 4)


def test_config_keys_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        "\n".join(
            [
                f'state_dir = "{tmp_path / "state"}"',
                'mode = "scheduled"',
                'clock = "simulated"',
                "sim_start = 2026-11-01T00:00:00Z",
                f'constellation = "{tmp_path / "sky.toml"}"',
                f'contact_plan = "{tmp_path / "plan.rc"}"',
                f'spool_dir = "{tmp_path / "spool"}"',
                "plan_horizon_s = 3600",
                "restore_keep_s = 60",
            ]
        )
    )
    c = load_gateway_config(cfg, env={})
    assert (c.mode, c.clock, c.sim_start) == ("scheduled", "simulated", 1793491200.0)
    assert c.spool_path == tmp_path / "spool" and c.restore_path == tmp_path / "state" / "restore"
    assert c.contact_plan == tmp_path / "plan.rc" and c.plan_horizon_s == 3600.0
    env = load_gateway_config(cfg, env={"ORBITVAULT_GATEWAY_SIM_START": "2026-11-02T00:00:00Z"})
    assert env.sim_start == 1793491200.0 + 86400
    assert GatewayConfig(state_dir=tmp_path).mode == "direct"
    with pytest.raises(InvalidArgument, match="mode"):
        load_gateway_config(None, env={"ORBITVAULT_GATEWAY_MODE": "sometimes"})
    with pytest.raises(InvalidArgument, match="sim_start"):
        GatewayConfig(state_dir=tmp_path, sim_start=1.0)


def test_make_clock(tmp_path: Path) -> None:
    assert isinstance(make_clock(GatewayConfig(state_dir=tmp_path)), WallClock)
    clock = make_clock(GatewayConfig(state_dir=tmp_path, clock="simulated", sim_start=1000.0))
    assert isinstance(clock, SimulatedClock) and clock.now() == 1000.0
    rc = tmp_path / "plan.rc"
    rc.write_text(ContactPlan([Contact(5000.0, 5600.0, "1", "11", 100.0)], epoch=4000.0).to_ion())
    clock = make_clock(GatewayConfig(state_dir=tmp_path, clock="simulated", contact_plan=rc))
    assert clock.now() == 4000.0


def test_ground_shards_round_trip_and_staging(tmp_path: Path) -> None:
    data = os.urandom(G.stripe_size - 100)
    enc = StripeCoder(G).encode(data)
    g = GroundShards(tmp_path / "spool")
    oid = os.urandom(32)
    for rows in enc.shards:
        g.write(oid, 0, rows.index, rows.fragments, rows.checksums)
    assert g.indexes(oid, 0) == set(range(6)) and g.indexes(oid, 1) == set()
    got = g.get_rows(oid, 0, 3, 1, 2)
    assert got.first_row == 1 and list(got.fragments) == list(enc.shards[3].fragments[1:3])
    assert list(got.checksums) == list(enc.shards[3].checksums[1:3])
    assert list(g.read_all(oid, 0, 5).fragments) == list(enc.shards[5].fragments)
    cache = GroundShards(tmp_path / "cache")
    rows = enc.shards[0]
    cache.write(oid, 0, 0, rows.fragments, rows.checksums, staged=True)
    assert cache.indexes(oid, 0) == set()  # invisible until its arrival
    cache.commit_staged(oid, 0, 0)
    both = GroundCopies(g, cache)
    assert both.shards(oid, 0) == set(range(6))
    assert list(both.get_rows(oid, 0, 0, 0, 1).fragments) == [rows.fragments[0]]
    assert list(g.objects()) == [oid]
    g.remove(oid)
    assert g.indexes(oid, 0) == set()
    with pytest.raises(NotFound):
        g.get_rows(oid, 0, 0, 0, 1)


def _record(oid: bytes) -> ObjectRecord:
    return ObjectRecord(
        object_id=oid,
        tenant="acme",
        bucket="data",
        key="k",
        size=10,
        etag=bytes(32),
        created_unix_ms=1,
        content_type="",
        metadata={},
        geometry=G,
        stripe_count=2,
        plain_per_stripe=1000,
        segment_size=256,
        wrapped_data_key=b"w",
    )


def test_catalog_spool_entries_commit_place_and_delete(tmp_path: Path) -> None:
    cat = Catalog(tmp_path, sync=False)
    cat.put_bucket(BucketRecord("acme", "data", G, None, 1))
    oid = os.urandom(32)
    rec = _record(oid)
    stripes = [StripeRecord(s, 5000, (None,) * 6) for s in range(2)]
    entries = [SpoolEntry(oid, s, i, os.urandom(32), 2, granule_of(rec)) for s in range(2) for i in range(6)]
    head = SpoolObject(oid, 7, "acme", (b"piece",))
    cat.commit_object(
        rec, stripes, upload_id=oid, failed=[], check_replace=lambda old: None, now_ms=1, spool=(head, entries)
    )
    assert [o.object_id for o in cat.spool_objects()] == [oid] and cat.spool_objects()[0].seq == 1
    assert len(cat.spool_entries(oid)) == 12 and cat.spool_shard_ids() == {e.shard_id for e in entries}
    node = os.urandom(32)
    started = replace(entries[0], target="OV-11", target_node=node, committed=1)
    assert cat.put_spool_entry(started)
    assert cat.spool_entries(oid)[0].target == "OV-11"
    for e in entries[:-1]:
        assert cat.place_spooled(e, ShardLoc(node, e.shard_id)) is False
    assert cat.place_spooled(entries[-1], ShardLoc(node, entries[-1].shard_id)) is True
    assert cat.spool_objects() == [] and cat.spool_entries() == []
    assert all(loc is not None for s in cat.stripes(oid) for loc in s.shards)
    assert cat.place_spooled(entries[0], ShardLoc(node, entries[0].shard_id)) is None  # already placed

    # Deleting a queued object drops its spool entries and tombstones uploads already started.
    oid2 = os.urandom(32)
    rec2 = _record(oid2)
    e2 = SpoolEntry(oid2, 0, 0, os.urandom(32), 2, 4208, target="OV-12", target_node=node)
    cat.commit_object(
        replace(rec2, key="k2"),
        [StripeRecord(0, 5000, (None,) * 6)],
        upload_id=oid2,
        failed=[],
        check_replace=lambda old: None,
        now_ms=1,
        spool=(SpoolObject(oid2, 8, "acme", (b"p",)), [e2]),
    )
    _rec, dead = cat.delete_object("acme", "data", "k2", check=lambda r: None, now_ms=2)
    assert dead == [(node, e2.shard_id)] and cat.spool_entries() == [] and cat.spool_objects() == []
    cat.close()


def test_free_takes_busy_intervals_out_of_contacts() -> None:
    a = Contact(100.0, 200.0, "A", "B", 10.0, 1.0)
    c = Contact(150.0, 400.0, "1", "A", 10.0, 1.0)
    plan = ContactPlan([a, c])
    free = _free(plan, {("A", "B"): [(120.0, 130.0), (190.0, 199.5)]}, now=110.0)
    pieces = sorted((x.start, x.end) for x in free.contacts if x.source == "A")
    assert pieces == [(100.0, 120.0), (130.0, 190.0)]  # the 0.5 s tail is shorter than the OWLT
    assert [x for x in free.contacts if x.source == "1"] == [c]
    assert _free(plan, {}, now=250.0).contacts == [c]
