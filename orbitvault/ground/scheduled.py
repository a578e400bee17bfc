"""Scheduled mode: the gateway executes the contact plan (issue 6; design §3 "Durability", §4).

A scheduled PutObject seals and codes an object exactly as direct mode does, but its k+m shards
per stripe go to the ground spool (`spool.py`, synced files) and the catalog records the object
with no shard in orbit and one spool entry per shard, in one transaction: the put returns QUEUED.
From then on `ScheduledMode` moves shards up window by window:

- **Plan.** Spooled shards become `UplinkItem`s (size = rows x granule, granule = a full fragment
  plus its checksum, so cuts fall on row boundaries; `delivered` = rows the target node has
  committed, from PutShard answers and HeadShard), in queue order, one fairness class per tenant
  (the gateway's own checkpoints in a tier served after all tenants);
  `plan_uplink` binds them late to satellites and windows. Satellites map to nodes by the
  satellite each node reports (NodeInfo); satellites without a node, and satellites lost (a
  transfer to or from them failed), are excluded.
- **Execute.** Transfers run in time order on the gateway's clock. At a transfer's start the rows
  of its byte range are pushed to the node with a resumable PutShard (upload id, resume from the
  node's committed rows: nothing already there is sent again); the window's budget is exactly
  those rows, so loss of signal cuts the shard there and the next window resumes it. An ISL hop
  is a ForwardShard ordered on the relay node, limited to the rows planned for that window. At a
  transfer's arrival (end + one-way light time) a shard that is whole on its target is recorded
  in the catalog; when an object's last shard is in orbit it is DURABLE and its spool copy goes.
- **Re-plan** whenever reality departs from the plan: new work, a deleted object, a satellite
  lost, a transfer that delivered less than planned, a restore requested. While reality follows
  the plan it is kept, so what GetObjectStatus predicted is what happens (the greedy planner is
  not time-consistent: planning again mid-pass would re-assign antennas and move predictions).
  A re-plan respects transfers in flight and the other planner's ISL bookings: their intervals
  are taken out of the contacts it is given (`_free`).
- **Restore.** RestoreObject plans k shards per stripe with the earliest downlinks
  (`plan_restore`, lost satellites excluded, ISL forwards allowed), returns the ETA, and executes
  the downlinks into the restore cache (staged at the window's start, visible at arrival); a
  satellite lost meanwhile makes it plan again around it. Ready copies stay `restore_keep_s`.
- **Ground copies.** A spooled object is readable at once: GetObject decodes from the spooled
  shards (all k+m are kept until the object is DURABLE, then the spool copy is deleted), and from
  restored shards while a restore's copy lasts; ground copies are always read before any node.
  Without one, reads go to the nodes as in direct mode, which on a real constellation answer only
  in contact: that is what RestoreObject is for.

Simulated time: with a `SimulatedClock` this executor drives the clock. When it has nothing to do
until its next event it advances the clock to that event, so a day of passes runs in seconds. Time
stands still while there is no work, while a scheduled put is streaming in (`holding()`), and
beyond `limit` (tests). A demo process never drives the clock: it puts its objects and polls
GetObjectStatus (SDK `wait_durable`) or RestoreObject (`wait_ready`); GetGatewayStatus reports
the gateway's simulated time, the spool and the RPO next to its bound.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import threading
import time
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from orbitvault.erasure.stripe import CHECKSUM_LEN, coder_for
from orbitvault.errors import DataLoss, OrbitVaultError, Unavailable
from orbitvault.ground import selfdesc
from orbitvault.ground.catalog import Catalog, ObjectRecord, ShardLoc, SpoolEntry, SpoolObject, StripeRecord
from orbitvault.ground.config import GatewayConfig
from orbitvault.ground.model import SYSTEM_TENANT, RestoreInfo, RestoreState
from orbitvault.ground.nodes import NodeDirectory, NodeState
from orbitvault.ground.pipeline import WriteResult, rows_per_call
from orbitvault.ground.spool import GroundCopies, GroundShards
from orbitvault.orbit.clock import Clock, SimulatedClock, WallClock
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.links import EPS, Network, capacity_bound
from orbitvault.orbit.plan import Contact, ContactPlan, read_plan
from orbitvault.orbit.restore import HeldShard, RestorePlan, RestoreStripe, plan_restore
from orbitvault.orbit.scheduler import ClassPolicy, Schedule, StripeSpec, Transfer, UplinkItem, plan_uplink
from orbitvault.storage.header import ShardHeader, Sibling
from orbitvault.storage.store import RowBatch

log = logging.getLogger("orbitvault.gateway.scheduled")
# The gateway's own objects (catalog checkpoints) go up after every tenant's: a checkpoint spooled
# behind a backup must not push the backup's DURABLE time, which its owner has been told, later.
_CLASSES = {SYSTEM_TENANT: ClassPolicy(tier=1)}

Key = tuple[bytes, int, int]  # (object id, stripe, shard index)

_NAP_S = 30.0  # wall clock: the longest the executor waits before looking at the time again
_IDLE_S = 1.0  # real seconds an idle executor waits for news before looking again
_LOG_LIMIT = 100_000  # executed transfers kept for inspection (tests, bench)
_MAX_AHEAD_S = 30 * 86400.0  # a predicted plan is extended at most this far when work does not fit
_ERROR_PAUSE_S = 0.5  # real seconds after an unexpected error in the loop, so it cannot spin
_ZERO = bytes(32)


def make_clock(config: GatewayConfig) -> Clock:
    """The gateway's clock from its config: wall time, or simulated time from `sim_start` (default:
    the contact plan's epoch; with a predicted plan, the current time)."""
    if config.clock != "simulated":
        return WallClock()
    start = config.sim_start
    if start is None and config.contact_plan is not None:
        start = read_plan(config.contact_plan).epoch
    return SimulatedClock(time.time() if start is None else start)


def _remember(history: dict[bytes, float], key: bytes, value: float) -> None:
    """Record in a bounded history (the oldest entry goes): a gateway runs for months."""
    if key not in history and len(history) >= _LOG_LIMIT:
        history.pop(next(iter(history)))
    history[key] = value


def granule_of(record: ObjectRecord) -> int:
    """Planned bytes per row of a shard: a full row's fragment (codec header included) and its checksum."""
    g = record.geometry
    return coder_for(g).codec.fragment_len(g.row_size) + CHECKSUM_LEN


# --- the contact plan ---------------------------------------------------------------------------------


