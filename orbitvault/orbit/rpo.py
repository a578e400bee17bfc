"""RPO/RTO: when a backlog will be DURABLE and when a restore will be down, next to a lower bound.

The prediction plans the work in aggregate (`StripeBulk` / `RestoreBulk`), so it is cheap for any
size; the bound is the earliest instant by which the served windows' cumulative capacity covers
the bytes at all (`links.capacity_bound`). No schedule can beat the bound; placement rules (k+m
distinct satellites spread over planes) and the last shards' forwards are what the prediction
adds on top, so `ratio` = (predicted - now) / (bound - now) measures how close the scheduler gets.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.links import Network, capacity_bound, plane_cap
from orbitvault.orbit.plan import ContactPlan
from orbitvault.orbit.restore import RestoreBulk, plan_restore
from orbitvault.orbit.scheduler import StripeBulk, plan_uplink
from orbitvault.orbit.timeutil import Timestamp

DEFAULT_STRIPE_BYTES = 16 * 2**20
"""The gateway's stripe size (design §3: a put holds at most two 16 MiB stripes); shards are 1/k of it."""


@dataclass(frozen=True)
class Prediction:
    """`nbytes` must cross the links from `now`: predicted completion and the capacity bound."""

    kind: str
    nbytes: int
    now: Timestamp
    done_at: Timestamp | None
    bound_at: Timestamp | None
    stripes: int
    planning_seconds: float
    placement_at: Timestamp | None = None
    """Backlogs: the earliest any stripe could be DURABLE (`links.placement_bound`), whatever its size."""

    @property
    def ratio(self) -> float | None:
        """(predicted - now) / (capacity bound - now); None when either is beyond the horizon."""
        return _ratio(self.done_at, self.bound_at, self.now)

    @property
    def ratio_both(self) -> float | None:
        """Against the larger of the capacity and placement bounds (what limits a small backlog)."""
        if self.bound_at is None:
            return None
        return _ratio(self.done_at, max(self.bound_at, self.placement_at or self.now), self.now)


def _ratio(done: Timestamp | None, bound: Timestamp | None, now: Timestamp) -> float | None:
    if done is None or bound is None:
        return None
    if bound <= now:
        return 1.0
    return (done - now) / (bound - now)


def _shard(k: int, m: int, shard_size: int | None) -> int:
    if k < 1 or m < 0:
        raise InvalidArgument(f"storage class {k}+{m}: k must be >= 1 and m >= 0")
    size = shard_size if shard_size is not None else -(-DEFAULT_STRIPE_BYTES // k)
    if size < 1:
        raise InvalidArgument("shard size must be positive")
    return size


def predict_backlog(
    plan: ContactPlan,
    network: Network,
    backlog_bytes: int,
    *,
    k: int,
    m: int,
    now: Timestamp,
    shard_size: int | None = None,
    horizon: Timestamp | None = None,
    exclude: Collection[str] = (),
) -> Prediction:
    """When `backlog_bytes` of objects are DURABLE: all k+m shards up, backlog x (k+m)/k bytes."""
    size = _shard(k, m, shard_size)
    stripes = math.ceil(max(backlog_bytes, 0) / (k * size))
    sched = plan_uplink(
        plan, network, bulk=[StripeBulk("backlog", stripes, k, m, size)], now=now, horizon=horizon, exclude=exclude
    )
    nbytes = stripes * (k + m) * size
    return Prediction(
        "backlog",
        nbytes,
        now,
        sched.durable_at,
        capacity_bound(sched.segments, nbytes, now),
        stripes,
        sched.planning_seconds,
        sched.placement_bound(k, m),
    )


def spread(network: Network, width: int, exclude: Collection[str] = ()) -> list[tuple[str, ...]]:
    """Placements of `width` shards as the gateway makes them: distinct satellites, planes interleaved.

    One placement per starting satellite (rotations of the plane-interleaved order), so stripes
    spread evenly over the constellation; each respects the per-plane cap.
    """
    by_plane: dict[object, list[str]] = {}
    for sat in sorted(network.planes):
        if sat not in exclude:
            by_plane.setdefault(network.plane(sat), []).append(sat)
    order: list[str] = []
    lanes = [by_plane[p] for p in sorted(by_plane, key=str)]
    for i in range(max((len(x) for x in lanes), default=0)):
        order += [lane[i] for lane in lanes if i < len(lane)]
    if len(order) < width:
        raise InvalidArgument(f"a stripe of {width} shards needs {width} satellites; only {len(order)} are usable")
    cap = plane_cap(width, 0, len(lanes))
    out = []
    for start in range(len(order)):
        pick: list[str] = []
        counts: dict[object, int] = {}
        for sat in order[start:] + order[:start]:
            p = network.plane(sat)
            if counts.get(p, 0) < cap and len(pick) < width:
                pick.append(sat)
                counts[p] = counts.get(p, 0) + 1
        out.append(tuple(pick))
    return out


def predict_restore(
    plan: ContactPlan,
    network: Network,
    restore_bytes: int,
    *,
    k: int,
    m: int,
    now: Timestamp,
    shard_size: int | None = None,
    horizon: Timestamp | None = None,
    exclude: Collection[str] = (),
) -> Prediction:
    """When `restore_bytes` of objects can be down (k shards of every stripe), stripes spread as placed."""
    size = _shard(k, m, shard_size)
    stripes = math.ceil(max(restore_bytes, 0) / (k * size))
    patterns = spread(network, k + m)
    per, extra = divmod(stripes, len(patterns))
    bulk = [
        RestoreBulk(i, per + (1 if i < extra else 0), k, size, holders)
        for i, holders in enumerate(patterns)
        if per + (1 if i < extra else 0)
    ]
    rp = plan_restore(plan, network, bulk=bulk, now=now, horizon=horizon, exclude=exclude)
    nbytes = stripes * k * size
    return Prediction(
        "restore", nbytes, now, rp.eta, capacity_bound(rp.segments, nbytes, now), stripes, rp.planning_seconds
    )
