"""Scheduled mode end to end: a real gateway and 8 real nodes (one per satellite of the sample
constellation) on loopback, a simulated clock the gateway's executor drives from event to event,
and the sample's contact plan with link rates scaled down so a few MiB take most of a day and
windows cut shards (`sky.py`).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orbitvault.cli.gateway import gateway as gateway_cli
from orbitvault.ground.crypto import MasterKey
from orbitvault.orbit.links import Network
from orbitvault.orbit.plan import read_plan
from tests.integration.conftest import Constellation
from tests.integration.sky import T0, scaled, write_sky

SIZES = [310_000, 250_000, 420_000, 180_000, 360_000, 290_000, 60_000, 400_000]  # ~2.2 MiB in all


@pytest.fixture
def sky(start_node: Any, tmp_path: Path) -> Any:
    """8 nodes flying on OV-11..OV-24, the scaled sky's files, and a gateway factory."""
    con = scaled()
    toml, rc = write_sky(tmp_path / "sky", con)
    nodes = [
        start_node(simulation=True, satellite=s.name, plane=str(s.plane), name=s.name.lower()) for s in con.satellites
    ]
    key_file = tmp_path / "master.key"
    MasterKey.generate().write_file(key_file)
    c = Constellation(tmp_path, nodes, key_file, start_node)
    c.sky_files = (toml, rc)  # type: ignore[attr-defined]
    c.con = con  # type: ignore[attr-defined]
    try:
        yield c
    finally:
        c.close()


def start(sky: Any, **settings: Any) -> tuple[Any, Any]:
    toml, rc = sky.sky_files
    values = {
        "mode": "scheduled",
        "clock": "simulated",
        "constellation": toml,
        "contact_plan": rc,
        "sim_start": T0,
        "node_refresh_s": 60.0,
    }
    values.update(settings)
    server = sky.start_gateway(**values)
    server.gateway.create_tenant("acme")
    token = server.gateway.create_api_key("acme").token
    client = sky.client(server.address, token, timeout_s=60)
    client.create_bucket("data")
    server.token = token
    return server, client


def payload(i: int, size: int) -> bytes:
    return os.urandom(size)


