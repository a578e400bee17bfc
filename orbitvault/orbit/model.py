"""The orbit model's nouns: link bands, satellites (SGP4), ground stations, ISL terminals, nodes.

Rates are bytes per second throughout (the unit ION contact plans use); bits appear only at the
HDTN boundary. Every satellite and station is a *node* with a name (what people and the rest of
orbitvault use) and a number (what ION and HDTN use); `NodeMap` keeps the two in step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sgp4.api import SGP4_ERRORS, Satrec

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.frames import Vec3, geodetic_to_ecef, local_up
from orbitvault.orbit.timeutil import Timestamp, format_time, to_jd
from orbitvault.orbit.tle import RE_WGS72_KM, validate_tle

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_node_name(name: str) -> str:
    """Node names are single tokens so they survive ION lines, tables and file names."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"node name {name!r}: use 1-64 characters from letters, digits, '.', '_', '-' "
            "(starting with a letter or digit)"
        )
    return name


class LinkBand(StrEnum):
    """Link types with the design's (§4) published rates as defaults."""

    S = "S"
    X = "X"
    KA = "Ka"
    OPTICAL = "optical"

    @classmethod
    def parse(cls, text: str) -> LinkBand:
        for band in cls:
            if band.value.lower() == str(text).strip().lower():
                return band
        raise InvalidArgument(f"unknown link band {text!r}: use one of {', '.join(b.value for b in cls)}")

    @property
    def default_rate(self) -> int:
        """Bytes per second."""
        return DEFAULT_RATES[self]


DEFAULT_RATES: dict[LinkBand, int] = {
    LinkBand.S: 8_000_000 // 8,  # S-band: about 8 Mbit/s
    LinkBand.X: 400_000_000 // 8,  # X-band: 150-800 Mbit/s; the middle of the range
    LinkBand.KA: 2_000_000_000 // 8,  # Ka-band: 1-4 Gbit/s
    LinkBand.OPTICAL: 2_500_000_000 // 8,  # optical inter-satellite link: about 2.5 Gbit/s
}


@dataclass(frozen=True)
class Satellite:
    """A satellite given by its TLE; `plane` groups satellites for placement (None: unknown)."""

    name: str
    node: int
    line1: str
    line2: str
    plane: int | None = None
    satrec: Satrec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_node_name(self.name)
        _check_node_number(self.node, self.name)
        validate_tle(self.line1, self.line2, where=f"satellite {self.name}")
        object.__setattr__(self, "satrec", Satrec.twoline2rv(self.line1, self.line2))

    @property
    def catalog(self) -> int:
        return int(self.satrec.satnum)

    @property
    def perigee_altitude_km(self) -> float:
        return self.satrec.a * (1.0 - self.satrec.ecco) * RE_WGS72_KM - RE_WGS72_KM

    @property
    def max_speed_km_s(self) -> float:
        """Speed at perigee (vis-viva): bounds how fast any geometry involving it can change."""
        a = self.satrec.a * RE_WGS72_KM
        rp = a * (1.0 - self.satrec.ecco)
        return math.sqrt(398600.8 * (2.0 / rp - 1.0 / a))

    def position_teme(self, t: Timestamp) -> Vec3:
        """SGP4 position (km, TEME) at `t`."""
        jd, fr = to_jd(t)
        err, r, _v = self.satrec.sgp4(jd, fr)
        if err:
            raise InvalidArgument(
                f"SGP4 cannot propagate {self.name} to {format_time(t)}: {SGP4_ERRORS[err]} "
                "(TLE too old or satellite decayed?)"
            )
        return r

    def positions_teme(self, times: Sequence[Timestamp]) -> list[Vec3]:
        sgp4 = self.satrec.sgp4
        out: list[Vec3] = []
        for t in times:
            jd, fr = to_jd(t)
            err, r, _v = sgp4(jd, fr)
            if err:
                self.position_teme(t)  # raises with the message
            out.append(r)
        return out


@dataclass(frozen=True)
class GroundStation:
    """A ground station: WGS84 site, elevation mask, antennas (concurrent passes), link rates."""

    name: str
    node: int
    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0
    elevation_mask_deg: float = 10.0
    antennas: int = 1
    uplink_rate: float = DEFAULT_RATES[LinkBand.S]
    downlink_rate: float = DEFAULT_RATES[LinkBand.X]
    ecef: Vec3 = field(init=False, repr=False, compare=False)
    up: Vec3 = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_node_name(self.name)
        _check_node_number(self.node, self.name)
        where = f"station {self.name}"
        if not -90.0 <= self.latitude_deg <= 90.0:
            raise InvalidArgument(f"{where}: latitude {self.latitude_deg} must be in [-90, 90]")
        if not -180.0 <= self.longitude_deg <= 360.0:
            raise InvalidArgument(f"{where}: longitude {self.longitude_deg} must be in [-180, 360]")
        if not -500.0 <= self.altitude_m <= 10_000.0:
            raise InvalidArgument(f"{where}: altitude {self.altitude_m} m is not on the ground")
        if not -5.0 <= self.elevation_mask_deg < 90.0:
            raise InvalidArgument(f"{where}: elevation mask {self.elevation_mask_deg} must be in [-5, 90)")
        if self.antennas < 1:
            raise InvalidArgument(f"{where}: needs at least one antenna")
        if self.uplink_rate <= 0 or self.downlink_rate <= 0:
            raise InvalidArgument(f"{where}: link rates must be positive bytes/s")
        object.__setattr__(self, "ecef", geodetic_to_ecef(self.latitude_deg, self.longitude_deg, self.altitude_m))
        object.__setattr__(self, "up", local_up(self.latitude_deg, self.longitude_deg))


