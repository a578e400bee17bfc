"""Fault injection: flip random bits in a node's stored rows, checksum copies, CRCs and headers.

This is how tests, the demo and operators check that the scrubber finds and repairs radiation
damage. Every stored value a particle can hit is exposed, in proportion to its size: each shard's
protected header record, its second copy of the row checksums, every row (checksum beside the
row + fragment) and every row's block CRC record (`bitfix`). The result lists exactly what was
flipped, so a test can check the scrubber against it.

Two modes:

- count: exactly `count` upsets at distinct bits chosen uniformly over every stored bit.
- rate: a Poisson number of upsets with mean
  ``rate x bits x days x acceleration x ((1 - f) + f x burst)``, where `rate` is upsets per bit per
  day outside the South Atlantic Anomaly (design §4: about 1e-6 in LEO), `days` the simulated
  duration, `acceleration` a test multiplier, and the optional SAA burst puts the satellite in the
  anomaly for a fraction `f` of the duration (default 0.1: a 500 km orbit crosses it a few times a
  day for 10-15 minutes) at `burst` times the rate. The SAA share is one contiguous window at a
  random offset; each upset gets a time in the duration (`t_s`) and whether it fell in the window.
  The quiet and SAA counts are drawn as independent Poisson variables.

Most LEO upsets are single-bit. With `mbu_share` > 0, that share of the upsets are multi-bit
upsets that also flip the adjacent bit of the same stored value (two bits, as in the common
adjacent-cell MBU); in count mode `count` is then the number of upsets, not of bits. All flipped
bits are distinct, so no flip undoes another.

Bit numbering is the store's: bit b of a value is bit (b % 8) of byte (b // 8). In a row value the
first 256 bits are the checksum beside the fragment; bit b of the checksums record belongs to row
b // 256; bits of a CRC record (target "crcs") count within that record.

Only simulation stores (created with `simulation=True`) are irradiated unless `force=True`.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from orbitvault.errors import FailedPrecondition, InvalidArgument, NotFound
from orbitvault.storage.store import CHECKSUMS, HEADER, CrcRecord, ShardStore

CHECKSUM_BITS = 256
SECONDS_PER_DAY = 86_400.0
DEFAULT_SAA_FRACTION = 0.1
LEO_UPSET_RATE = 1e-6  # upsets per bit per day, design §4

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Flip:
    """One flipped bit. `target` is "header", "checksums", "row" or "crcs"; `row` the row it affects
    (None: header)."""

    shard_id: bytes
    target: str
    row: int | None
    bit: int
    upset: int  # upsets flipping two adjacent bits list both with the same number
    t_s: float | None = None  # rate mode: seconds into the simulated duration
    saa: bool | None = None  # rate mode with a burst: inside the SAA window

    @property
    def region(self) -> str:
        """What the bit belongs to: header, checksum (either copy), crc (block CRC record) or fragment."""
        if self.target == "header":
            return "header"
        if self.target == "crcs":
            return "crc"
        if self.target == "checksums" or self.bit < CHECKSUM_BITS:
            return "checksum"
        return "fragment"

    @property
    def where(self) -> int | str | CrcRecord:
        """The store's address of the value this bit is in (`ShardStore.flip_bit`)."""
        if self.target == "row":
            return self.row  # type: ignore[return-value]
        if self.target == "crcs":
            return CrcRecord(self.row)  # type: ignore[arg-type]
        return HEADER if self.target == "header" else CHECKSUMS

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "shard_id": self.shard_id.hex(),
            "target": self.target,
            "row": self.row,
            "bit": self.bit,
            "byte": self.bit // 8,
            "region": self.region,
            "upset": self.upset,
        }
        if self.t_s is not None:
            d["t_s"] = round(self.t_s, 3)
        if self.saa is not None:
            d["saa"] = self.saa
        return d

    def describe(self) -> str:
        where = "header" if self.target == "header" else f"{self.target} row {self.row}"
        when = f" t={self.t_s:.1f}s{' SAA' if self.saa else ''}" if self.t_s is not None else ""
        return f"shard {self.shard_id.hex()} {where} bit {self.bit} ({self.region}){when}"


@dataclass
class Irradiation:
    """What `irradiate` did; `flips` is the exact list, in time order in rate mode."""

    mode: str
    seed: int
    bits_exposed: int
    shards: int
    upsets: int
    flips: list[Flip]
    expected_upsets: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def damaged_units(self) -> set[tuple[bytes, int | None]]:
        """Distinct (shard, row) pairs hit, row None for headers: what a scrub should count as damaged."""
        return {(f.shard_id, f.row) for f in self.flips}

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seed": self.seed,
            "shards": self.shards,
            "bits_exposed": self.bits_exposed,
            "expected_upsets": self.expected_upsets,
            "upsets": self.upsets,
            "bits_flipped": len(self.flips),
            "params": self.params,
            "flips": [f.to_json() for f in self.flips],
        }


