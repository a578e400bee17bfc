"""Two-line element sets: checksums, validation, parsing files, and writing TLEs from elements.

Writing TLEs ourselves (rather than shipping copied ones) lets the sample constellation be
regenerated from its orbital elements and checked by tests. The layout follows the NORAD/CelesTrak
fixed-column format: 69 characters a line, the last one a modulo-10 checksum (digits count their
value, a minus sign counts 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.timeutil import DAY, Timestamp, to_datetime

MU_WGS72_KM3_S2 = 398600.8
"""Gravitational parameter of the WGS72 constants SGP4 uses by default (`twoline2rv`)."""
RE_WGS72_KM = 6378.135


def tle_checksum(line: str) -> int:
    """Modulo-10 checksum over the first 68 columns."""
    total = 0
    for ch in line[:68]:
        if ch.isdigit():
            total += int(ch)
        elif ch == "-":
            total += 1
    return total % 10


def validate_tle(line1: str, line2: str, *, where: str = "TLE") -> None:
    """Check line numbers, lengths, matching catalog numbers and checksums; raise InvalidArgument."""
    for number, line in ((1, line1), (2, line2)):
        if len(line) != 69:
            raise InvalidArgument(f"{where}: line {number} has {len(line)} characters, a TLE line has 69")
        if not line.startswith(f"{number} "):
            raise InvalidArgument(f"{where}: line {number} must start with '{number} '")
        if not line[68].isdigit() or int(line[68]) != tle_checksum(line):
            raise InvalidArgument(f"{where}: line {number} checksum is {line[68]!r}, expected {tle_checksum(line)}")
    if line1[2:7] != line2[2:7]:
        raise InvalidArgument(f"{where}: catalog numbers differ ({line1[2:7]!r} vs {line2[2:7]!r})")


@dataclass(frozen=True)
class TleRecord:
    """One entry of a TLE file: name (from a title line, or made up) and the two lines."""

    name: str
    line1: str
    line2: str

    @property
    def catalog(self) -> int:
        return _catalog_number(self.line1[2:7])


def _catalog_number(field: str) -> int:
    """NORAD catalog number, including the Alpha-5 form (A0000 = 100000) for >= 100000."""
    f = field.strip()
    if f and f[0].isalpha():
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # Alpha-5 skips I and O
        return (letters.index(f[0].upper()) + 10) * 10000 + int(f[1:])
    return int(f)


def parse_tle_text(text: str, *, source: str = "TLE file") -> list[TleRecord]:
    """Parse 2-line or 3-line (titled) TLE text; blank lines are skipped."""
    records: list[TleRecord] = []
    lines = [(n, raw.rstrip()) for n, raw in enumerate(text.splitlines(), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    i = 0
    title: str | None = None
    while i < len(lines):
        n, line = lines[i]
        if line.startswith("1 ") and len(line) >= 60:
            if i + 1 >= len(lines) or not lines[i + 1][1].startswith("2 "):
                raise InvalidArgument(f"{source}:{n}: line 1 of a TLE is not followed by its line 2")
            line2 = lines[i + 1][1]
            validate_tle(line, line2, where=f"{source}:{n}")
            name = title if title is not None else f"SAT-{_catalog_number(line[2:7])}"
            records.append(TleRecord(name, line, line2))
            title = None
            i += 2
            continue
        if line.startswith("2 ") and len(line) >= 60:
            raise InvalidArgument(f"{source}:{n}: line 2 of a TLE without its line 1")
        if title is not None:
            raise InvalidArgument(f"{source}:{n}: expected TLE line 1 after title {title!r}, got {line!r}")
        title = line[2:].strip() if line.startswith("0 ") else line.strip()
        i += 1
    if title is not None:
        raise InvalidArgument(f"{source}: title {title!r} at the end has no TLE lines")
    return records


@dataclass(frozen=True)
class OrbitalElements:
    """Mean elements as a TLE carries them (angles in degrees, mean motion in rev/day)."""

    name: str
    catalog: int
    epoch: Timestamp
    inclination_deg: float
    raan_deg: float
    eccentricity: float
    arg_perigee_deg: float
    mean_anomaly_deg: float
    mean_motion_rev_day: float
    bstar: float = 0.0
    ndot: float = 0.0
    """First derivative of mean motion / 2, rev/day^2 (as in the TLE)."""
    element_set: int = 999
    rev_number: int = 0
    classification: str = "U"
    intl_designator: str = ""


def mean_motion_for_altitude(altitude_km: float, eccentricity: float = 0.0) -> float:
    """Mean motion (rev/day) of an orbit whose semi-major axis is altitude + Earth radius (WGS72)."""
    a = RE_WGS72_KM + altitude_km
    if a <= RE_WGS72_KM or not 0.0 <= eccentricity < 1.0:
        raise InvalidArgument(f"no orbit at altitude {altitude_km} km, eccentricity {eccentricity}")
    return math.sqrt(MU_WGS72_KM3_S2 / a**3) * DAY / (2.0 * math.pi)


def _exp_field(x: float) -> str:
    """TLE 'assumed decimal point' exponent field: 0.12345e-4 -> ' 12345-4' (8 chars)."""
    if x == 0.0:
        return " 00000-0"
    sign = "-" if x < 0 else " "
    mag = abs(x)
    exp = math.floor(math.log10(mag)) + 1
    digits = round(mag / 10.0**exp * 1e5)
    if digits >= 100000:
        digits //= 10
        exp += 1
    if not -9 <= exp <= 9:
        raise InvalidArgument(f"{x} does not fit a TLE exponent field")
    return f"{sign}{digits:05d}{'-' if exp < 0 else '+'}{abs(exp)}"


def _angle(deg: float) -> str:
    value = round(deg % 360.0, 4) % 360.0
    return f"{value:8.4f}"


def _epoch_field(epoch: Timestamp) -> str:
    dt = to_datetime(epoch)
    jan1 = datetime(dt.year, 1, 1, tzinfo=UTC).timestamp()
    doy = round((epoch - jan1) / DAY + 1.0, 8)
    return f"{dt.year % 100:02d}{doy:012.8f}"


def format_tle(el: OrbitalElements) -> tuple[str, str]:
    """Write elements as two valid TLE lines (checksums included)."""
    if not 0 < el.catalog <= 99999:
        raise InvalidArgument(f"catalog number {el.catalog} must be 1..99999 for a classic TLE")
    if not 0.0 <= el.eccentricity < 1.0:
        raise InvalidArgument(f"eccentricity {el.eccentricity} must be in [0, 1)")
    if not 0.0 <= el.inclination_deg <= 180.0:
        raise InvalidArgument(f"inclination {el.inclination_deg} must be in [0, 180] degrees")
    if not 0.0 < el.mean_motion_rev_day < 100.0:
        raise InvalidArgument(f"mean motion {el.mean_motion_rev_day} rev/day out of range")
    if not abs(el.ndot) < 1.0:
        raise InvalidArgument(f"mean motion derivative {el.ndot} must be below 1 rev/day^2")
    if len(el.intl_designator) > 8 or len(el.classification) != 1:
        raise InvalidArgument("international designator is at most 8 characters, classification 1")
    ndot = f"{el.ndot:.8f}".replace("0.", ".", 1)
    ndot = ndot if ndot.startswith("-") else " " + ndot
    line1 = (
        f"1 {el.catalog:05d}{el.classification} {el.intl_designator:<8} {_epoch_field(el.epoch)} "
        f"{ndot:>10} {_exp_field(0.0)} {_exp_field(el.bstar)} 0 {el.element_set % 10000:4d}"
    )
    ecc = f"{round(el.eccentricity * 1e7):07d}"
    line2 = (
        f"2 {el.catalog:05d} {el.inclination_deg:8.4f} {_angle(el.raan_deg)} {ecc} "
        f"{_angle(el.arg_perigee_deg)} {_angle(el.mean_anomaly_deg)} "
        f"{el.mean_motion_rev_day:11.8f}{el.rev_number % 100000:5d}"
    )
    line1 += str(tle_checksum(line1))
    line2 += str(tle_checksum(line2))
    validate_tle(line1, line2, where=f"generated TLE for {el.name}")
    return line1, line2


def format_tle_file(entries: list[OrbitalElements]) -> str:
    """3-line TLE text (title line, then the two element lines) for a list of element sets."""
    out: list[str] = []
    for el in entries:
        out.append(el.name)
        out.extend(format_tle(el))
    return "\n".join(out) + "\n"
