"""Scheduled uplink: which shard goes up in which contact window, to which satellite, by when.

Pure planning over a `ContactPlan` (no I/O, no clock reads: `now` is an argument). The gateway
calls `plan_uplink` with its spooled shards and executes the `Schedule`; it re-plans whenever
reality departs from it (a pass cut short, a satellite lost) by passing what has been delivered.

How the plan is made (an event sweep, never a loop over items x windows):

- Ground contacts become *served segments* (`links.served_segments`: at most `antennas`
  satellites per station at once). Each segment is a server; a heap pops the one free earliest,
  it takes the next piece of work, and is pushed back at the time that piece ends. Windows are
  filled back to back, up to rate x (duration - owlt) and never beyond; time only moves forward.
- **Late binding.** A shard without a fixed target goes to the first satellite whose segment
  reaches it while that satellite is *eligible* for its stripe: it holds no shard of the stripe
  yet and its plane holds fewer than ceil((k+m)/planes) of them. Stripes are taken oldest first,
  so a satellite in view works on the oldest stripes it may still hold, and stripes complete in
  queue order. Eligibility only ever shrinks, so the greedy never dead-ends: the constraints form
  a partition matroid, and any partial placement extends to k+m when the constellation allows it.
- **Resumable.** A segment sends to its end: the last shard that does not fit is cut at loss of
  signal (at a multiple of its `granule`, the row size, so a resume resends nothing) and its
  remainder is pinned to that satellite, continuing from the byte where it stopped in a later
  window. Near the end of the queue a cut is made only if the satellite can finish the shard
  before the queue could be up anyway, since a pinned remainder can be the last thing DURABLE
  waits for. An item given with `delivered` bytes schedules exactly `size - delivered` more.
- **Store-and-forward.** When a segment has nothing it may send directly, it carries whole shards
  for another satellite B and an ISL segment A->B forwards them once fully received (pinned
  remainders first, then the oldest stripes B may still take), if they land on B before the
  queue's capacity bound (`soon`: then they cannot delay the queue, and A's time was idle) or
  before any eligible satellite's own next window could carry them. In a long backlog direct
  work is nearly always there, so relays mostly serve plane imbalance and the tail.
- **The tail.** Past `soon` a pick sends for at most `PICK_SECONDS`, so a slow S-band pass does
  not hold the last stripes for minutes while a Ka-band pass could send them in seconds.
- **Fairness.** Priority classes (a tenant's or bucket's name) are served in strict tiers; within
  a tier, weighted fair queueing by bytes: the class with the least bytes-sent/weight that has
  work for this satellite goes next (a class that cannot use a window does not lose its turn).
  With several classes active a pick is at most 1/8 of a segment, so every window is shared by
  weight, like deficit round robin with a quantum of capacity/8.
- **Aggregate.** Stripes with identical state are kept as one run (a range of stripes): a pick
  binds a shard of each of n stripes in one step. Per-shard transfers are produced for items
  given one by one (`UplinkItem`); for `StripeBulk` groups (10^6 shards) only per-run transfers.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.links import (
    EPS,
    Hop,
    IslBook,
    Network,
    NextWindow,
    Segment,
    by_satellite,
    capacity_bound,
    ground_contacts,
    placement_bound,
    plane_cap,
    served_segments,
    split_hops,
    sweep,
)
from orbitvault.orbit.plan import Contact, ContactPlan
from orbitvault.orbit.timeline import Transfer as TimelineTransfer
from orbitvault.orbit.timeutil import Timestamp

PICK_SECONDS = 60.0
"""Past the queue's capacity bound a pick sends for at most this long, so a slow link does not hold
the last stripes while a fast one could finish them first."""

RELAY_SCAN = 32
"""At most this many of a class's oldest stripes are considered for a relay per pick."""


# --- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UplinkItem:
    """One spooled shard.

    `delivered` bytes are already committed on `target` (a resumed upload; needs `target`);
    `delivered == size` means the shard is in orbit. `target` None lets the scheduler choose
    (late binding). `relay` names a satellite holding a complete copy awaiting its forward to
    `target`. `granule` is the unit a transfer may be cut at (the shard's row size).
    """

    id: Hashable
    stripe: Hashable
    size: int
    delivered: int = 0
    cls: str = ""
    target: str | None = None
    relay: str | None = None
    granule: int = 1