def test_simulated_day_backlog_reaches_durable(sky: Any) -> None:
    began = time.monotonic()
    server, client = start(sky)
    gw = server.gateway
    sched = gw.scheduler
    assert sched is not None
    data = {f"obj{i}": payload(i, n) for i, n in enumerate(SIZES)}
    with sched.holding():  # the whole backlog is queued at T0, before a byte goes up
        for key, blob in data.items():
            info = client.put("data", key, blob)
            assert info.durability.value == "queued"
        predicted = {}
        for key in data:
            st = client.status("data", key)
            assert st.state.value == "queued"
            assert st.shards_in_orbit == 0 and st.shards_spooled == st.shards_total
            assert st.predicted_durable_unix_ms > 0
            assert T0 * 1000 <= st.durable_bound_unix_ms <= st.predicted_durable_unix_ms
            predicted[key] = st.predicted_durable_unix_ms
        # The ground copy serves reads at once.
        assert client.get("data", "obj3") == data["obj3"]
        status = client.gateway_status()
        assert status.mode == "scheduled" and status.simulated_clock
        assert status.gateway_time_unix_ms == int(T0 * 1000)
        assert status.backlog_durable_unix_ms == max(predicted.values())
        assert 0 < status.backlog_bound_unix_ms <= status.backlog_durable_unix_ms
        assert {n.satellite for n in status.nodes} == {s.name for s in sky.con.satellites}
        cli = CliRunner().invoke(
            gateway_cli, ["status", "--address", server.address, "--api-key", server.token, "--insecure"]
        )
        assert cli.exit_code == 0, cli.output
        assert "mode scheduled, simulated clock at 2026-11-01T00:00:00Z" in cli.output
        assert "RPO: DURABLE by 2026-11-01T" in cli.output and "x the bound" in cli.output

    # Step through the day: each object goes QUEUED -> PARTIAL (k of k+m in orbit in every stripe)
    # -> DURABLE, never back; shards_in_orbit only grows.
    order = ["queued", "partial", "durable"]
    last = {key: ("queued", 0) for key in data}
    seen: set[str] = set()
    span = max(predicted.values()) / 1000 - T0
    for frac in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        sched.limit = T0 + frac * span
        assert sched.wait_idle(120)
        for key in data:
            st = client.status("data", key)
            state = st.state.value
            assert order.index(state) >= order.index(last[key][0]) and st.shards_in_orbit >= last[key][1]
            if state == "queued":
                assert st.stripe_min_in_orbit < 4 and st.predicted_durable_unix_ms == predicted[key]
            elif state == "partial":
                assert 4 <= st.stripe_min_in_orbit < 6 and st.stripes_recoverable == st.stripes_total
            last[key] = (state, st.shards_in_orbit)
            seen.add(state)
    assert seen == set(order)
    sched.limit = None

    for key in data:
        st = client.wait_durable("data", key, timeout_s=120, poll_s=0.05)
        assert st.shards_in_orbit == st.shards_total and st.shards_spooled == 0
    assert sched.wait_idle(60)
    runtime = time.monotonic() - began

    # Predicted and executed completion agree (to the millisecond the status reports).
    versions = {key: client.head("data", key).version_id for key in data}
    for key, vid in versions.items():
        assert abs(sched.durable_at[vid] * 1000 - predicted[key]) <= 1, key
    assert max(sched.durable_at.values()) - T0 > 3 * 3600  # the backlog really spans hours of passes

    # Every object reads back (from orbit now: the spool copies are gone).
    assert not any(sched.spool.objects())
    for key, blob in data.items():
        assert client.get("data", key) == blob

    # No window carries more than its capacity.
    plan = read_plan(sky.sky_files[1], nodes=sky.con.nodes())
    per_window: dict[Any, int] = defaultdict(int)
    sent_window: dict[Any, int] = defaultdict(int)
    for ex in sched.executed:
        per_window[ex.contact] += ex.planned_bytes
        sent_window[ex.contact] += ex.bytes_sent
    assert per_window
    for c, planned in per_window.items():
        assert c in plan.contacts
        assert sent_window[c] <= planned <= c.rate * (c.end - c.start - c.owlt) + 1, c

    # No stripe has two shards on one satellite (nor more than ceil(6/2) in a plane).
    sat_of = {st.node_id: st.status.satellite for st in gw.nodes.states()}
    net = Network.from_constellation(sky.con)
    for vid in versions.values():
        for stripe in gw.catalog.stripes(vid):
            sats = [sat_of[loc.node_id] for loc in stripe.shards if loc is not None]
            assert len(sats) == 6 and len(set(sats)) == 6
            per_plane = defaultdict(int)
            for s in sats:
                per_plane[net.plane(s)] += 1
            assert max(per_plane.values()) <= 3

    # Windows cut shards and the next pass resumed them; nothing was sent twice.
    uplinks = [ex for ex in sched.executed if ex.purpose == "store" and ex.hop == "uplink"]
    assert any(ex.resumed for ex in uplinks), "no pass cut a shard mid-way"
    stripes = [stripe for vid in versions.values() for stripe in gw.catalog.stripes(vid)]
    needed = sum(len(f) + 32 for stripe in stripes for f in _fragments(sky, stripe))
    uplinked = sum(ex.bytes_sent for ex in uplinks)
    relayed = sum(ex.bytes_sent for ex in sched.executed if ex.purpose == "store" and ex.hop == "isl")
    to_relays = sum(ex.bytes_sent for ex in uplinks if ex.dest != _final_satellite(gw, sat_of, ex.item))
    assert uplinked == needed  # every shard went up exactly once (to its satellite or a relay)
    assert uplinked - to_relays + relayed == needed  # and reached its satellite exactly once
    assert sched.totals.replans <= 2  # planned once for the backlog; reality followed the plan
    print(
        f"\nsimulated day: {len(data)} objects, {sum(SIZES)} bytes, {len(sched.executed)} transfers, "
        f"{sum(ex.resumed for ex in uplinks)} resumed, runtime {runtime:.1f}s, "
        f"uplinked/new = {uplinked / sum(SIZES):.4f}"
    )


