"""forget: restic's snapshot retention policy, ported rule for rule.

Source of the semantics: restic's `internal/restic/snapshot_policy.go` (ApplyPolicy) and the
forget documentation. Snapshots are sorted newest first (stable), then each is kept if any rule
matches:

- `--keep-tag`: it has all tags of one of the tag lists (not counted);
- `--keep-within D`: its time is strictly after (latest - D), latest being the newest snapshot
  not in the future; D is years/months/days/hours applied like Go's AddDate, then Add(-hours);
- `--keep-last/-hourly/-daily/-weekly/-monthly/-yearly N`: a bucket function maps the time to a
  calendar key (for "last" the position itself); a snapshot whose key differs from the last key
  kept by that rule is kept while the rule has counts left (-1 = unlimited), and the oldest
  snapshot is also kept while the rule has counts left;
- `--keep-within-hourly/... D`: within D of latest and a new key for that rule (no count).

Calendar keys use each snapshot's own UTC offset (restic evaluates the time zone stored with it);
weeks are ISO weeks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orbitvault.client.snapshot import Snapshot
from orbitvault.errors import InvalidArgument

_DUR_RE = re.compile(r"(\d+)([ymdh])")


@dataclass(frozen=True, slots=True)
class Duration:
    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, s: str) -> Duration:
        s = s.strip()
        if not s or _DUR_RE.sub("", s):
            raise InvalidArgument(f"bad duration {s!r}: use a number of y, m, d, h, e.g. 1y2m3d4h")
        vals = {"y": 0, "m": 0, "d": 0, "h": 0}
        for num, unit in _DUR_RE.findall(s):
            vals[unit] += int(num)
        return cls(vals["y"], vals["m"], vals["d"], vals["h"])

    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        return (
            "".join(
                f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")) if v
            )
            or "0h"
        )

    def subtract_from(self, t: datetime) -> datetime:
        """t.AddDate(-y, -m, -d).Add(-h hours), with Go's normalisation of impossible dates."""
        y = t.year - self.years
        m = t.month - self.months
        y += (m - 1) // 12
        m = (m - 1) % 12 + 1
        base = t.replace(year=y, month=m, day=1)
        return base + timedelta(days=t.day - 1 - self.days) - timedelta(hours=self.hours)


@dataclass
class ExpirePolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = field(default_factory=Duration)
    within_hourly: Duration = field(default_factory=Duration)
    within_daily: Duration = field(default_factory=Duration)
    within_weekly: Duration = field(default_factory=Duration)
    within_monthly: Duration = field(default_factory=Duration)
    within_yearly: Duration = field(default_factory=Duration)
    tags: list[list[str]] = field(default_factory=list)

    def empty(self) -> bool:
        if self.tags:
            return False
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        durs = (
            self.within,
            self.within_hourly,
            self.within_daily,
            self.within_weekly,
            self.within_monthly,
            self.within_yearly,
        )
        return not any(counts) and all(d.zero() for d in durs)

    def __str__(self) -> str:
        keeps = []
        for n, what in (
            (self.last, "latest"),
            (self.hourly, "hourly"),
            (self.daily, "daily"),
            (self.weekly, "weekly"),
            (self.monthly, "monthly"),
            (self.yearly, "yearly"),
        ):
            if n > 0:
                keeps.append(f"{n} {what}")
            elif n == -1:
                keeps.append(f"all {what}")
        s = f"{', '.join(keeps)} snapshots" if keeps else ""
        for d, what in (
            (self.within_hourly, "hourly"),
            (self.within_daily, "daily"),
            (self.within_weekly, "weekly"),
            (self.within_monthly, "monthly"),
            (self.within_yearly, "yearly"),
        ):
            if not d.zero():
                s += (", " if s else "") + f"{what} snapshots within {d}"
        if self.tags:
            s += (" and " if s else "") + f"all snapshots with tags {self.tags}"
        if not self.within.zero():
            s += (" and " if s else "") + f"all snapshots within {self.within} of the newest"
        return "keep " + s


def _ymdh(t: datetime, _nr: int) -> int:
    return t.year * 1000000 + t.month * 10000 + t.day * 100 + t.hour


def _ymd(t: datetime, _nr: int) -> int:
    return t.year * 10000 + t.month * 100 + t.day


def _yw(t: datetime, _nr: int) -> int:
    iso = t.isocalendar()
    return iso[0] * 100 + iso[1]