@dataclass(frozen=True, slots=True)
class StripeSpec:
    """A stripe's geometry, and the satellites already holding a complete shard of it."""

    id: Hashable
    k: int
    m: int
    in_orbit: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StripeBulk:
    """`count` fresh stripes of k+m equal shards, planned in aggregate (no per-shard output)."""

    id: Hashable
    count: int
    k: int
    m: int
    shard_size: int
    cls: str = ""
    granule: int = 1


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """A priority class: lower `tier` is served strictly first; `weight` shares within a tier."""

    weight: float = 1.0
    tier: int = 0


# --- output --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transfer:
    """Bytes sent over one contact: an `uplink` (station -> satellite) or an `isl` hop.

    For a single shard `item` is its id and `offset` its first byte; for a bulk group `item` is
    None, `group` its id and `count` the shards carried back to back.
    """

    hop: str
    source: str
    dest: str
    contact: Contact
    start: Timestamp
    end: Timestamp
    arrival: Timestamp
    nbytes: int
    item: Hashable | None = None
    offset: int = 0
    group: Hashable | None = None
    count: int = 1

    def for_timeline(self) -> TimelineTransfer:
        label = str(self.item if self.item is not None else f"{self.group} x{self.count}")
        return TimelineTransfer(self.source, self.dest, self.start, self.end, label)


@dataclass
class Schedule:
    """The plan: transfers in start order and what they achieve.

    `targets`: the satellite each shard ends on; `relays`: the satellite it passes through when
    stored and forwarded; `item_done`/`stripe_durable`: predicted arrival of each shard's last
    byte and each stripe's DURABLE time (all k+m in orbit). `unscheduled` says why an item is not
    in orbit by the horizon; `stripes_pending` lists stripes not DURABLE by then. Bulk groups
    report their DURABLE time and stripes left.
    """

    now: Timestamp
    horizon: Timestamp
    transfers: list[Transfer] = field(default_factory=list)
    targets: dict[Hashable, str] = field(default_factory=dict)
    relays: dict[Hashable, str] = field(default_factory=dict)
    item_done: dict[Hashable, Timestamp] = field(default_factory=dict)
    stripe_durable: dict[Hashable, Timestamp] = field(default_factory=dict)
    unscheduled: dict[Hashable, str] = field(default_factory=dict)
    stripes_pending: dict[Hashable, str] = field(default_factory=dict)
    bulk_durable: dict[Hashable, Timestamp] = field(default_factory=dict)
    bulk_pending: dict[Hashable, int] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list, repr=False)
    isl_segments: list[Segment] = field(default_factory=list, repr=False)
    network: Network | None = field(default=None, repr=False)
    planning_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.stripes_pending and not any(self.bulk_pending.values())

    @property
    def durable_at(self) -> Timestamp | None:
        """When everything queued is DURABLE; None if something is not by the horizon."""
        if not self.complete:
            return None
        return max([*self.stripe_durable.values(), *self.bulk_durable.values()], default=self.now)

    def window_bytes(self) -> dict[Contact, int]:
        """Bytes planned per contact window (for capacity checks and display)."""
        out: dict[Contact, int] = defaultdict(int)
        for tr in self.transfers:
            out[tr.contact] += tr.nbytes
        return dict(out)

    def capacity_bound(self, nbytes: float) -> Timestamp | None:
        """Earliest time the served uplink segments could carry `nbytes` at all."""
        return capacity_bound(self.segments, nbytes, self.now)

    def placement_bound(self, k: int, m: int) -> Timestamp | None:
        """Earliest time any k+m stripe could be DURABLE (distinct satellites, planes, one ISL hop)."""
        if self.network is None:
            return None
        return placement_bound(self.segments, [g.contact for g in self.isl_segments], self.network, k, m)

    def for_timeline(self, limit: int = 2000) -> list[TimelineTransfer]:
        """Transfers to draw: those on one window merged into one strip (a window carries thousands)."""
        merged: dict[tuple[Contact, str], list[float]] = {}
        for tr in self.transfers:
            key = (tr.contact, tr.hop)
            span = merged.setdefault(key, [tr.start, tr.end, 0])
            span[0], span[1], span[2] = min(span[0], tr.start), max(span[1], tr.end), span[2] + tr.nbytes
        out = [
            TimelineTransfer(c.source, c.dest, s, e, f"{hop} {n / 1e9:.3g} GB")
            for (c, hop), (s, e, n) in sorted(merged.items(), key=lambda kv: kv[1][0])
        ]
        return out[:limit]


# --- internal state ------------------------------------------------------------------------------


