"""Time values used across `orbitvault.orbit`: float POSIX seconds (UTC).

Why floats and not aware datetimes: the hot paths (coarse scans, bisection, the simulated clock's
event heap) do arithmetic on millions of instants, which is cheap on floats and slow on datetimes;
both DTN contact plan formats count whole seconds; and POSIX seconds convert to SGP4's Julian
dates without going through calendar fields. Like POSIX, these seconds ignore leap seconds (every
day is 86 400 s), which is also how TLE epochs and ION/HDTN plans are read in practice. Datetimes
appear only at the edges: parsing user input and formatting for people.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from orbitvault.errors import InvalidArgument

Timestamp = float
"""POSIX seconds, UTC (leap seconds not counted)."""

JD_UNIX_EPOCH = 2440587.5
"""Julian date of 1970-01-01T00:00:00 UTC."""

DAY = 86400.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}


def to_jd(t: Timestamp) -> tuple[float, float]:
    """Split a timestamp into SGP4's (whole Julian date, day fraction) to keep sub-ms precision."""
    days = math.floor(t / DAY)
    return JD_UNIX_EPOCH + days, (t - days * DAY) / DAY


def to_datetime(t: Timestamp) -> datetime:
    """Aware UTC datetime for display and calendar maths."""
    return datetime.fromtimestamp(t, tz=UTC)


def from_datetime(dt: datetime) -> Timestamp:
    """Timestamp of an aware datetime; naive datetimes are refused rather than guessed."""
    if dt.tzinfo is None:
        raise InvalidArgument(f"naive datetime {dt.isoformat()}: give a timezone (e.g. UTC, 'Z')")
    return dt.timestamp()


def parse_time(text: str) -> Timestamp:
    """Parse ISO 8601 (`2026-11-01T00:00:00Z`; no zone means UTC) or `now`."""
    s = text.strip()
    if s.lower() == "now":
        return datetime.now(tz=UTC).timestamp()
    try:
        dt = datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        raise InvalidArgument(f"cannot parse time {text!r}: use ISO 8601 like 2026-11-01T00:00:00Z, or 'now'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_duration(text: str) -> float:
    """Parse `90`, `90s`, `15m`, `6h`, `1d`, `1w` into seconds (must be > 0)."""
    m = _DURATION.match(text.lower())
    if not m:
        raise InvalidArgument(f"cannot parse duration {text!r}: use e.g. 3600, 90m, 6h, 1d")
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise InvalidArgument(f"duration {text!r} must be positive")
    return seconds


def format_time(t: Timestamp, *, seconds: bool = True) -> str:
    """`2026-11-01T00:00:00Z` (whole seconds, rounded), for tables and files."""
    dt = to_datetime(round(t))
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%dT%H:%MZ")


def format_duration(seconds: float) -> str:
    """`1h02m03s` / `7m12s` / `45s`: compact, for tables."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"
