"""What the schedulers plan over: the network's nodes, served link segments, ISL reservations.

A contact plan says when a link *could* exist; a station with fewer antennas than satellites in
view can serve only some of them. `Network` names the ground stations (with their antenna counts)
and the satellites (with their orbital planes); `served_segments` turns the plan's ground contacts
into the segments antennas actually serve; `sweep` runs those segments as servers in time order;
`IslBook` reserves inter-satellite capacity; `NextWindow` tells when a satellite can next be
reached. `capacity_bound` gives the earliest instant by which *any* schedule could have moved a
number of bytes, and `placement_bound` the earliest any stripe could be on k+m distinct
satellites: the yardsticks RPO/RTO predictions are measured against.

Capacity model (shared by the schedulers and the bounds, so they are comparable): a segment
sends during [start, end - owlt] at its rate, so bytes arrive by the window's end; it carries at
most rate x (end - start - owlt) bytes, never more. Time in a segment only moves forward.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.model import Constellation
from orbitvault.orbit.plan import Contact, ContactPlan
from orbitvault.orbit.timeutil import Timestamp

EPS = 1e-6
"""Seconds below which two instants are the same (planning arithmetic is in floats)."""


@dataclass(frozen=True)
class Network:
    """Ground stations (name -> antennas) and satellites (name -> orbital plane).

    A satellite whose plane is unknown (None) is its own failure domain: it gets a plane of its own.
    """

    stations: Mapping[str, int]
    planes: Mapping[str, Hashable | None]

    def __post_init__(self) -> None:
        both = set(self.stations) & set(self.planes)
        if both:
            raise InvalidArgument(f"node(s) {', '.join(sorted(both))} are both a station and a satellite")
        for name, n in self.stations.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InvalidArgument(f"station {name}: antennas must be a positive integer, got {n!r}")

    @classmethod
    def from_constellation(cls, con: Constellation) -> Network:
        return cls({s.name: s.antennas for s in con.stations}, {s.name: s.plane for s in con.satellites})

    def plane(self, satellite: str) -> Hashable:
        p = self.planes[satellite]
        return ("satellite", satellite) if p is None else p

    def plane_count(self, exclude: Collection[str] = ()) -> int:
        return len({self.plane(s) for s in self.planes if s not in exclude}) or 1

    def kind(self, c: Contact) -> str | None:
        """'uplink', 'downlink', 'isl', or None for a contact between nodes this network does not know."""
        src_sat, dst_sat = c.source in self.planes, c.dest in self.planes
        if c.source in self.stations and dst_sat:
            return "uplink"
        if src_sat and c.dest in self.stations:
            return "downlink"
        if src_sat and dst_sat:
            return "isl"
        return None


def plane_cap(k: int, m: int, planes: int) -> int:
    """At most this many shards of a k+m stripe per plane: ceil((k+m)/planes) (design §6)."""
    return -(-(k + m) // max(planes, 1))


@dataclass(eq=False, slots=True)
class Segment:
    """A stretch of one contact that a link serves: sending in [start, send_end] at `rate`.

    `cursor` is the first instant not yet used (time only moves forward in a segment: a gap left
    before a reservation is lost, which keeps every window within its capacity by construction).
    """

    contact: Contact
    start: Timestamp
    end: Timestamp
    cursor: Timestamp = field(init=False)
    used: int = 0

    def __post_init__(self) -> None:
        self.cursor = self.start

    @property
    def source(self) -> str:
        return self.contact.source

    @property
    def dest(self) -> str:
        return self.contact.dest

    @property
    def rate(self) -> float:
        return self.contact.rate

    @property
    def owlt(self) -> float:
        return self.contact.owlt

    @property
    def send_end(self) -> Timestamp:
        return self.end - self.contact.owlt

    @property
    def capacity(self) -> float:
        return max(0.0, self.rate * (self.send_end - self.start))

    def room(self, t: Timestamp) -> int:
        """Whole bytes that fit from max(t, cursor) to the end of sending."""
        return max(0, math.floor(self.rate * (self.send_end - max(t, self.cursor)) + 1e-6))

    def take(self, t: Timestamp, nbytes: int) -> tuple[Timestamp, Timestamp]:
        """Reserve `nbytes` from max(t, cursor); returns (start, end) of sending."""
        s = max(t, self.cursor)
        e = s + nbytes / self.rate
        self.cursor = e
        self.used += nbytes
        return s, e


def ground_contacts(
    plan: ContactPlan, network: Network, kind: str, now: Timestamp, horizon: Timestamp, exclude: Collection[str] = ()
) -> list[Contact]:
    """The plan's `kind` ('uplink'/'downlink'/'isl') contacts overlapping [now, horizon], minus lost satellites."""
    out = []
    for c in plan.contacts:
        if c.end <= now or c.start >= horizon or c.source in exclude or c.dest in exclude:
            continue
        if c.rate > 0 and network.kind(c) == kind:
            out.append(c)
    return out


