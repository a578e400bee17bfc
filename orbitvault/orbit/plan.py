"""Contact plans: windows in which one node can send to another, read and written as ION or HDTN.

A `Contact` is directional (source -> dest) with a rate in bytes/s and a one-way light time (OWLT)
in seconds, as in both DTN formats. Plans built from the model hold whole seconds only, rounded
inwards (start up, end down: a plan never promises a link that is not there) and OWLT rounded up
(never earlier than physics allows; LEO links are milliseconds, so 1 s). That is exactly what ION
and HDTN carry, which makes model -> ION -> HDTN -> model lossless.

ION (`ionadmin` contact plan lines):
    a contact <start> <stop> <from> <to> <bytes/s> [<confidence>]
    a range <start> <stop> <a> <b> <owlt seconds>
Times are `+seconds` relative to the plan epoch or absolute `yyyy/mm/dd-hh:mm:ss` UTC; both are
read, absolute is written (unambiguous whenever ionadmin loads it). A range applies both ways
unless the reverse direction has its own. orbitvault adds comment lines ION ignores:
`# orbitvault epoch <ISO 8601>` and `# orbitvault node <number> <name>`.

HDTN (router contact plan JSON): {"contacts": [{"contact", "source", "dest", "startTime",
"endTime", "rateBitsPerSec", "owlt"}]}, times in seconds relative to the plan epoch, rate in *bits*
per second. orbitvault adds an "orbitvault" object with the epoch and the node names, which HDTN
ignores. Contact numbers are positional (the plan's sorted order).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.frames import C_KM_S
from orbitvault.orbit.model import Constellation, NodeMap
from orbitvault.orbit.passes import IslWindow, Pass, predict_all
from orbitvault.orbit.timeutil import Timestamp, format_time, parse_time, to_datetime


@dataclass(frozen=True, order=True)
class Contact:
    """`source` can send to `dest` at `rate` bytes/s from `start` to `end` (POSIX seconds)."""

    start: Timestamp
    end: Timestamp
    source: str
    dest: str
    rate: float
    owlt: float = 0.0
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise InvalidArgument(f"contact {self.source}->{self.dest}: end {self.end} not after start {self.start}")
        if self.rate < 0 or self.owlt < 0:
            raise InvalidArgument(f"contact {self.source}->{self.dest}: rate and owlt must not be negative")
        if not 0.0 <= self.confidence <= 1.0:
            raise InvalidArgument(f"contact {self.source}->{self.dest}: confidence must be in [0, 1]")

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def capacity(self) -> float:
        """Bytes the window can carry at its rate."""
        return self.rate * self.duration


@dataclass
class ContactPlan:
    """Contacts sorted by (start, end, source, dest), the node map, and the epoch for relative times."""

    contacts: list[Contact]
    nodes: NodeMap = field(default_factory=NodeMap)
    epoch: Timestamp | None = None

    def __post_init__(self) -> None:
        self.contacts = sorted(self.contacts)
        if self.epoch is not None:
            self.epoch = float(math.floor(self.epoch))

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def from_windows(
        cls,
        constellation: Constellation,
        passes: Iterable[Pass],
        isl_windows: Iterable[IslWindow] = (),
        *,
        epoch: Timestamp | None = None,
    ) -> ContactPlan:
        """Uplink + downlink contacts per pass and both directions per ISL window, whole seconds."""
        contacts: list[Contact] = []
        for p in passes:
            start, end = math.ceil(p.aos), math.floor(p.los)
            if end <= start:
                continue
            st = constellation.station(p.station)
            owlt = _owlt(p.max_range_km)
            contacts.append(Contact(start, end, st.name, p.satellite, float(round(st.uplink_rate)), owlt))
            contacts.append(Contact(start, end, p.satellite, st.name, float(round(st.downlink_rate)), owlt))
        rate = float(round(constellation.isl.rate))
        for w in isl_windows:
            start, end = math.ceil(w.start), math.floor(w.end)
            if end <= start:
                continue
            owlt = _owlt(w.max_range_km)
            contacts.append(Contact(start, end, w.a, w.b, rate, owlt))
            contacts.append(Contact(start, end, w.b, w.a, rate, owlt))
        if epoch is None and contacts:
            epoch = min(c.start for c in contacts)
        return cls(contacts, constellation.nodes(), epoch)

    @classmethod
    def from_model(
        cls,
        constellation: Constellation,
        start: Timestamp,
        end: Timestamp,
        *,
        isl: bool = True,
        step: float = 30.0,
    ) -> ContactPlan:
        """Predict passes (and ISL windows) over [start, end] and turn them into a plan."""
        passes, windows = predict_all(constellation, start, end, step=step, isl=isl)
        return cls.from_windows(constellation, passes, windows, epoch=start)

    # --- queries ---------------------------------------------------------------------------------

    def between(self, source: str, dest: str) -> list[Contact]:
        return [c for c in self.contacts if c.source == source and c.dest == dest]

    def involving(self, node: str) -> list[Contact]:
        return [c for c in self.contacts if node in (c.source, c.dest)]

    def within(self, start: Timestamp, end: Timestamp) -> ContactPlan:
        """Contacts overlapping [start, end], clipped to it."""
        out = []
        for c in self.contacts:
            s, e = max(c.start, start), min(c.end, end)
            if e > s:
                out.append(replace(c, start=s, end=e))
        return ContactPlan(out, self.nodes, self.epoch)

    def node_names(self) -> list[str]:
        """Every node named in the map or used by a contact, in node-number order."""
        names = self.nodes.names()
        used = {n for c in self.contacts for n in (c.source, c.dest)} - set(names)
        extra = sorted(used, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
        return names + extra

    def to_dict(self) -> dict[str, Any]:
        """orbitvault's own JSON view (names, ISO and POSIX times, bytes/s): for `--json`."""
        return {
            "epoch": format_time(self.epoch) if self.epoch is not None else None,
            "nodes": [{"name": n, "node": num} for n, num in self.nodes.items()],
            "contacts": [
                {
                    "source": c.source,
                    "dest": c.dest,
                    "start": format_time(c.start),
                    "end": format_time(c.end),
                    "start_unix": c.start,
                    "end_unix": c.end,
                    "duration_s": c.duration,
                    "rate_bytes_per_s": c.rate,
                    "capacity_bytes": c.capacity,
                    "owlt_s": c.owlt,
                    "confidence": c.confidence,
                }
                for c in self.contacts
            ],
        }

    # --- ION -------------------------------------------------------------------------------------

    def to_ion(self) -> str:
        nodes = self._complete_nodes()
        lines = [f"# orbitvault contact plan: {len(self.contacts)} contacts"]
        if self.epoch is not None:
            lines.append(f"# orbitvault epoch {format_time(self.epoch)}")
        lines += [f"# orbitvault node {num} {name}" for name, num in nodes.items() if name != str(num)]
        ranges: dict[tuple[int, int, int, int], int] = {}
        for c in self.contacts:
            a, b = nodes.number(c.source), nodes.number(c.dest)
            start, end = _whole(c.start), _whole(c.end)
            line = f"a contact {_ion_time(start)} {_ion_time(end)} {a} {b} {math.floor(c.rate)}"
            if c.confidence != 1.0:
                line += f" {c.confidence:g}"
            lines.append(line)
            key = (start, end, min(a, b), max(a, b))
            ranges[key] = max(ranges.get(key, 0), math.ceil(c.owlt))
        for (start, end, a, b), owlt in sorted(ranges.items()):
            lines.append(f"a range {_ion_time(start)} {_ion_time(end)} {a} {b} {owlt}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_ion(
        cls, text: str, *, epoch: Timestamp | None = None, nodes: NodeMap | None = None, source: str = "ION plan"
    ) -> ContactPlan:
        """Parse ION contact plan lines; any malformed line raises InvalidArgument naming it."""
        node_map = NodeMap(nodes.items()) if nodes else NodeMap()
        declared_epoch: Timestamp | None = None
        raw_contacts: list[tuple[int, float, float, int, int, float, float]] = []
        raw_ranges: dict[tuple[int, int], list[tuple[float, float, float]]] = defaultdict(list)
        pending: list[tuple[int, list[str]]] = []
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                declared_epoch = _ion_comment(line, n, source, node_map, declared_epoch)
                continue
            tokens = line.split()
            if tokens[0] != "a" or len(tokens) < 2 or tokens[1] not in ("contact", "range"):
                raise InvalidArgument(
                    f"{source} line {n}: unsupported command {line!r}: only 'a contact', 'a range' "
                    "and '#' comment lines are read"
                )
            pending.append((n, tokens))
        ref = epoch if epoch is not None else declared_epoch
        for n, tokens in pending:
            where = f"{source} line {n}"
            kind = tokens[1]
            expected = (7, 8) if kind == "contact" else (7,)
            if len(tokens) not in expected:
                usage = (
                    "a contact <start> <stop> <from> <to> <bytes/s> [<confidence>]"
                    if kind == "contact"
                    else "a range <start> <stop> <a> <b> <owlt>"
                )
                raise InvalidArgument(f"{where}: expected '{usage}', got {len(tokens)} fields")
            start = _parse_ion_time(tokens[2], ref, where)
            stop = _parse_ion_time(tokens[3], ref, where)
            if stop <= start:
                raise InvalidArgument(f"{where}: stop time {tokens[3]} is not after start time {tokens[2]}")
            a = _parse_node(tokens[4], where)
            b = _parse_node(tokens[5], where)
            value = _parse_number(tokens[6], where, "rate" if kind == "contact" else "owlt")
            if kind == "contact":
                conf = _parse_number(tokens[7], where, "confidence") if len(tokens) == 8 else 1.0
                if conf > 1.0:
                    raise InvalidArgument(f"{where}: confidence {tokens[7]} must be in [0, 1]")
                raw_contacts.append((n, start, stop, a, b, value, conf))
            else:
                raw_ranges[(a, b)].append((start, stop, value))
        contacts = []
        for _n, start, stop, a, b, rate, conf in raw_contacts:
            owlt = _range_for(raw_ranges, start, a, b)
            contacts.append(Contact(start, stop, node_map.name(a), node_map.name(b), rate, owlt, conf))
        if ref is None and contacts:
            ref = min(c.start for c in contacts)
        return cls(contacts, node_map, ref)

    # --- HDTN ------------------------------------------------------------------------------------

    def to_hdtn(self) -> str:
        nodes = self._complete_nodes()
        epoch = self.epoch if self.epoch is not None else (self.contacts[0].start if self.contacts else 0.0)
        epoch = float(math.floor(epoch))
        out = []
        for i, c in enumerate(self.contacts):
            start, end = _whole(c.start) - int(epoch), _whole(c.end) - int(epoch)
            if start < 0:
                raise InvalidArgument(
                    f"contact {c.source}->{c.dest} at {format_time(c.start)} starts before the plan epoch "
                    f"{format_time(epoch)}; HDTN times cannot be negative"
                )
            out.append(
                {
                    "contact": i,
                    "source": nodes.number(c.source),
                    "dest": nodes.number(c.dest),
                    "startTime": start,
                    "endTime": end,
                    "rateBitsPerSec": round(c.rate * 8),
                    "owlt": math.ceil(c.owlt),
                }
            )
        doc = {
            "contacts": out,
            "orbitvault": {
                "epoch": format_time(epoch),
                "nodes": [{"node": num, "name": name} for name, num in nodes.items() if name != str(num)],
            },
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_hdtn(
        cls, text: str, *, epoch: Timestamp | None = None, nodes: NodeMap | None = None, source: str = "HDTN plan"
    ) -> ContactPlan:
        """Parse an HDTN contact plan; times are relative to `epoch` (or the file's own)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"{source} line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("contacts"), list):
            raise InvalidArgument(f"{source}: expected an object with a 'contacts' list")
        node_map = NodeMap(nodes.items()) if nodes else NodeMap()
        meta = doc.get("orbitvault", {})
        declared: Timestamp | None = None
        if isinstance(meta, dict):
            if "epoch" in meta:
                declared = parse_time(str(meta["epoch"]))
            for entry in meta.get("nodes", []):
                if not isinstance(entry, dict) or "node" not in entry or "name" not in entry:
                    raise InvalidArgument(f"{source}: orbitvault.nodes entries need 'node' and 'name'")
                node_map.add(str(entry["name"]), _json_int(entry["node"], f"{source}: orbitvault.nodes", "node"))
        ref = epoch if epoch is not None else declared
        if ref is None:
            raise InvalidArgument(f"{source}: HDTN times are relative; give the epoch they count from (e.g. --epoch)")
        contacts = []
        for i, entry in enumerate(doc["contacts"]):
            where = f"{source}: contacts[{i}]"
            if not isinstance(entry, dict):
                raise InvalidArgument(f"{where}: expected an object")
            missing = [k for k in ("source", "dest", "startTime", "endTime", "rateBitsPerSec") if k not in entry]
            if missing:
                raise InvalidArgument(f"{where}: missing {', '.join(missing)}")
            start = _json_num(entry["startTime"], where, "startTime")
            end = _json_num(entry["endTime"], where, "endTime")
            if end <= start:
                raise InvalidArgument(f"{where}: endTime {end} is not after startTime {start}")
            rate_bits = _json_num(entry["rateBitsPerSec"], where, "rateBitsPerSec")
            owlt = _json_num(entry.get("owlt", 0), where, "owlt")
            a = _json_int(entry["source"], where, "source")
            b = _json_int(entry["dest"], where, "dest")
            if a <= 0 or b <= 0:
                raise InvalidArgument(f"{where}: node numbers must be positive")
            contacts.append(Contact(ref + start, ref + end, node_map.name(a), node_map.name(b), rate_bits / 8, owlt))
        return cls(contacts, node_map, ref)

    # --- helpers ---------------------------------------------------------------------------------

    def _complete_nodes(self) -> NodeMap:
        """The plan's node map plus the numeric names contacts use (a name that is just its number
        needs no mapping line, which keeps plans read from foreign files unchanged on rewrite)."""
        nodes = NodeMap(self.nodes.items())
        for c in self.contacts:
            for name in (c.source, c.dest):
                if name not in nodes:
                    nodes.add(name, nodes.number(name))
        return nodes


def read_plan(path: str | Path, *, epoch: Timestamp | None = None, nodes: NodeMap | None = None) -> ContactPlan:
    """Read an ION or HDTN plan file (HDTN if the content is a JSON object)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot read contact plan {p}: {e.strerror or e}") from None
    if text.lstrip().startswith("{"):
        return ContactPlan.from_hdtn(text, epoch=epoch, nodes=nodes, source=str(p))
    return ContactPlan.from_ion(text, epoch=epoch, nodes=nodes, source=str(p))