class _Stripe:
    """An exact stripe: its unbound items in the order they are bound, latest arrival so far."""

    __slots__ = ("id", "items", "latest")

    def __init__(self, sid: Hashable, items: list[UplinkItem], latest: float) -> None:
        self.id = sid
        self.items = items
        self.latest = latest


class _Group:
    """Stripes with the same class, geometry and unbound shard sizes (exact or bulk)."""

    __slots__ = ("cap", "cls", "granule", "id", "k", "m", "sizes", "stripes")

    def __init__(
        self,
        gid: Hashable,
        cls: str,
        k: int,
        m: int,
        cap: int,
        sizes: tuple[int, ...],
        granule: int,
        stripes: list[_Stripe] | None,
    ) -> None:
        self.id, self.cls, self.k, self.m, self.cap = gid, cls, k, m, cap
        self.sizes, self.granule, self.stripes = sizes, granule, stripes


class _Run:
    """Stripes [lo, hi) of a group that share their placement so far."""

    __slots__ = ("group", "hi", "latest", "lo", "pc", "pinned", "unbound", "used")

    def __init__(
        self,
        group: _Group,
        lo: int,
        hi: int,
        used: frozenset[str],
        pc: dict[Hashable, int],
        unbound: int,
        pinned: int,
        latest: float,
    ) -> None:
        self.group, self.lo, self.hi = group, lo, hi
        self.used, self.pc, self.unbound, self.pinned, self.latest = used, pc, unbound, pinned, latest

    @property
    def count(self) -> int:
        return self.hi - self.lo

    def head(self, n: int) -> _Run:
        """Split off the first n stripes (self keeps the rest)."""
        h = _Run(self.group, self.lo, self.lo + n, self.used, dict(self.pc), self.unbound, 0, self.latest)
        self.lo += n
        return h


class _Pinned:
    """A shard (or its remainder) that must reach `target`."""

    __slots__ = ("cls", "granule", "item", "offset", "run", "size", "stripe", "target")

    def __init__(
        self,
        run: _Run,
        item: UplinkItem | None,
        stripe: _Stripe | None,
        target: str,
        offset: int,
        size: int,
        granule: int,
    ) -> None:
        self.run, self.item, self.stripe, self.target = run, item, stripe, target
        self.offset, self.size, self.granule, self.cls = offset, size, granule, run.group.cls


# --- the planner ---------------------------------------------------------------------------------


def plan_uplink(
    plan: ContactPlan,
    network: Network,
    items: Sequence[UplinkItem] = (),
    stripes: Iterable[StripeSpec] = (),
    *,
    bulk: Sequence[StripeBulk] = (),
    now: Timestamp,
    horizon: Timestamp | None = None,
    classes: Mapping[str, ClassPolicy] | None = None,
    exclude: Collection[str] = (),
    relays: bool = True,
    relay_remainders: bool = True,
) -> Schedule:
    """Plan the queue (`items` in queue order, then `bulk`) over the plan's windows in [now, horizon].

    Every stripe named by an item needs a `StripeSpec`, and its in-orbit satellites plus its items
    must make k+m shards. `exclude` names lost satellites: no window to or through them is used.
    `relay_remainders=False` never stages the rest of a cut shard on a relay (a relay that stores
    whole shards only, like a node's store, cannot hold a shard's second half alone).
    """
    began = time.perf_counter()
    end = horizon if horizon is not None else max((c.end for c in plan.contacts), default=now)
    planner = _Uplink(plan, network, now, end, classes or {}, set(exclude), relays)
    planner.relay_remainders = relay_remainders
    planner.load(items, stripes, bulk)
    planner.run()
    sched = planner.finish()
    sched.planning_seconds = time.perf_counter() - began
    return sched


