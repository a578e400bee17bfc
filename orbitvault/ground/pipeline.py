"""Put and get: object bytes <-> sealed segments <-> stripes <-> shards on nodes (design note §2, §4, §5).

Put streams: a stripe's plaintext is read, sealed segment by segment straight into one buffer
(AES-GCM `encrypt_into`), coded by the erasure layer, and its k+m shards are sent to distinct
nodes concurrently on the I/O pool while the next stripe is read and coded, so at most two stripes
are held at once whatever the object's size. Before any shard of a stripe is sent its ids are in
the catalog's pending upload, so a crash at any instant leaves only shards GC can find. A stripe
counts once at least k+1 of its shards are committed; shards that failed are repaired later.

Get reads only the rows holding the segments of the requested range, in batches of about 1 MiB
per shard, from k shards at a time (data shards and reachable nodes first). A shard that fails
mid-read (node down, shard gone, rows damaged beyond the node's repair) is replaced by another one
for the remaining rows; what was damaged is queued for repair. Nothing here knows *when* a shard
travels: scheduled mode (`spool_write`) gives the same shards to the ground spool instead of to
links, and reads take ground copies (spooled or restored shards, `ground`) before any node.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace

import blake3

from orbitvault.erasure.layout import Geometry
from orbitvault.erasure.stripe import EncodedStripe, ShardRows, coder_for
from orbitvault.errors import (
    DataLoss,
    InvalidArgument,
    NotFound,
    OrbitVaultError,
    TooFewFragments,
    Unavailable,
)
from orbitvault.ground import selfdesc
from orbitvault.ground.catalog import Catalog, ObjectRecord, PendingUpload, ShardLoc, StripeRecord
from orbitvault.ground.crypto import TAG_LEN, SegmentSealer
from orbitvault.ground.nodes import NodeDirectory
from orbitvault.ground.placement import Candidate, place_stripe
from orbitvault.ground.spool import GroundCopies, GroundShards
from orbitvault.orbit.clock import Clock
from orbitvault.storage.header import MAX_CATALOG_RECORD, ShardHeader, Sibling
from orbitvault.storage.store import RowBatch, ShardStore

STRIPES_UNKNOWN = 2**32 - 1  # header stripe_count while a stream of unknown size goes on
READ_BATCH_BYTES = 1 << 20  # per shard per get_rows call
MAX_ROWS_PER_CALL = 1024


def plain_per_stripe(geometry: Geometry, segment_size: int) -> tuple[int, int]:
    """(segment size, plaintext bytes per stripe) for a geometry: whole sealed segments per stripe.

    `segment_size` 0 means one row: a sealed segment is then exactly one erasure row, so sealing
    hands the coder its rows without a copy and a byte range opens only the rows it touches.
    """
    seg = min(segment_size or geometry.row_size - TAG_LEN, geometry.stripe_size - TAG_LEN)
    return seg, (geometry.stripe_size // (seg + TAG_LEN)) * seg


def stripe_count(size: int, pps: int) -> int:
    return max(1, -(-size // pps))


def rows_per_call(geometry: Geometry) -> int:
    return max(1, min(MAX_ROWS_PER_CALL, READ_BATCH_BYTES // geometry.fragment_size))


@dataclass
class WritePlan:
    """Everything a put needs besides the data; `record` is the final record minus size/etag/count."""

    record: ObjectRecord
    data_key: bytes
    tenant_key_wrapped: bytes
    declared_size: int | None
    content_blake3: bytes | None
    owner: str


@dataclass
class WriteResult:
    record: ObjectRecord
    stripes: list[StripeRecord]
    failed: list[tuple[int, int, ShardLoc | None]]  # (stripe, shard index, location if it was sent)


@dataclass
class _InFlight:
    index: int
    encoded: EncodedStripe | None
    data_len: int
    placed: list[tuple[int, ShardLoc]]
    futures: list[Future[None]] = field(default_factory=list)


class Pipeline:
    """The data path; shared by the facade, repair and checkpoints. Thread-safe."""

    def __init__(
        self,
        catalog: Catalog,
        nodes: NodeDirectory,
        pool: Executor,
        clock: Clock,
        catalog_key: bytes,
        *,
        on_damage: Callable[[list[tuple[bytes, int, int, str]]], None] | None = None,
        rng: random.Random | None = None,
        ground: GroundCopies | None = None,
    ) -> None:
        self.ground = ground
        self.catalog = catalog
        self.nodes = nodes
        self.pool = pool
        self.clock = clock
        self.catalog_key = catalog_key
        self.on_damage = on_damage or (lambda items: None)
        self.rng = rng or random.Random()

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    # --- put ---------------------------------------------------------------------------------------

    def _encoded(
        self, plan: WritePlan, data: Iterable[bytes]
    ) -> Iterator[tuple[int, ObjectRecord, EncodedStripe, int, bool]]:
        """The stream as coded stripes: (index, record, encoded, stripe count for headers, last).

        The record is the final one (size, etag, stripe count) on the last stripe only. Size and
        content_blake3 are checked before the last stripe is yielded, so a mismatch stores nothing.
        Segments are sealed straight from the received chunks; when a sealed segment is one row
        (the default), each sealed segment goes to the coder as it is, without being copied.
        """
        base = plan.record
        coder = coder_for(base.geometry)
        sealer = SegmentSealer(plan.data_key, base.object_id)
        reader = _Reader(data, limit=plan.declared_size)
        hasher = blake3.blake3()
        expected = None if plan.declared_size is None else stripe_count(plan.declared_size, base.plain_per_stripe)
        seg, pps = base.segment_size, base.plain_per_stripe
        rowwise = seg + TAG_LEN == base.geometry.row_size
        total = 0
        index = 0
        while True:
            sealed: list[bytes] = []
            plain_len = 0
            while plain_len < pps:
                plain = reader.take(min(seg, pps - plain_len))
                if not plain and (sealed or index > 0):
                    break
                hasher.update(plain)
                sealed.append(sealer.seal(index, len(sealed), plain))
                plain_len += len(plain)
                if not plain:  # an empty object: one stripe holding one empty sealed segment
                    break
            last = reader.at_end()
            total += plain_len
            record = base
            if last:
                if plan.declared_size is not None and total != plan.declared_size:
                    raise InvalidArgument(
                        f"the stream carried {total} bytes but size said {plan.declared_size}; nothing was stored"
                    )
                etag = hasher.digest()
                if plan.content_blake3 is not None and etag != plan.content_blake3:
                    raise InvalidArgument(
                        "content_blake3 does not match the data received; nothing was stored (resend the object)"
                    )
                record = replace(base, size=total, etag=etag, stripe_count=index + 1)
            count = expected or (index + 1 if last else STRIPES_UNKNOWN)
            if expected is not None and index >= expected:
                raise InvalidArgument(f"the stream carries more than the {plan.declared_size} bytes size said")
            encoded = coder.encode_rows(sealed) if rowwise else coder.encode(b"".join(sealed))
            del sealed
            yield index, record, encoded, count, last
            if last:
                return
            index += 1

    def write(self, plan: WritePlan, data: Iterable[bytes]) -> WriteResult:
        """Store the stream as shards; returns what the catalog must commit. Cleans up on failure."""
        base = plan.record
        g = base.geometry
        selfdesc.check_fits(base, plan.tenant_key_wrapped)
        upload_id = base.object_id
        self.catalog.begin_pending(
            PendingUpload(
                upload_id, plan.owner, os.getpid(), base.created_unix_ms, "put", base.tenant, base.bucket, base.key
            )
        )
        in_flight: deque[_InFlight] = deque()
        stripes: list[StripeRecord] = []
        failed: list[tuple[int, int, ShardLoc | None]] = []
        record = base
        try:
            for index, record, encoded, count, last in self._encoded(plan, data):
                flight = self._send_stripe(record, plan.tenant_key_wrapped, encoded, index, count, complete=last)
                del encoded
                in_flight.append(flight)
                while len(in_flight) > 1:
                    self._settle(in_flight.popleft(), g, stripes, failed)
            while in_flight:
                self._settle(in_flight.popleft(), g, stripes, failed)
        except Exception:
            for flight in in_flight:  # know what was stored before deleting it
                for fut in flight.futures:
                    with contextlib.suppress(Exception):
                        fut.result()
            self.discard(upload_id)
            raise
        return WriteResult(record, stripes, failed)

    def spool_write(self, plan: WritePlan, data: Iterable[bytes], spool: GroundShards) -> WriteResult:
        """Scheduled mode: seal and code exactly as `write`, but store every shard in the ground
        spool (each file synced) instead of sending it. Nothing is in the catalog yet: the caller
        commits the object with its spool entries; on failure the spooled files are removed."""
        base = plan.record
        selfdesc.check_fits(base, plan.tenant_key_wrapped)
        stripes: list[StripeRecord] = []
        record = base
        try:
            for index, current, encoded, _count, _last in self._encoded(plan, data):
                record = current  # the final record (size, etag, stripes) comes with the last stripe
                for rows in encoded.shards:
                    spool.write(
                        base.object_id,
                        index,
                        rows.index,
                        rows.fragments,  # type: ignore[arg-type]
                        rows.checksums,
                        sync_dir=False,
                    )
                spool.sync(base.object_id)
                stripes.append(StripeRecord(index, encoded.data_len, (None,) * base.geometry.n))
                del encoded
        except BaseException:
            spool.remove(base.object_id)
            raise
        return WriteResult(record, stripes, [])

    def _send_stripe(
        self,
        record: ObjectRecord,
        tenant_key_wrapped: bytes,
        encoded: EncodedStripe,
        index: int,
        count: int,
        *,
        complete: bool,
    ) -> _InFlight:
        g = record.geometry
        need = self.shard_bytes(record.object_id, g, encoded.data_len)
        candidates = [Candidate(st.node_id, st.plane, st.free_bytes) for st in self.nodes.up_nodes() if st.node_id]
        chosen = place_stripe(candidates, g.k, g.m, need, rng=self.rng)
        placed = [(i, ShardLoc(c.node_id, os.urandom(32))) for i, c in enumerate(chosen)]
        for _, loc in placed:
            self.nodes.reserve(loc.node_id, need)
        self.catalog.add_pending_shards(record.object_id, index, placed)
        pieces = selfdesc.pieces(self.catalog_key, record, tenant_key_wrapped, complete=complete)
        siblings = tuple(Sibling(i, loc.node_id, loc.shard_id) for i, loc in placed)
        flight = _InFlight(index, encoded, encoded.data_len, placed)
        for i, loc in placed:
            header = ShardHeader(
                shard_id=loc.shard_id,
                object_id=record.object_id,
                stripe_index=index,
                stripe_count=count,
                shard_index=i,
                geometry=g,
                stripe_data_len=encoded.data_len,
                siblings=siblings,
                created_unix_ms=record.created_unix_ms,
                catalog_record=selfdesc.piece_for(pieces, i),
            )
            flight.futures.append(self.pool.submit(self._put_one, loc.node_id, header, encoded.shards[i]))
        return flight

    def _put_one(self, node_id: bytes, header: ShardHeader, rows: ShardRows) -> None:
        link = self.nodes.link(node_id)
        if link is None:
            raise Unavailable(f"node {node_id.hex()[:16]} has no link")
        try:
            link.put_shard(header, row_batches(rows, rows_per_call(header.geometry)))
        except Unavailable as exc:
            self.nodes.mark_down(node_id, str(exc))
            raise
        self.nodes.mark_seen(node_id)

    def _settle(
        self,
        flight: _InFlight,
        g: Geometry,
        stripes: list[StripeRecord],
        failed: list[tuple[int, int, ShardLoc | None]],
    ) -> None:
        """Wait for a stripe's shard puts; it counts with >= k+1 committed, else the put fails."""
        shards: list[ShardLoc | None] = [None] * g.n
        errors: list[str] = []
        for (i, loc), fut in zip(flight.placed, flight.futures, strict=True):
            try:
                fut.result()
            except Exception as exc:
                errors.append(f"shard {i}: {exc}")
                failed.append((flight.index, i, loc))
                continue
            shards[i] = loc
        placed = {i for i, _ in flight.placed}
        failed.extend((flight.index, i, None) for i in range(g.n) if i not in placed)
        flight.encoded = None
        ok = sum(s is not None for s in shards)
        if ok < g.k + 1:
            raise Unavailable(
                f"stripe {flight.index}: only {ok} of {g.n} shards were committed, {g.k + 1} are needed before "
                f"a put is acknowledged; retry when more nodes are reachable ({'; '.join(errors) or 'no nodes'})"
            )
        stripes.append(StripeRecord(flight.index, flight.data_len, tuple(shards)))

    def shard_bytes(self, object_id: bytes, g: Geometry, data_len: int) -> int:
        """What one shard of a stripe counts against a node's capacity (for placement)."""
        probe = ShardHeader(
            shard_id=bytes(32),
            object_id=object_id,
            stripe_index=0,
            stripe_count=1,
            shard_index=0,
            geometry=g,
            stripe_data_len=data_len,
            siblings=tuple(Sibling(i, bytes(32), bytes(32)) for i in range(g.n)),
            catalog_record=bytes(MAX_CATALOG_RECORD),
        )
        return ShardStore.required_bytes(probe)

    def discard(self, upload_id: bytes) -> int:
        """Delete an unfinished upload's shards and forget it; shards on unreachable nodes become
        tombstones (GC retries them). Returns how many shards were deleted."""
        shards = self.catalog.pending_shards(upload_id)
        leftovers = self.delete_shards([(s.node_id, s.shard_id) for s in shards])
        self.catalog.drop_pending(upload_id, [ShardLoc(n, s) for n, s in leftovers], self.now_ms())
        return len(shards) - len(leftovers)

    def delete_shards(self, shards: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Delete shards concurrently; returns those that could not be deleted now."""
        futures = []
        left: list[tuple[bytes, bytes]] = []
        for node_id, shard_id in shards:
            link = self.nodes.link(node_id)
            if link is None or not self.nodes.is_up(node_id):
                left.append((node_id, shard_id))
                continue
            futures.append(((node_id, shard_id), self.pool.submit(link.delete_shard, shard_id)))
        for item, fut in futures:
            try:
                fut.result()
            except Unavailable as exc:
                self.nodes.mark_down(item[0], str(exc))
                left.append(item)
            except Exception:
                left.append(item)
        return left

    # --- get ---------------------------------------------------------------------------------------

    def read(self, rec: ObjectRecord, sealer: SegmentSealer, offset: int, length: int) -> Iterator[bytes]:
        """Plaintext bytes [offset, offset+length) of an object, in chunks of at most one segment."""
        if length <= 0:
            return
        pps, seg = rec.plain_per_stripe, rec.segment_size
        end = offset + length
        for s in range(offset // pps, (end - 1) // pps + 1):
            stripe = self.catalog.stripe(rec.object_id, s)
            if stripe is None:
                raise DataLoss(f"object {rec.object_id.hex()}: the catalog has no location for stripe {s}")
            lo = max(offset - s * pps, 0)
            hi = min(end - s * pps, rec.plain_len(s))
            yield from self._read_stripe(rec, stripe, sealer, lo, hi, seg)

    def _read_stripe(
        self, rec: ObjectRecord, stripe: StripeRecord, sealer: SegmentSealer, lo: int, hi: int, seg: int
    ) -> Iterator[bytes]:
        g = rec.geometry
        unit = seg + TAG_LEN
        plen = rec.plain_len(stripe.index)
        first_seg, last_seg = lo // seg, (hi - 1) // seg
        sealed_lo = first_seg * unit
        sealed_hi = min((last_seg + 1) * unit, stripe.data_len)
        source = StripeSource(self, rec.object_id, g, stripe)
        rows = g.rows_for_range(sealed_lo, sealed_hi - sealed_lo, stripe.data_len)
        per = rows_per_call(g)
        buf = bytearray()
        buf_at = sealed_lo  # stripe offset of buf[0]
        j = first_seg

        def sealed_len(j: int) -> int:
            return min(seg, plen - j * seg) + TAG_LEN

        def opened(sealed: bytes | memoryview) -> bytes:
            plain = sealer.open(stripe.index, j, sealed)
            p_lo = max(lo - j * seg, 0)
            p_hi = min(hi - j * seg, len(plain))
            return plain if (p_lo, p_hi) == (0, len(plain)) else plain[p_lo:p_hi]

        for r0 in range(rows.start, rows.stop, per):
            r1 = min(r0 + per, rows.stop)
            a = max(sealed_lo, r0 * g.row_size)
            b = min(sealed_hi, r1 * g.row_size)
            nxt = (r1, min(r1 + per, rows.stop)) if r1 < rows.stop else None
            for chunk in source.decode(r0, r1, a, b - a, then=nxt):
                if not buf and j <= last_seg and len(chunk) == sealed_len(j):
                    # Exactly the next sealed segment (a segment is a row by default): no buffering.
                    yield opened(chunk)
                    buf_at += len(chunk)
                    j += 1
                    continue
                buf += chunk
                while j <= last_seg:
                    seg_start, seg_len = j * unit, sealed_len(j)
                    if buf_at + len(buf) < seg_start + seg_len:
                        break
                    rel = seg_start - buf_at
                    yield opened(memoryview(buf)[rel : rel + seg_len])
                    del buf[: rel + seg_len]
                    buf_at = seg_start + seg_len
                    j += 1
        if j <= last_seg:
            raise DataLoss(f"object {rec.object_id.hex()} stripe {stripe.index}: decoded fewer bytes than its segments")


class StripeSource:
    """Reads rows of one stripe from k of its shards, switching shards when one fails.

    Candidates are ordered: ground copies (spooled or restored shards: local, no link needed),
    then shards on nodes that are up, data shards first (their decode is a copy), then parity;
    shards on nodes marked down come last (a stale mark must not make a readable stripe
    unreadable).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        object_id: bytes,
        geometry: Geometry,
        stripe: StripeRecord,
        *,
        use_ground: bool = True,
    ) -> None:
        self.p = pipeline
        self.object_id = object_id
        self.g = geometry
        self.stripe = stripe
        self.coder = coder_for(geometry)
        nodes = pipeline.nodes
        ground = pipeline.ground
        self.on_ground = ground.shards(object_id, stripe.index) if ground is not None and use_ground else set()
        present = [i for i, loc in enumerate(stripe.shards) if loc is not None or i in self.on_ground]

        def rank(i: int) -> tuple[int, int]:
            if i in self.on_ground:
                return (0, i)
            loc = stripe.shards[i]
            assert loc is not None
            return (1 if nodes.is_up(loc.node_id) else 2, i)

        self.order = sorted(present, key=rank)
        self.active: list[int] = []
        self.failed: dict[int, str] = {}
        self.unreachable = 0
        self.damaged_reported: set[int] = set()
        self._ahead: tuple[int, int, dict[int, Future[ShardRows]]] | None = None

    def _prefetch(self, r0: int, r1: int, exclude: tuple[int, ...]) -> None:
        """Start fetching the next batch from the active shards while this one is decoded."""
        if self._ahead is None or self._ahead[:2] != (r0, r1):
            self._ahead = (
                r0,
                r1,
                {i: self.p.pool.submit(self._get_rows, i, r0, r1) for i in self.active if i not in exclude},
            )

    def _fetch(self, indexes: list[int], r0: int, r1: int) -> dict[int, ShardRows]:
        """Rows [r0, r1) of each shard, concurrently (prefetched ones reused); failures recorded."""
        ahead = self._ahead[2] if self._ahead is not None and self._ahead[:2] == (r0, r1) else {}
        futures = [(i, ahead.pop(i, None) or self.p.pool.submit(self._get_rows, i, r0, r1)) for i in indexes]
        out: dict[int, ShardRows] = {}
        for i, fut in futures:
            try:
                out[i] = fut.result()
            except OrbitVaultError as exc:
                self._fail(i, exc)
            except Exception as exc:  # a broken link is a failed shard, not a failed read
                self._fail(i, Unavailable(f"{type(exc).__name__}: {exc}"))
        return out

    def _get_rows(self, i: int, r0: int, r1: int) -> ShardRows:
        loc = self.stripe.shards[i]
        if i in self.on_ground:
            assert self.p.ground is not None
            try:
                fetched = self.p.ground.get_rows(self.object_id, self.stripe.index, i, r0, r1 - r0)
                return ShardRows(i, r0, list(fetched.fragments), list(fetched.checksums))
            except NotFound:
                # The object went DURABLE meanwhile and its spool copy was dropped: read it in orbit.
                self.on_ground.discard(i)
                fresh = self.p.catalog.stripe(self.object_id, self.stripe.index)
                loc = fresh.shards[i] if fresh is not None else None
                if loc is None:
                    raise Unavailable(f"shard {i} left the ground before it reached orbit") from None
        assert loc is not None
        link = self.p.nodes.link(loc.node_id)
        if link is None:
            raise Unavailable(f"node {loc.node_id.hex()[:16]} is not configured")
        fetched = link.get_rows(loc.shard_id, r0, r1 - r0)
        if fetched.first_row != r0 or len(fetched.fragments) != r1 - r0 or len(fetched.checksums) != r1 - r0:
            raise Unavailable(f"node {link.address} answered rows other than {r0}..{r1 - 1}")
        self.p.nodes.mark_seen(loc.node_id)
        return ShardRows(i, r0, list(fetched.fragments), list(fetched.checksums))

    def _fail(self, i: int, exc: OrbitVaultError) -> None:
        loc = self.stripe.shards[i]
        self.failed[i] = str(exc)
        if i in self.active:
            self.active.remove(i)
        if loc is None or i in self.on_ground:
            return  # a ground copy: nothing in orbit to mark down or repair
        if isinstance(exc, Unavailable):
            self.unreachable += 1
            self.p.nodes.mark_down(loc.node_id, str(exc))
        elif isinstance(exc, NotFound | DataLoss):
            self._report(i, "missing on node" if isinstance(exc, NotFound) else "unreadable on node")

    def _report(self, i: int, reason: str) -> None:
        if i in self.on_ground or self.stripe.shards[i] is None:
            return  # damage in a ground copy: the shard in orbit (if any) is not affected
        if i not in self.damaged_reported:
            self.damaged_reported.add(i)
            self.p.on_damage([(self.object_id, self.stripe.index, i, reason)])

    def rows(
        self,
        r0: int,
        r1: int,
        attempt: Callable[[list[ShardRows]], object],
        *,
        exclude: tuple[int, ...] = (),
        then: tuple[int, int] | None = None,
    ) -> object:
        """Fetch rows [r0, r1) from k shards (not `exclude`) and run `attempt` on them; shards that
        fail while fetching are replaced, and one more shard is added while `attempt` raises
        TooFewFragments (rows the nodes could not repair). The shards used stay active for the
        next call, so a read keeps to the same k shards while they work. `then` is the next
        batch, fetched while this one is decoded."""
        pieces: dict[int, ShardRows] = {}
        self.active = [i for i in self.active if i not in exclude]
        while True:
            while len(self.active) < self.g.k:
                nxt = self._next_candidate_excluding(exclude)
                if nxt is None:
                    break
                self.active.append(nxt)
            want = [i for i in self.active if i not in pieces]
            if want:
                got = self._fetch(want, r0, r1)
                pieces.update(got)
                if len(got) < len(want) and self._next_candidate_excluding(exclude) is not None:
                    continue  # replace the shards that failed before decoding
            if then is not None:
                self._prefetch(*then, exclude)
            try:
                return attempt(list(pieces.values()))
            except TooFewFragments as exc:
                for piece in pieces.values():
                    if any(f is None for f in piece.fragments):
                        self._report(piece.index, "rows damaged beyond the node's repair")
                nxt = self._next_candidate_excluding(exclude)
                if nxt is None:
                    raise self._exhausted(r0, r1, exc) from None
                self.active.append(nxt)

    def _next_candidate_excluding(self, exclude: tuple[int, ...]) -> int | None:
        for i in self.order:
            if i not in self.active and i not in self.failed and i not in exclude:
                return i
        return None

    def _exhausted(self, r0: int, r1: int, exc: TooFewFragments) -> OrbitVaultError:
        g = self.g
        where = f"object {self.object_id.hex()} stripe {self.stripe.index} rows {r0}..{r1 - 1}"
        if self.unreachable or any(
            loc is not None and not self.p.nodes.is_up(loc.node_id) for loc in self.stripe.shards
        ):
            return Unavailable(
                f"{where}: fewer than the {g.k} shards needed are reachable ({len(self.failed)} failed: "
                f"{'; '.join(sorted(set(self.failed.values())))[:500]}); retry when nodes are back"
            )
        return DataLoss(f"{where}: fewer than {g.k} healthy fragments remain ({exc})")

    def decode(self, r0: int, r1: int, offset: int, length: int, *, then: tuple[int, int] | None = None) -> list[bytes]:
        """Decoded sealed bytes [offset, offset+length) of the stripe, which lie in rows [r0, r1)."""

        def attempt(pieces: list[ShardRows]) -> list[bytes]:
            decoded = self.coder.decode(self.stripe.data_len, pieces, offset, length)
            for _, i in decoded.damaged:
                self._report(i, "fragment failed its checksum")
            return decoded.chunks

        return self.rows(r0, r1, attempt, then=then)  # type: ignore[return-value]

    def rebuild(self, target: int, r0: int, r1: int, *, then: tuple[int, int] | None = None) -> dict[int, bytes]:
        """Fragments of shard `target` for rows [r0, r1), from k other shards."""

        def attempt(pieces: list[ShardRows]) -> dict[int, bytes]:
            return self.coder.rebuild(self.stripe.data_len, pieces, [target], range(r0, r1))[target]

        return self.rows(r0, r1, attempt, exclude=(target,), then=then)  # type: ignore[return-value]


