"""Load a constellation (satellites with their planes, stations, ISL settings) from one TOML file.

Schema (see `data/sample.toml` for a full example):

    name = "my-constellation"                 # optional
    tle_files = ["sats.tle"]                  # optional, relative to the TOML file
    [isl]                                      # optional
    enabled = true
    max_range_km = 5000.0
    atmosphere_margin_km = 100.0
    band = "optical"                           # or rate_bytes_per_s = 312500000
    [[satellites]]                             # optional: without it, every TLE in tle_files
    name = "OV-11"                             # matched by TLE title, or give line1/line2 inline
    plane = 1                                  # optional
    node = 11                                  # optional, default: NORAD catalog number
    [[stations]]
    name = "Wallops"
    node = 2                                   # optional, default: 1-based position
    latitude_deg = 37.94
    longitude_deg = -75.47
    altitude_m = 10.0                          # default 0
    elevation_mask_deg = 10.0                  # default 10
    antennas = 2                               # default 1
    uplink_band = "S"                          # or uplink_bytes_per_s; default S
    downlink_band = "X"                        # or downlink_bytes_per_s; default X

Unknown keys are errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.model import (
    DEFAULT_RATES,
    Constellation,
    GroundStation,
    IslConfig,
    LinkBand,
    Satellite,
)
from orbitvault.orbit.tle import TleRecord, parse_tle_text

SAMPLE_CONFIG = "sample.toml"

_TOP = {"name", "tle_files", "isl", "satellites", "stations"}
_ISL = {"enabled", "max_range_km", "atmosphere_margin_km", "band", "rate_bytes_per_s"}
_SAT = {"name", "plane", "node", "line1", "line2"}
_STATION = {
    "name",
    "node",
    "latitude_deg",
    "longitude_deg",
    "altitude_m",
    "elevation_mask_deg",
    "antennas",
    "uplink_band",
    "downlink_band",
    "uplink_bytes_per_s",
    "downlink_bytes_per_s",
}


def load_constellation(path: str | Path | None = None) -> Constellation:
    """Read a constellation TOML file; None loads the shipped sample."""
    if path is None:
        data_dir = resources.files("orbitvault.orbit").joinpath("data")
        text = data_dir.joinpath(SAMPLE_CONFIG).read_text(encoding="utf-8")
        return parse_constellation(
            text,
            source=f"sample {SAMPLE_CONFIG}",
            read_relative=lambda name: data_dir.joinpath(name).read_text(encoding="utf-8"),
        )
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgument(f"cannot read constellation config {p}: {e.strerror or e}") from None

    def read_relative(name: str) -> str:
        q = p.parent / name
        try:
            return q.read_text(encoding="utf-8")
        except OSError as e:
            raise InvalidArgument(f"{p}: cannot read TLE file {q}: {e.strerror or e}") from None

    return parse_constellation(text, source=str(p), read_relative=read_relative)


def parse_constellation(
    text: str, *, source: str = "config", read_relative: Callable[[str], str] | None = None
) -> Constellation:
    """Build a Constellation from TOML text; `read_relative` reads the files it names."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{source}: invalid TOML: {e}") from None
    _check_keys(doc, _TOP, source)

    records: dict[str, TleRecord] = {}
    for name in _get(doc, "tle_files", list, source, []):
        if read_relative is None:
            raise InvalidArgument(f"{source}: tle_files needs a config read from a file")
        for rec in parse_tle_text(read_relative(str(name)), source=str(name)):
            if rec.name in records:
                raise InvalidArgument(f"{source}: satellite {rec.name!r} appears twice in tle_files")
            records[rec.name] = rec

    satellites: list[Satellite] = []
    entries = _get(doc, "satellites", list, source, [])
    if entries:
        for i, entry in enumerate(entries, start=1):
            where = f"{source}: satellites[{i}]"
            _check_keys(entry, _SAT, where)
            name = _get(entry, "name", str, where)
            if "line1" in entry or "line2" in entry:
                rec = TleRecord(name, _get(entry, "line1", str, where), _get(entry, "line2", str, where))
            elif name in records:
                rec = records[name]
            else:
                raise InvalidArgument(f"{where}: no TLE titled {name!r} in tle_files and no line1/line2")
            satellites.append(_satellite(rec, entry, where))
    else:
        satellites = [_satellite(rec, {}, source) for rec in records.values()]
    if not satellites:
        raise InvalidArgument(f"{source}: no satellites: give tle_files and/or [[satellites]]")

    stations: list[GroundStation] = []
    for i, entry in enumerate(_get(doc, "stations", list, source, []), start=1):
        where = f"{source}: stations[{i}]"
        _check_keys(entry, _STATION, where)
        with _located(where, source):
            stations.append(
                GroundStation(
                    name=_get(entry, "name", str, where),
                    node=_get(entry, "node", int, where, i),
                    latitude_deg=_get(entry, "latitude_deg", float, where),
                    longitude_deg=_get(entry, "longitude_deg", float, where),
                    altitude_m=_get(entry, "altitude_m", float, where, 0.0),
                    elevation_mask_deg=_get(entry, "elevation_mask_deg", float, where, 10.0),
                    antennas=_get(entry, "antennas", int, where, 1),
                    uplink_rate=_rate(entry, "uplink", LinkBand.S, where),
                    downlink_rate=_rate(entry, "downlink", LinkBand.X, where),
                )
            )

    isl_doc = _get(doc, "isl", dict, source, {})
    where = f"{source}: [isl]"
    _check_keys(isl_doc, _ISL, where)
    with _located(where, source):
        isl = IslConfig(
            enabled=_get(isl_doc, "enabled", bool, where, True),
            max_range_km=_get(isl_doc, "max_range_km", float, where, 5000.0),
            atmosphere_margin_km=_get(isl_doc, "atmosphere_margin_km", float, where, 100.0),
            rate=_rate(isl_doc, "", LinkBand.OPTICAL, where),
        )
    with _located(source, source):
        return Constellation(tuple(satellites), tuple(stations), isl, _get(doc, "name", str, source, "constellation"))


@contextmanager
def _located(where: str, source: str) -> Iterator[None]:
    """Prefix errors raised by the model's own checks with where in the file they come from."""
    try:
        yield
    except InvalidArgument as e:
        if str(e).startswith(source):
            raise
        raise InvalidArgument(f"{where}: {e}") from None


def _satellite(rec: TleRecord, entry: Mapping[str, Any], where: str) -> Satellite:
    with _located(where, where):
        return Satellite(
            name=rec.name,
            node=_get(entry, "node", int, where, rec.catalog),
            line1=rec.line1,
            line2=rec.line2,
            plane=_get(entry, "plane", int, where, None),
        )


def _rate(entry: Mapping[str, Any], prefix: str, default: LinkBand, where: str) -> float:
    band_key = f"{prefix}_band" if prefix else "band"
    rate_key = f"{prefix}_bytes_per_s" if prefix else "rate_bytes_per_s"
    if band_key in entry and rate_key in entry:
        raise InvalidArgument(f"{where}: give {band_key} or {rate_key}, not both")
    if rate_key in entry:
        return _get(entry, rate_key, float, where)
    band = LinkBand.parse(_get(entry, band_key, str, where)) if band_key in entry else default
    return float(DEFAULT_RATES[band])


def _check_keys(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise InvalidArgument(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


_MISSING = object()


def _get(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    if key not in table:
        if default is _MISSING:
            raise InvalidArgument(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise InvalidArgument(f"{where}: {key} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    return value