def _ym(t: datetime, _nr: int) -> int:
    return t.year * 100 + t.month


def _y(t: datetime, _nr: int) -> int:
    return t.year


def _always(_t: datetime, nr: int) -> int:
    return nr


@dataclass
class KeepReason:
    snapshot: Snapshot
    matches: list[str]
    counters: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.id, "matches": self.matches, "counters": self.counters}


def latest_time(snaps: Sequence[Snapshot], now: datetime) -> datetime | None:
    """The newest snapshot time that is not in the future."""
    latest = None
    for s in snaps:
        if s.time < now and (latest is None or s.time > latest):
            latest = s.time
    return latest


def apply_policy(
    snaps: Sequence[Snapshot], p: ExpirePolicy, *, now: datetime | None = None
) -> tuple[list[Snapshot], list[Snapshot], list[KeepReason]]:
    """(keep, remove, reasons) like restic's ApplyPolicy; keep/remove are newest first."""
    ordered = sorted(snaps, key=lambda s: s.time, reverse=True)  # stable, like sort.Stable
    if p.empty():
        return ordered, [], [KeepReason(s, ["policy is empty"], {}) for s in ordered]
    if not ordered:
        return [], [], []
    now = now or datetime.now().astimezone()
    buckets: list[list[Any]] = [
        [p.last, _always, None, "last snapshot", "last"],
        [p.hourly, _ymdh, None, "hourly snapshot", "hourly"],
        [p.daily, _ymd, None, "daily snapshot", "daily"],
        [p.weekly, _yw, None, "weekly snapshot", "weekly"],
        [p.monthly, _ym, None, "monthly snapshot", "monthly"],
        [p.yearly, _y, None, "yearly snapshot", "yearly"],
    ]
    within: list[list[Any]] = [
        [p.within_hourly, _ymdh, None, "hourly within"],
        [p.within_daily, _ymd, None, "daily within"],
        [p.within_weekly, _yw, None, "weekly within"],
        [p.within_monthly, _ym, None, "monthly within"],
        [p.within_yearly, _y, None, "yearly within"],
    ]
    latest = latest_time(ordered, now)

    def is_within(t: datetime, d: Duration) -> bool:
        # No snapshot before now: restic's latest is the zero time, so everything is "within".
        return latest is None or t > d.subtract_from(latest)

    keep: list[Snapshot] = []
    remove: list[Snapshot] = []
    reasons: list[KeepReason] = []
    last_nr = len(ordered) - 1
    for nr, cur in enumerate(ordered):
        keep_snap = False
        why: list[str] = []
        for tl in p.tags:
            if cur.has_tags(tl):
                keep_snap = True
                why.append(f"has tags {_fmt_taglist(tl)}")
        if not p.within.zero() and is_within(cur.time, p.within):
            keep_snap = True
            why.append(f"within {p.within}")
        for b in buckets:
            count, bucker, last, reason = b[0], b[1], b[2], b[3]
            if count > 0 or count == -1:
                val = bucker(cur.time, nr)
                if val != last or nr == last_nr:
                    keep_snap = True
                    b[2] = val
                    if b[0] > 0:
                        b[0] -= 1
                    why.append(reason if val != last else f"oldest {reason}")
        for w in within:
            dur, bucker, last, reason = w[0], w[1], w[2], w[3]
            if not dur.zero() and is_within(cur.time, dur):
                val = bucker(cur.time, nr)
                if val != last:
                    keep_snap = True
                    w[2] = val
                    why.append(f"{reason} {dur}")
        if keep_snap:
            keep.append(cur)
            counters = {b[4]: b[0] for b in buckets if b[0]}
            reasons.append(KeepReason(cur, why, counters))
        else:
            remove.append(cur)
    return keep, remove, reasons


def _fmt_taglist(tl: Sequence[str]) -> str:
    return "[" + ", ".join(tl) + "]"


def parse_count(value: str | int | None) -> int:
    """A --keep-* count: a non-negative number or "unlimited" (-1)."""
    if value is None:
        return 0
    if isinstance(value, int):
        n = value
    elif value.strip().lower() == "unlimited":
        return -1
    else:
        try:
            n = int(value)
        except ValueError:
            raise InvalidArgument(f"bad count {value!r}: a number or 'unlimited'") from None
    if n < -1:
        raise InvalidArgument(f"negative count {n} (use 'unlimited' to keep all)")
    return n