def _fragments(sky: Any, stripe: Any) -> list[bytes]:
    """Every fragment of a stripe as its nodes hold them."""
    out = []
    for loc in stripe.shards:
        node = next(n for n in sky.nodes if n.store.node_id == loc.node_id)
        header = node.store.header(loc.shard_id)
        out += [r.fragment for r in node.store.read_rows(loc.shard_id, range(header.row_count))]
    return out


def _final_satellite(gw: Any, sat_of: dict[bytes, str], key: tuple[bytes, int, int]) -> str:
    oid, s, i = key
    loc = gw.catalog.stripe(oid, s).shards[i]
    return sat_of[loc.node_id]


def _node(sky: Any, node_id: bytes) -> Any:
    return next(n for n in sky.nodes if n.store.node_id == node_id)


def test_pass_cut_mid_shard_resumes_without_resending(sky: Any) -> None:
    server, client = start(sky)
    sched = server.gateway.scheduler
    blob = os.urandom(900_000)  # enough queued that windows end mid-shard (a short queue avoids cuts)
    with sched.holding():
        client.put("data", "big", blob)
        sched.ensure_planned()
        plan = sched.schedule()
    by_item: dict[Any, list[Any]] = defaultdict(list)
    for tr in plan.transfers:
        if tr.hop == "uplink":
            by_item[tr.item].append(tr)
    cut = next(
        (trs for trs in by_item.values() if len(trs) >= 2 and trs[0].dest == trs[1].dest and trs[0].offset == 0),
        None,
    )
    assert cut is not None, "the plan cuts no shard at the end of a window"
    first, second = cut[0], cut[1]
    oid, s_idx, i = first.item
    granule = sched._entry(first.item).granule
    # Run up to just after the first piece arrived (the window has closed on it).
    sched.limit = first.arrival + 1
    assert sched.wait_idle(60)
    e = sched._entry(first.item)
    target = next(st for st in server.gateway.nodes.states() if st.node_id == e.target_node)
    head = target.link.head_shard(e.shard_id)
    assert head is not None and not head.complete
    assert head.committed_rows == first.nbytes // granule == second.offset // granule
    assert client.status("data", "big").state.value == "queued"
    sched.limit = None
    client.wait_durable("data", "big", timeout_s=120, poll_s=0.05)
    done = [ex for ex in sched.executed if ex.item == first.item]
    assert [(ex.first_row, ex.end_row, ex.resumed) for ex in done[:2]] == [
        (0, first.nbytes // granule, False),
        (second.offset // granule, (second.offset + second.nbytes) // granule, True),
    ]
    loc = server.gateway.catalog.stripe(oid, s_idx).shards[i]
    node = _node(sky, loc.node_id)
    header = node.store.header(loc.shard_id)
    shard_bytes = sum(len(r.fragment) + 32 for r in node.store.read_rows(loc.shard_id, range(header.row_count)))
    assert sum(ex.bytes_sent for ex in done) == shard_bytes  # every row crossed exactly once
    assert client.get("data", "big") == blob


def test_restore_eta_and_a_satellite_lost_meanwhile(sky: Any) -> None:
    server, client = start(sky)
    gw = server.gateway
    sched = gw.scheduler
    blobs = {"a": os.urandom(200_000), "b": os.urandom(150_000)}
    for key, blob in blobs.items():
        client.put("data", key, blob)
    for key in blobs:
        client.wait_durable("data", key, timeout_s=120, poll_s=0.05)
    assert sched.wait_idle(60)
    vid = {key: client.head("data", key).version_id for key in blobs}

    # A restore with nothing going wrong completes at its ETA.
    first = client.restore("data", "a")
    assert not first.ready and first.eta_unix_ms > gw.now_ms()
    assert gw.now_ms() <= first.eta_bound_unix_ms <= first.eta_unix_ms
    ready = client.wait_ready("data", "a", timeout_s=120, poll_s=0.05)
    assert ready.ready and ready.expires_unix_ms > 0
    assert abs(sched.restored_at[vid["a"]] * 1000 - first.eta_unix_ms) <= 1

    # A satellite holding a chosen shard is lost before its downlink: another shard replaces it.
    with sched.holding():
        started = client.restore("data", "b")
        assert not started.ready
        _eta, rplan = sched.restore_job(vid["b"])
        downs = [tr for tr in rplan.transfers if tr.hop == "downlink" and tr.item[0] == vid["b"]]
        victim_sat = max(downs, key=lambda tr: tr.start).source
        holder = next(st for st in gw.nodes.states() if st.status is not None and st.status.satellite == victim_sat)
        victim = next(i for i, n in enumerate(sky.nodes) if n.store.node_id == holder.node_id)
        sky.stop_node(victim)
    ready = client.wait_ready("data", "b", timeout_s=120, poll_s=0.05)
    assert ready.ready
    final = sched.restored_at[vid["b"]]
    assert final * 1000 >= started.eta_unix_ms  # it had to wait for another window
    restored = [ex for ex in sched.executed if ex.purpose == "restore" and ex.item[0] == vid["b"]]
    assert all(ex.source != victim_sat for ex in restored if ex.hop == "downlink")
    assert victim_sat in sched._lost and sched.totals.failures >= 1
    # The plan made after the loss predicted what happened.
    etas = sched.restore_etas[vid["b"]]
    assert len(etas) >= 2 and abs(etas[0] * 1000 - started.eta_unix_ms) <= 1
    assert etas[-1] == final

    # Restored copies read like any other object, even with every node out of reach.
    for i in range(len(sky.nodes)):
        if i != victim:
            sky.stop_node(i)
    gw.refresh_nodes(force=True)
    assert client.get("data", "a") == blobs["a"]
    assert client.get("data", "b") == blobs["b"]


def test_gateway_process_on_a_simulated_clock(sky: Any, spawn_gateway: Any) -> None:
    """What a demo does: `orbitvault gateway serve` with the scheduled keys in its TOML; another
    process puts an object and waits for DURABLE while the gateway runs through the passes."""
    from orbitvault.client.sdk import ObjectStoreClient
    from orbitvault.ground.config import load_gateway_config
    from orbitvault.ground.gateway import Gateway
    from orbitvault.ground.nodes import NodeDirectory

    toml, rc = sky.sky_files
    cfg = sky.toml()
    cfg.write_text(
        cfg.read_text()
        + "\n".join(
            [
                'mode = "scheduled"',
                'clock = "simulated"',
                'sim_start = "2026-11-01T00:00:00Z"',
                f'constellation = "{toml}"',
                f'contact_plan = "{rc}"',
                f'spool_dir = "{sky.tmp / "spool"}"',
            ]
        )
        + "\n"
    )
    config = load_gateway_config(cfg, env={})
    admin = Gateway(config, NodeDirectory(), MasterKey.from_file(sky.master_key_file))  # as `gateway key create`
    try:
        admin.create_tenant("acme")
        token = admin.create_api_key("acme").token
    finally:
        admin.close()
    gp = spawn_gateway(cfg)
    blob = os.urandom(300_000)
    with ObjectStoreClient(gp.address, token, insecure=True, timeout_s=30) as c:
        c.create_bucket("demo")
        assert c.put("demo", "x", blob).durability.value == "queued"
        seen: list[str] = []
        st = c.wait_durable("demo", "x", timeout_s=120, poll_s=0.05, on_progress=lambda s: seen.append(s.state.value))
        assert st.shards_in_orbit == st.shards_total and seen[-1] == "durable"
        status = c.gateway_status()
        assert status.simulated_clock and status.gateway_time_unix_ms > T0 * 1000 + 600_000
        assert status.spooled_shards == 0 and status.backlog_durable_unix_ms == 0
        assert c.get("demo", "x") == blob
        ready = c.wait_ready("demo", "x", timeout_s=120, poll_s=0.05)
        assert ready.ready and c.get("demo", "x") == blob
        vid = c.head("demo", "x").version_id
    # Its spool copy went when it was DURABLE (catalog checkpoints, puts of their own, may be queued).
    assert not (sky.tmp / "spool" / vid.hex()).exists()
    assert gp.terminate() == 0


def test_wall_clock_executes_windows_as_they_come(sky: Any) -> None:
    """The same executor on the wall clock: it waits for each window, then sends."""
    import math

    from orbitvault.orbit.plan import Contact, ContactPlan, write_plan

    # The first window opens a few seconds out: starting the gateway on a loaded machine (the
    # suite runs in parallel) took over 2 s, and a window already gone moves the prediction.
    # Windows last 3 s: an executor thread a second late on a loaded machine still finds its
    # window open (with 1 s windows it sometimes missed one and the prediction moved).
    t0 = math.ceil(time.time()) + 6
    sats = [s.name for s in sky.con.satellites]
    win = 3
    contacts = [
        Contact(t0 + win * (j // 3), t0 + win * (j // 3) + win, "Redu", sat, 10_000_000.0) for j, sat in enumerate(sats)
    ]
    rc = sky.tmp / "now.rc"
    write_plan(ContactPlan(contacts, sky.con.nodes(), float(t0)), rc, "ion")
    server, client = start(sky, clock="wall", sim_start=None, constellation=None, contact_plan=rc)
    blob = os.urandom(100_000)
    client.put("data", "now", blob)
    st = client.status("data", "now")
    assert st.state.value == "queued" and t0 * 1000 < st.predicted_durable_unix_ms <= (t0 + 3 * win) * 1000
    done = client.wait_durable("data", "now", timeout_s=40, poll_s=0.1)
    assert done.shards_in_orbit == done.shards_total
    vid = client.head("data", "now").version_id
    executed = server.gateway.scheduler.durable_at[vid]
    # Never before its window; real time runs a little late, within the window.
    assert st.predicted_durable_unix_ms - 1000 <= executed * 1000 < st.predicted_durable_unix_ms + win * 1000
    assert client.get("data", "now") == blob


def test_restart_mid_backlog_resumes_from_the_spool(sky: Any) -> None:
    """The spool, the uploads under way and their upload ids survive a gateway restart."""
    server, client = start(sky)
    sched = server.gateway.scheduler
    data = {f"r{i}": os.urandom(n) for i, n in enumerate([400_000, 300_000, 350_000])}
    with sched.holding():
        for key, blob in data.items():
            client.put("data", key, blob)
        last = max(client.status("data", key).predicted_durable_unix_ms for key in data) / 1000
    sched.limit = (T0 + last) / 2
    assert sched.wait_idle(60)
    stopped_at = server.gateway.clock.now()
    partial = [e for v in sched._entries.values() for e in v.values() if 0 < e.committed < e.rows]
    before = sum(ex.bytes_sent for ex in sched.executed if ex.hop == "uplink")
    server.stop(0)

    again = sky.start_gateway(
        mode="scheduled",
        clock="simulated",
        constellation=sky.sky_files[0],
        contact_plan=sky.sky_files[1],
        sim_start=stopped_at,
        node_refresh_s=60.0,
    )
    token = again.gateway.create_api_key("acme").token
    c2 = sky.client(again.address, token, timeout_s=60)
    for key in data:
        c2.wait_durable("data", key, timeout_s=120, poll_s=0.05)
        assert c2.get("data", key) == data[key]
    after = sum(ex.bytes_sent for ex in again.gateway.scheduler.executed if ex.hop == "uplink")
    vids = [c2.head("data", key).version_id for key in data]
    needed = sum(len(f) + 32 for vid in vids for st in again.gateway.catalog.stripes(vid) for f in _fragments(sky, st))
    assert before + after == needed  # partial uploads resumed after the restart: nothing resent
    print(f"\nrestart: {len(partial)} partial upload(s) resumed")


def test_per_request_mode_on_a_direct_gateway(sky: Any) -> None:
    """A direct-mode gateway takes PUT_MODE_SCHEDULED per request (and direct puts as before)."""
    server, client = start(sky, mode="direct")
    assert server.gateway.scheduler is None
    direct = client.put("data", "now", os.urandom(70_000))
    assert direct.durability.value in ("partial", "durable")
    blob = os.urandom(120_000)
    assert client.put("data", "later", blob, mode="scheduled").durability.value == "queued"
    assert server.gateway.scheduler is not None
    assert client.wait_durable("data", "later", timeout_s=120, poll_s=0.05).shards_spooled == 0
    assert client.get("data", "later") == blob
    assert client.gateway_status().mode == "direct"
    assert client.restore("data", "later").ready  # a direct gateway reads nodes as they answer


def test_the_gateways_own_checkpoints_never_delay_a_tenants_durability(sky: Any) -> None:
    """Catalog checkpoints queue behind tenant data: the RPO a tenant was told does not move when
    the gateway spools its own bookkeeping after it (it did, by a whole pass, in a loaded drill)."""
    server, client = start(sky)
    gw, sched = server.gateway, server.gateway.scheduler
    assert sched is not None
    sched.limit = T0  # plan, but let no simulated time pass
    try:
        client.put("data", "x", os.urandom(3 << 20))
        assert sched.wait_idle(60)
        told = client.status("data", "x").predicted_durable_unix_ms
        assert told > 0
        gw.checkpoint()
        assert sched.wait_idle(60)
        assert gw.scheduler.totals.replans >= 2
        assert client.status("data", "x").predicted_durable_unix_ms == told
    finally:
        sched.limit = None


def test_garbage_collection_spares_a_restores_relay_copies(sky: Any) -> None:
    """A restore may forward a shard over an ISL to a satellite with an earlier downlink. That
    copy is in no catalog record; collecting orphans meanwhile must not delete it, or the
    downlink fails and the restore misses its ETA by a pass."""
    server, client = start(sky, pending_ttl_s=1.0)
    gw = server.gateway
    sched = gw.scheduler
    relay = None
    for n in range(6):
        client.put("data", f"o{n}", os.urandom(120_000))
        client.wait_durable("data", f"o{n}", timeout_s=120, poll_s=0.05)
        assert sched.wait_idle(60)
        with sched.holding():
            started = client.restore("data", f"o{n}")
            _eta, rplan = sched.restore_job(client.head("data", f"o{n}").version_id)
            isl = [tr for tr in rplan.transfers if tr.hop == "isl"]
            downs = [tr for tr in rplan.transfers if tr.hop == "downlink"]
            relay = next((tr for tr in isl if all(d.start > tr.arrival + 1 for d in downs)), None)
            if relay is not None:
                sched.limit = relay.arrival + 1  # the copy has arrived; no downlink has started
                break
        client.wait_ready("data", f"o{n}", timeout_s=120, poll_s=0.05)
    assert relay is not None, "no restore in this sky forwards a shard over an ISL first"
    assert sched.wait_idle(60)
    oid, s, i = relay.item
    shard_id = gw.catalog.stripe(oid, s).shards[i].shard_id
    relay_node = sched._sat_nodes()[relay.dest]
    assert relay_node.link.head_shard(shard_id) is not None
    assert shard_id in sched.relay_shards()

    gw.collect_garbage()
    assert relay_node.link.head_shard(shard_id) is not None  # still there for its downlink
    sched.limit = None
    assert client.wait_ready("data", f"o{n}", timeout_s=120, poll_s=0.05).ready
    assert abs(sched.restored_at[oid] * 1000 - started.eta_unix_ms) <= 1  # on time
    assert client.get("data", f"o{n}") is not None