class OrbitPlan:
    """The network (satellites, planes, stations) and the contact plan the scheduler works over.

    The constellation file (default: the shipped sample) gives the network; the windows come from
    `contact_plan` (ION or HDTN) or are predicted from the TLEs `plan_horizon_s` ahead, and
    predicted again further on as time passes.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.constellation = load_constellation(config.constellation)
        self.network = Network.from_constellation(self.constellation)
        self.horizon = config.plan_horizon_s
        self.fixed = config.contact_plan is not None
        self._plan: ContactPlan | None = None
        self._start = self._end = 0.0
        if config.contact_plan is not None:
            self._set(read_plan(config.contact_plan, nodes=self.constellation.nodes()))

    @property
    def satellites(self) -> list[str]:
        return sorted(self.network.planes)

    def _set(self, plan: ContactPlan) -> None:
        self._plan = plan
        self._index: dict[tuple[str, str], list[Contact]] = defaultdict(list)
        for c in plan.contacts:
            self._index[(c.source, c.dest)].append(c)
        self._starts = {k: [c.start for c in v] for k, v in self._index.items()}
        if plan.contacts:
            self._start = min(c.start for c in plan.contacts)
            self._end = max(c.end for c in plan.contacts)

    def _predict(self, start: float, end: float) -> None:
        self._set(ContactPlan.from_model(self.constellation, start, end))
        self._start, self._end = start, end

    def plan(self, now: float) -> ContactPlan:
        if not self.fixed and (self._plan is None or now < self._start or now + self.horizon / 2 > self._end):
            self._predict(now, now + self.horizon)
        assert self._plan is not None
        return self._plan

    def extend(self, now: float) -> bool:
        """Predict further ahead (work does not fit the plan); False if fixed or far enough already."""
        if self.fixed or self._end - now >= _MAX_AHEAD_S:
            return False
        self._predict(min(now, self._start) if self._plan is not None else now, self._end + self.horizon)
        return True

    def original(self, c: Contact) -> Contact:
        """The plan's contact that `c` (a piece of it, after `_free`) belongs to."""
        key = (c.source, c.dest)
        cs = self._index.get(key, [])
        i = bisect_right(self._starts.get(key, []), c.start + EPS) - 1
        while i >= 0:
            if cs[i].start <= c.start + EPS and c.end <= cs[i].end + EPS:
                return cs[i]
            i -= 1
        return c

    def contact_state(self, satellite: str, now: float) -> tuple[bool, float]:
        """(a ground window is open now, start of the next one) for a satellite."""
        if self._plan is None:
            return False, 0.0
        nxt = math.inf
        for c in self._plan.contacts:
            if satellite not in (c.source, c.dest) or self.network.kind(c) not in ("uplink", "downlink"):
                continue
            if c.start <= now < c.end:
                return True, 0.0
            if c.start > now:
                nxt = min(nxt, c.start)
        return False, 0.0 if nxt == math.inf else nxt


def _free(plan: ContactPlan, busy: dict[tuple[str, str], list[tuple[float, float]]], now: float) -> ContactPlan:
    """The plan from `now` with `busy` intervals taken out of their contacts (transfers in flight,
    the other planner's ISL bookings), so a plan made now never books what is already used."""
    out: list[Contact] = []
    for c in plan.contacts:
        if c.end <= now:
            continue
        pieces = [(c.start, c.end)]
        for s, e in busy.get((c.source, c.dest), ()):
            nxt = []
            for a, b in pieces:
                if e <= a or s >= b:
                    nxt.append((a, b))
                    continue
                if s > a:
                    nxt.append((a, s))
                if e < b:
                    nxt.append((e, b))
            pieces = nxt
        for a, b in pieces:
            if b - a > c.owlt + EPS:
                out.append(c if (a, b) == (c.start, c.end) else replace(c, start=a, end=b))
    return ContactPlan(out, plan.nodes, plan.epoch)


# --- what happened ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutedTransfer:
    """One transfer as executed: the plan's contact, times and rows, and the bytes really carried.

    `bytes_sent` counts fragments and checksums that crossed the link in this transfer: rows the
    receiver already had are never sent again, so a resumed shard adds only what was missing.
    """

    purpose: str  # "store" (uplink backlog) or "restore"
    hop: str  # "uplink", "isl" or "downlink"
    source: str
    dest: str
    contact: Contact  # the plan's window (not a piece of it)
    start: float
    end: float
    arrival: float
    item: Key
    first_row: int
    end_row: int
    resumed: bool
    planned_bytes: int
    bytes_sent: int

    def log_fields(self) -> str:
        """key=value fields for the gateway's log: operators (and the drill's timeline) see what
        went over which link when, in the gateway's (possibly simulated) time."""
        oid, stripe, index = self.item
        return (
            f"purpose={self.purpose} hop={self.hop} from={_field(self.source)} to={_field(self.dest)} "
            f"start={self.start:.3f} end={self.end:.3f} arrival={self.arrival:.3f} object={oid.hex()[:16]} "
            f"stripe={stripe} shard={index} rows={self.first_row}-{self.end_row} bytes={self.bytes_sent} "
            f"resumed={str(self.resumed).lower()}"
        )


def _field(name: str) -> str:
    """A node or station name as one key=value token (quoted when it holds spaces or quotes)."""
    return name if name and not any(c in name for c in ' "=\\') else json.dumps(name)


@dataclass
class Totals:
    """Counters over the gateway's life (since start)."""

    uplink_bytes: int = 0
    isl_bytes: int = 0
    downlink_bytes: int = 0
    transfers: int = 0
    resumed: int = 0
    replans: int = 0
    restore_replans: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Backlog:
    """The spool as the scheduler sees it (GetGatewayStatus)."""

    objects: int
    shards: int
    spooled_bytes: int
    backlog_bytes: int  # planned bytes still to uplink
    durable_at: float | None  # RPO: all of it DURABLE per the current plan
    bound_at: float | None  # capacity lower bound for the same bytes
    restores_in_progress: int


@dataclass(order=True)
class _Event:
    time: float
    phase: int  # 0: an arrival, 1: a start (arrivals at an instant come first)
    seq: int
    purpose: str = field(compare=False)
    tr: Transfer = field(compare=False)
    gen: int = field(compare=False)  # the plan generation; -1 for arrivals (always valid)