def write_plan(plan: ContactPlan, path: str | Path, fmt: str) -> None:
    """Write `plan` as 'ion' or 'hdtn'."""
    if fmt not in ("ion", "hdtn"):
        raise InvalidArgument(f"unknown contact plan format {fmt!r}: use 'ion' or 'hdtn'")
    text = plan.to_ion() if fmt == "ion" else plan.to_hdtn()
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot write contact plan {path}: {e.strerror or e}") from None


def _owlt(range_km: float) -> float:
    return float(max(1, math.ceil(range_km / C_KM_S)))


def _whole(t: Timestamp) -> int:
    return round(t)


_ION_ABS = re.compile(r"^(\d{4})/(\d{2})/(\d{2})-(\d{2}):(\d{2}):(\d{2})$")
_ION_REL = re.compile(r"^\+(\d+(?:\.\d+)?)$")


def _ion_time(t: int) -> str:
    return to_datetime(t).strftime("%Y/%m/%d-%H:%M:%S")


def _parse_ion_time(token: str, epoch: Timestamp | None, where: str) -> Timestamp:
    m = _ION_REL.match(token)
    if m:
        if epoch is None:
            raise InvalidArgument(
                f"{where}: relative time {token} needs an epoch: pass one (e.g. --epoch) or add "
                "'# orbitvault epoch <ISO time>'"
            )
        return epoch + float(m.group(1))
    m = _ION_ABS.match(token)
    if m:
        try:
            return datetime(*(int(g) for g in m.groups()), tzinfo=UTC).timestamp()  # type: ignore[misc]
        except ValueError as e:
            raise InvalidArgument(f"{where}: invalid date {token}: {e}") from None
    raise InvalidArgument(f"{where}: time {token!r} is neither +seconds nor yyyy/mm/dd-hh:mm:ss")