@dataclass(frozen=True, slots=True)
class _Segment:
    """`count` stored values of `value_bits` bits each, laid end to end in the exposure index."""

    start: int
    shard_id: bytes
    target: str  # "header", "checksums", "row" or "crcs"
    first_row: int
    count: int
    value_bits: int

    @property
    def bits(self) -> int:
        return self.count * self.value_bits


class _Exposure:
    """Every stored bit of a store as one index 0..bits-1, without listing rows one by one."""

    def __init__(self, store: ShardStore, objects: Collection[bytes] | None = None) -> None:
        self.segments: list[_Segment] = []
        self.starts: list[int] = []
        self.bits = 0
        self.shards = 0
        for sid in _shard_ids(store, objects):
            try:
                self._add_shard(store, sid)
            except NotFound:
                continue  # deleted while we walked
            self.shards += 1

    def _add_shard(self, store: ShardStore, sid: bytes) -> None:
        header_len = store.stored_value_len(sid, HEADER)
        sums_len = store.stored_value_len(sid, CHECKSUMS)
        # The checksums record has one 32-byte slot per row, so it gives the row count even when the
        # header is damaged. All rows but the last have the same length (the stripe geometry).
        rows = sums_len // (CHECKSUM_BITS // 8)
        parts = [(HEADER, 0, 1, header_len), (CHECKSUMS, 0, 1, sums_len)]
        if rows > 1:
            parts.append(("row", 0, rows - 1, store.stored_value_len(sid, 0)))
        if rows > 0:
            parts.append(("row", rows - 1, 1, store.stored_value_len(sid, rows - 1)))
            try:  # stores written before block CRCs have none until a scrub adds them
                if rows > 1:
                    parts.append(("crcs", 0, rows - 1, store.stored_value_len(sid, CrcRecord(0))))
                parts.append(("crcs", rows - 1, 1, store.stored_value_len(sid, CrcRecord(rows - 1))))
            except NotFound:
                parts = [p for p in parts if p[0] != "crcs"]
        for target, first, count, nbytes in parts:
            seg = _Segment(self.bits, sid, target, first, count, nbytes * 8)
            self.segments.append(seg)
            self.starts.append(seg.start)
            self.bits += seg.bits

    def locate(self, pos: int) -> tuple[_Segment, int, int]:
        """Segment, value index within it, and bit within that value of global bit `pos`."""
        seg = self.segments[bisect.bisect_right(self.starts, pos) - 1]
        value, bit = divmod(pos - seg.start, seg.value_bits)
        return seg, value, bit


def _shard_ids(store: ShardStore, objects: Collection[bytes] | None) -> Iterator[bytes]:
    """Every shard, or only those of `objects` (through the store's object index)."""
    if objects is None:
        yield from store.shard_ids()
        return
    for oid in sorted(set(objects)):
        after = b""
        while page := store._object_shards(oid, after, 1000):
            yield from page
            after = page[-1]