@dataclass(frozen=True)
class IslConfig:
    """Optical inter-satellite terminals: when a link closes and how fast it runs."""

    enabled: bool = True
    max_range_km: float = 5000.0
    atmosphere_margin_km: float = 100.0
    """The line of sight must pass this far above the surface (refraction, absorption)."""
    rate: float = DEFAULT_RATES[LinkBand.OPTICAL]

    def __post_init__(self) -> None:
        if self.max_range_km <= 0 or self.atmosphere_margin_km < 0 or self.rate <= 0:
            raise InvalidArgument("ISL max range and rate must be positive, the margin not negative")


def _check_node_number(node: int, name: str) -> None:
    if isinstance(node, bool) or not isinstance(node, int) or not 0 < node < 2**63:
        raise InvalidArgument(f"node {name!r}: node number {node!r} must be a positive integer < 2^63")


class NodeMap:
    """The stable two-way mapping between node names and the numbers ION/HDTN use.

    Numbers come from configuration (stations: their `node` key or their 1-based position;
    satellites: their `node` key or their NORAD catalog number), so they do not change when a plan
    is recomputed for another span. Plan files carry the mapping (ION: `# orbitvault node N NAME`
    comment lines; HDTN: an `orbitvault.nodes` list) so names survive a round trip; a number with
    no name is named by its decimal digits.
    """

    def __init__(self, mapping: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        self._by_name: dict[str, int] = {}
        self._by_number: dict[int, str] = {}
        items = mapping.items() if isinstance(mapping, Mapping) else mapping
        for name, number in items:
            self.add(name, number)

    def add(self, name: str, number: int) -> None:
        check_node_name(name)
        _check_node_number(number, name)
        if self._by_name.get(name, number) != number:
            raise InvalidArgument(f"node {name!r} has two numbers: {self._by_name[name]} and {number}")
        if self._by_number.get(number, name) != name:
            raise InvalidArgument(f"node number {number} is used by both {self._by_number[number]!r} and {name!r}")
        self._by_name[name] = number
        self._by_number[number] = name

    def number(self, name: str) -> int:
        if name in self._by_name:
            return self._by_name[name]
        if name.isdigit() and int(name) not in self._by_number:
            return int(name)
        raise InvalidArgument(f"node {name!r} has no number: add it to the configuration's node list")

    def name(self, number: int) -> str:
        return self._by_number.get(number, str(number))

    def names(self) -> list[str]:
        """Names in node-number order (stations first in the shipped sample)."""
        return [self._by_number[n] for n in sorted(self._by_number)]

    def items(self) -> Iterator[tuple[str, int]]:
        """(name, number) pairs in number order."""
        for n in sorted(self._by_number):
            yield self._by_number[n], n

    def merged(self, other: NodeMap) -> NodeMap:
        out = NodeMap(self.items())
        for name, number in other.items():
            out.add(name, number)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeMap) and self._by_name == other._by_name

    def __repr__(self) -> str:
        return f"NodeMap({dict(self.items())!r})"


@dataclass(frozen=True)
class Constellation:
    """Satellites, stations and ISL settings: everything the pass and window predictors need."""

    satellites: tuple[Satellite, ...]
    stations: tuple[GroundStation, ...]
    isl: IslConfig = IslConfig()
    name: str = "constellation"

    def __post_init__(self) -> None:
        self.nodes()  # raises on duplicate names or numbers

    def nodes(self) -> NodeMap:
        nodes = NodeMap()
        for s in (*self.stations, *self.satellites):
            if s.name in nodes:
                raise InvalidArgument(f"node name {s.name!r} is used twice")
            nodes.add(s.name, s.node)
        return nodes

    def satellite(self, name: str) -> Satellite:
        for s in self.satellites:
            if s.name == name:
                return s
        raise InvalidArgument(f"no satellite {name!r}; known: {', '.join(s.name for s in self.satellites)}")

    def station(self, name: str) -> GroundStation:
        for s in self.stations:
            if s.name == name:
                return s
        raise InvalidArgument(f"no station {name!r}; known: {', '.join(s.name for s in self.stations)}")

    def select(
        self, *, stations: Sequence[str] | None = None, satellites: Sequence[str] | None = None
    ) -> Constellation:
        """A copy restricted to the named stations/satellites (None keeps all)."""
        sats = self.satellites if not satellites else tuple(self.satellite(n) for n in satellites)
        stas = self.stations if not stations else tuple(self.station(n) for n in stations)
        return Constellation(sats, stas, self.isl, self.name)
