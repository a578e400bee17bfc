"""The scrubbing daemon: find radiation damage in a node's store before a reader does, and repair it.

A pass walks every shard in shard_id order. For each shard it verifies the protected header
(`ShardStore.check_header`: Reed-Solomon correction, rewritten in place) and every row
(`ShardStore.verify_rows`: blake3 over the LMDB buffers without copying them out; a damaged
checksum copy is rewritten in place there). A damaged fragment with at most two flipped bits per
4 KiB block is corrected in place from its block CRCs (`ShardStore.correct_rows`, `bitfix`); any
other damaged fragment is rebuilt from the same row of k sibling shards, read from the nodes that
hold them through `PeerRows` (the gRPC `ReadRows` call in production, `orbitvault.grpc.peers`),
decoded by the erasure layer and written back with `ShardStore.write_row`, which accepts it only
if it matches a stored checksum. What cannot be repaired (fewer than k healthy fragments of the row
reachable, or a header beyond its code) is reported exactly: shard, rows, object, stripe; in the
log, in a counter and in the persisted state.

Verification is throttled by a token bucket on bytes verified (MB/s = 10^6 bytes/s), and passes are
separated by an interval. The position and the counters live in the store itself, so a restarted
scrubber resumes where it stopped and any process that opens the store (`node serve` for NodeInfo,
the metrics exporter) reads the same numbers.

Persisted state: store meta key ``scrub.state`` (`STATE_KEY`), a UTF-8 JSON object, version 1.
Ids are 64 lowercase hex digits, times are Unix milliseconds (0 = never), counters are cumulative
over the life of the store::

    version                     1
    activity                    "idle" | "running" (a pass is being worked on by a live process)
    pass_in_progress            true while a pass has started and not finished (a restart resumes it)
    cursor_shard_id             last shard completed in the current pass ("" = none); resume after it
    position_shard_id           shard being verified now ("" when idle)
    position_row                next row of that shard to verify (shards are verified whole: 0)
    pass_shards_done            shards completed in the current pass
    pass_shards_total           shards on the node when the current pass started
    pass_started_unix_ms        start of the current pass (0 when none)
    pass_bytes                  bytes verified so far in the current pass
    passes_completed            whole passes completed
    last_pass_started_unix_ms   start of the last completed pass
    last_pass_completed_unix_ms end of the last completed pass
    last_pass_duration_ms       wall time of the last completed pass (pauses of a restart included)
    last_pass_bytes             bytes verified by the last completed pass
    next_pass_unix_ms           when the next pass is due (0 = not scheduled)
    throttle_bytes_per_sec      configured rate limit; 0 = unthrottled
    interval_s                  configured pause between passes
    shards_verified             shards whose header and every row were checked
    rows_verified               rows checked
    bytes_verified              fragment bytes checked (blake3 input)
    damaged_found               damage incidents found: a header, or a row (fragment or checksum copy)
    repaired_in_place           fixed on the node alone: header by its RS code, checksum copies,
                                fragments with up to two flipped bits per 4 KiB block
    repaired_from_peers         fragments rebuilt from k siblings' rows and rewritten
    unrecoverable               damage incidents that could not be repaired when found
    open_damage                 damage not repaired yet, one entry per shard (at most 1000 entries):
        shard_id, object_id, stripe_index, shard_index (object/stripe/index null if the header is lost)
        header                  true if the header itself is beyond repair (rows then unchecked)
        rows                    damaged rows as inclusive ranges [[first, last], ...]
        reason                  why it could not be repaired (peers down, too few healthy siblings)
        found_unix_ms           when it was first found
    open_damage_dropped         entries not kept because the list was full
    updated_unix_ms             last time a scrubber wrote the state (a stale "running" means it died)
    pid                         process id of that scrubber (a second scrubber refuses to run a pass
                                while this one is alive, "running" and updated within the last hour)

A damage incident is counted once: a row already in `open_damage` that is still damaged on a later
pass is not counted again, and one repaired later counts as repaired (from peers) then.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from orbitvault.erasure.stripe import ShardRows, checksum, coder_for
from orbitvault.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrbitVaultError,
    RecordUncorrectable,
    TooFewFragments,
    Unavailable,
)
from orbitvault.storage.header import ShardHeader, Sibling
from orbitvault.storage.store import RowRead, RowStatus, ShardStore

log = logging.getLogger("orbitvault.scrub")

STATE_KEY = "scrub.state"
STATE_VERSION = 1
MAX_OPEN_DAMAGE = 1000
# Damaged rows rebuilt per round of peer reads: bounds memory to about k x this x fragment size.
REPAIR_BATCH_BYTES = 4 << 20
MAX_REASON = 1000  # characters of a damage report's reason kept in the state
# A "running" state not updated for this long is a scrubber that died (its pid may be reused).
LIVE_STATE_MS = 3600_000


class PeerRows(Protocol):
    """Rows of sibling shards held by other nodes: what row repair needs from the network.

    `read_rows` returns one `RowRead` per requested row, in request order (`rows` is strictly
    ascending, any length: implementations split it as their transport requires). A row the peer
    finds damaged or lacks comes back DAMAGED or MISSING, never as data. Raises `Unavailable` when
    the node is unknown or unreachable, `NotFound` when it does not hold the shard, or another
    `OrbitVaultError`; the scrubber then tries other siblings. `node_id` is where the header says
    the shard is; shards move (repair, re-planned uploads), so an implementation may find it on
    another node instead.
    """

    def read_rows(self, node_id: bytes, shard_id: bytes, rows: Sequence[int]) -> list[RowRead]: ...


# --- persisted state ----------------------------------------------------------------------------------


@dataclass
class Damage:
    """Unrepaired damage in one shard, as kept in `ScrubState.open_damage`."""

    shard_id: bytes
    object_id: bytes | None
    stripe_index: int | None
    shard_index: int | None
    header: bool = False
    rows: list[int] = field(default_factory=list)
    reason: str = ""
    found_unix_ms: int = 0

    def describe(self) -> str:
        where = f"shard {self.shard_id.hex()}"
        if self.object_id is not None:
            where += f" (object {self.object_id.hex()} stripe {self.stripe_index} shard_index {self.shard_index})"
        what = "header beyond repair" if self.header else f"rows {format_rows(self.rows)}"
        return f"{where}: {what}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id.hex(),
            "object_id": self.object_id.hex() if self.object_id is not None else None,
            "stripe_index": self.stripe_index,
            "shard_index": self.shard_index,
            "header": self.header,
            "rows": _to_ranges(self.rows),
            "reason": self.reason,
            "found_unix_ms": self.found_unix_ms,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Damage:
        return cls(
            shard_id=bytes.fromhex(d["shard_id"]),
            object_id=bytes.fromhex(d["object_id"]) if d.get("object_id") else None,
            stripe_index=d.get("stripe_index"),
            shard_index=d.get("shard_index"),
            header=bool(d.get("header", False)),
            rows=[r for a, b in d.get("rows", []) for r in range(a, b + 1)],
            reason=str(d.get("reason", "")),
            found_unix_ms=int(d.get("found_unix_ms", 0)),
        )


_COUNTERS = (
    "shards_verified",
    "rows_verified",
    "bytes_verified",
    "damaged_found",
    "repaired_in_place",
    "repaired_from_peers",
    "unrecoverable",
)


@dataclass
class ScrubState:
    """The scrubber's progress and counters; see the module docstring for the JSON form."""

    activity: str = "idle"
    pass_in_progress: bool = False
    cursor_shard_id: bytes = b""
    position_shard_id: bytes = b""
    position_row: int = 0
    pass_shards_done: int = 0
    pass_shards_total: int = 0
    pass_started_unix_ms: int = 0
    pass_bytes: int = 0
    passes_completed: int = 0
    last_pass_started_unix_ms: int = 0
    last_pass_completed_unix_ms: int = 0
    last_pass_duration_ms: int = 0
    last_pass_bytes: int = 0
    next_pass_unix_ms: int = 0
    throttle_bytes_per_sec: int = 0
    interval_s: float = 0.0
    shards_verified: int = 0
    rows_verified: int = 0
    bytes_verified: int = 0
    damaged_found: int = 0
    repaired_in_place: int = 0
    repaired_from_peers: int = 0
    unrecoverable: int = 0
    open_damage: list[Damage] = field(default_factory=list)
    open_damage_dropped: int = 0
    updated_unix_ms: int = 0
    pid: int = 0

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTERS}

    def open_rows(self) -> int:
        """Rows (and headers) known damaged and not repaired."""
        return sum(len(d.rows) + d.header for d in self.open_damage)

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"version": STATE_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                value = value.hex()
            elif f.name == "open_damage":
                value = [x.to_json() for x in value]
            d[f.name] = value
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ScrubState:
        """Parse the stored state; unknown keys are ignored and missing ones default (forward compatible)."""
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ValueError("not an object")
            if d.get("version", STATE_VERSION) > STATE_VERSION:
                raise InvalidArgument(
                    f"scrub state version {d['version']} is newer than this orbitvault reads ({STATE_VERSION})"
                )
            state = cls()
            for f in fields(cls):
                if f.name not in d:
                    continue
                value = d[f.name]
                if f.name == "open_damage":
                    value = [Damage.from_json(x) for x in value]
                elif isinstance(getattr(state, f.name), bytes):
                    value = bytes.fromhex(value)
                setattr(state, f.name, value)
            return state
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidArgument(f"the stored scrub state ({STATE_KEY}) is unreadable: {exc}") from exc