def served_segments(contacts: Iterable[Contact], network: Network, now: Timestamp, horizon: Timestamp) -> list[Segment]:
    """Ground contacts clipped to [now, horizon] and to what each station's antennas can serve.

    Antennas track a satellite from acquisition to loss of signal (no pre-emption: re-pointing
    mid-pass costs acquisition time). When an antenna frees up, it takes the waiting satellite
    whose pass ends soonest: the others stay in view longer. This keeps min(antennas, satellites in
    view) links busy at every instant, which is the most any antenna assignment can do, so capacity
    bounds computed from these segments are still true lower bounds. An antenna carries a pass's
    uplink and downlink at once (full duplex), so uplinks and downlinks are allocated separately.
    """
    by_station: dict[str, list[Contact]] = defaultdict(list)
    for c in contacts:
        station = c.source if c.source in network.stations else c.dest
        by_station[station].append(c)
    out: list[Segment] = []
    for station, cs in by_station.items():
        antennas = network.stations[station]
        spans = ((max(c.start, now), min(c.end, horizon), i, c) for i, c in enumerate(cs))
        clipped = sorted(x for x in spans if x[1] > x[0])
        if len(clipped) and antennas >= len(clipped):
            out.extend(Segment(c, s, e) for s, e, _i, c in clipped)
            continue
        busy: list[float] = []  # end times of passes being served
        waiting: list[tuple[float, float, int, Contact]] = []  # (end, start, i, contact)
        i, t = 0, -math.inf
        while i < len(clipped) or waiting:
            if not waiting and i < len(clipped):
                t = max(t, clipped[i][0])
            while i < len(clipped) and clipped[i][0] <= t + EPS:
                s, e, j, c = clipped[i]
                heapq.heappush(waiting, (e, s, j, c))
                i += 1
            while busy and busy[0] <= t + EPS:
                heapq.heappop(busy)
            while waiting and waiting[0][0] <= t + EPS:
                heapq.heappop(waiting)  # its pass ended while every antenna was busy
            while waiting and len(busy) < antennas:
                e, s, _j, c = heapq.heappop(waiting)
                out.append(Segment(c, max(s, t), e))
                heapq.heappush(busy, e)
            nxt = [clipped[i][0]] if i < len(clipped) else []
            if waiting and busy:
                nxt.append(busy[0])
            if not nxt:
                break
            t = max(t, min(nxt))
    out.sort(key=lambda g: (g.start, g.end, g.source, g.dest))
    return [g for g in out if g.send_end > g.start + EPS]


def capacity_bound(segments: Iterable[Segment], nbytes: float, now: Timestamp) -> Timestamp | None:
    """Earliest instant by which the segments' cumulative capacity reaches `nbytes` (None: never).

    Every schedule over these segments needs at least that long: it is the lower bound that
    predicted RPO/RTO are compared with. Sending ends at send_end, so data is there by then.
    """
    if nbytes <= 0:
        return now
    events: list[tuple[float, float]] = []
    for g in segments:
        s = max(g.start, now)
        if g.send_end > s:
            events.append((s, g.rate))
            events.append((g.send_end, -g.rate))
    events.sort()
    done, rate, t = 0.0, 0.0, now
    for when, delta in events:
        if rate > 0 and when > t:
            gain = rate * (when - t)
            if done + gain >= nbytes:
                return t + (nbytes - done) / rate
            done += gain
        t = max(t, when)
        rate += delta
    return None