def irradiate(
    store: ShardStore,
    *,
    count: int | None = None,
    rate: float | None = None,
    duration_s: float | None = None,
    acceleration: float = 1.0,
    saa_burst: float | None = None,
    saa_fraction: float = DEFAULT_SAA_FRACTION,
    mbu_share: float = 0.0,
    seed: int | None = None,
    force: bool = False,
    dry_run: bool = False,
    objects: Collection[bytes] | None = None,
) -> Irradiation:
    """Flip bits in `store` (see the module docstring) and return exactly what was flipped.

    `objects` limits the exposure to the shards of those objects (a drill accounting for every
    flip in one data set, while other objects, e.g. catalog checkpoints, come and go).
    """
    if not store.simulation and not force:
        raise FailedPrecondition(
            f"{getattr(store, 'path', 'this store')} is not a simulation store; irradiating it damages real "
            "data. Use a store created with simulation = true, or force it (--force) if you mean it"
        )
    _check_args(count, rate, duration_s, acceleration, saa_burst, saa_fraction, mbu_share)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "big") >> 1
    rng = random.Random(seed)
    exposure = _Exposure(store, objects)
    params: dict[str, Any] = {"mbu_share": mbu_share}
    expected: float | None = None
    times: list[tuple[float, bool | None]] = []
    if count is not None:
        mode, upsets = "count", count
    else:
        assert rate is not None and duration_s is not None
        mode = "rate"
        base = rate * exposure.bits * (duration_s / SECONDS_PER_DAY) * acceleration
        quiet_share = 1.0 - saa_fraction if saa_burst else 1.0
        quiet = poisson(rng, base * quiet_share)
        in_saa = poisson(rng, base * saa_fraction * saa_burst) if saa_burst else 0
        expected = base * quiet_share + (base * saa_fraction * saa_burst if saa_burst else 0.0)
        upsets = quiet + in_saa
        params |= {"rate_per_bit_day": rate, "duration_s": duration_s, "acceleration": acceleration}
        window = saa_fraction * duration_s if saa_burst else 0.0
        start = rng.uniform(0.0, duration_s - window) if saa_burst else 0.0
        if saa_burst:
            params |= {"saa_burst": saa_burst, "saa_fraction": saa_fraction, "saa_window_s": [start, start + window]}
        for _ in range(quiet):
            t = rng.uniform(0.0, duration_s - window)
            times.append((t + window if t >= start and saa_burst else t, False if saa_burst else None))
        times.extend((start + rng.uniform(0.0, window), True) for _ in range(in_saa))
        rng.shuffle(times)
    if upsets > exposure.bits:
        raise InvalidArgument(
            f"{upsets} upsets asked but the store holds only {exposure.bits} bits"
            + ("" if exposure.bits else " (it is empty: store some shards first)")
        )
    anchors = rng.sample(range(exposure.bits), upsets)
    used = set(anchors)
    flips: list[Flip] = []
    for n, pos in enumerate(anchors):
        t, saa = times[n] if times else (None, None)
        bits = [pos]
        if mbu_share and rng.random() < mbu_share:
            seg, _, bit = exposure.locate(pos)
            neighbour = pos + 1 if bit + 1 < seg.value_bits else pos - 1
            if seg.value_bits > 1 and neighbour not in used:
                used.add(neighbour)
                bits.append(neighbour)
        for p in bits:
            seg, value, bit = exposure.locate(p)
            if seg.target in ("row", "crcs"):
                target, row = seg.target, seg.first_row + value
            elif seg.target == CHECKSUMS:
                target, row = "checksums", bit // CHECKSUM_BITS
            else:
                target, row = "header", None
            flips.append(Flip(seg.shard_id, target, row, bit, n, t, saa))
    if times:
        flips.sort(key=lambda f: (f.t_s or 0.0, f.upset, f.bit))
    if not dry_run:
        for f in flips:
            _flip(store, f, force)
    return Irradiation(mode, seed, exposure.bits, exposure.shards, upsets, flips, expected, params)


def _flip(store: ShardStore, f: Flip, force: bool) -> None:
    store.flip_bit(f.shard_id, f.where, f.bit, force=force)


def _check_args(
    count: int | None,
    rate: float | None,
    duration_s: float | None,
    acceleration: float,
    saa_burst: float | None,
    saa_fraction: float,
    mbu_share: float,
) -> None:
    if (count is None) == (rate is None):
        raise InvalidArgument("give either a count of upsets or a rate (with a duration), not both or neither")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise InvalidArgument(f"count must be a non-negative integer, got {count!r}")
    if rate is not None:
        if not _finite(rate) or rate < 0:
            raise InvalidArgument(f"rate must be a non-negative number of upsets per bit per day, got {rate!r}")
        if duration_s is None or not _finite(duration_s) or duration_s <= 0:
            raise InvalidArgument(f"a rate needs a positive duration, got {duration_s!r}")
    elif duration_s is not None or saa_burst is not None:
        raise InvalidArgument("duration and SAA burst only apply with a rate")
    if not _finite(acceleration) or acceleration <= 0:
        raise InvalidArgument(f"acceleration must be positive, got {acceleration!r}")
    if saa_burst is not None and (not _finite(saa_burst) or saa_burst < 1):
        raise InvalidArgument(f"the SAA burst is a rate multiplier of at least 1, got {saa_burst!r}")
    if not _finite(saa_fraction) or not 0 < saa_fraction < 1:
        raise InvalidArgument(f"the SAA fraction of the duration must be between 0 and 1, got {saa_fraction!r}")
    if not _finite(mbu_share) or not 0 <= mbu_share <= 1:
        raise InvalidArgument(f"the multi-bit upset share must be between 0 and 1, got {mbu_share!r}")


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson(lam) draw: inversion for small means, Hörmann's PTRS (as numpy uses) for large ones."""
    if lam <= 0:
        return 0
    if lam < 10:
        limit, k, p = math.exp(-lam), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    slam, loglam = math.sqrt(lam), math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0 or (us < 0.013 and v > us):
            continue
        if math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b) <= -lam + k * loglam - math.lgamma(k + 1):
            return k


def parse_duration(text: str) -> float:
    """Seconds from "3600", "90s", "15m", "6h" or "2d"."""
    m = _DURATION.match(str(text))
    if m is None:
        raise InvalidArgument(f"duration {text!r} is not a duration; use seconds or a number with s, m, h or d")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if seconds <= 0:
        raise InvalidArgument(f"duration {text!r} must be positive")
    return seconds
