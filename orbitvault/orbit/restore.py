"""Restore planning: which k shards of each stripe come down, through which pass, and when.

A stripe needs any k of its shards. The planner sweeps the downlink segments in time order (the
same served segments and sweep as the uplink scheduler, `links`): a satellite in a pass sends
shards it holds of the oldest stripes that still need some, so each stripe gets the k shards
that can be on the ground first. A satellite in a pass with nothing of its own to send can take
shards forwarded to it over an ISL from a holder (store-and-forward, the forward first), when that
lands before the stripe's k-th earliest direct downlink would - or before the whole restore could
be down anyway (the downlink capacity bound), since the sender would otherwise idle.

Shards are never cut in a restore: with another satellite's shard usually as early, a whole
shard keeps the bookkeeping (and the ETA a client is shown) simple. A satellite lost since the
last plan is passed in `exclude`: its shards are ignored and the plan is made again around it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
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
    served_segments,
    split_hops,
    sweep,
)
from orbitvault.orbit.plan import ContactPlan
from orbitvault.orbit.scheduler import PICK_SECONDS, RELAY_SCAN, Transfer
from orbitvault.orbit.timeutil import Timestamp


@dataclass(frozen=True, slots=True)
class HeldShard:
    """A shard `id` of `size` bytes, complete on `satellite`."""

    id: Hashable
    satellite: str
    size: int


@dataclass(frozen=True, slots=True)
class RestoreStripe:
    """A stripe to restore: any `k` of `shards` (equal sizes) rebuild it.

    `granule` is where a forward cut at the end of an ISL window may fall (the shard's row size):
    the rest continues from there in the pair's next window, resending nothing.
    """

    id: Hashable
    k: int
    shards: tuple[HeldShard, ...]
    granule: int = 1


@dataclass(frozen=True, slots=True)
class RestoreBulk:
    """`count` stripes each holding one `shard_size` shard on every satellite of `holders` (aggregate)."""

    id: Hashable
    count: int
    k: int
    shard_size: int
    holders: tuple[str, ...]


@dataclass
class RestorePlan:
    """Transfers (`isl` forwards and `downlink`s), the k shards chosen per stripe, and ETAs.

    `stripe_eta` is when a stripe's k-th shard is on the ground; `eta` when the whole restore is.
    `relays` maps a shard forwarded before its downlink to the satellite that sends it down.
    """

    now: Timestamp
    horizon: Timestamp
    transfers: list[Transfer] = field(default_factory=list)
    chosen: dict[Hashable, list[Hashable]] = field(default_factory=dict)
    relays: dict[Hashable, str] = field(default_factory=dict)
    stripe_eta: dict[Hashable, Timestamp] = field(default_factory=dict)
    unrecoverable: dict[Hashable, str] = field(default_factory=dict)
    bulk_eta: dict[Hashable, Timestamp] = field(default_factory=dict)
    bulk_pending: dict[Hashable, int] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list, repr=False)
    planning_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.unrecoverable and not any(self.bulk_pending.values())

    @property
    def eta(self) -> Timestamp | None:
        """When every stripe can be rebuilt; None if some cannot be by the horizon."""
        if not self.complete:
            return None
        return max([*self.stripe_eta.values(), *self.bulk_eta.values()], default=self.now)

    def capacity_bound(self, nbytes: float) -> Timestamp | None:
        return capacity_bound(self.segments, nbytes, self.now)


class _Stripe:
    __slots__ = ("by_sat", "chosen", "id", "latest")

    def __init__(self, sid: Hashable, by_sat: dict[str, HeldShard], latest: float) -> None:
        self.id, self.by_sat, self.latest = sid, by_sat, latest
        self.chosen: list[Hashable] = []


class _Group:
    __slots__ = ("granule", "id", "k", "size", "stripes")

    def __init__(self, gid: Hashable, k: int, size: int, stripes: list[_Stripe] | None, granule: int = 1) -> None:
        self.id, self.k, self.size, self.stripes, self.granule = gid, k, size, stripes, granule


class _Run:
    __slots__ = ("group", "hi", "latest", "left", "lo", "needed")

    def __init__(self, group: _Group, lo: int, hi: int, left: frozenset[str], needed: int, latest: float) -> None:
        self.group, self.lo, self.hi, self.left, self.needed, self.latest = group, lo, hi, left, needed, latest

    @property
    def count(self) -> int:
        return self.hi - self.lo

    def head(self, n: int) -> _Run:
        h = _Run(self.group, self.lo, self.lo + n, self.left, self.needed, self.latest)
        self.lo += n
        return h


def plan_restore(
    plan: ContactPlan,
    network: Network,
    stripes: Iterable[RestoreStripe] = (),
    *,
    bulk: Sequence[RestoreBulk] = (),
    now: Timestamp,
    horizon: Timestamp | None = None,
    exclude: Collection[str] = (),
    relays: bool = True,
) -> RestorePlan:
    """Plan bringing down k shards of each stripe (in the order given) as early as possible."""
    began = time.perf_counter()
    end = horizon if horizon is not None else max((c.end for c in plan.contacts), default=now)
    r = _Restore(plan, network, now, end, set(exclude), relays)
    r.load(stripes, bulk)
    r.soon = capacity_bound(r.segs, r.bytes_left(), now) or now
    sweep(r.segs, r.serve, lambda: bool(r.queue))
    out = r.finish()
    out.planning_seconds = time.perf_counter() - began
    return out


class _Restore:
    def __init__(
        self, plan: ContactPlan, network: Network, now: Timestamp, horizon: Timestamp, exclude: set[str], relays: bool
    ) -> None:
        self.now, self.exclude = now, exclude
        down = ground_contacts(plan, network, "downlink", now, horizon, exclude)
        self.segs = served_segments(down, network, now, horizon)
        self.isl = IslBook(ground_contacts(plan, network, "isl", now, horizon, exclude) if relays else [], now, horizon)
        self.into: dict[str, set[str]] = defaultdict(set)
        for a, bs in self.isl.neighbours.items():
            for b in bs:
                self.into[b].add(a)
        self.next = NextWindow(by_satellite(self.segs, "source"))
        self.queue: list[_Run] = []
        self.out = RestorePlan(now, horizon, segments=self.segs)
        self.bulk_done: dict[Hashable, list[float]] = defaultdict(list)
        self.groups: list[_Group] = []
        self.soon = now

    def load(self, stripes: Iterable[RestoreStripe], bulk: Sequence[RestoreBulk]) -> None:
        last: tuple[tuple[object, ...], _Run] | None = None
        seen: set[Hashable] = set()
        for rs in stripes:
            if rs.id in seen:
                raise InvalidArgument(f"stripe {rs.id!r} is listed twice")
            seen.add(rs.id)
            sizes = {s.size for s in rs.shards}
            if rs.k < 1 or len(sizes) > 1 or min(sizes, default=1) < 1:
                raise InvalidArgument(f"stripe {rs.id!r}: needs k >= 1 and shards of one positive size")
            by_sat: dict[str, HeldShard] = {}
            for s in rs.shards:
                if s.satellite not in self.exclude and s.satellite not in by_sat:
                    by_sat[s.satellite] = s
            if len(by_sat) < rs.k:
                self.out.unrecoverable[rs.id] = (
                    f"only {len(by_sat)} of the k={rs.k} shards needed are on reachable satellites"
                )
                continue
            size = sizes.pop()
            if rs.granule < 1 or size % rs.granule:
                raise InvalidArgument(f"stripe {rs.id!r}: granule {rs.granule} must divide the shard size {size}")
            st = _Stripe(rs.id, by_sat, self.now)
            key = (rs.k, size, rs.granule, frozenset(by_sat))
            if last is not None and last[0] == key and last[1] is self.queue[-1] and last[1].group.stripes:
                last[1].group.stripes.append(st)
                last[1].hi += 1
                continue
            run = _Run(_Group(rs.id, rs.k, size, [st], rs.granule), 0, 1, frozenset(by_sat), rs.k, self.now)
            self.queue.append(run)
            last = (key, run)
        for b in bulk:
            holders = frozenset(h for h in b.holders if h not in self.exclude)
            if b.count < 0 or b.k < 1 or b.shard_size < 1:
                raise InvalidArgument(f"bulk group {b.id!r}: needs count >= 0, k >= 1, shard_size >= 1")
            if b.count == 0:
                continue
            grp = _Group(b.id, b.k, b.shard_size, None)
            self.groups.append(grp)
            if len(holders) < b.k:
                self.out.bulk_pending[b.id] = b.count
                continue
            self.queue.append(_Run(grp, 0, b.count, holders, b.k, self.now))

    def bytes_left(self) -> int:
        return sum(r.count * r.needed * r.group.size for r in self.queue)

    def serve(self, g: Segment, t: Timestamp) -> bool:
        return self._direct(g, t) or (bool(self.into.get(g.source)) and self._relay(g, t))

    def _direct(self, g: Segment, t: Timestamp) -> bool:
        sat = g.source
        idx = next((i for i, r in enumerate(self.queue) if sat in r.left), -1)
        if idx < 0:
            return False
        run = self.queue[idx]
        size = run.group.size
        n = min(run.count, g.room(t) // size, max(1, self._quantum(g, t) // size))
        if n <= 0:
            return False
        head = self._take(idx, run, n)
        s, _e = g.take(t, n * size)
        self._down(g, head, sat, s, size, n, None)
        return True

    def _quantum(self, g: Segment, t: Timestamp) -> int:
        """Past the restore's capacity bound, send in bites of PICK_SECONDS: a slow pass must not
        hold the last stripes a fast one could bring down first (as in the uplink scheduler)."""
        return max(math.floor(g.rate * max(self.soon - max(t, g.cursor), PICK_SECONDS)), 1)

    def _take(self, idx: int, run: _Run, n: int) -> _Run:
        if n < run.count:
            head = run.head(n)
            self.queue.insert(idx, head)
            return head
        return run

    def _down(self, g: Segment, run: _Run, holder: str, s: float, size: int, n: int, via: list[Hop] | None) -> None:
        """Record n shards (held on `holder`) of the run's stripes going down over g from s."""
        grp, rate, owlt = run.group, g.rate, g.owlt
        end = s + n * size / rate
        if grp.stripes is None:
            if via:
                self._isl(via, None, grp.id, n)
            self.out.transfers.append(
                Transfer("downlink", g.source, g.dest, g.contact, s, end, end + owlt, n * size, None, 0, grp.id, n)
            )
        else:
            pieces = split_hops(via, size, n) if via else None
            for j in range(n):
                st = grp.stripes[run.lo + j]
                shard = st.by_sat[holder]
                a, b = s + j * size / rate, s + (j + 1) * size / rate
                if pieces is not None:
                    self._isl(pieces[j], shard.id, None, 1)
                    self.out.relays[shard.id] = g.source
                self.out.transfers.append(
                    Transfer("downlink", g.source, g.dest, g.contact, a, b, b + owlt, size, shard.id, 0, None, 1)
                )
                st.chosen.append(shard.id)
                st.latest = max(st.latest, b + owlt)
        run.left = run.left - {holder}
        run.needed -= 1
        run.latest = max(run.latest, end + owlt)
        if run.needed == 0:
            self.queue.remove(run)
            if grp.stripes is None:
                self.bulk_done[grp.id].append(run.latest)
            else:
                for st in grp.stripes[run.lo : run.hi]:
                    self.out.chosen[st.id] = st.chosen
                    self.out.stripe_eta[st.id] = st.latest

    def _isl(self, hops: list[Hop], item: Hashable | None, gid: Hashable | None, count: int) -> None:
        for h in hops:
            c = h.segment.contact
            self.out.transfers.append(
                Transfer("isl", c.source, c.dest, c, h.start, h.end, h.arrival, h.nbytes, item, h.offset, gid, count)
            )

    def _direct_eta(self, run: _Run, t: Timestamp) -> float:
        """When the run's stripes would have their last needed shard by direct downlinks alone."""
        etas = []
        for x in run.left:
            nxt = self.next.at(x, t)
            if nxt is not None:
                s, g = nxt
                etas.append(s + run.group.size / g.rate + g.owlt)
        etas.sort()
        return etas[run.needed - 1] if len(etas) >= run.needed else math.inf

    def _relay(self, g: Segment, t: Timestamp) -> bool:
        b = g.source
        sources = self.into[b]
        for idx, run in enumerate(self.queue[:RELAY_SCAN]):
            size = run.group.size
            n = min(run.count, g.room(t) // size, max(1, self._quantum(g, t) // size))
            if n <= 0:
                continue
            direct: Callable[[], float] = lambda run=run: self._direct_eta(run, t)  # noqa: E731
            best: tuple[float, str, list[Hop]] | None = None
            granule = run.group.granule
            for a in sorted(run.left & sources):
                hops = self.isl.forward(a, b, self.now, n * size, granule=granule)
                if hops is None:
                    continue
                start = max(t, g.cursor, hops[-1].arrival)
                if g.room(start) < n * size:
                    continue
                eta = start + n * size / g.rate + g.owlt
                if (eta <= self.soon or eta < direct() - EPS) and (best is None or eta < best[0]):
                    best = (eta, a, hops)
            if best is None:
                continue
            _eta, a, _ = best
            hops = self.isl.forward(a, b, self.now, n * size, granule=run.group.granule, commit=True)
            assert hops is not None
            head = self._take(idx, run, n)
            s, _e = g.take(max(t, hops[-1].arrival), n * size)
            self._down(g, head, a, s, size, n, hops)
            return True
        return False

    def finish(self) -> RestorePlan:
        out = self.out
        out.transfers.sort(key=lambda tr: (tr.start, tr.hop, tr.source, tr.dest))
        for run in self.queue:
            grp = run.group
            if grp.stripes is None:
                out.bulk_pending[grp.id] = out.bulk_pending.get(grp.id, 0) + run.count
                continue
            for st in grp.stripes[run.lo : run.hi]:
                out.unrecoverable[st.id] = f"only {len(st.chosen)} of k={grp.k} shards can be down by the horizon"
        for grp in self.groups:
            done = self.bulk_done.get(grp.id)
            if done and not out.bulk_pending.get(grp.id):
                out.bulk_eta[grp.id] = max(done)
            out.bulk_pending.setdefault(grp.id, 0)
        return out