def row_batches(rows: ShardRows, per: int) -> Iterator[RowBatch]:
    frags, sums = rows.fragments, rows.checksums
    for start in range(0, len(frags), per):
        yield RowBatch(start, frags[start : start + per], sums[start : start + per])  # type: ignore[arg-type]


class _Reader:
    """Bytes from an iterable of chunks, `take(n)` at a time, with a look-ahead for the end."""

    def __init__(self, data: Iterable[bytes], *, limit: int | None) -> None:
        self._it = iter(data)
        self._head = memoryview(b"")
        self._limit = limit
        self._seen = 0

    def take(self, n: int) -> memoryview:
        """The next `n` bytes (fewer only at the end): a view of the received chunk when it holds
        them all, else one copy joining the chunks they span."""
        if len(self._head) >= n or (not self._head and self._pull() and len(self._head) >= n):
            out, self._head = self._head[:n], self._head[n:]
            return out
        buf = bytearray(n)
        got = 0
        while got < n and (self._head or self._pull()):
            step = min(n - got, len(self._head))
            buf[got : got + step] = self._head[:step]
            self._head = self._head[step:]
            got += step
        return memoryview(buf)[:got]

    def _pull(self) -> bool:
        for chunk in self._it:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidArgument(f"object data must arrive as bytes, got {type(chunk).__name__}")
            if len(chunk):
                self._seen += len(chunk)
                if self._limit is not None and self._seen > self._limit:
                    raise InvalidArgument(f"the stream carries more than the {self._limit} bytes size said")
                self._head = memoryview(chunk).cast("B")
                return True
        return False

    def at_end(self) -> bool:
        return not self._head and not self._pull()