@dataclass(frozen=True, slots=True)
class Hop:
    """Part of a forward over one ISL segment."""

    segment: Segment
    start: Timestamp
    end: Timestamp
    offset: int
    nbytes: int

    @property
    def arrival(self) -> Timestamp:
        return self.end + self.segment.owlt


class IslBook:
    """Inter-satellite segments per directed pair, reserved first come first served.

    A forward may span several windows of the same pair (a cut at loss of signal resumes at the
    byte where it stopped, at multiples of `granule`). Terminals per satellite are not limited:
    the contact plan already holds only the links that close.
    """

    def __init__(self, contacts: Iterable[Contact], now: Timestamp, horizon: Timestamp) -> None:
        self._pairs: dict[tuple[str, str], list[Segment]] = defaultdict(list)
        for c in contacts:
            s, e = max(c.start, now), min(c.end, horizon)
            if e - c.owlt > s + EPS:
                self._pairs[(c.source, c.dest)].append(Segment(c, s, e))
        self._ends: dict[tuple[str, str], list[float]] = {}
        links: dict[str, set[str]] = defaultdict(set)
        for (a, b), segs in self._pairs.items():
            segs.sort(key=lambda g: g.start)
            self._ends[(a, b)] = [g.send_end for g in segs]
            links[a].add(b)
        # Sorted, so that plans never depend on set order (hash seeds): predicted == executed.
        self.neighbours: dict[str, list[str]] = {a: sorted(bs) for a, bs in links.items()}

    def segments(self) -> list[Segment]:
        return [g for segs in self._pairs.values() for g in segs]

    def first_room(self, a: str, b: str, ready: Timestamp) -> int:
        """Bytes the first a->b segment with room at or after `ready` can still take (0: none)."""
        segs = self._pairs.get((a, b))
        if not segs:
            return 0
        for g in segs[bisect.bisect_right(self._ends[(a, b)], ready) :]:
            room = g.room(ready)
            if room > 0:
                return room
        return 0

    def forward(
        self, a: str, b: str, ready: Timestamp, nbytes: int, *, granule: int = 1, offset: int = 0, commit: bool = False
    ) -> list[Hop] | None:
        """Hops carrying `nbytes` from a to b, starting no earlier than `ready`; None if they do not fit."""
        segs = self._pairs.get((a, b))
        if not segs:
            return None
        i = bisect.bisect_right(self._ends[(a, b)], ready)
        hops: list[Hop] = []
        left = nbytes
        for g in segs[i:]:
            room = g.room(ready)
            if room < left:
                room -= room % granule
            take = min(room, left)
            if take <= 0:
                continue
            s = max(ready, g.cursor)
            hops.append(Hop(g, s, s + take / g.rate, offset + nbytes - left, take))
            left -= take
            if not left:
                break
        if left:
            return None
        if commit:
            for h in hops:
                h.segment.take(h.start, h.nbytes)
        return hops


def by_satellite(segments: Iterable[Segment], key: str) -> dict[str, list[Segment]]:
    """Segments per satellite (`key` 'dest' for uplinks, 'source' for downlinks), by start."""
    out: dict[str, list[Segment]] = defaultdict(list)
    for g in segments:
        out[getattr(g, key)].append(g)
    for segs in out.values():
        segs.sort(key=lambda g: g.start)
    return out