def load_state(store: ShardStore) -> ScrubState:
    """The persisted scrub state of a store (defaults when no scrubber ever ran); for NodeInfo and metrics."""
    raw = store.get_meta(STATE_KEY)
    return ScrubState() if raw is None else ScrubState.from_json(raw)


# --- rate limiting -------------------------------------------------------------------------------------


class RateLimiter:
    """Token bucket on bytes: the long-run rate never exceeds `bytes_per_s`.

    The caller acquires before doing the work. A request larger than what is in the bucket goes
    into debt and the caller sleeps it off first, so work units bigger than the bucket (a whole
    16 MiB shard at 1 MB/s) still work. The bucket starts empty, so no window starting at creation
    runs faster than the rate, and refills while idle to at most `burst_bytes` (default: a quarter
    second of rate). `bytes_per_s <= 0` means unthrottled. Clock and sleep are injectable so tests
    need no real time.
    """

    def __init__(
        self,
        bytes_per_s: float,
        *,
        burst_bytes: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.rate = float(bytes_per_s)
        self.burst = float(burst_bytes if burst_bytes is not None else max(self.rate / 4, 1.0))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = 0.0
        self._last = monotonic()

    @property
    def unthrottled(self) -> bool:
        return self.rate <= 0

    def acquire(self, nbytes: int) -> float:
        """Account for `nbytes`; sleep while the bucket is in debt. Returns the seconds asked to sleep."""
        if self.unthrottled or nbytes <= 0:
            return 0.0
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        self._sleep(wait)
        return wait


# --- results ---------------------------------------------------------------------------------------------


@dataclass
class PassResult:
    """What one call of `run_pass` did (deltas, not the cumulative counters).

    `unrecoverable_damage` lists all damage left unrepaired in the shards this call visited,
    including damage already known from earlier passes (which the counters do not count again).
    """

    completed: bool
    shards_verified: int = 0
    rows_verified: int = 0
    bytes_verified: int = 0
    damaged_found: int = 0
    repaired_in_place: int = 0
    repaired_from_peers: int = 0
    unrecoverable: int = 0
    unrecoverable_damage: list[Damage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_verified / self.seconds / 1e6 if self.seconds > 0 else 0.0


@dataclass
class RepairOutcome:
    """Rows rebuilt and rewritten, rows that could not be, and why (for the report)."""

    repaired: list[int]
    failed: list[int]
    reason: str


class RowRepairer:
    """Rebuild a shard's damaged rows from the same rows of k sibling shards, and rewrite them.

    Shared by the scrubber and by reads that meet a damaged row (`node serve`'s GetShard): call it
    as `repairer(header, rows)` for the rows repaired. Siblings are read data shards first; one
    that is unreachable, lacks the shard or has the row damaged too is skipped for the next, so a
    row is rebuilt while any k healthy fragments of it are reachable. Siblings on this very node
    are read from the store directly. Work goes in batches of about 4 MiB per sibling.
    """

    def __init__(self, store: ShardStore, peers: PeerRows | None) -> None:
        self.store = store
        self.peers = peers

    def __call__(self, header: ShardHeader, rows: Sequence[int]) -> list[int]:
        return self.repair(header, rows).repaired

    def repair(self, header: ShardHeader, rows: Sequence[int]) -> RepairOutcome:
        wanted = sorted(set(rows))
        per = max(1, REPAIR_BATCH_BYTES // max(header.fragment_len(0), 1))
        repaired: list[int] = []
        failed: list[int] = []
        reasons: list[str] = []
        for i in range(0, len(wanted), per):
            outcome = self._repair_batch(header, wanted[i : i + per])
            repaired += outcome.repaired
            failed += outcome.failed
            if outcome.failed:
                reasons.append(outcome.reason)
        return RepairOutcome(repaired, failed, "; ".join(dict.fromkeys(reasons)))

    def _repair_batch(self, header: ShardHeader, rows: list[int]) -> RepairOutcome:
        """Rebuild this shard's fragment of `rows` from k healthy sibling fragments per row."""
        k = header.geometry.k
        me = header.shard_index
        found: dict[int, dict[int, tuple[bytes, bytes]]] = {r: {} for r in rows}
        problems: list[str] = []
        siblings = [s for s in header.siblings if s.shard_index != me]
        if not siblings:
            problems.append("the header lists no sibling shards")
        if self.peers is None and any(s.node_id != self.store.node_id for s in siblings):
            problems.append("no peers configured (siblings on other nodes cannot be read)")
            siblings = [s for s in siblings if s.node_id == self.store.node_id]
        for sib in siblings:
            pending = [r for r in rows if len(found[r]) < k]
            if not pending:
                break
            try:
                reads = self._read_sibling(sib, pending)
            except OrbitVaultError as exc:
                kind = "unreachable" if isinstance(exc, Unavailable) else type(exc).__name__
                problems.append(f"shard_index {sib.shard_index} on node {sib.node_id.hex()[:12]} {kind}: {exc}")
                log.info("scrub peer read failed node=%s shard=%s error=%r", sib.node_id.hex(), sib.shard_id.hex(), exc)
                continue
            bad = 0
            for rr in reads:
                slot = found.get(rr.row)
                if slot is None or len(slot) >= k:
                    continue
                if rr.status is RowStatus.OK and rr.fragment is not None and checksum(rr.fragment) == rr.checksum:
                    slot[sib.shard_index] = (rr.fragment, rr.checksum)
                else:
                    bad += 1
            if bad:
                problems.append(f"shard_index {sib.shard_index} has {bad} of these rows damaged or missing too")
        ready = [r for r in rows if len(found[r]) >= k]
        short = [r for r in rows if len(found[r]) < k]
        if short:
            fewest = min(len(found[r]) for r in short)
            problems.insert(0, f"only {fewest} healthy sibling fragment(s) of the {k} needed could be read")
        failed = list(short)
        repaired: list[int] = []
        if ready:
            pieces = [ShardRows(i, r, [frag], [digest]) for r in ready for i, (frag, digest) in found[r].items()]
            try:
                rebuilt = coder_for(header.geometry).rebuild(header.stripe_data_len, pieces, [me], ready)[me]
            except TooFewFragments as exc:  # cannot happen: every source was verified above
                return RepairOutcome([], rows, str(exc))
            for r in ready:
                try:
                    self.store.write_row(header.shard_id, r, rebuilt[r])
                except InvalidArgument as exc:  # the store trusts its checksums over the rebuild
                    failed.append(r)
                    problems.append(str(exc))
                    log.error("scrub rebuilt row refused shard=%s row=%d error=%r", header.shard_id.hex(), r, exc)
                    continue
                except NotFound:
                    return RepairOutcome(repaired, [], "")  # shard deleted meanwhile
                repaired.append(r)
        reason = "; ".join(dict.fromkeys(problems)) if failed else ""
        return RepairOutcome(
            repaired, sorted(failed), reason[:MAX_REASON] + ("..." if len(reason) > MAX_REASON else "")
        )

    def _read_sibling(self, sib: Sibling, rows: list[int]) -> list[RowRead]:
        if sib.node_id == self.store.node_id:  # a sibling on this very node: no network needed
            return list(self.store.read_rows(sib.shard_id, rows))
        if self.peers is None:
            raise Unavailable("no peers configured")
        return self.peers.read_rows(sib.node_id, sib.shard_id, rows)


# --- the scrubber ----------------------------------------------------------------------------------------


class Scrubber:
    """Scrub passes over one store: verify, repair in place or from peers, persist progress.

    `peers` may be None (no network): damaged rows are then reported as unrecoverable. `on_shard`
    is called after every shard with its id (tests stop a pass mid-way with it). One scrubber per
    store: two writing the same state would interleave their counters.
    """

    def __init__(
        self,
        store: ShardStore,
        peers: PeerRows | None,
        *,
        rate_bytes_per_s: float = 0,
        interval_s: float = 3600.0,
        checkpoint_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
        wall_ms: Callable[[], int] | None = None,
        on_shard: Callable[[bytes], None] | None = None,
    ) -> None:
        if interval_s < 0:
            raise InvalidArgument(f"scrub interval must be >= 0 seconds, got {interval_s}")
        self.store = store
        self.peers = peers
        self.interval_s = float(interval_s)
        self.checkpoint_s = checkpoint_s
        self._monotonic = monotonic
        self._wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self._stop = threading.Event()
        self._sleep = sleep
        self.limiter = RateLimiter(rate_bytes_per_s, monotonic=monotonic, sleep=self._throttle_sleep)
        self.on_shard = on_shard
        self.repairer = RowRepairer(store, peers)
        self.state = load_state(store)
        self._last_save = -float("inf")

    # --- public --------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        """Passes separated by the interval until `stop` is set; a stop mid-pass keeps the position."""
        self._stop = stop
        log.info(
            "scrubber started node=%s rate_bytes_per_s=%d interval_s=%g",
            self.store.node_id.hex(),
            int(max(self.limiter.rate, 0)),
            self.interval_s,
        )
        while not stop.is_set():
            try:
                self.run_pass(stop)
            except Exception:  # keep the daemon alive: the next pass retries, the log says why
                log.exception("scrub pass failed; retrying after the interval")
            if stop.is_set():
                break
            self.state.next_pass_unix_ms = self._wall_ms() + int(self.interval_s * 1000)
            self._save(force=True)
            stop.wait(self.interval_s)
        self.state.activity = "idle"
        self.state.position_shard_id = b""
        self._save(force=True)
        log.info("scrubber stopped node=%s", self.store.node_id.hex())

    def run_pass(self, stop: threading.Event | None = None) -> PassResult:
        """Scrub until the pass is complete or `stop` is set; resumes a pass a previous process left."""
        if stop is not None:
            self._stop = stop
        st = self.state = load_state(self.store)  # another process may have changed it (or resume)
        self._refuse_if_another_runs(st)
        st.throttle_bytes_per_sec = int(max(self.limiter.rate, 0))
        st.interval_s = self.interval_s
        if not st.pass_in_progress:
            st.pass_in_progress = True
            st.cursor_shard_id = b""
            st.pass_shards_done = 0
            st.pass_bytes = 0
            st.pass_shards_total = self.store.shard_count()
            st.pass_started_unix_ms = self._wall_ms()
            log.info("scrub pass started shards=%d", st.pass_shards_total)
        else:
            log.info(
                "scrub pass resumed after_shard=%s done=%d/%d",
                st.cursor_shard_id.hex() or "-",
                st.pass_shards_done,
                st.pass_shards_total,
            )
        st.activity = "running"
        st.next_pass_unix_ms = 0
        self._save(force=True)
        before = st.counters()
        damage: list[Damage] = []
        t0 = self._monotonic()
        completed = False
        for sid in self.store.shard_ids(after=st.cursor_shard_id):  # pages: no snapshot held across shards
            if self._stop.is_set():
                break
            try:
                self._scrub_shard(sid, damage)
            except OrbitVaultError as exc:  # one bad shard must not stall every later pass at it
                log.error("scrub shard failed shard=%s error=%r; moving on", sid.hex(), exc)
            st.cursor_shard_id = sid
            st.position_shard_id = b""
            st.pass_shards_done += 1
            self._save()
            if self.on_shard is not None:
                self.on_shard(sid)
        else:
            completed = True
        now = self._wall_ms()
        if completed:
            self._prune_open_damage()
            st.passes_completed += 1
            st.pass_in_progress = False
            st.last_pass_started_unix_ms = st.pass_started_unix_ms
            st.last_pass_completed_unix_ms = now
            st.last_pass_duration_ms = max(now - st.pass_started_unix_ms, 0)
            st.last_pass_bytes = st.pass_bytes
            st.pass_started_unix_ms = 0
            st.cursor_shard_id = b""
        st.activity = "idle"
        st.position_shard_id = b""
        self._save(force=True)
        after = st.counters()
        result = PassResult(
            completed=completed,
            unrecoverable_damage=damage,
            seconds=self._monotonic() - t0,
            **{k: after[k] - before[k] for k in _COUNTERS},
        )
        log.info(
            "scrub pass %s shards=%d rows=%d bytes=%d mb_s=%.1f damaged=%d repaired_in_place=%d "
            "repaired_from_peers=%d unrecoverable=%d",
            "completed" if completed else "stopped",
            result.shards_verified,
            result.rows_verified,
            result.bytes_verified,
            result.mb_per_s,
            result.damaged_found,
            result.repaired_in_place,
            result.repaired_from_peers,
            result.unrecoverable,
        )
        return result

    def _refuse_if_another_runs(self, st: ScrubState) -> None:
        """Two scrubbers on one store would interleave their position and counters: refuse the second."""
        other = st.pid not in (0, os.getpid()) and process_alive(st.pid)
        fresh = self._wall_ms() - st.updated_unix_ms < LIVE_STATE_MS
        if st.activity == "running" and other and fresh:
            raise FailedPrecondition(
                f"another scrubber (pid {st.pid}) is running a pass on this store; stop it first "
                "(`node serve` runs one itself when scrub.enabled_in_process is set)"
            )

    def _throttle_sleep(self, seconds: float) -> None:
        """Throttle pauses end early when the scrubber is asked to stop."""
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._stop.wait(seconds)

    # --- one shard -------------------------------------------------------------------------------------

    def _scrub_shard(self, sid: bytes, damage_out: list[Damage]) -> None:
        st = self.state
        st.position_shard_id = sid
        st.position_row = 0
        known = self._open_entry(sid)
        try:
            corrected = self.store.check_header(sid)
        except NotFound:
            return  # deleted since the walk listed it
        except RecordUncorrectable as exc:
            if known is not None and known.header:
                damage_out.append(known)  # still there; reported, not counted again
                return
            st.damaged_found += 1
            st.unrecoverable += 1
            entry = Damage(sid, None, None, None, header=True, reason=str(exc), found_unix_ms=self._wall_ms())
            self._set_open_entry(entry)
            damage_out.append(entry)
            log.error("scrub unrecoverable shard=%s header beyond repair: %s", sid.hex(), exc)
            self._save(force=True)
            return
        if corrected:
            st.damaged_found += 1
            st.repaired_in_place += 1
            log.warning("scrub repaired header in place shard=%s bytes_corrected=%d", sid.hex(), corrected)
        try:
            header = self.store.header(sid)
            self.limiter.acquire(header.shard_len())
            check = self.store.verify_rows(sid)
        except NotFound:
            return
        if known is not None and known.header:  # the header was repaired meanwhile (not by us)
            known = None
            self._drop_open_entry(sid)
        st.rows_verified += header.row_count
        st.bytes_verified += check.bytes_verified
        st.pass_bytes += check.bytes_verified
        if check.checksums_fixed:
            st.damaged_found += check.checksums_fixed
            st.repaired_in_place += check.checksums_fixed
            log.warning("scrub repaired checksums in place shard=%s rows=%d", sid.hex(), check.checksums_fixed)
        previously = set(known.rows) if known is not None else set()
        st.damaged_found += len([r for r in check.damaged if r not in previously])
        in_place = self.store.correct_rows(sid, check.damaged) if check.damaged else []
        if in_place:
            st.repaired_in_place += len(in_place)
            log.warning("scrub corrected fragments in place shard=%s rows=%s", sid.hex(), format_rows(in_place))
        damaged = [r for r in check.damaged if r not in set(in_place)]
        failed: list[int] = []
        reason = ""
        if damaged:
            log.warning("scrub found damaged rows shard=%s rows=%s", sid.hex(), format_rows(damaged))
            outcome = self.repairer.repair(header, damaged)
            st.repaired_from_peers += len(outcome.repaired)
            failed, reason = outcome.failed, outcome.reason
        newly_failed = [r for r in failed if r not in previously]
        st.unrecoverable += len(newly_failed)
        if failed:
            entry = Damage(
                sid,
                header.object_id,
                header.stripe_index,
                header.shard_index,
                rows=sorted(failed),
                reason=reason,
                found_unix_ms=known.found_unix_ms if known is not None else self._wall_ms(),
            )
            self._set_open_entry(entry)
            damage_out.append(entry)
            log.error("scrub unrecoverable %s", entry.describe())
        elif known is not None:
            self._drop_open_entry(sid)
        st.shards_verified += 1
        self.store.mark_verified(sid, len(failed), self._wall_ms())
        if check.damaged or check.checksums_fixed or corrected:
            self._save(force=True)  # never lose a repair from the counters

    # --- open damage bookkeeping ----------------------------------------------------------------------

    def _open_entry(self, sid: bytes) -> Damage | None:
        return next((d for d in self.state.open_damage if d.shard_id == sid), None)

    def _set_open_entry(self, entry: Damage) -> None:
        items = self.state.open_damage
        for i, d in enumerate(items):
            if d.shard_id == entry.shard_id:
                items[i] = entry
                return
        if len(items) >= MAX_OPEN_DAMAGE:
            self.state.open_damage_dropped += 1
            return
        items.append(entry)

    def _drop_open_entry(self, sid: bytes) -> None:
        self.state.open_damage = [d for d in self.state.open_damage if d.shard_id != sid]

    def _prune_open_damage(self) -> None:
        """At the end of a pass: forget damage of shards deleted since (their loss no longer matters)."""
        kept = []
        for d in self.state.open_damage:
            try:
                self.store.head(d.shard_id)
            except NotFound:
                continue
            except OrbitVaultError:
                pass  # e.g. a header beyond repair: keep reporting it
            kept.append(d)
        self.state.open_damage = kept

    # --- persistence --------------------------------------------------------------------------------------

    def _save(self, *, force: bool = False) -> None:
        """Write the state; between shards at most once per `checkpoint_s` (each write is a synced commit)."""
        now = self._monotonic()
        if not force and now - self._last_save < self.checkpoint_s:
            return
        self.state.updated_unix_ms = self._wall_ms()
        self.state.pid = os.getpid()
        self.store.put_meta(STATE_KEY, self.state.to_json())
        self._last_save = now


# --- helpers ---------------------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether the process that last wrote the scrub state still runs (LMDB stores are host-local)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_ranges(rows: Iterable[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for r in sorted(set(rows)):
        if out and r == out[-1][1] + 1:
            out[-1][1] = r
        else:
            out.append([r, r])
    return out


def format_rows(rows: Iterable[int]) -> str:
    """Rows as compact text: "3, 7-9"."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _to_ranges(rows))


__all__ = [
    "MAX_OPEN_DAMAGE",
    "STATE_KEY",
    "Damage",
    "PassResult",
    "PeerRows",
    "RateLimiter",
    "ScrubState",
    "Scrubber",
    "format_rows",
    "load_state",
]
