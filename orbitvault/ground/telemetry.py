"""What a gateway's log says happened, read back: transfers, objects durable, restores ready,
repair sweeps, objects stored.

The gateway logs one key=value line per event (`grpc/node_server.KeyValueFormatter`); times of
orbit events (`at=`, `start=`...) are the gateway's clock, simulated or not. The drill reads its
timeline and its RPO/RTO from here: the exact simulated instants the gateway acted at, which no
status poll can catch on a clock that moves a pass per real second.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One log line: its message words and its fields, in file order (`seq`)."""

    seq: int
    ts: str
    logger: str
    msg: str
    fields: dict[str, str]

    def num(self, key: str, default: float = 0.0) -> float:
        try:
            return float(self.fields[key])
        except (KeyError, ValueError):
            return default


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """An executed transfer (`transfer executed` lines of scheduled mode)."""

    purpose: str  # store | restore
    hop: str  # uplink | isl | downlink
    source: str
    dest: str
    start: float
    end: float
    arrival: float
    object: str  # object id, first 16 hex digits
    bytes: int
    resumed: bool


def parse_line(line: str, seq: int = 0) -> LogEvent | None:
    """A key=value log line, or None for anything else (tracebacks, process start banners)."""
    if not line.startswith("ts="):
        return None
    try:
        tokens = shlex.split(line)
    except ValueError:
        return None
    fields: dict[str, str] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if sep:
            fields[key] = value
    ts, logger, msg = fields.pop("ts", ""), fields.pop("logger", ""), fields.pop("msg", "")
    fields.pop("level", None)
    return LogEvent(seq, ts, logger, msg, fields)


def read_events(path: str | Path) -> list[LogEvent]:
    """Every event of a log file (missing file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [e for i, line in enumerate(text.splitlines()) if (e := parse_line(line, i)) is not None]


class LogFollower:
    """Reads a growing log file a piece at a time: each `read()` parses only what was appended
    since the last one (a drill polls the gateway's log many times a second)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._lines = 0
        self._rest = b""
        self._events: list[LogEvent] = []

    def read(self) -> GatewayLog:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()  # an unfinished last line waits for the rest
        for raw in lines:
            event = parse_line(raw.decode("utf-8", "replace"), self._lines)
            if event is not None:
                self._events.append(event)
            self._lines += 1
        return GatewayLog(self._events)


class GatewayLog:
    """Queries over a gateway's events (one file may span several runs of the gateway)."""

    def __init__(self, events: Iterable[LogEvent]) -> None:
        self.events = list(events)

    @classmethod
    def read(cls, path: str | Path) -> GatewayLog:
        return cls(read_events(path))

    def named(self, msg: str) -> Iterator[LogEvent]:
        return (e for e in self.events if e.msg == msg)

    def transfers(self) -> list[TransferRecord]:
        out = []
        for e in self.named("transfer executed"):
            f = e.fields
            out.append(
                TransferRecord(
                    f.get("purpose", ""),
                    f.get("hop", ""),
                    f.get("from", ""),
                    f.get("to", ""),
                    e.num("start"),
                    e.num("end"),
                    e.num("arrival"),
                    f.get("object", ""),
                    int(e.num("bytes")),
                    f.get("resumed") == "true",
                )
            )
        return out

    def durable_at(self) -> dict[str, float]:
        """Object id prefix -> when it became DURABLE (all shards in orbit)."""
        return {e.fields.get("object", ""): e.num("at") for e in self.named("object durable")}

    def restored_at(self) -> dict[str, list[float]]:
        """Object id prefix -> when restores of it became ready (one per restore)."""
        out: dict[str, list[float]] = {}
        for e in self.named("restore ready"):
            out.setdefault(e.fields.get("object", ""), []).append(e.num("at"))
        return out

    def stored(self) -> list[LogEvent]:
        """`object stored` events (bucket, key, version = object id prefix, bytes)."""
        return list(self.named("object stored"))

    def plan_after(self, event: LogEvent, *, settled: int = -1) -> float | None:
        """The backlog's DURABLE time predicted by the first store plan that includes the object of
        `event` (an `object stored` line) and was made after line `settled`: the first after the
        executor adopted the object (the put's own log line races the executor, so a plan logged
        after it may have been made without it), and after objects gone since (a backup's lock,
        deleted when it ends, was still in the backlog of earlier plans)."""
        version = event.fields.get("version", "")
        adopted = next((e for e in self.named("object adopted") if version and e.fields.get("object") == version), None)
        after = max(adopted.seq if adopted is not None else event.seq, settled)
        for e in self.events:
            if e.seq > after and e.msg == "store plan":
                at = e.num("durable_at", 0.0)
                return at or None
        return None

    def settled(self, prefix: str) -> int | None:
        """Line from which no object stored under key `prefix` (a backup's `locks/`) is in the
        executor's backlog any more: the last of those it adopted to be forgotten or to become
        DURABLE (a slow backup's lock may reach orbit before it is deleted), -1 when it adopted
        none; None while one it adopted is still there (its delete not yet seen by the executor).
        One never adopted was deleted before the executor saw it: no plan had it."""
        versions = {e.fields.get("version") for e in self.stored() if str(e.fields.get("key", "")).startswith(prefix)}
        adopted = {e.fields.get("object") for e in self.named("object adopted")} & versions
        gone: dict[str | None, int] = {}
        for e in self.events:
            if e.msg in ("object forgotten", "object durable"):
                gone.setdefault(e.fields.get("object"), e.seq)  # it left the backlog at the first
        if any(v not in gone for v in adopted):
            return None
        return max((gone[v] for v in adopted), default=-1)

    def shards_rebuilt(self, after_seq: int = -1) -> int:
        """Shards the repair coordinator rebuilt (its sweeps' reports) after line `after_seq`."""
        return sum(int(e.num("rebuilt")) for e in self.named("repair sweep") if e.seq > after_seq)

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else -1