class _Uplink:
    def __init__(
        self,
        plan: ContactPlan,
        network: Network,
        now: Timestamp,
        horizon: Timestamp,
        classes: Mapping[str, ClassPolicy],
        exclude: set[str],
        relays: bool,
    ) -> None:
        self.net, self.now, self.horizon, self.exclude = network, now, horizon, exclude
        self.policy = classes
        up = ground_contacts(plan, network, "uplink", now, horizon, exclude)
        self.segs = served_segments(up, network, now, horizon)
        self.isl = IslBook(ground_contacts(plan, network, "isl", now, horizon, exclude) if relays else [], now, horizon)
        self.next = NextWindow(by_satellite(self.segs, "dest"))
        self.nplanes = network.plane_count(exclude)
        self.sats = [s for s in network.planes if s not in exclude]
        self.queues: dict[str, list[_Run]] = defaultdict(list)
        self.pinned: dict[str, dict[str, deque[_Pinned]]] = defaultdict(lambda: defaultdict(deque))
        self.work: dict[str, int] = defaultdict(int)
        self.served: dict[str, float] = defaultdict(float)
        self.sched = Schedule(now, horizon, segments=self.segs, isl_segments=self.isl.segments(), network=network)
        self.bulk_done: dict[Hashable, list[float]] = defaultdict(list)
        self.bulk_groups: list[_Group] = []
        self.blocked: list[_Run] = []
        self.soon = now
        self.relay_remainders = True

    # --- loading ---------------------------------------------------------------------------------

    def load(self, items: Sequence[UplinkItem], specs: Iterable[StripeSpec], bulk: Sequence[StripeBulk]) -> None:
        spec_by_id: dict[Hashable, StripeSpec] = {}
        for s in specs:
            if s.k < 1 or s.m < 0:
                raise InvalidArgument(f"stripe {s.id!r}: k must be >= 1 and m >= 0, got {s.k}+{s.m}")
            spec_by_id[s.id] = s
        by_stripe: dict[Hashable, list[UplinkItem]] = {}
        seen: set[Hashable] = set()
        for it in items:
            _check_item(it)
            if it.id in seen:
                raise InvalidArgument(f"shard {it.id!r} is queued twice")
            seen.add(it.id)
            by_stripe.setdefault(it.stripe, []).append(it)
        for sid in spec_by_id:
            if sid not in by_stripe:
                self.sched.stripe_durable[sid] = self.now  # every shard already in orbit
        open_group: dict[str, tuple[tuple[object, ...], _Group, _Run]] = {}
        for sid, its in by_stripe.items():
            spec = spec_by_id.get(sid)
            if spec is None:
                raise InvalidArgument(f"stripe {sid!r} of shard {its[0].id!r} has no StripeSpec")
            self._load_stripe(spec, its, open_group)
        for b in bulk:
            if b.count < 0 or b.k < 1 or b.m < 0 or b.shard_size < 1 or b.granule < 1:
                raise InvalidArgument(f"bulk group {b.id!r}: needs count >= 0, k >= 1, m >= 0, sizes >= 1")
            if b.count == 0:
                continue
            cap = plane_cap(b.k, b.m, self.nplanes)
            g = _Group(b.id, b.cls, b.k, b.m, cap, (b.shard_size,) * (b.k + b.m), b.granule, None)
            self.bulk_groups.append(g)
            self._enqueue(_Run(g, 0, b.count, frozenset(), {}, b.k + b.m, 0, self.now))

    def _load_stripe(
        self, spec: StripeSpec, its: list[UplinkItem], open_group: dict[str, tuple[tuple[object, ...], _Group, _Run]]
    ) -> None:
        n = spec.k + spec.m
        if len(spec.in_orbit) + len(its) != n:
            raise InvalidArgument(
                f"stripe {spec.id!r}: {len(spec.in_orbit)} shard(s) in orbit and {len(its)} queued, "
                f"but a {spec.k}+{spec.m} stripe has {n}"
            )
        used: list[str] = list(spec.in_orbit)
        unbound: list[UplinkItem] = []
        pinned: list[UplinkItem] = []
        for it in its:
            if it.target is None:
                unbound.append(it)
            elif it.delivered >= it.size:
                used.append(it.target)
                self.sched.targets[it.id] = it.target
                self.sched.item_done[it.id] = self.now
            else:
                used.append(it.target)
                pinned.append(it)
        if len(set(used)) != len(used):
            dup = sorted({s for s in used if used.count(s) > 1})
            raise InvalidArgument(f"stripe {spec.id!r} has two shards bound to {', '.join(dup)}")
        cls = its[0].cls
        cap = plane_cap(spec.k, spec.m, self.nplanes)
        pc: dict[Hashable, int] = defaultdict(int)
        for s in used:
            if s in self.net.planes:
                pc[self.net.plane(s)] += 1
        sizes = tuple(it.size for it in unbound)
        granule = unbound[0].granule if unbound else 1
        stripe = _Stripe(spec.id, unbound, self.now)
        simple = not used and len(set(sizes)) == 1 and all(it.granule == granule for it in unbound)
        key = (spec.k, spec.m, sizes, granule)
        if simple and cls in open_group and open_group[cls][0] == key:
            _key, g, run = open_group[cls]
            assert g.stripes is not None
            g.stripes.append(stripe)
            run.hi += 1
            self.work[cls] += len(unbound)
            return
        g = _Group(spec.id, cls, spec.k, spec.m, cap, sizes, granule, [stripe])
        run = _Run(g, 0, 1, frozenset(used), dict(pc), len(unbound), 0, self.now)
        if simple:
            open_group[cls] = (key, g, run)
        else:
            open_group.pop(cls, None)
        for it in pinned:
            run.pinned += 1
            p = _Pinned(run, it, stripe, it.target or "", it.delivered, it.size, it.granule)
            self.sched.targets[it.id] = p.target
            if p.target in self.exclude or p.target not in self.net.planes:
                self.sched.unscheduled[it.id] = f"target satellite {p.target} is lost or unknown"
                continue
            if it.relay is not None and self._forward_held(p, it.relay):
                continue
            self.pinned[p.target][cls].append(p)
            self.work[cls] += 1
        if any(it.id in self.sched.unscheduled for it in pinned):
            self.blocked.append(run)
        if run.unbound:
            self._enqueue(run)
        elif not pinned:
            self._complete(run)

    def _enqueue(self, run: _Run) -> None:
        self.queues[run.group.cls].append(run)
        self.work[run.group.cls] += run.count * run.unbound

    def _forward_held(self, p: _Pinned, relay: str) -> bool:
        """A complete copy waits on `relay`: forward the missing bytes over ISL if a window allows."""
        left = p.size - p.offset
        hops = self.isl.forward(relay, p.target, self.now, left, granule=p.granule, offset=p.offset, commit=True)
        if hops is None:
            return False
        self._isl_transfers(hops, p.item, None, 1)
        assert p.item is not None
        self.sched.relays[p.item.id] = relay
        self._pinned_done(p, hops[-1].arrival, counted=False)
        return True

    # --- the sweep -------------------------------------------------------------------------------

    def run(self) -> None:
        self.soon = capacity_bound(self.segs, self._bytes_left(), self.now) or self.horizon
        sweep(self.segs, self._serve, self._outstanding)

    def _bytes_left(self) -> int:
        total = 0
        for q in self.queues.values():
            for run in q:
                sizes = run.group.sizes
                total += run.count * sum(sizes[len(sizes) - run.unbound :])
        for per_cls in self.pinned.values():
            for dq in per_cls.values():
                total += sum(p.size - p.offset for p in dq)
        return total

    def _outstanding(self) -> bool:
        return any(v > 0 for v in self.work.values())

    def _order(self) -> list[str]:
        active = [c for c, v in self.work.items() if v > 0]
        pol = self.policy
        return sorted(active, key=lambda c: (pol.get(c, _DEFAULT).tier, self.served[c], c))

    def _charge(self, cls: str, nbytes: int) -> None:
        self.served[cls] += nbytes / self.policy.get(cls, _DEFAULT).weight

    def _serve(self, g: Segment, t: Timestamp) -> bool:
        order = self._order()
        quantum = math.floor(g.rate * max(self.soon - max(t, g.cursor), PICK_SECONDS))
        if len(order) > 1:
            quantum = min(quantum, math.floor(g.capacity / 8))
        quantum = max(1, quantum)
        for c in order:
            if self._direct_pinned(g, t, c) or self._direct_unbound(g, t, c, quantum):
                return True
        if self.isl.neighbours.get(g.dest):
            for c in order:
                if self._relay_pinned(g, t, c) or self._relay_unbound(g, t, c, quantum):
                    return True
        return False

    # --- direct ----------------------------------------------------------------------------------

    def _direct_pinned(self, g: Segment, t: Timestamp, cls: str) -> bool:
        dq = self.pinned.get(g.dest, {}).get(cls)
        if not dq:
            return False
        p = dq[0]
        room, left = g.room(t), p.size - p.offset
        send = left if left <= room else room - room % p.granule
        if send <= 0:
            return False
        s, e = g.take(t, send)
        self._uplink_transfer(g, s, e, send, p.item, p.offset, p.run.group, 1)
        self._charge(cls, send)
        p.offset += send
        if p.offset >= p.size:
            dq.popleft()
            self._pinned_done(p, e + g.owlt)
        return True

    def _eligible(self, run: _Run, sat: str) -> bool:
        return sat not in run.used and run.pc.get(self.net.plane(sat), 0) < run.group.cap

    def _direct_unbound(self, g: Segment, t: Timestamp, cls: str, quantum: int) -> bool:
        q = self.queues.get(cls)
        if not q:
            return False
        sat = g.dest
        idx = next((i for i, r in enumerate(q) if self._eligible(r, sat)), -1)
        if idx < 0:
            return False
        run = q[idx]
        grp = run.group
        size = grp.sizes[len(grp.sizes) - run.unbound]
        room = g.room(t)
        most = min(run.count, max(1, quantum // size))
        whole = min(most, room // size)
        cut = 0
        if whole < most:
            cut = room - whole * size
            cut -= cut % grp.granule
            if cut > 0 and not self._may_cut(g, t, run, size, cut):
                cut = 0
        if whole == 0 and cut <= 0:
            return False
        n = whole + (1 if cut > 0 else 0)
        head = run.head(n) if n < run.count else run
        if head is not run:
            q.insert(idx, head)
        tail: _Run | None = None
        if cut > 0:
            if whole == 0:
                tail, head = head, None
            else:
                assert head is not None
                tail = _Run(grp, head.hi - 1, head.hi, head.used, dict(head.pc), head.unbound, 0, head.latest)
                head.hi -= 1
                q.insert(q.index(head, idx) + 1, tail)
        s, _e = g.take(t, whole * size + cut)
        rate, owlt = g.rate, g.owlt
        self._charge(cls, whole * size + cut)
        self.work[cls] -= n
        if head is not None:
            last = s + whole * size / rate
            if grp.stripes is not None:
                for j in range(whole):
                    a, b = s + j * size / rate, s + (j + 1) * size / rate
                    st = grp.stripes[head.lo + j]
                    it = st.items[len(grp.sizes) - head.unbound]
                    self._uplink_transfer(g, a, b, size, it, 0, grp, 1)
                    self.sched.targets[it.id] = sat
                    self.sched.item_done[it.id] = b + owlt
                    st.latest = max(st.latest, b + owlt)
            else:
                self._uplink_transfer(g, s, last, whole * size, None, 0, grp, whole)
            self._bind(q, head, sat, last + owlt)
        if tail is not None:
            a = s + whole * size / rate
            b = a + cut / rate
            it = None
            st = None
            if grp.stripes is not None:
                st = grp.stripes[tail.lo]
                it = st.items[len(grp.sizes) - tail.unbound]
                self.sched.targets[it.id] = sat
            self._uplink_transfer(g, a, b, cut, it, 0, grp, 1)
            p = _Pinned(tail, it, st, sat, cut, size, grp.granule)
            tail.pinned += 1
            self.pinned[sat][cls].append(p)
            self.work[cls] += 1
            self._bind(q, tail, sat, tail.latest)
        return True

    def _may_cut(self, g: Segment, t: Timestamp, run: _Run, size: int, cut: int) -> bool:
        """Cut a shard at this window's end only when that does not delay it.

        A cut pins the rest of the shard to this satellite, and near the end of the queue that
        remainder can be the last thing DURABLE waits for. So the cut is made when the satellite's
        next window sends the remainder before the queue could be up anyway (`soon`), or no later
        than another eligible satellite's next window could take the whole shard; otherwise these
        last seconds of the window stay unused and the shard goes elsewhere whole.
        """
        nxt = self.next.peek(g.dest, g.send_end)
        if nxt is None:
            return False
        done = nxt[0] + (size - cut) / nxt[1].rate
        if done <= self.soon:
            return True
        for x in self.sats:
            if x != g.dest and self._eligible(run, x):
                alt = self.next.at(x, t)
                if alt is not None and alt[1].room(alt[0]) >= size and alt[0] + size / alt[1].rate < done:
                    return False
        return True

    def _bind(self, q: list[_Run], run: _Run, sat: str, arrival: float) -> None:
        """The run's stripes each got a shard on `sat` (or have one pinned to it)."""
        run.used = run.used | {sat}
        plane = self.net.plane(sat)
        run.pc[plane] = run.pc.get(plane, 0) + 1
        run.unbound -= 1
        run.latest = max(run.latest, arrival)
        if run.unbound == 0:
            q.remove(run)
            if run.pinned == 0:
                self._complete(run)

    def _pinned_done(self, p: _Pinned, arrival: float, *, counted: bool = True) -> None:
        run = p.run
        if counted:
            self.work[p.cls] -= 1
        run.pinned -= 1
        run.latest = max(run.latest, arrival)
        if p.item is not None:
            self.sched.item_done[p.item.id] = arrival
        if p.stripe is not None:
            p.stripe.latest = max(p.stripe.latest, arrival)
        if run.pinned == 0 and run.unbound == 0:
            self._complete(run)

    def _complete(self, run: _Run) -> None:
        grp = run.group
        if grp.stripes is None:
            self.bulk_done[grp.id].append(run.latest)
            return
        for st in grp.stripes[run.lo : run.hi]:
            self.sched.stripe_durable[st.id] = st.latest

    # --- store-and-forward -----------------------------------------------------------------------

    def _direct_eta(self, sat: str, t: Timestamp, nbytes: int) -> float:
        nxt = self.next.at(sat, t)
        if nxt is None:
            return math.inf
        s, g = nxt
        return s + nbytes / g.rate + g.owlt

    def _worth(self, eta: float, direct: Callable[[], float]) -> bool:
        """A relay is taken when it lands before the backlog could be up anyway, or before direct would.

        The sender has nothing it may send directly, so the relay costs no uplink capacity; landing
        by `soon` (the capacity bound of the whole queue) cannot delay the queue's completion.
        """
        return eta <= self.soon or eta < direct() - EPS

    def _relay_pinned(self, g: Segment, t: Timestamp, cls: str) -> bool:
        a = g.dest
        room = g.room(t)
        best: tuple[float, str, list[Hop]] | None = None
        for b in self.isl.neighbours.get(a, ()):
            dq = self.pinned.get(b, {}).get(cls)
            if not dq:
                continue
            p = dq[0]
            left = p.size - p.offset
            if left > room or (p.offset and not self.relay_remainders):
                continue
            ready = max(t, g.cursor) + left / g.rate + g.owlt
            hops = self.isl.forward(a, b, ready, left, granule=p.granule, offset=p.offset)
            if hops is None:
                continue
            eta = hops[-1].arrival
            if self._worth(eta, lambda b=b, left=left: self._direct_eta(b, t, left)) and (
                best is None or eta < best[0]
            ):
                best = (eta, b, hops)
        if best is None:
            return False
        _eta, b, _ = best
        p = self.pinned[b][cls].popleft()
        left = p.size - p.offset
        s, e = g.take(t, left)
        hops = self.isl.forward(a, b, e + g.owlt, left, granule=p.granule, offset=p.offset, commit=True)
        assert hops is not None
        self._uplink_transfer(g, s, e, left, p.item, p.offset, p.run.group, 1)
        self._isl_transfers(hops, p.item, p.run.group, 1)
        if p.item is not None:
            self.sched.relays[p.item.id] = a
        self._charge(cls, left)
        self._pinned_done(p, hops[-1].arrival)
        return True

    def _relay_unbound(self, g: Segment, t: Timestamp, cls: str, quantum: int) -> bool:
        q = self.queues.get(cls)
        if not q:
            return False
        a = g.dest
        room = g.room(t)
        neighbours = self.isl.neighbours.get(a, [])
        for idx, run in enumerate(q[:RELAY_SCAN]):
            grp = run.group
            size = grp.sizes[len(grp.sizes) - run.unbound]
            n = min(run.count, max(1, quantum // size), room // size)
            if n <= 0:
                continue
            targets = [b for b in neighbours if self._eligible(run, b)]
            if not targets:
                continue

            def direct(run: _Run = run, nbytes: int = n * size) -> float:
                return min(
                    (self._direct_eta(x, t, nbytes) for x in self.sats if self._eligible(run, x)), default=math.inf
                )

            start = max(t, g.cursor)
            best: tuple[float, str, int] | None = None
            for b in targets:
                # As many shards as the first ISL window takes: a forward cut at its end would wait
                # for the pair's next window, often an orbit later.
                nb = min(n, max(1, self.isl.first_room(a, b, start + n * size / g.rate + g.owlt) // size))
                hops = self.isl.forward(a, b, start + nb * size / g.rate + g.owlt, nb * size, granule=grp.granule)
                if hops is None or not self._worth(hops[-1].arrival, direct):
                    continue
                if best is None or hops[-1].arrival < best[0]:
                    best = (hops[-1].arrival, b, nb)
            if best is None:
                continue
            _eta, b, n = best
            head = run.head(n) if n < run.count else run
            if head is not run:
                q.insert(idx, head)
            s, e = g.take(t, n * size)
            hops = self.isl.forward(a, b, e + g.owlt, n * size, granule=grp.granule, commit=True)
            assert hops is not None
            self._charge(cls, n * size)
            self.work[cls] -= n
            if grp.stripes is not None:
                pieces = split_hops(hops, size, n)
                for j in range(n):
                    st = grp.stripes[head.lo + j]
                    it = st.items[len(grp.sizes) - head.unbound]
                    self._uplink_transfer(g, s + j * size / g.rate, s + (j + 1) * size / g.rate, size, it, 0, grp, 1)
                    self._isl_transfers(pieces[j], it, grp, 1)
                    arrival = pieces[j][-1].arrival
                    self.sched.targets[it.id] = b
                    self.sched.relays[it.id] = a
                    self.sched.item_done[it.id] = arrival
                    st.latest = max(st.latest, arrival)
            else:
                self._uplink_transfer(g, s, e, n * size, None, 0, grp, n)
                self._isl_transfers(hops, None, grp, n)
            self._bind(q, head, b, hops[-1].arrival)
            return True
        return False

    # --- recording -------------------------------------------------------------------------------

    def _uplink_transfer(
        self, g: Segment, s: float, e: float, nbytes: int, item: UplinkItem | None, offset: int, grp: _Group, count: int
    ) -> None:
        bulk = grp.stripes is None
        self.sched.transfers.append(
            Transfer(
                "uplink",
                g.source,
                g.dest,
                g.contact,
                s,
                e,
                e + g.owlt,
                nbytes,
                None if item is None else item.id,
                offset,
                grp.id if bulk else None,
                count,
            )
        )

    def _isl_transfers(self, hops: list[Hop], item: UplinkItem | None, grp: _Group | None, count: int) -> None:
        gid = grp.id if grp is not None and grp.stripes is None else None
        for h in hops:
            c = h.segment.contact
            self.sched.transfers.append(
                Transfer(
                    "isl",
                    c.source,
                    c.dest,
                    c,
                    h.start,
                    h.end,
                    h.arrival,
                    h.nbytes,
                    None if item is None else item.id,
                    h.offset,
                    gid,
                    count,
                )
            )

    # --- results ---------------------------------------------------------------------------------

    def finish(self) -> Schedule:
        sched = self.sched
        sched.transfers.sort(key=lambda tr: (tr.start, tr.hop != "uplink", tr.source, tr.dest))
        planes = self.nplanes
        pending: dict[int, tuple[_Run, str]] = {}
        for run in self.blocked:
            pending[id(run)] = (run, "a shard's target satellite is lost or unknown")
        for runs in self.queues.values():
            for run in runs:
                why = "not enough window capacity before the horizon"
                if not any(self._eligible(run, s) for s in self.sats):
                    why = f"no eligible satellite (distinct satellites, at most {run.group.cap} per plane of {planes})"
                pending.setdefault(id(run), (run, why))
        for per_cls in self.pinned.values():
            for dq in per_cls.values():
                for p in dq:
                    why = f"{p.size - p.offset} bytes still to send to {p.target} when the horizon ends"
                    if p.item is not None:
                        sched.unscheduled[p.item.id] = why
                    pending.setdefault(id(p.run), (p.run, why))
        for run, why in pending.values():
            grp = run.group
            if grp.stripes is None:
                sched.bulk_pending[grp.id] = sched.bulk_pending.get(grp.id, 0) + run.count
                continue
            for st in grp.stripes[run.lo : run.hi]:
                sched.stripes_pending.setdefault(st.id, why)
                for it in st.items[len(grp.sizes) - run.unbound :]:
                    sched.unscheduled.setdefault(it.id, why)
        for it_id in list(sched.unscheduled):
            sched.item_done.pop(it_id, None)
        for sid in sched.stripes_pending:
            sched.stripe_durable.pop(sid, None)
        for grp in self.bulk_groups:
            done = self.bulk_done.get(grp.id)
            if done and not sched.bulk_pending.get(grp.id):
                sched.bulk_durable[grp.id] = max(done)
            sched.bulk_pending.setdefault(grp.id, 0)
        return sched


_DEFAULT = ClassPolicy()


def _check_item(it: UplinkItem) -> None:
    if it.size < 1 or not 0 <= it.delivered <= it.size or it.granule < 1:
        raise InvalidArgument(f"shard {it.id!r}: needs size >= 1, 0 <= delivered <= size, granule >= 1")
    if (it.delivered or it.relay) and it.target is None:
        raise InvalidArgument(f"shard {it.id!r}: a resumed or relayed shard needs the target it is bound to")
