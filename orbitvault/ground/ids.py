"""Intrusion detection and per-tenant rate limits on the gateway.

Signals (each raises an alert: an audit-log entry `alert.<kind>` and a Prometheus counter; the
same kind for the same subject alerts at most once per `cooldown_s`):

- `auth.failed_burst`: at least `auth_failures` failed authentications (unknown/revoked/malformed
  API keys, wrong or replayed MFA codes) within `window_s`, per source address and per key id.
- `delete.mass`: at least `mass_deletes` delete attempts (objects and buckets, allowed or not)
  within `window_s`, per tenant. Backups die by mass deletion; prune deletes many packs too, so
  this is an alert to look at, not a block.
- `read.unusual_key`: a key with no read history reads at least `read_floor_bytes` (or
  `read_floor_calls` GETs) within one baseline window; `read.spike`: a key with history reads at
  least `read_factor` times its usual volume (and the floor). Exfiltration with a stolen key looks
  like this; so does a legitimate first restore, which is why it is an alert.
- Ransomware signs, on what the gateway can actually observe:
  * `upload.volume_jump`: a tenant uploads at least `upload_factor` times its usual volume per
    baseline window (and `upload_floor_bytes`). A deduplicating backup of a tree that ransomware
    has just encrypted re-uploads everything: dedupe collapses, and the volume shows it even when
    the gateway sees only ciphertext (the backup client encrypts end to end).
  * `upload.entropy_jump`: for clients that send plaintext (SDK users without client-side
    encryption), the gateway samples what it receives (64 KiB at the start of every object and
    every 8 MiB) and measures compressibility (zstd level 1). A tenant whose data usually
    compresses and whose new data suddenly does not has likely had it encrypted by someone else.
    For end-to-end encrypted backups every sample is incompressible from the start, the baseline
    says so, and this signal stays silent: the gateway is blind there by design.
  * `backup.dedupe_collapse` / `backup.compression_collapse`: a backup client may report its own
    figures as object metadata on what it uploads (`ov-backup-scanned-bytes`, `ov-backup-new-bytes`,
    `ov-backup-stored-bytes`: bytes read from the source, bytes not deduplicated, bytes after
    compression). The new/scanned fraction jumping, or the compression ratio falling to ~1 while it
    usually is well above, is the client-side view of the same ransomware sign. These are claims
    of the client; a compromised client can lie, an honest client on an infected machine will not.

Rate limits: a token bucket per tenant (`rate_per_s`, `burst`); an empty bucket refuses the call
with RESOURCE_EXHAUSTED saying when to retry (`RateLimited`), and alerts `rate.limited` once per
cooldown.

State: windows are approximated per subject with two counters (current and previous window), so
memory is O(subjects) whatever the traffic; subjects are capped (least recently seen dropped).
Baselines (EWMA over windows with activity) persist in `ids.json` beside the catalog, so a restart
does not make every key look new.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from orbitvault.errors import ResourceExhausted

log = logging.getLogger("orbitvault.ids")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SAMPLE_BYTES = 64 * KiB
SAMPLE_EVERY = 8 * MiB
INCOMPRESSIBLE = 0.95  # zstd output / input above this: the sample looks random (encrypted or compressed)
EWMA_ALPHA = 0.2
MIN_HISTORY = 3  # active windows before a baseline is trusted
MAX_SUBJECTS = 10_000
STATS_KEYS = ("ov-backup-scanned-bytes", "ov-backup-new-bytes", "ov-backup-stored-bytes")


class RateLimited(ResourceExhausted):
    """A tenant's token bucket is empty (not audited per call: it is counted and alerted)."""


@dataclass(frozen=True, slots=True)
class IdsConfig:
    window_s: float = 60.0
    auth_failures: int = 20
    mass_deletes: int = 100
    baseline_window_s: float = 3600.0
    read_floor_bytes: int = 1 * GiB
    read_floor_calls: int = 2000
    read_factor: float = 10.0
    upload_floor_bytes: int = 1 * GiB
    upload_factor: float = 10.0
    entropy_min_bytes: int = 16 * MiB  # sampled bytes in a window before the entropy signal counts
    entropy_low: float = 0.4  # a baseline incompressible fraction below this ...
    entropy_high: float = 0.9  # ... and a window above this: entropy jump
    new_fraction_floor: float = 0.5
    new_fraction_factor: float = 5.0
    compression_usual: float = 1.2
    compression_flat: float = 1.05
    rate_per_s: float = 2000.0  # 0 = unlimited
    burst: int = 4000
    cooldown_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    subject: str
    tenant: str
    detail: Mapping[str, Any]