class NextWindow:
    """When each satellite can next start on a link of its own, as sweep time moves forward.

    Queried with non-decreasing times only (the schedulers sweep forward), so a per-satellite
    pointer skips spent segments once: amortised O(1) per query.
    """

    def __init__(self, segments: Mapping[str, list[Segment]]) -> None:
        self._segs = segments
        self._first: dict[str, int] = defaultdict(int)

    def at(self, satellite: str, t: Timestamp) -> tuple[Timestamp, Segment] | None:
        """(start, segment) of the earliest segment with room left at or after t (t never decreasing)."""
        return self.peek(satellite, t, advance=True)

    def peek(self, satellite: str, t: Timestamp, *, advance: bool = False) -> tuple[Timestamp, Segment] | None:
        """Like `at`, for a time ahead of the sweep (does not move the pointer)."""
        segs = self._segs.get(satellite)
        if not segs:
            return None
        i = self._first[satellite]
        while i < len(segs) and segs[i].send_end <= t:
            i += 1
        if advance:
            self._first[satellite] = i
        best: tuple[Timestamp, Segment] | None = None
        for g in segs[i:]:
            if best is not None and g.start >= best[0]:
                break
            if g.room(t) > 0:
                s = max(t, g.cursor)
                if best is None or s < best[0]:
                    best = (s, g)
        return best


IDLE_POLL = 60.0
"""A segment with nothing to send looks again after this long, doubling while it stays idle."""


def sweep(segments: list[Segment], serve: Callable[[Segment, Timestamp], bool], busy: Callable[[], bool]) -> None:
    """Run the servers: pop the segment free earliest, let `serve` give it one piece of work.

    `serve(segment, t)` reserves something on the segment (moving its cursor) and returns True, or
    returns False when it has nothing for it now; an idle segment polls again later (backing off,
    so a segment that stays idle costs a few looks, not one per second). Stops when `busy()` says
    no work is left.
    """
    heap = [(g.start, i) for i, g in enumerate(segments)]
    heapq.heapify(heap)
    backoff: dict[int, float] = {}
    while heap and busy():
        t, i = heapq.heappop(heap)
        g = segments[i]
        if g.room(t) <= 0:
            continue
        if serve(g, t):
            backoff.pop(i, None)
            nxt = g.cursor
        else:
            wait = backoff.get(i, IDLE_POLL)
            backoff[i] = wait * 2
            nxt = t + wait
            g.cursor = max(g.cursor, t)
        if nxt < g.send_end - EPS:
            heapq.heappush(heap, (nxt, i))


def split_hops(hops: list[Hop], size: int, n: int) -> list[list[Hop]]:
    """Cut a forward of n back-to-back shards into each shard's pieces (times interpolated)."""
    out: list[list[Hop]] = [[] for _ in range(n)]
    for h in hops:
        pos, end = h.offset, h.offset + h.nbytes
        while pos < end:
            j = pos // size
            stop = min(end, (j + 1) * size)
            rate = h.segment.rate
            a = h.start + (pos - h.offset) / rate
            out[j].append(Hop(h.segment, a, a + (stop - pos) / rate, pos - j * size, stop - pos))
            pos = stop
    return out


def placement_bound(
    uplinks: Iterable[Segment], isl: Iterable[Contact], network: Network, k: int, m: int, exclude: Collection[str] = ()
) -> Timestamp | None:
    """Earliest instant any stripe could be DURABLE, whatever its size: a placement lower bound.

    A stripe needs k+m distinct satellites (at most ceil((k+m)/planes) per plane), each reached
    by an uplink or by one ISL hop from a satellite reached before. The bound is the (k+m)-th
    earliest first arrival under the plane cap, ignoring transmission time. It complements
    `capacity_bound`, which binds for large backlogs; a small backlog is bound by this one.
    """
    first: dict[str, float] = {}
    for g in uplinks:
        if g.dest not in exclude:
            first[g.dest] = min(first.get(g.dest, math.inf), g.start + g.owlt)
    reach = dict(first)
    for c in isl:
        if c.source in first and c.dest not in exclude and c.end - c.owlt > first[c.source]:
            reach[c.dest] = min(reach.get(c.dest, math.inf), max(c.start, first[c.source]) + c.owlt)
    cap = plane_cap(k, m, network.plane_count(exclude))
    per_plane: dict[Hashable, int] = defaultdict(int)
    taken = 0
    for sat, t in sorted(reach.items(), key=lambda kv: kv[1]):
        if sat not in network.planes:
            continue
        plane = network.plane(sat)
        if per_plane[plane] < cap:
            per_plane[plane] += 1
            taken += 1
            if taken == k + m:
                return t
    return None