@dataclass
class _Job:
    """A restore in progress: shards still needed per stripe, what is in the cache or coming."""

    record: ObjectRecord
    keep_s: float
    need: dict[int, int]
    have: dict[int, set[int]]
    coming: dict[Key, Transfer] = field(default_factory=dict)
    bad: set[Key] = field(default_factory=set)
    relay_uploads: dict[Key, bytes] = field(default_factory=dict)
    relay_at: dict[Key, str] = field(default_factory=dict)
    eta: float | None = None
    bound: float | None = None
    reason: str = ""


# --- the executor ---------------------------------------------------------------------------------------


class ScheduledMode:
    """The spool, the plans and the thread that executes them (start it with `start()`)."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        nodes: NodeDirectory,
        clock: Clock,
        config: GatewayConfig,
        refresh: Callable[[], None],
    ) -> None:
        self.catalog = catalog
        self.nodes = nodes
        self.clock = clock
        self.config = config
        self._refresh = refresh
        self.orbit = OrbitPlan(config)
        self.spool = GroundShards(config.spool_path)
        self.cache = GroundShards(config.restore_path)
        self.ground = GroundCopies(self.spool, self.cache)
        self.simulated = isinstance(clock, SimulatedClock)
        self.totals = Totals()
        self.executed: deque[ExecutedTransfer] = deque(maxlen=_LOG_LIMIT)
        self.durable_at: dict[bytes, float] = {}  # objects that went DURABLE here, and when
        self.restored_at: dict[bytes, float] = {}  # restores completed here, and when
        self.restore_etas: dict[bytes, list[float | None]] = defaultdict(list)  # each plan's ETA, in order
        self.limit: float | None = None  # simulated time is not advanced beyond this (tests)

        self._mu = threading.RLock()  # the state below; held while an event executes
        self._wake = threading.Condition(threading.Lock())  # news for the loop; holds; idleness
        self._news = False
        self._holds = 0
        self._idle = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._inbox: list[bytes] = []

        self._objects: dict[bytes, SpoolObject] = {}
        self._records: dict[bytes, ObjectRecord] = {}
        self._entries: dict[bytes, dict[tuple[int, int], SpoolEntry]] = {}
        self._stripes: dict[bytes, dict[int, StripeRecord]] = {}
        self._lost: set[str] = set()
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._store_gen = 0
        self._restore_gen = 0
        self._dirty = True
        self._restore_dirty = False
        self._schedule: Schedule | None = None
        self._restore_plan: RestorePlan | None = None
        self._inflight: dict[int, tuple[str, Transfer]] = {}
        self._predicted: dict[bytes, float | None] = {}
        self._bound: dict[bytes, float | None] = {}
        self._jobs: dict[bytes, _Job] = {}
        self._expiry: dict[bytes, float] = {}
        self._load()

    # --- lifecycle ----------------------------------------------------------------------------------

    def _load(self) -> None:
        """The spool and restores as the catalog has them."""
        for so in self.catalog.spool_objects():
            self._adopt(so)
        now = self.clock.now()
        for oid, (_ready, expires) in self.catalog.restores().items():
            self._expiry[oid] = expires / 1000
        log.info(
            "scheduled mode loaded objects=%d shards=%d restores=%d plan=%s clock=%s now=%.0f",
            len(self._objects),
            sum(len(v) for v in self._entries.values()),
            len(self._expiry),
            "fixed" if self.orbit.fixed else "predicted",
            "simulated" if self.simulated else "wall",
            now,
        )

    def _adopt(self, so: SpoolObject) -> bool:
        rec = self.catalog.get_object_by_id(so.object_id)
        if rec is None:
            return False
        self._objects[so.object_id] = so
        self._records[so.object_id] = rec
        self._entries[so.object_id] = {(e.stripe, e.index): e for e in self.catalog.spool_entries(so.object_id)}
        self._stripes[so.object_id] = {s.index: s for s in self.catalog.stripes(so.object_id)}
        return True

    def start(self) -> None:
        """Run the executor (in the server process only: it also clears what a crash left)."""
        if self._thread is None:
            self._clear_leftovers()
            self._thread = threading.Thread(target=self._loop, name="gateway-scheduler", daemon=True)
            self._thread.start()

    def _clear_leftovers(self) -> None:
        """Spool files of puts that crashed before their commit (or of objects that went DURABLE
        just before a crash), temporary files, staged downlinks, restored copies nobody records.
        Only the server does this, at start: an admin command opening the state dir while the
        server runs must not take the files of a put still streaming in."""
        with self._mu:
            for so in self.catalog.spool_objects():
                if so.object_id not in self._objects:
                    self._adopt(so)
            for oid in list(self.spool.objects()):
                if oid not in self._objects:
                    self.spool.remove(oid)
                else:
                    self.spool.discard_temp(oid)
            self.cache.drop_staged()
            for oid in list(self.cache.objects()):
                if oid not in self._expiry:
                    self.cache.remove(oid)

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _notify(self, *, dirty: bool = False) -> None:
        with self._wake:
            self._news = True
            if dirty:
                self._dirty = True
            self._wake.notify_all()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Simulated time stands still inside (a put streaming in; a test setting things up)."""
        with self._wake:
            self._holds += 1
        try:
            yield
        finally:
            with self._wake:
                self._holds -= 1
                self._news = True
                self._wake.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until the executor has nothing it may do now (all done, held, or at `limit`)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            self._news = True
            self._wake.notify_all()
            while True:
                if self._idle and not self._news and not self._dirty and not self._inbox:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.2))

    # --- the loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
                held = self.simulated and self._holds > 0
            if held:
                self._wait(_IDLE_S)
                continue
            try:
                step = self._step()
            except Exception:
                log.exception("scheduler step failed; planning again")
                self.totals.failures += 1
                self._dirty = True
                self._wait(_ERROR_PAUSE_S)
                continue
            if step is None:
                continue
            kind, value = step
            if kind == "advance":
                self.clock.advance_to(value)  # type: ignore[attr-defined]
            else:
                self._wait(value)

    def _step(self) -> tuple[str, float] | None:
        """One round: plan if needed, run what is due; else say how to wait for the next event."""
        with self._mu:
            self._housekeeping()
            nxt = self._next_time()
            now = self.clock.now()
            if nxt is None:
                self._stalled(now)
                nxt = self._next_time()
            if nxt is not None and nxt <= now + EPS:
                self._run_due(now)
                return None
        if nxt is None:
            return ("wait", _IDLE_S)
        if self.simulated:
            if self.limit is not None and nxt > self.limit:
                return ("wait", _IDLE_S)
            return ("advance", nxt)
        return ("wait", min(nxt - now, _NAP_S))

    def _wait(self, seconds: float) -> None:
        with self._wake:
            if self._news or self._stopping:
                self._news = False
                return
            self._idle = True
            self._wake.notify_all()
            self._wake.wait(seconds)
            self._idle = False
            self._news = False

    def _housekeeping(self) -> None:
        with self._wake:
            inbox, self._inbox = self._inbox, []
            dirty, self._dirty = self._dirty, False
        for oid in inbox:
            so = self.catalog.spool_object(oid)
            if so is not None and oid not in self._objects and self._adopt(so):
                # Every store plan logged after this line includes the object (telemetry.plan_after).
                log.info("object adopted object=%s", oid.hex()[:16])
        now = self.clock.now()
        for oid, exp in list(self._expiry.items()):
            if exp <= now and oid not in self._jobs:
                self.cache.remove(oid)
                self.catalog.delete_restore(oid)
                del self._expiry[oid]
        if dirty or inbox:
            self._plan_store(now)
        if self._restore_dirty:
            self._plan_restores(now)

    def _stalled(self, now: float) -> None:
        """Nothing left to execute but work remains: a predicted plan is extended further ahead."""
        stuck = self._objects and self._schedule is not None and not self._schedule.complete and not self._inflight
        if stuck and self.orbit.extend(now):
            log.info("backlog does not fit the contact plan; predicting further ahead")
            self._plan_store(now)

    def _next_time(self) -> float | None:
        while self._events:
            ev = self._events[0]
            if ev.gen == -1 or ev.gen == (self._store_gen if ev.purpose == "store" else self._restore_gen):
                return ev.time
            heapq.heappop(self._events)
        return None

    def _prune(self) -> None:
        """Drop starts of superseded plans from the event heap (after a re-plan)."""
        gens = {"store": self._store_gen, "restore": self._restore_gen}
        self._events = [ev for ev in self._events if ev.gen == -1 or ev.gen == gens[ev.purpose]]
        heapq.heapify(self._events)

    def _run_due(self, now: float) -> None:
        while self._events and self._events[0].time <= now + EPS:
            ev = heapq.heappop(self._events)
            gen = self._store_gen if ev.purpose == "store" else self._restore_gen
            if ev.gen not in (gen, -1):
                continue
            if ev.purpose == "store":
                (self._store_arrive if ev.phase == 0 else self._store_start)(ev.tr, now)
            else:
                (self._restore_arrive if ev.phase == 0 else self._restore_start)(ev.tr, now)
            if self._dirty or self._restore_dirty:
                return  # plan again before anything else starts

    def _push(self, purpose: str, tr: Transfer, *, arrival: bool, gen: int) -> None:
        t = tr.arrival if arrival else tr.start
        heapq.heappush(self._events, _Event(t, 0 if arrival else 1, next(self._seq), purpose, tr, gen))

    # --- nodes and satellites ---------------------------------------------------------------------------

    def _sat_nodes(self) -> dict[str, NodeState]:
        out: dict[str, NodeState] = {}
        for st in sorted(self.nodes.states(), key=lambda s: s.address):
            sat = st.status.satellite if st.status is not None else ""
            if sat and st.node_id is not None and sat not in out:
                out[sat] = st
        return out

    def _sat_of(self, node_id: bytes) -> str:
        st = self.nodes.get(node_id)
        if st is not None and st.status is not None and st.status.satellite:
            return st.status.satellite
        return f"node:{node_id.hex()[:16]}"

    def _exclude(self, sat_nodes: dict[str, NodeState]) -> set[str]:
        for sat in list(self._lost):
            st = sat_nodes.get(sat)
            if st is not None and st.up:
                self._lost.discard(sat)  # it answers again
        return (set(self.orbit.network.planes) - set(sat_nodes)) | self._lost

    def _lose(self, sat: str, st: NodeState | None, why: str) -> None:
        log.warning("satellite lost for planning satellite=%s reason=%r", sat, why)
        self._lost.add(sat)
        if st is not None and st.node_id is not None:
            self.nodes.mark_down(st.node_id, why)
        self.totals.failures += 1

    def _busy(self, purpose: str) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """Intervals a new `purpose` plan must leave alone: transfers in flight, and the ISL
        transfers the other plan still has ahead (both plans share the inter-satellite links)."""
        busy: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for _p, tr in self._inflight.values():
            busy[(tr.source, tr.dest)].append((tr.start, tr.end))
        other = self._restore_plan if purpose == "store" else self._schedule
        other_gen = self._restore_gen if purpose == "store" else self._store_gen
        if other is not None:
            started = {id(tr) for _p, tr in self._inflight.values()}
            for ev in self._events:
                if ev.purpose != purpose and ev.gen == other_gen and ev.tr.hop == "isl" and id(ev.tr) not in started:
                    busy[(ev.tr.source, ev.tr.dest)].append((ev.tr.start, ev.tr.end))
        return busy

    # --- the store plan -----------------------------------------------------------------------------------

    def _item(self, e: SpoolEntry, cls: str, exclude: set[str], sat_nodes: dict[str, NodeState]) -> UplinkItem:
        key = e.key
        base = UplinkItem(key, key[:2], e.size, cls=cls, granule=e.granule)
        node = sat_nodes.get(e.target)
        if not e.target or e.target in exclude or node is None or node.node_id != e.target_node:
            return base
        if e.committed >= e.rows:
            return replace(base, delivered=e.size, target=e.target)
        relay_node = sat_nodes.get(e.relay)
        if (
            e.relay
            and e.relay not in exclude
            and relay_node is not None
            and relay_node.node_id == e.relay_node
            and e.relay_committed >= e.rows
        ):
            return replace(base, delivered=e.committed * e.granule, target=e.target, relay=e.relay)
        if e.committed > 0:
            return replace(base, delivered=e.committed * e.granule, target=e.target)
        return base

    def _plan_store(self, now: float) -> None:
        self._refresh()
        sat_nodes = self._sat_nodes()
        exclude = self._exclude(sat_nodes)
        self._settle(now, sat_nodes)
        items: list[UplinkItem] = []
        specs: list[StripeSpec] = []
        for oid, so in self._objects.items():
            rec = self._records[oid]
            by_stripe: dict[int, list[SpoolEntry]] = defaultdict(list)
            for e in self._entries[oid].values():
                by_stripe[e.stripe].append(e)
            for s in sorted(by_stripe):
                st = self._stripes[oid][s]
                in_orbit = tuple(self._sat_of(loc.node_id) for loc in st.shards if loc is not None)
                specs.append(StripeSpec((oid, s), rec.geometry.k, rec.geometry.m, in_orbit))
                for e in sorted(by_stripe[s], key=lambda x: x.index):
                    items.append(self._item(e, so.tenant, exclude, sat_nodes))
        plan = _free(self.orbit.plan(now), self._busy("store"), now)
        sched = plan_uplink(
            plan, self.orbit.network, items, specs, now=now, exclude=exclude, relay_remainders=False, classes=_CLASSES
        )
        self._store_gen += 1
        self._prune()
        self.totals.replans += 1
        for tr in sched.transfers:
            if tr.item is not None:
                self._push("store", tr, arrival=False, gen=self._store_gen)
        self._schedule = sched
        self._predict(sched, items, now)
        log.info(
            "store plan items=%d transfers=%d durable_at=%s lost=%s planning_ms=%.1f",
            len(items),
            len(sched.transfers),
            sched.durable_at,
            ",".join(sorted(self._lost)) or "-",
            sched.planning_seconds * 1000,
        )

    def _predict(self, sched: Schedule, items: list[UplinkItem], now: float) -> None:
        arriving: dict[tuple[bytes, int], float] = {}
        for purpose, tr in self._inflight.values():
            if purpose == "store":
                sid = tr.item[:2]  # type: ignore[index]
                arriving[sid] = max(arriving.get(sid, now), tr.arrival)
        left: dict[bytes, int] = defaultdict(int)
        for it in items:
            left[it.id[0]] += it.size - it.delivered  # type: ignore[index]
        predicted: dict[bytes, float | None] = {}
        bound: dict[bytes, float | None] = {}
        for oid in self._objects:
            t: float | None = now
            for s in {e.stripe for e in self._entries[oid].values()}:
                d = sched.stripe_durable.get((oid, s))
                if d is None or t is None:
                    t = None
                    break
                t = max(t, d, arriving.get((oid, s), d))
            predicted[oid] = t
            bound[oid] = sched.capacity_bound(left[oid])
        self._predicted, self._bound = predicted, bound

    # --- store transfers ----------------------------------------------------------------------------------

    def _entry(self, key: Key) -> SpoolEntry | None:
        return self._entries.get(key[0], {}).get((key[1], key[2]))

    def _save(self, e: SpoolEntry) -> None:
        self._entries[e.object_id][(e.stripe, e.index)] = e
        self.catalog.put_spool_entry(e)

    def _bind(self, e: SpoolEntry, target: str, relay: str | None, sat_nodes: dict[str, NodeState]) -> SpoolEntry:
        """Point the entry at the plan's target (and relay); a changed binding starts new uploads."""
        tn = sat_nodes[target].node_id or b""
        if e.target != target or e.target_node != tn:
            self._abandon(e.target_node, e.shard_id, tn)
            e = replace(e, target=target, target_node=tn, upload_id=os.urandom(16), committed=0)
        if relay is not None and relay != target:
            rn = sat_nodes[relay].node_id or b""
            if e.relay != relay or e.relay_node != rn:
                self._abandon(e.relay_node, e.shard_id, rn)
                e = replace(e, relay=relay, relay_node=rn, relay_upload_id=os.urandom(16), relay_committed=0)
        return e

    def _abandon(self, node_id: bytes, shard_id: bytes, keep: bytes) -> None:
        """Delete an upload no longer planned, best effort (a partial upload also expires on its own)."""
        if not node_id or node_id == keep:
            return
        link = self.nodes.link(node_id)
        if link is not None:
            with contextlib.suppress(Exception):
                link.delete_shard(shard_id)

    def _header(self, e: SpoolEntry, sat_nodes: dict[str, NodeState]) -> tuple[SpoolEntry, ShardHeader]:
        """The shard's header, fixed at its first transfer: siblings name the nodes holding (or
        planned to hold) the stripe's other shards; every stripe carries the complete record."""
        if e.header:
            return e, ShardHeader.decode(e.header)
        oid, s = e.object_id, e.stripe
        rec, so = self._records[oid], self._objects[oid]
        st = self._stripes[oid][s]
        targets = self._schedule.targets if self._schedule is not None else {}
        siblings = []
        for j in range(rec.geometry.n):
            loc = st.shards[j]
            if loc is not None:
                siblings.append(Sibling(j, loc.node_id, loc.shard_id))
                continue
            other = self._entries[oid].get((s, j))
            if other is None:
                continue
            sat = other.target or targets.get((oid, s, j), "")
            node = sat_nodes.get(sat) if sat else None
            siblings.append(Sibling(j, (node.node_id if node is not None else None) or _ZERO, other.shard_id))
        header = ShardHeader(
            shard_id=e.shard_id,
            object_id=oid,
            stripe_index=s,
            stripe_count=rec.stripe_count,
            shard_index=e.index,
            geometry=rec.geometry,
            stripe_data_len=st.data_len,
            siblings=tuple(siblings),
            created_unix_ms=rec.created_unix_ms,
            catalog_record=selfdesc.piece_for(list(so.pieces), e.index),
        )
        e = replace(e, header=header.encode())
        return e, header

    def _spool_rows(self, e: SpoolEntry, first: int, end: int, rec: ObjectRecord) -> Iterator[RowBatch]:
        per = rows_per_call(rec.geometry)
        for r in range(first, end, per):
            got = self.spool.get_rows(e.object_id, e.stripe, e.index, r, min(per, end - r))
            yield RowBatch(r, got.fragments, got.checksums)  # type: ignore[arg-type]

    def _store_start(self, tr: Transfer, now: float) -> None:
        key: Key = tr.item  # type: ignore[assignment]
        e = self._entry(key)
        if e is None or self._schedule is None:
            return
        rec = self._records[key[0]]
        sat_nodes = self._sat_nodes()
        target = self._schedule.targets.get(key)
        relay = self._schedule.relays.get(key)
        g = e.granule
        r0, r1 = tr.offset // g, (tr.offset + tr.nbytes) // g
        if target is None or target not in sat_nodes or tr.dest not in sat_nodes:
            self._dirty = True
            return
        if tr.hop == "isl":
            self._store_forward(tr, e, sat_nodes, r1, now)
            return
        to_relay = relay is not None and tr.dest == relay and relay != target
        if not to_relay and tr.dest != target:
            self._dirty = True
            return
        node = sat_nodes[tr.dest]
        try:
            e = self._bind(e, target, relay if to_relay else None, sat_nodes)
            e, header = self._header(e, sat_nodes)
            self._save(e)
            upload = e.relay_upload_id if to_relay else e.upload_id
            link = node.link
            head = link.head_shard(e.shard_id)  # type: ignore[attr-defined]
            if head is None:
                committed, resume = 0, False
            elif head.complete:
                committed, resume = e.rows, False
            elif head.upload_id == upload:
                committed, resume = head.committed_rows, True
            else:
                committed, resume = 0, False
            if committed < r0:
                log.warning(
                    "upload behind the plan shard=%s node has %d rows, plan sends from %d",
                    e.shard_id.hex(),
                    committed,
                    r0,
                )
                self._save(replace(e, relay_committed=committed) if to_relay else replace(e, committed=committed))
                self._dirty = True  # plan again from what the node really holds
                return
            first = max(r0, committed)
            sent = 0
            if first < r1:
                prog = link.put_rows(header, upload, self._spool_rows(e, first, r1, rec), resume=resume)  # type: ignore[attr-defined]
                committed, sent = prog.committed_rows, prog.bytes_sent
            e = replace(e, relay_committed=committed) if to_relay else replace(e, committed=committed)
            self._save(e)
        except Unavailable as exc:
            self._lose(tr.dest, node, str(exc))
            self._dirty = True
            return
        except OrbitVaultError as exc:
            log.warning("upload failed shard=%s to=%s error=%r; starting it over", e.shard_id.hex(), tr.dest, str(exc))
            e = (
                replace(e, relay_upload_id=os.urandom(16), relay_committed=0)
                if to_relay
                else replace(e, upload_id=os.urandom(16), committed=0)
            )
            self._save(e)
            self.totals.failures += 1
            self._dirty = True
            return
        self._executed("store", tr, key, first, r1, resume and first > 0, sent)
        self.totals.uplink_bytes += sent
        self._inflight[id(tr)] = ("store", tr)
        self._push("store", tr, arrival=True, gen=-1)
        if committed < r1:
            self._dirty = True

    def _store_forward(self, tr: Transfer, e: SpoolEntry, sat_nodes: dict[str, NodeState], r1: int, now: float) -> None:
        key = e.key
        if e.relay != tr.source or e.target != tr.dest or e.relay_committed < e.rows:
            self._dirty = True  # the relay copy is not where the plan expects it
            return
        src, dst = sat_nodes[tr.source], sat_nodes[tr.dest]
        before = e.committed
        try:
            prog = src.link.forward_shard(  # type: ignore[attr-defined]
                e.shard_id,
                dst.address,
                target_node_id=dst.node_id or b"",
                upload_id=e.upload_id,
                row_limit=r1,
                delete_after=r1 >= e.rows,
            )
        except Unavailable as exc:
            lost, st = (tr.dest, dst) if self._unreachable(dst) else (tr.source, src)
            self._lose(lost, st, str(exc))
            self._dirty = True
            return
        except OrbitVaultError as exc:
            log.warning("forward failed shard=%s %s->%s error=%r", e.shard_id.hex(), tr.source, tr.dest, str(exc))
            self._save(replace(e, upload_id=os.urandom(16), committed=0))
            self.totals.failures += 1
            self._dirty = True
            return
        e = replace(e, committed=prog.committed_rows)
        if prog.complete and r1 >= e.rows:
            e = replace(e, relay="", relay_node=b"", relay_upload_id=b"", relay_committed=0)  # the relay let go
        self._save(e)
        self._executed("store", tr, key, min(before, r1), r1, before > 0, prog.bytes_sent)
        self.totals.isl_bytes += prog.bytes_sent
        self._inflight[id(tr)] = ("store", tr)
        self._push("store", tr, arrival=True, gen=-1)
        if prog.committed_rows < r1:
            self._dirty = True

    def _unreachable(self, st: NodeState) -> bool:
        try:
            st.link.info()
        except Exception:
            return True
        return False

    def _settle(self, now: float, sat_nodes: dict[str, NodeState]) -> None:
        """Shards whole on their target with no arrival pending (a restart lost it) count now."""
        flying = {tr.item for p, tr in self._inflight.values() if p == "store"}
        for entries in list(self._entries.values()):
            for e in list(entries.values()):
                node = sat_nodes.get(e.target)
                if e.committed >= e.rows and e.key not in flying and node is not None and node.node_id == e.target_node:
                    self._place(e, now)

    def _store_arrive(self, tr: Transfer, now: float) -> None:
        self._inflight.pop(id(tr), None)
        key: Key = tr.item  # type: ignore[assignment]
        e = self._entry(key)
        if e is None or tr.dest != e.target or e.committed < e.rows:
            return
        if (tr.offset + tr.nbytes) // e.granule < e.rows:
            return  # a cut piece; the shard completes with a later transfer
        self._place(e, now)

    def _place(self, e: SpoolEntry, now: float) -> None:
        """The shard is in orbit: record it; the object's last one makes it DURABLE."""
        oid = e.object_id
        loc = ShardLoc(e.target_node, e.shard_id)
        done = self.catalog.place_spooled(e, loc)
        self._entries[oid].pop((e.stripe, e.index), None)
        if done is None:
            return
        st = self._stripes[oid][e.stripe]
        shards = list(st.shards)
        shards[e.index] = loc
        self._stripes[oid][e.stripe] = replace(st, shards=tuple(shards))
        if done:
            self._object_durable(oid, now)

    def _object_durable(self, oid: bytes, now: float) -> None:
        for table in (self._objects, self._records, self._entries, self._stripes, self._predicted, self._bound):
            table.pop(oid, None)  # type: ignore[attr-defined]
        self.spool.remove(oid)
        _remember(self.durable_at, oid, now)
        log.info("object durable object=%s at=%.3f", oid.hex()[:16], now)

    def _executed(self, purpose: str, tr: Transfer, key: Key, first: int, end: int, resumed: bool, sent: int) -> None:
        ex = ExecutedTransfer(
            purpose,
            tr.hop,
            tr.source,
            tr.dest,
            self.orbit.original(tr.contact),
            tr.start,
            tr.end,
            tr.arrival,
            key,
            first,
            end,
            resumed,
            tr.nbytes,
            sent,
        )
        self.executed.append(ex)
        log.info("transfer executed %s", ex.log_fields())
        self.totals.transfers += 1
        if resumed:
            self.totals.resumed += 1

    # --- restores ---------------------------------------------------------------------------------------

    def _plan_restores(self, now: float) -> None:
        self._restore_dirty = False
        self._restore_gen += 1
        self._prune()
        self.totals.restore_replans += 1
        if not self._jobs:
            self._restore_plan = None
            return
        self._refresh()
        sat_nodes = self._sat_nodes()
        exclude = self._exclude(sat_nodes)
        stripes: list[RestoreStripe] = []
        sizes: dict[bytes, int] = defaultdict(int)
        for oid, job in self._jobs.items():
            rec = job.record
            granule = granule_of(rec)
            for s, need in sorted(job.need.items()):
                left = need - sum(1 for k in job.coming if k[1] == s)
                if left <= 0:
                    continue
                st = self.catalog.stripe(oid, s)
                if st is None:
                    continue
                size = rec.geometry.row_count(st.data_len) * granule
                held = tuple(
                    HeldShard((oid, s, i), self._sat_of(loc.node_id), size)
                    for i, loc in enumerate(st.shards)
                    if loc is not None
                    and i not in job.have[s]
                    and (oid, s, i) not in job.coming
                    and (oid, s, i) not in job.bad
                )
                stripes.append(RestoreStripe((oid, s), left, held, granule))
                sizes[oid] += left * size
        plan = _free(self.orbit.plan(now), self._busy("restore"), now)
        rp = plan_restore(plan, self.orbit.network, stripes, now=now, exclude=exclude)
        self._restore_plan = rp
        for tr in rp.transfers:
            if tr.item is not None:
                self._push("restore", tr, arrival=False, gen=self._restore_gen)
        for oid, job in self._jobs.items():
            eta: float | None = now
            reason = ""
            for s in job.need:
                sid = (oid, s)
                if sid in rp.unrecoverable:
                    eta, reason = None, f"stripe {s}: {rp.unrecoverable[sid]}"
                    break
                if eta is not None:
                    eta = max(eta, rp.stripe_eta.get(sid, now))
            if eta is not None:
                for tr in job.coming.values():
                    eta = max(eta, tr.arrival)
            job.eta, job.reason = eta, reason
            job.bound = rp.capacity_bound(sizes[oid]) if sizes[oid] else now
            if oid not in self.restore_etas and len(self.restore_etas) >= _LOG_LIMIT:
                self.restore_etas.pop(next(iter(self.restore_etas)))
            self.restore_etas[oid].append(eta)
        log.info(
            "restore plan jobs=%d stripes=%d transfers=%d eta=%s lost=%s",
            len(self._jobs),
            len(stripes),
            len(rp.transfers),
            rp.eta,
            ",".join(sorted(self._lost)) or "-",
        )

    def _restore_start(self, tr: Transfer, now: float) -> None:
        key: Key = tr.item  # type: ignore[assignment]
        oid, s, i = key
        job = self._jobs.get(oid)
        st = self.catalog.stripe(oid, s)
        loc = st.shards[i] if st is not None else None
        if job is None or loc is None:
            return
        sat_nodes = self._sat_nodes()
        src = sat_nodes.get(tr.source)
        rows = job.record.geometry.row_count(st.data_len)  # type: ignore[union-attr]
        g = granule_of(job.record)
        if src is None:
            self._restore_dirty = True
            return
        try:
            if tr.hop == "isl":
                dst = sat_nodes.get(tr.dest)
                if dst is None:
                    self._restore_dirty = True
                    return
                upload = job.relay_uploads.setdefault(key, os.urandom(16))
                r1 = (tr.offset + tr.nbytes) // g
                try:
                    prog = src.link.forward_shard(  # type: ignore[attr-defined]
                        loc.shard_id, dst.address, target_node_id=dst.node_id or b"", upload_id=upload, row_limit=r1
                    )
                except Unavailable:
                    if self._unreachable(dst):
                        src = dst
                    raise
                job.relay_at[key] = tr.dest
                self._executed("restore", tr, key, tr.offset // g, r1, tr.offset > 0, prog.bytes_sent)
                self.totals.isl_bytes += prog.bytes_sent
                if prog.committed_rows < r1:
                    self._restore_dirty = True
                return
            shard_id = loc.shard_id
            frags: list[bytes] = []
            sums: list[bytes] = []
            per = rows_per_call(job.record.geometry)
            for r in range(0, rows, per):
                got = src.link.get_rows(shard_id, r, min(per, rows - r))
                if any(f is None for f in got.fragments):
                    raise DataLoss(f"shard {shard_id.hex()[:16]} has rows its node could not repair")
                frags.extend(got.fragments)  # type: ignore[arg-type]
                sums.extend(got.checksums)
            self.cache.write(oid, s, i, frags, sums, staged=True)
            sent = sum(map(len, frags)) + sum(map(len, sums))
        except Unavailable as exc:
            self._lose(src.status.satellite if src.status else tr.source, src, str(exc))
            self._restore_dirty = True
            return
        except OrbitVaultError as exc:
            log.warning("restore transfer failed shard=%s error=%r; choosing another", loc.shard_id.hex(), str(exc))
            job.bad.add(key)
            self.totals.failures += 1
            self._restore_dirty = True
            return
        job.coming[key] = tr
        self._executed("restore", tr, key, 0, rows, False, sent)
        self.totals.downlink_bytes += sent
        self._inflight[id(tr)] = ("restore", tr)
        self._push("restore", tr, arrival=True, gen=-1)

    def _restore_arrive(self, tr: Transfer, now: float) -> None:
        self._inflight.pop(id(tr), None)
        key: Key = tr.item  # type: ignore[assignment]
        oid, s, i = key
        job = self._jobs.get(oid)
        if job is None or job.coming.pop(key, None) is None:
            return
        try:
            self.cache.commit_staged(oid, s, i)
        except OSError as exc:
            log.warning("restore cache commit failed shard=%s error=%r", i, str(exc))
            job.bad.add(key)
            self._restore_dirty = True
            return
        job.have[s].add(i)
        job.need[s] -= 1
        relay = job.relay_at.pop(key, None)
        if relay is not None:
            node = self._sat_nodes().get(relay)
            st = self.catalog.stripe(oid, s)
            if node is not None and st is not None and st.shards[i] is not None:
                with contextlib.suppress(Exception):
                    node.link.delete_shard(st.shards[i].shard_id)  # type: ignore[union-attr]
        if all(n <= 0 for n in job.need.values()):
            del self._jobs[oid]
            expires = now + job.keep_s
            self.catalog.put_restore(oid, int(now * 1000), int(expires * 1000))
            self._expiry[oid] = expires
            _remember(self.restored_at, oid, now)
            log.info("restore ready object=%s at=%.3f expires=%.0f", oid.hex()[:16], now, expires)

    # --- the facade's calls -------------------------------------------------------------------------------

    def spool_records(
        self, result: WriteResult, tenant_key_wrapped: bytes, catalog_key: bytes, now_ms: int
    ) -> tuple[SpoolObject, list[SpoolEntry]]:
        """The catalog entries of a spooled put: the object's queue entry (with the complete record
        every header will carry) and one entry per shard with a fresh shard id."""
        rec = result.record
        pieces = selfdesc.pieces(catalog_key, rec, tenant_key_wrapped, complete=True)
        granule = granule_of(rec)
        entries = [
            SpoolEntry(rec.object_id, st.index, i, os.urandom(32), rec.geometry.row_count(st.data_len), granule)
            for st in result.stripes
            for i in range(rec.geometry.n)
        ]
        return SpoolObject(rec.object_id, now_ms, rec.tenant, tuple(pieces)), entries

    def enqueue(self, object_id: bytes) -> None:
        """A spooled object was committed: plan it in."""
        with self._wake:
            self._inbox.append(object_id)
            self._dirty = True
            self._news = True
            self._wake.notify_all()

    def forget(self, object_id: bytes) -> None:
        """The object was deleted or replaced (its catalog entries are gone): drop its copies."""
        with self._mu:
            known = object_id in self._objects or object_id in self._jobs
            for table in (self._objects, self._records, self._entries, self._stripes, self._jobs, self._expiry):
                table.pop(object_id, None)  # type: ignore[attr-defined]
            self.spool.remove(object_id)
            self.cache.remove(object_id)
        if known:
            # Every store plan logged after this line leaves the object out (telemetry.plan_after).
            log.info("object forgotten object=%s", object_id.hex()[:16])
            self._restore_dirty = True
            self._notify(dirty=True)

    def ensure_planned(self) -> None:
        """Plan now if something changed since the last plan (so a status answer is current)."""
        with self._wake:
            pending = self._dirty or bool(self._inbox)
        if pending:
            with self._mu:
                self._housekeeping()

    def prediction(self, object_id: bytes) -> tuple[float | None, float | None]:
        """(predicted DURABLE, its lower bound) of a spooled object from the current plan."""
        self.ensure_planned()
        return self._predicted.get(object_id), self._bound.get(object_id)

    def backlog(self) -> Backlog:
        """The spool now, with the current plan's DURABLE time for all of it and the capacity
        bound for the bytes still to go up (from now, over the plan's served windows)."""
        self.ensure_planned()
        with self._mu:
            now = self.clock.now()
            entries = [e for v in self._entries.values() for e in v.values()]
            left = sum(e.size - min(e.committed, e.rows) * e.granule for e in entries)
            preds = [self._predicted.get(oid) for oid in self._objects]
            done = None if not preds or any(p is None for p in preds) else max(preds)  # type: ignore[type-var]
            sched = self._schedule
            bound = capacity_bound(sched.segments, left, now) if sched is not None and left else None
            return Backlog(
                len(self._objects),
                len(entries),
                sum(e.size for e in entries),
                left,
                done,
                bound,
                len(self._jobs),
            )

    def restore(self, rec: ObjectRecord, keep_ms: int = 0) -> RestoreInfo:
        """Stage `rec` for reading: READY at once when a ground copy has k shards per stripe, else
        plan the downlinks and report the ETA (idempotent: a restore in progress is reported)."""
        keep_s = keep_ms / 1000 if keep_ms > 0 else self.config.restore_keep_s
        with self._mu:
            now = self.clock.now()
            oid = rec.object_id
            k = rec.geometry.k
            stripes = list(self.catalog.stripes(oid))
            if all(len(self.spool.indexes(oid, st.index)) >= k for st in stripes):
                return RestoreInfo(RestoreState.READY)  # still spooled: the ground copy serves reads
            staged = self.catalog.restore(oid)
            if (
                staged is not None
                and staged[1] > now * 1000
                and all(len(self.cache.indexes(oid, st.index)) >= k for st in stripes)
            ):
                return RestoreInfo(RestoreState.READY, expires_unix_ms=staged[1])
            job = self._jobs.get(oid)
            if job is None:
                have = {st.index: self.cache.indexes(oid, st.index) for st in stripes}
                job = _Job(rec, keep_s, {s: max(k - len(h), 0) for s, h in have.items()}, have)
                self._jobs[oid] = job
                self._plan_restores(now)
                self._notify()
            if job.eta is None:
                self._jobs.pop(oid, None)
                self._restore_dirty = True
                raise (DataLoss if "reachable" in job.reason else Unavailable)(
                    f"object {rec.key!r} cannot be restored: {job.reason or 'no plan'}; "
                    + ("too few of its shards survive" if "reachable" in job.reason else "retry later")
                )
            return RestoreInfo(
                RestoreState.IN_PROGRESS,
                eta_unix_ms=math.ceil(job.eta * 1000),
                eta_bound_unix_ms=math.ceil((job.bound or now) * 1000),
            )

    def relay_shards(self) -> set[bytes]:
        """Shards being copied, or copied, to a relay satellite for a restore in progress (an ISL
        hop before the downlink). The catalog does not place them there, yet they are no orphans:
        garbage collection asks here after listing a node, so a copy made meanwhile is named."""
        with self._mu:
            keys = [key for job in self._jobs.values() for key in job.relay_uploads]
        out: set[bytes] = set()
        for oid, s, i in keys:
            st = self.catalog.stripe(oid, s)
            loc = st.shards[i] if st is not None else None
            if loc is not None:
                out.add(loc.shard_id)
        return out

    def restore_job(self, object_id: bytes) -> tuple[float | None, RestorePlan | None]:
        """(ETA, plan) of a restore in progress, for tests and tools."""
        with self._mu:
            job = self._jobs.get(object_id)
            return (job.eta if job else None), self._restore_plan

    def contact(self, satellite: str) -> tuple[bool, float]:
        return self.orbit.contact_state(satellite, self.clock.now())

    def schedule(self) -> Schedule | None:
        with self._mu:
            return self._schedule
