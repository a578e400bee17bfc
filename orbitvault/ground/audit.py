"""The gateway's audit log: append-only, tamper-evident, one JSON line per mutating call.

Every bucket and object create/delete, retention and legal-hold change, tenant/key administration,
MFA change, and intrusion alert becomes one entry: who (principal: the TLS identity or address, the
tenant, the API key id), what (action, target, details), the outcome (ok / denied / failed with the
status) and when. Denied attempts are recorded too: they are what an investigation needs most.

Tamper evidence: entries form a hash chain. Each carries `prev` (the previous entry's `hash`) and
its own `hash` = keyed blake3 over its canonical JSON without `hash`, keyed by a key derived from
the master key (`MasterKey.derive("audit")`). Editing, deleting, inserting or reordering lines
breaks the chain at the first line concerned, and without the master key nobody can re-forge the
rest of it. Cutting entries off the *end* leaves a valid chain, so the sequence number and hash of
the newest entry (the head) are also kept in the catalog (`meta/audit_head`), which `verify`
compares with the last line. Someone holding the master key and write access to both files can
rewrite history; ship the log off the gateway (or `chattr +a` it) to defend against that too.

Durability: each entry is one `write` to a file opened with O_APPEND, then `fsync`, under an
exclusive `flock`, so the server and admin CLI processes append to one chain. A crash mid-write
leaves a torn last line without newline: the next append cuts it off and records that it did
(`audit.torn_tail`, with the removed bytes' length and hash), so nothing is lost silently.

Failing closed: if an append fails (disk full, permissions), the operation that just happened is
not undone, but `check_writable` then refuses further mutating calls (UNAVAILABLE) until the log
takes writes again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3

from orbitvault.errors import OrbitVaultError, Status, Unavailable

log = logging.getLogger("orbitvault.audit")

GENESIS = "0" * 64
FIELDS = ("seq", "time_ms", "action", "target", "outcome", "status", "principal", "tenant", "key_id", "detail")
MAX_TEXT = 1200  # a bucket plus a 1024-byte key fits
MAX_DETAIL_VALUE = 300
MAX_LINE = 8192
_TAIL = 2 * MAX_LINE


class HeadStore(Protocol):
    """Where the newest entry's (seq, hash) is kept apart from the log (the catalog's meta table)."""

    def get_meta(self, key: str) -> bytes | None: ...
    def put_meta(self, key: str, value: bytes) -> None: ...


HEAD_KEY = "audit_head"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `verify` found: `ok`, or the first bad line (1-based) and what is wrong with it."""

    entries: int
    ok: bool
    first_bad_line: int | None = None
    problem: str = ""
    head_seq: int | None = None
    note: str = ""


def outcome_of(exc: BaseException | None) -> tuple[str, str, str]:
    """(outcome, status, reason) of a call that raised `exc` (None: it succeeded)."""
    if exc is None:
        return "ok", "OK", ""
    status = exc.status if isinstance(exc, OrbitVaultError) else Status.INTERNAL
    denied = {Status.PERMISSION_DENIED, Status.UNAUTHENTICATED, Status.FAILED_PRECONDITION, Status.RESOURCE_EXHAUSTED}
    outcome = "denied" if status in denied else "failed"
    return outcome, status.value, _clip(str(exc) or type(exc).__name__, MAX_DETAIL_VALUE)


