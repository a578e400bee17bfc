"""The uplink scheduler, restore planner and RPO/RTO predictions (pure planning, no I/O)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.links import Network, capacity_bound, ground_contacts, served_segments
from orbitvault.orbit.model import Constellation
from orbitvault.orbit.plan import Contact, ContactPlan
from orbitvault.orbit.restore import HeldShard, RestoreStripe, plan_restore
from orbitvault.orbit.rpo import predict_backlog, predict_restore
from orbitvault.orbit.scheduler import (
    ClassPolicy,
    Schedule,
    StripeBulk,
    StripeSpec,
    UplinkItem,
    plan_uplink,
)
from orbitvault.orbit.walker import SAMPLE_EPOCH

T0 = SAMPLE_EPOCH + 20 * 86400
MiB = 2**20
EPS = 1e-6


@pytest.fixture(scope="module")
def sample() -> Constellation:
    return load_constellation()


@pytest.fixture(scope="module")
def net(sample: Constellation) -> Network:
    return Network.from_constellation(sample)


@pytest.fixture(scope="module")
def day(sample: Constellation) -> ContactPlan:
    return ContactPlan.from_model(sample, T0, T0 + 86400)


def check(sched: Schedule, net: Network, items: Sequence[UplinkItem], specs: Sequence[StripeSpec]) -> None:
    """Every invariant a schedule promises, checked from its transfers alone."""
    by_contact: dict[Contact, list] = defaultdict(list)
    for tr in sched.transfers:
        by_contact[tr.contact].append(tr)
        c = tr.contact
        assert c.start - EPS <= tr.start <= tr.end <= c.end - c.owlt + EPS, tr
        assert tr.arrival == pytest.approx(tr.end + c.owlt)
    for c, trs in by_contact.items():
        assert sum(tr.nbytes for tr in trs) <= c.rate * c.duration  # never beyond the window
        trs.sort(key=lambda tr: tr.start)
        for a, b in itertools.pairwise(trs):
            assert b.start >= a.end - EPS, (a, b)  # one transfer at a time on a link

    # Antennas: a station never talks to more satellites at once than it has antennas.
    for station, antennas in net.stations.items():
        events = sorted(
            [(tr.start, 1) for tr in sched.transfers if tr.source == station]
            + [(tr.end, -1) for tr in sched.transfers if tr.source == station]
        )
        live = 0
        for _t, d in events:
            live += d
            assert live <= antennas
        segs = sorted((g.start, g.end) for g in sched.segments if g.source == station)
        for i, (s, _e) in enumerate(segs):
            assert sum(1 for s2, e2 in segs[: i + 1] if e2 > s + EPS) <= antennas

    # Bytes per item: exactly what was missing, contiguous from the resume offset, ISL after uplink.
    of_item: dict[Hashable, list] = defaultdict(list)
    for tr in sched.transfers:
        of_item[tr.item].append(tr)
    for it in items:
        if it.delivered >= it.size:
            continue
        assert it.id in sched.targets and it.id in sched.item_done, it
        target = sched.targets[it.id]
        mine = of_item[it.id]
        up = sorted((tr for tr in mine if tr.hop == "uplink"), key=lambda tr: tr.start)
        isl = sorted((tr for tr in mine if tr.hop == "isl"), key=lambda tr: tr.start)
        relay = sched.relays.get(it.id)
        if it.relay is None or relay != it.relay:
            assert {tr.dest for tr in up} == {relay or target}
            _contiguous(up, it)
        if relay is not None:
            assert isl and {(tr.source, tr.dest) for tr in isl} == {(relay, target)}
            _contiguous(isl, it)
            assert isl[0].start >= max((tr.arrival for tr in up), default=sched.now) - EPS
        last = max(tr.arrival for tr in (isl or up))
        assert sched.item_done[it.id] == pytest.approx(last)

    # Placement: distinct satellites, at most ceil((k+m)/planes) per plane; DURABLE = last shard in.
    planes = net.plane_count()
    items_of: dict[Hashable, list[UplinkItem]] = defaultdict(list)
    for it in items:
        items_of[it.stripe].append(it)
    for spec in specs:
        sats = list(spec.in_orbit) + [sched.targets[it.id] for it in items_of[spec.id]]
        assert len(set(sats)) == len(sats) == spec.k + spec.m, spec
        per_plane: dict[Hashable, int] = defaultdict(int)
        for s in sats:
            per_plane[net.plane(s)] += 1
        assert max(per_plane.values()) <= math.ceil((spec.k + spec.m) / planes)
        done = max((sched.item_done[it.id] for it in items_of[spec.id]), default=sched.now)
        assert sched.stripe_durable[spec.id] == pytest.approx(max(done, sched.now))


def _contiguous(trs: list, it: UplinkItem) -> None:
    pos = it.delivered
    for tr in trs:
        assert tr.offset == pos
        pos += tr.nbytes
        if pos < it.size:
            assert tr.nbytes % it.granule == 0  # cut at a row boundary: a resume resends nothing
    assert pos == it.size


def backlog(stripes: int, k: int = 4, m: int = 2) -> tuple[list[UplinkItem], list[StripeSpec]]:
    """Objects of 1-5 stripes, last stripe smaller, three tenants; a few resumed and pinned shards."""
    items: list[UplinkItem] = []
    specs: list[StripeSpec] = []
    sats = ["OV-11", "OV-12", "OV-21", "OV-22"]
    obj = 0
    s = 0
    while s < stripes:
        n = 1 + obj % 5
        for j in range(min(n, stripes - s)):
            size = 4 * MiB if j < n - 1 else (1 + obj % 4) * MiB
            cls = f"tenant{obj % 3}"
            specs.append(StripeSpec(s, k, m))
            for i in range(k + m):
                target = delivered = None
                if s % 50 == 7 and i == 0:
                    target, delivered = sats[s % 4], size // 3 // 65536 * 65536
                elif s % 50 == 9 and i < 2:
                    target, delivered = sats[(s + i) % 4], 0
                items.append(
                    UplinkItem((s, i), s, size, delivered or 0, cls, target, granule=65536 if size % 65536 == 0 else 1)
                )
            s += 1
        obj += 1
    return items, specs


def test_simulated_day_schedules_everything_within_every_limit(day: ContactPlan, net: Network) -> None:
    items, specs = backlog(1500)
    sched = plan_uplink(day, net, items, specs, now=T0)
    assert not sched.unscheduled and sched.complete
    assert set(sched.stripe_durable) == {s.id for s in specs}
    check(sched, net, items, specs)
    needed = sum(it.size - it.delivered for it in items)
    assert sum(tr.nbytes for tr in sched.transfers if tr.hop == "uplink") == needed
    bound = sched.capacity_bound(needed)
    assert bound is not None and sched.durable_at is not None and sched.durable_at >= bound
    assert sched.relays  # k+m distinct satellites out of 8: store-and-forward helps
    chunks: dict[Hashable, int] = defaultdict(int)
    for tr in sched.transfers:
        if tr.hop == "uplink":
            chunks[tr.item] += 1
    assert max(chunks.values()) > 1  # some shards were cut at loss of signal and resumed


def test_resumed_item_sends_exactly_the_rest(day: ContactPlan, net: Network) -> None:
    size, delivered = 10 * MiB + 123, 3 * MiB
    items = [
        UplinkItem("r", "s", size, delivered, target="OV-13", granule=65536),
        UplinkItem("a", "s", size),
        UplinkItem("b", "s", size),
    ]
    specs = [StripeSpec("s", 2, 1)]
    sched = plan_uplink(day, net, items, specs, now=T0)
    check(sched, net, items, specs)
    mine = [tr for tr in sched.transfers if tr.item == "r"]
    assert min(tr.offset for tr in mine) == delivered
    relayed = "r" in sched.relays
    assert sum(tr.nbytes for tr in mine if tr.hop == ("isl" if relayed else "uplink")) == size - delivered
    assert sched.targets["r"] == "OV-13"
    # Already whole: nothing scheduled at all.
    done = [UplinkItem("x", "t", size, size, target="OV-11"), UplinkItem("y", "t", size)]
    sched = plan_uplink(day, net, done, [StripeSpec("t", 1, 1)], now=T0)
    assert not [tr for tr in sched.transfers if tr.item == "x"]
    assert sched.targets["y"] != "OV-11"


def toy(uplinks: Sequence[tuple[str, float, float]], isl: Sequence[tuple[str, str, float, float]] = ()) -> ContactPlan:
    """A hand-made plan: station G (1 kB/s uplinks), satellites A and B in planes 1 and 2."""
    contacts = [Contact(s, e, "G", sat, 1000.0, 1.0) for sat, s, e in uplinks]
    contacts += [Contact(s, e, a, b, 10_000.0, 1.0) for a, b, s, e in isl]
    return ContactPlan(contacts)


TOY = Network({"G": 1}, {"A": 1, "B": 2})


def test_cut_at_loss_of_signal_resumes_at_the_byte() -> None:
    plan = toy([("A", 0, 100), ("A", 1000, 1100)])
    it = UplinkItem("big", "s", 150_000, granule=1000)
    sched = plan_uplink(plan, TOY, [it], [StripeSpec("s", 1, 0)], now=0)
    check(sched, TOY, [it], [StripeSpec("s", 1, 0)])
    chunks = [(tr.offset, tr.nbytes) for tr in sched.transfers]
    assert chunks == [(0, 99_000), (99_000, 51_000)]  # (100 s - 1 s owlt) x 1 kB/s, then the rest
    assert sched.item_done["big"] == pytest.approx(1000 + 51 + 1)


def test_store_and_forward_when_it_is_earlier() -> None:
    plan = toy([("A", 0, 100), ("B", 10_000, 10_100)], [("A", "B", 200, 400)])
    items = [UplinkItem("x", "s", 20_000), UplinkItem("y", "s", 20_000)]
    specs = [StripeSpec("s", 1, 1)]
    sched = plan_uplink(plan, TOY, items, specs, now=0)
    check(sched, TOY, items, specs)
    assert {sched.targets["x"], sched.targets["y"]} == {"A", "B"}
    relayed = next(i for i in ("x", "y") if sched.targets[i] == "B")
    assert sched.relays == {relayed: "A"}
    isl = [tr for tr in sched.transfers if tr.hop == "isl"]
    assert isl[0].start == pytest.approx(200) and sum(tr.nbytes for tr in isl) == 20_000
    assert sched.durable_at == pytest.approx(200 + 2 + 1)  # 20 kB at 10 kB/s, 1 s light time
    # Without the ISL the second shard waits for B's own pass.
    direct = plan_uplink(plan, TOY, items, specs, now=0, relays=False)
    assert direct.durable_at is not None and direct.durable_at > 10_000
    # A shard pinned to B (say, being repaired there) goes the same way.
    pinned = [UplinkItem("p", "t", 20_000, target="B")]
    sched = plan_uplink(plan, TOY, pinned, [StripeSpec("t", 1, 0)], now=0)
    assert sched.relays == {"p": "A"} and sched.item_done["p"] < 10_000


def test_store_and_forward_not_taken_when_direct_is_sooner() -> None:
    plan = toy([("A", 0, 100), ("B", 150, 250)], [("A", "B", 5000, 5100)])
    items = [UplinkItem("x", "s", 20_000), UplinkItem("y", "s", 20_000)]
    sched = plan_uplink(plan, TOY, items, [StripeSpec("s", 1, 1)], now=0)
    assert not sched.relays and sched.durable_at is not None and sched.durable_at < 300


def test_antennas_limit_parallel_passes() -> None:
    net = Network({"G": 1}, {"A": 1, "B": 2, "C": 3})
    plan = ContactPlan([Contact(0, 100, "G", s, 1000.0) for s in "ABC"] + [Contact(50, 300, "G", "A", 1000.0)])
    segs = served_segments(ground_contacts(plan, net, "uplink", 0, 1000), net, 0, 1000)
    spans = sorted((g.start, g.end) for g in segs)
    for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
        assert s2 >= e1 - EPS
    assert spans[0] == (0, 100) and spans[-1] == (100, 300)
    # The bound sees one antenna's worth: 1 kB/s for 300 s, not the 500 s of windows in the plan.
    assert capacity_bound(segs, 300_001, 0) is None
    assert capacity_bound(segs, 290_000, 0) == pytest.approx(290)


def test_weighted_fairness_and_tiers() -> None:
    net = Network({"G": 1}, {"A": 1})
    plan = ContactPlan([Contact(i * 1000, i * 1000 + 101, "G", "A", 10_000.0, 1.0) for i in range(10)])
    items, specs = [], []
    for i in range(1000):  # 20 MB queued, 10 MB of windows
        for cls in ("gold", "bronze"):
            items.append(UplinkItem(f"{cls}{i}", f"{cls}{i}", 10_000, cls=cls))
            specs.append(StripeSpec(f"{cls}{i}", 1, 0))
    policy = {"gold": ClassPolicy(weight=3.0), "bronze": ClassPolicy(weight=1.0)}
    sched = plan_uplink(plan, net, items, specs, now=0, classes=policy)
    sent: dict[str, int] = defaultdict(int)
    for tr in sched.transfers:
        sent[str(tr.item)[:4]] += tr.nbytes
    assert sent["gold"] / sent["bron"] == pytest.approx(3.0, rel=0.05)  # windows full, shared 3:1
    tiers = {"gold": ClassPolicy(tier=0), "bronze": ClassPolicy(tier=1)}
    sched = plan_uplink(plan, net, items[:40], specs[:40], now=0, classes=tiers)
    gold_done = max(t for i, t in sched.item_done.items() if str(i).startswith("gold"))
    bronze_start = min(tr.start for tr in sched.transfers if str(tr.item).startswith("bronze"))
    assert bronze_start >= gold_done - 1.0 - EPS


def test_lost_satellite_is_avoided(day: ContactPlan, net: Network) -> None:
    items, specs = backlog(200)
    items = [it for it in items if it.target is None or it.target != "OV-12"]
    specs = [s for s in specs if sum(1 for it in items if it.stripe == s.id) == s.k + s.m]
    items = [it for it in items if any(s.id == it.stripe for s in specs)]
    sched = plan_uplink(day, net, items, specs, now=T0, exclude={"OV-12"})
    assert sched.complete
    assert "OV-12" not in set(sched.targets.values()) | set(sched.relays.values())
    lost = [UplinkItem("z", "u", 1000, 10, target="OV-12")]
    sched = plan_uplink(day, net, lost, [StripeSpec("u", 1, 0)], now=T0, exclude={"OV-12"})
    assert "lost" in sched.unscheduled["z"] and "u" in sched.stripes_pending and sched.durable_at is None


def test_bulk_agrees_with_exact(day: ContactPlan, net: Network) -> None:
    stripes = 3000
    items = [UplinkItem((s, i), s, 4 * MiB) for s in range(stripes) for i in range(6)]
    specs = [StripeSpec(s, 4, 2) for s in range(stripes)]
    exact = plan_uplink(day, net, items, specs, now=T0)
    bulk = plan_uplink(day, net, bulk=[StripeBulk("q", stripes, 4, 2, 4 * MiB)], now=T0)
    assert exact.durable_at is not None and bulk.durable_at is not None
    assert bulk.durable_at == pytest.approx(exact.durable_at, abs=60)
    assert sum(tr.nbytes for tr in bulk.transfers if tr.hop == "uplink") == stripes * 6 * 4 * MiB
    check(exact, net, items, specs)


def test_invalid_queues_are_refused(day: ContactPlan, net: Network) -> None:
    with pytest.raises(InvalidArgument, match="has 6"):
        plan_uplink(day, net, [UplinkItem("a", "s", 10)], [StripeSpec("s", 4, 2)], now=T0)
    with pytest.raises(InvalidArgument, match="needs the target"):
        plan_uplink(day, net, [UplinkItem("a", "s", 10, 5)], [StripeSpec("s", 1, 0)], now=T0)
    two = [UplinkItem("a", "s", 10, target="OV-11"), UplinkItem("b", "s", 10, target="OV-11")]
    with pytest.raises(InvalidArgument, match="two shards"):
        plan_uplink(day, net, two, [StripeSpec("s", 1, 1)], now=T0)
    with pytest.raises(InvalidArgument, match="no StripeSpec"):
        plan_uplink(day, net, [UplinkItem("a", "s", 10)], [], now=T0)


def test_restore_picks_the_earliest_k_and_replans_around_a_lost_satellite(day: ContactPlan, net: Network) -> None:
    holders = ["OV-11", "OV-13", "OV-22", "OV-24", "OV-12"]
    stripe = RestoreStripe("s", 2, tuple(HeldShard(f"sh-{h}", h, 4 * MiB) for h in holders))
    now = T0 + 3600
    down = served_segments(ground_contacts(day, net, "downlink", now, T0 + 86400), net, now, T0 + 86400)

    def first_down(sat: str) -> float:
        g = min((g for g in down if g.source == sat), key=lambda g: g.start)
        return g.start + 4 * MiB / g.rate + g.owlt

    def expect(sats: list[str]) -> tuple[set[str], float]:
        order = sorted(sats, key=first_down)
        return {f"sh-{h}" for h in order[:2]}, first_down(order[1])

    plan = plan_restore(day, net, [stripe], now=now, relays=False)
    chosen, eta = expect(holders)
    assert set(plan.chosen["s"]) == chosen and plan.eta == pytest.approx(eta)
    lost = next(iter(chosen)).removeprefix("sh-")
    again = plan_restore(day, net, [stripe], now=now, relays=False, exclude={lost})
    chosen2, eta2 = expect([h for h in holders if h != lost])
    assert set(again.chosen["s"]) == chosen2 and f"sh-{lost}" not in chosen2
    assert again.eta == pytest.approx(eta2) and eta2 >= eta
    with_isl = plan_restore(day, net, [stripe], now=now)
    assert with_isl.eta is not None and with_isl.eta <= eta + EPS
    gone = plan_restore(day, net, [stripe], now=now, exclude=set(holders[:4]))
    assert "only 1" in gone.unrecoverable["s"] and gone.eta is None


def test_restore_forwards_to_a_satellite_with_an_earlier_pass() -> None:
    net = Network({"G": 1}, {"A": 1, "B": 2, "C": 1})
    plan = ContactPlan(
        [
            Contact(0, 100, "B", "G", 1000.0, 1.0),
            Contact(10_000, 10_100, "A", "G", 1000.0, 1.0),
            Contact(20_000, 20_100, "C", "G", 1000.0, 1.0),
            Contact(0, 50, "A", "B", 10_000.0, 1.0),
        ]
    )
    stripe = RestoreStripe("s", 1, (HeldShard("a", "A", 20_000), HeldShard("c", "C", 20_000)))
    plan_r = plan_restore(plan, net, [stripe], now=0)
    assert plan_r.chosen["s"] == ["a"] and plan_r.relays == {"a": "B"}
    assert plan_r.eta == pytest.approx(3 + 20 + 1)  # 2 s over the ISL (+1 s light), 20 s down, +1 s


def test_backlog_and_restore_predictions_near_the_capacity_bound(sample: Constellation, net: Network) -> None:
    plan = ContactPlan.from_model(sample, T0, T0 + 2 * 86400)
    p = predict_backlog(plan, net, 2 * 2**40, k=4, m=2, now=T0)
    assert p.nbytes == p.stripes * 6 * 4 * MiB >= 2 * 2**40 * 6 // 4
    assert p.done_at is not None and p.bound_at is not None
    assert p.ratio is not None and 1.0 <= p.ratio <= 1.1
    r = predict_restore(plan, net, 2 * 2**40, k=4, m=2, now=T0)
    assert r.ratio is not None and 1.0 <= r.ratio <= 1.1
    huge = predict_backlog(plan, net, 10**15, k=4, m=2, now=T0)
    assert huge.done_at is None and huge.ratio is None