# --- building blocks -------------------------------------------------------------------------------------


class _Window:
    """Events in a sliding window, approximated from the current and the previous fixed window."""

    __slots__ = ("cur", "prev", "start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.cur = 0.0
        self.prev = 0.0

    def add(self, now: float, amount: float, width: float) -> float:
        """Add `amount` at `now`; return the estimated total over the last `width` seconds."""
        elapsed = now - self.start
        if elapsed >= 2 * width:
            self.start, self.prev, self.cur = now, 0.0, 0.0
        elif elapsed >= width:
            self.start, self.prev, self.cur = self.start + width, self.cur, 0.0
        self.cur += amount
        weight = max(0.0, 1.0 - (now - self.start) / width)
        return self.cur + self.prev * weight


class _Buckets:
    """A token bucket per tenant."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tenant -> (tokens, when)

    def take(self, tenant: str, now: float) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        tokens, when = self._state.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - when) * self.rate)
        if tokens >= 1.0:
            self._state[tenant] = (tokens - 1.0, now)
            self._state.move_to_end(tenant)
            _cap(self._state)
            return 0.0
        self._state[tenant] = (tokens, now)
        return (1.0 - tokens) / self.rate


@dataclass
class _Baseline:
    """Activity per baseline window of one subject, with an EWMA over the windows that had any."""

    window_start: float = 0.0
    amount: float = 0.0
    calls: int = 0
    ewma: float = 0.0
    history: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # per-signal sums in the current window

    def roll(self, now: float, width: float) -> bool:
        """Close the window if `now` is past it; True if a finished window was folded in."""
        if now - self.window_start < width:
            return False
        folded = self.amount > 0
        if folded:
            self.ewma = self.amount if self.history == 0 else (1 - EWMA_ALPHA) * self.ewma + EWMA_ALPHA * self.amount
            self.history += 1
        self.window_start = now - (now - self.window_start) % width if self.window_start else now
        self.amount, self.calls = 0.0, 0
        self.extra = {}
        return folded

    def to_json(self) -> dict[str, Any]:
        return {"ewma": self.ewma, "history": self.history}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], now: float) -> _Baseline:
        return cls(window_start=now, ewma=float(d.get("ewma", 0.0)), history=int(d.get("history", 0)))


@dataclass
class _Ratio:
    """An EWMA of a ratio reported or measured per event/window, with its count."""

    ewma: float = 0.0
    history: int = 0

    def add(self, value: float) -> None:
        self.ewma = value if self.history == 0 else (1 - EWMA_ALPHA) * self.ewma + EWMA_ALPHA * value
        self.history += 1


def _cap(d: OrderedDict[str, Any]) -> None:
    while len(d) > MAX_SUBJECTS:
        d.popitem(last=False)


def incompressible(sample: bytes, comp: zstandard.ZstdCompressor | None = None) -> bool:
    """True if zstd level 1 (about 1 GB/s) cannot shrink the sample by 5%: random-looking data."""
    return len((comp or zstandard.ZstdCompressor(level=1)).compress(sample)) > INCOMPRESSIBLE * len(sample)


class Sampler:
    """Wraps a put's data stream and measures small samples of it as they pass: the first 64 KiB
    of the object and 64 KiB every 8 MiB after. Only counters are kept, so memory stays at one
    sample whatever the object's size."""

    def __init__(self, data: Iterable[bytes]) -> None:
        self._data = data
        self.sampled = 0  # bytes measured
        self.bad = 0  # of which in incompressible samples
        self.seen = 0
        self._next = 0
        self._cur = bytearray()
        self._comp = zstandard.ZstdCompressor(level=1)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._data:
            if isinstance(chunk, bytes | bytearray | memoryview):  # anything else the pipeline refuses
                self._take(chunk)
            yield chunk

    def _take(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1:
            return
        pos = 0
        while pos < len(view):
            if self._cur or self.seen + pos >= self._next:
                piece = view[pos : pos + SAMPLE_BYTES - len(self._cur)]
                self._cur += piece
                pos += len(piece)
                if len(self._cur) >= SAMPLE_BYTES:
                    self._measure()
                    self._next += SAMPLE_EVERY
            else:
                pos = min(len(view), self._next - self.seen)
        self.seen += len(view)

    def _measure(self) -> None:
        sample = bytes(self._cur)
        self._cur = bytearray()
        if len(sample) < 256:  # too small to say anything
            return
        self.sampled += len(sample)
        if incompressible(sample, self._comp):
            self.bad += len(sample)

    def finish(self) -> tuple[int, int]:
        """(sampled bytes, incompressible sampled bytes), counting a last partial sample."""
        if self._cur:
            self._measure()
        return self.sampled, self.bad


# --- the detector ----------------------------------------------------------------------------------------


class IntrusionDetector:
    """Counts what happens at the gateway and raises alerts through `sink`; thread-safe."""

    def __init__(
        self,
        config: IdsConfig,
        sink: Callable[[Alert], None],
        *,
        clock: Callable[[], float],
        state_path: str | Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._sink = sink
        self._now = clock
        self._monotonic = monotonic  # rate limits meter real time, even under a simulated clock
        self._state_path = Path(state_path) if state_path is not None else None
        self._lock = threading.Lock()
        self._auth: OrderedDict[str, _Window] = OrderedDict()
        self._deletes: OrderedDict[str, _Window] = OrderedDict()
        self._reads: OrderedDict[str, _Baseline] = OrderedDict()
        self._uploads: OrderedDict[str, _Baseline] = OrderedDict()
        self._entropy: OrderedDict[str, _Baseline] = OrderedDict()  # amount = sampled bytes, extra: bad
        self._entropy_usual: dict[str, _Ratio] = {}
        self._new_fraction: dict[str, _Ratio] = {}
        self._compression: dict[str, _Ratio] = {}
        self._buckets = _Buckets(config.rate_per_s, config.burst) if config.rate_per_s > 0 else None
        self._cooldown: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.alerts: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.auth_failures = 0
        self._dirty = False
        self._saved_at = self._now()
        self._load()

    # --- rate limits --------------------------------------------------------------------------------

    def admit(self, tenant: str) -> None:
        """Take a token from the tenant's bucket, or refuse with RateLimited (RESOURCE_EXHAUSTED)."""
        if self._buckets is None:
            return
        with self._lock:
            wait = self._buckets.take(tenant, self._monotonic())
            if not wait:
                return
            self.rate_limited[tenant] = self.rate_limited.get(tenant, 0) + 1
        self._alert("rate.limited", tenant, tenant, {"rate_per_s": self.config.rate_per_s, "burst": self.config.burst})
        raise RateLimited(
            f"tenant {tenant!r} is over its rate limit of {self.config.rate_per_s:g} requests/s "
            f"(burst {self.config.burst}); retry in {max(wait, 0.001):.3f} s"
        )

    # --- failed authentication, mass deletes --------------------------------------------------------

    def auth_failed(self, *, source: str = "", key_id: str = "", tenant: str = "", what: str = "api-key") -> None:
        now = self._now()
        hits: list[tuple[str, float]] = []
        with self._lock:
            self.auth_failures += 1
            for subject in (f"source:{source}" if source else "", f"key:{key_id}" if key_id else ""):
                if subject:
                    w = self._window(self._auth, subject, now)
                    hits.append((subject, w.add(now, 1, self.config.window_s)))
        for subject, count in hits:
            if count >= self.config.auth_failures:
                self._alert(
                    "auth.failed_burst",
                    subject,
                    tenant,
                    {"failures": round(count), "window_s": self.config.window_s, "last": what},
                )

    def delete_attempt(self, tenant: str, key_id: str) -> None:
        now = self._now()
        with self._lock:
            count = self._window(self._deletes, tenant, now).add(now, 1, self.config.window_s)
        if count >= self.config.mass_deletes:
            self._alert(
                "delete.mass",
                tenant,
                tenant,
                {"deletes": round(count), "window_s": self.config.window_s, "key": key_id},
            )

    # --- reads ----------------------------------------------------------------------------------------

    def read(self, tenant: str, key_id: str, nbytes: int) -> None:
        if not key_id:
            return
        c = self.config
        now = self._now()
        with self._lock:
            b = self._baseline(self._reads, key_id, now)
            b.amount += nbytes
            b.calls += 1
            amount, calls, usual, history = b.amount, b.calls, b.ewma, b.history
            self._dirty = True
        if history == 0:
            if amount >= c.read_floor_bytes or calls >= c.read_floor_calls:
                self._alert(
                    "read.unusual_key",
                    f"key:{key_id}",
                    tenant,
                    {"bytes": int(amount), "gets": calls, "window_s": c.baseline_window_s, "history": "none"},
                )
        elif history >= MIN_HISTORY and amount >= max(c.read_floor_bytes, c.read_factor * usual):
            self._alert(
                "read.spike",
                f"key:{key_id}",
                tenant,
                {"bytes": int(amount), "usual": int(usual), "window_s": c.baseline_window_s},
            )
        self._maybe_save(now)

    # --- uploads: volume, entropy, client-reported figures --------------------------------------------

    def uploaded(
        self, tenant: str, key_id: str, nbytes: int, sampled: int, bad: int, metadata: Mapping[str, str]
    ) -> None:
        """One stored object: its size, what its `Sampler` measured, the client's metadata."""
        c = self.config
        now = self._now()
        alerts: list[tuple[str, dict[str, Any]]] = []
        with self._lock:
            up = self._baseline(self._uploads, tenant, now)
            up.amount += nbytes
            if up.history >= MIN_HISTORY and up.amount >= max(c.upload_floor_bytes, c.upload_factor * up.ewma):
                alerts.append(
                    (
                        "upload.volume_jump",
                        {"bytes": int(up.amount), "usual": int(up.ewma), "window_s": c.baseline_window_s},
                    )
                )
            ent = self._baseline(self._entropy, tenant, now, on_roll=self._fold_entropy)
            ent.amount += sampled
            ent.extra["bad"] = ent.extra.get("bad", 0.0) + bad
            usual = self._entropy_usual.get(tenant)
            if (
                usual is not None
                and usual.history >= MIN_HISTORY
                and usual.ewma <= c.entropy_low
                and ent.amount >= c.entropy_min_bytes
                and ent.extra["bad"] / ent.amount >= c.entropy_high
            ):
                alerts.append(
                    (
                        "upload.entropy_jump",
                        {
                            "incompressible": round(ent.extra["bad"] / ent.amount, 3),
                            "usual": round(usual.ewma, 3),
                            "sampled_bytes": int(ent.amount),
                        },
                    )
                )
            alerts.extend(self._client_figures(tenant, metadata))
            self._dirty = True
        for kind, detail in alerts:
            self._alert(kind, tenant, tenant, {**detail, "key": key_id})
        self._maybe_save(now)

    def _fold_entropy(self, tenant: str, b: _Baseline) -> None:
        if b.amount >= self.config.entropy_min_bytes:
            self._entropy_usual.setdefault(tenant, _Ratio()).add(b.extra.get("bad", 0.0) / b.amount)

    def _client_figures(self, tenant: str, metadata: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
        """Backup statistics the client attached to an upload (see the module docstring)."""
        if not metadata or STATS_KEYS[0] not in metadata:
            return []
        try:
            scanned, new, stored = (float(metadata.get(k, "nan")) for k in STATS_KEYS)
        except ValueError:
            return []
        if not all(math.isfinite(v) and v >= 0 for v in (scanned, new, stored)) or scanned <= 0:
            return []
        c = self.config
        out: list[tuple[str, dict[str, Any]]] = []
        fraction = min(1.0, new / scanned)
        nf = self._new_fraction.setdefault(tenant, _Ratio())
        if nf.history >= MIN_HISTORY and fraction >= max(c.new_fraction_floor, c.new_fraction_factor * nf.ewma):
            out.append(("backup.dedupe_collapse", {"new_fraction": round(fraction, 3), "usual": round(nf.ewma, 3)}))
        nf.add(fraction)
        if new > 0 and stored > 0:
            ratio = new / stored
            cr = self._compression.setdefault(tenant, _Ratio())
            if cr.history >= MIN_HISTORY and cr.ewma >= c.compression_usual and ratio <= c.compression_flat:
                out.append(
                    ("backup.compression_collapse", {"compression": round(ratio, 3), "usual": round(cr.ewma, 3)})
                )
            cr.add(ratio)
        return out

    # --- alerts, metrics ------------------------------------------------------------------------------

    def alert(self, kind: str, subject: str, tenant: str, detail: Mapping[str, Any]) -> None:
        """Raise an alert found elsewhere (e.g. an MFA lock-out), with the same cooldown and sink."""
        self._alert(kind, subject, tenant, detail)

    def _alert(self, kind: str, subject: str, tenant: str, detail: Mapping[str, Any]) -> None:
        now = self._now()
        with self._lock:
            last = self._cooldown.get((kind, subject))
            if last is not None and now - last < self.config.cooldown_s:
                return
            self._cooldown[(kind, subject)] = now
            self._cooldown.move_to_end((kind, subject))
            _cap(self._cooldown)  # type: ignore[arg-type]
            self.alerts[kind] = self.alerts.get(kind, 0) + 1
        log.warning("intrusion alert kind=%s subject=%s tenant=%s detail=%s", kind, subject, tenant, dict(detail))
        try:
            self._sink(Alert(kind, subject, tenant, detail))
        except Exception:  # an alert must never break the call that raised it
            log.exception("alert sink failed kind=%s", kind)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "alerts": dict(self.alerts),
                "rate_limited": dict(self.rate_limited),
                "auth_failures": self.auth_failures,
            }

    # --- state ------------------------------------------------------------------------------------------

    def _window(self, table: OrderedDict[str, _Window], subject: str, now: float) -> _Window:
        w = table.get(subject)
        if w is None:
            w = table[subject] = _Window(now)
            _cap(table)
        table.move_to_end(subject)
        return w

    def _baseline(
        self,
        table: OrderedDict[str, _Baseline],
        subject: str,
        now: float,
        on_roll: Callable[[str, _Baseline], None] | None = None,
    ) -> _Baseline:
        b = table.get(subject)
        if b is None:
            b = table[subject] = _Baseline(window_start=now)
            _cap(table)
        elif now - b.window_start >= self.config.baseline_window_s:
            if on_roll is not None:
                on_roll(subject, b)
            b.roll(now, self.config.baseline_window_s)
        table.move_to_end(subject)
        return b

    def _maybe_save(self, now: float) -> None:
        if self._dirty and now - self._saved_at >= 60.0:
            self.save()

    def save(self) -> None:
        """Write the baselines (atomically); called every minute of activity and at close."""
        if self._state_path is None:
            return
        with self._lock:
            doc = {
                "version": 1,
                "reads": {k: b.to_json() for k, b in self._reads.items()},
                "uploads": {k: b.to_json() for k, b in self._uploads.items()},
                "entropy": {k: [r.ewma, r.history] for k, r in self._entropy_usual.items()},
                "new_fraction": {k: [r.ewma, r.history] for k, r in self._new_fraction.items()},
                "compression": {k: [r.ewma, r.history] for k, r in self._compression.items()},
            }
            self._dirty = False
            self._saved_at = self._now()
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.warning("cannot save intrusion-detection baselines path=%s error=%r", self._state_path, str(exc))

    def _load(self) -> None:
        if self._state_path is None or not self._state_path.exists():
            return
        try:
            doc = json.loads(self._state_path.read_text())
            now = self._now()
            for k, d in doc.get("reads", {}).items():
                self._reads[k] = _Baseline.from_json(d, now)
            for k, d in doc.get("uploads", {}).items():
                self._uploads[k] = _Baseline.from_json(d, now)
            for name, table in (
                ("entropy", self._entropy_usual),
                ("new_fraction", self._new_fraction),
                ("compression", self._compression),
            ):
                for k, (ewma, history) in doc.get(name, {}).items():
                    table[k] = _Ratio(float(ewma), int(history))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Baselines only make alerts smarter; starting without them is safe.
            log.warning("intrusion-detection baselines unreadable, starting fresh error=%r", str(exc))