def _parse_node(token: str, where: str) -> int:
    if not token.isdigit() or int(token) == 0:
        raise InvalidArgument(f"{where}: node number {token!r} must be a positive integer")
    return int(token)


def _parse_number(token: str, where: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise InvalidArgument(f"{where}: {what} {token!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{where}: {what} {token!r} must be a non-negative number")
    return value


def _ion_comment(line: str, n: int, source: str, nodes: NodeMap, epoch: Timestamp | None) -> Timestamp | None:
    tokens = line[1:].split()
    if len(tokens) < 2 or tokens[0] != "orbitvault":
        return epoch
    where = f"{source} line {n}"
    if tokens[1] == "epoch" and len(tokens) == 3:
        return parse_time(tokens[2])
    if tokens[1] == "node":
        if len(tokens) != 4:
            raise InvalidArgument(f"{where}: expected '# orbitvault node <number> <name>'")
        try:
            nodes.add(tokens[3], _parse_node(tokens[2], where))
        except InvalidArgument as e:
            raise InvalidArgument(f"{where}: {e}") from None
    return epoch


def _range_for(
    ranges: Mapping[tuple[int, int], list[tuple[float, float, float]]], start: float, a: int, b: int
) -> float:
    """OWLT of the range covering a contact's start: same direction first, then the reverse."""
    for pair in ((a, b), (b, a)):
        for rs, re_, owlt in ranges.get(pair, ()):
            if rs <= start < re_:
                return owlt
    return 0.0


def _json_num(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{where}: {key} must be a non-negative number, got {value!r}")
    return float(value)


def _json_int(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}: {key} must be an integer, got {value!r}")
    return value