class AuditLog:
    """Appends hash-chained entries to `path`; thread- and process-safe."""

    def __init__(
        self,
        path: str | Path,
        key: bytes,
        *,
        head: HeadStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._head = head
        self._clock = clock
        self._lock = threading.Lock()
        self._broken: str = ""
        self.appended = 0
        self.failures = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self._cached: tuple[int, int, str] | None = None  # (file size, seq, hash) after our last append

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # --- appending ------------------------------------------------------------------------------

    def append(
        self,
        action: str,
        *,
        target: str = "",
        outcome: str = "ok",
        status: str = "OK",
        principal: str = "",
        tenant: str = "",
        key_id: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one entry (fsynced) and return it. Raises OSError if the log cannot be written;
        the log then counts as broken until an append succeeds again."""
        entry: dict[str, Any] = {
            "action": _clip(action, 64),
            "target": _clip(target, MAX_TEXT),
            "outcome": _clip(outcome, 32),
            "status": _clip(status, 32),
            "principal": _clip(principal, 256),
            "tenant": _clip(tenant, 128),
            "key_id": _clip(key_id, 64),
            "detail": {_clip(str(k), 64): _detail_value(v) for k, v in (detail or {}).items()},
        }
        with self._lock:
            try:
                written = self._append_locked(entry)
            except OSError as exc:
                self.failures += 1
                self._broken = exc.strerror or str(exc)
                log.error("audit append failed path=%s error=%r", self.path, self._broken)
                raise
            self._broken = ""
            self.appended += 1
            return written

    def _append_locked(self, entry: dict[str, Any]) -> dict[str, Any]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            if self._cached is not None and self._cached[0] == size:
                seq, prev = self._cached[1], self._cached[2]
            else:
                seq, prev, size = self._tail(size)
            entry = {**entry, "seq": seq + 1, "time_ms": int(self._clock() * 1000), "prev": prev}
            entry["hash"] = self._hash(entry)
            line = canonical(entry) + b"\n"
            if len(line) > MAX_LINE:  # cannot happen with the clipping above; never write one anyway
                raise OSError(f"audit entry of {len(line)} bytes exceeds {MAX_LINE}")
            os.write(self._fd, line)
            os.fsync(self._fd)
            self._cached = (size + len(line), entry["seq"], entry["hash"])
            if self._head is not None:
                self._head.put_meta(HEAD_KEY, f"{entry['seq']}:{entry['hash']}".encode())
            return entry
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _tail(self, size: int) -> tuple[int, str, int]:
        """(seq, hash, size) of the last complete entry; a torn last line is cut off and recorded."""
        if size == 0:
            return 0, GENESIS, 0
        start = max(0, size - _TAIL)
        data = os.pread(self._fd, size - start, start)
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            torn = data[cut + 1 :] if cut >= 0 else data
            new_size = size - len(torn)
            os.ftruncate(self._fd, new_size)
            os.fsync(self._fd)
            log.warning("audit log had a torn last line bytes=%d; cut off", len(torn))
            seq, prev, _ = self._tail(new_size)
            note = {
                "action": "audit.torn_tail",
                "target": str(self.path),
                "outcome": "ok",
                "status": "OK",
                "principal": "gateway",
                "tenant": "",
                "key_id": "",
                "detail": {"bytes": len(torn), "blake3": blake3.blake3(torn).hexdigest()},
                "seq": seq + 1,
                "time_ms": int(self._clock() * 1000),
                "prev": prev,
            }
            note["hash"] = self._hash(note)
            line = canonical(note) + b"\n"
            os.write(self._fd, line)
            os.fsync(self._fd)
            return note["seq"], note["hash"], new_size + len(line)
        lines = data[:-1].rsplit(b"\n", 1)
        last = lines[-1]
        try:
            entry = json.loads(last)
            return int(entry["seq"]), str(entry["hash"]), size
        except (ValueError, KeyError, TypeError):
            # A damaged last line: continue the chain from it anyway (verify will name it), never
            # rewrite what is there.
            return -1, blake3.blake3(last, key=self._key).hexdigest(), size

    def _hash(self, entry: Mapping[str, Any]) -> str:
        return entry_hash(self._key, entry)

    # --- failing closed --------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Refuse (Unavailable) while the last append failed and a new attempt fails too."""
        if not self._broken:
            return
        try:
            self.append("audit.recovered", principal="gateway", detail={"after_failures": self.failures})
        except OSError:
            raise Unavailable(
                f"the audit log {self.path} cannot be written ({self._broken}); mutating calls are refused "
                "until it can: free disk space or fix its permissions"
            ) from None

    @property
    def broken(self) -> bool:
        """True while the last append failed."""
        return bool(self._broken)

    # --- reading ---------------------------------------------------------------------------------

    def head(self) -> tuple[int, str] | None:
        return read_head(self._head) if self._head is not None else None


def canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(key: bytes, entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return blake3.blake3(canonical(body), key=key).hexdigest()


def read_head(store: HeadStore) -> tuple[int, str] | None:
    raw = store.get_meta(HEAD_KEY)
    if not raw:
        return None
    seq, _, digest = raw.decode().partition(":")
    return int(seq), digest


def entries(path: str | Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line without its newline, complete) of the log; only the last may be torn."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            complete = line.endswith(b"\n")
            yield n, line[:-1] if complete else line, complete


def verify(path: str | Path, key: bytes, *, head: tuple[int, str] | None = None) -> VerifyReport:
    """Walk the chain; the first line that does not follow is reported, with why.

    `head` is the (seq, hash) the catalog recorded for the newest entry: a log that ends before
    it has lost entries at the end; a log one entry past it crashed between the two writes.
    """
    prev = GENESIS
    count = 0
    last_hash = GENESIS

    def bad(line: int, problem: str) -> VerifyReport:
        return VerifyReport(count, False, line, problem, head[0] if head else None)

    p = Path(path)
    if not p.exists():
        if head is not None and head[0] > 0:
            return bad(1, f"the audit log {p} is missing, but the catalog records {head[0]} entries")
        return VerifyReport(0, True, head_seq=None, note="no audit log yet")
    for n, raw, complete in entries(p):
        if not complete:
            return bad(
                n, "torn last line (a crash mid-write); the gateway cuts it off and records it at its next write"
            )
        try:
            entry = json.loads(raw)
        except ValueError:
            return bad(n, "not a JSON entry (edited or damaged)")
        if not isinstance(entry, dict) or set(entry) != {*FIELDS, "prev", "hash"}:
            return bad(n, "not an audit entry: fields are missing or added (edited)")
        if canonical(entry) != raw:
            return bad(n, "not in canonical form: the line was edited")
        if entry["hash"] != entry_hash(key, entry):
            return bad(n, "modified: its hash does not match its content (or another master key wrote it)")
        if entry["seq"] != n:
            moved = "deleted before it" if isinstance(entry["seq"], int) and entry["seq"] > n else "inserted or moved"
            return bad(n, f"sequence {entry['seq']} where {n} belongs: entries were {moved} (or the log reordered)")
        if entry["prev"] != prev:
            return bad(
                n, "does not follow the previous line (prev hash differs): entries deleted, inserted or reordered"
            )
        prev = last_hash = entry["hash"]
        count += 1
    note = ""
    if head is not None:
        seq, digest = head
        if count < seq:
            return bad(
                count + 1, f"the log ends at entry {count} but the catalog recorded {seq}: entries were cut off the end"
            )
        if count == seq and last_hash != digest:
            return bad(count, "the last entry differs from the one the catalog recorded: it was replaced")
        if count > seq + 1:
            note = f"{count - seq} entries past the catalog's head (written by a process without the catalog?)"
        elif count == seq + 1:
            note = "one entry past the catalog's head (a crash between the two writes)"
    return VerifyReport(count, True, None, "", head[0] if head else None, note)


def _clip(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detail_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int) or (isinstance(v, float) and v == v and abs(v) != float("inf")):
        return v
    return _clip(str(v), MAX_DETAIL_VALUE)
