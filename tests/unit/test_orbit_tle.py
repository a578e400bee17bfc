"""TLE checksums, generation from elements, parsing, and the shipped Walker sample."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sgp4.api import Satrec

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.tle import (
    OrbitalElements,
    format_tle,
    mean_motion_for_altitude,
    parse_tle_text,
    tle_checksum,
    validate_tle,
)
from orbitvault.orbit.walker import SAMPLE_EPOCH, data_dir, sample_tle_text, sample_walker, walker_delta

ISS1 = "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927"
ISS2 = "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537"


def test_checksum_of_a_published_tle() -> None:
    assert tle_checksum(ISS1) == 7
    assert tle_checksum(ISS2) == 7
    validate_tle(ISS1, ISS2)


def test_format_reproduces_a_published_tle_exactly() -> None:
    epoch = datetime(2008, 1, 1, tzinfo=UTC).timestamp() + (264.51782528 - 1) * 86400
    el = OrbitalElements(
        name="ISS",
        catalog=25544,
        epoch=epoch,
        inclination_deg=51.6416,
        raan_deg=247.4627,
        eccentricity=0.0006703,
        arg_perigee_deg=130.5360,
        mean_anomaly_deg=325.0288,
        mean_motion_rev_day=15.72125391,
        bstar=-0.11606e-4,
        ndot=-0.00002182,
        element_set=292,
        rev_number=56353,
        intl_designator="98067A",
    )
    assert format_tle(el) == (ISS1, ISS2)


@pytest.mark.parametrize(
    ("line1", "line2", "message"),
    [
        (ISS1[:-1] + "0", ISS2, "checksum"),
        (ISS1, ISS2[:-2] + "7", "characters"),
        (ISS1, "3" + ISS2[1:], "start with '2 '"),
        (ISS1, ISS2[:2] + "25545" + ISS2[7:-1] + str(tle_checksum(ISS2[:2] + "25545" + ISS2[7:])), "catalog"),
    ],
)
def test_invalid_tles_are_refused(line1: str, line2: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_tle(line1, line2)


def test_generated_sample_round_trips_through_sgp4() -> None:
    members = sample_walker()
    assert len(members) == 8
    assert sorted({plane for plane, _ in members}) == [1, 2]
    for _plane, el in members:
        line1, line2 = format_tle(el)
        validate_tle(line1, line2)
        sat = Satrec.twoline2rv(line1, line2)
        assert sat.satnum == el.catalog
        assert math.degrees(sat.inclo) == pytest.approx(53.0, abs=1e-4)
        assert math.degrees(sat.nodeo) == pytest.approx(el.raan_deg % 360, abs=1e-4)
        assert math.degrees(sat.mo) == pytest.approx(el.mean_anomaly_deg % 360, abs=1e-4)
        assert sat.ecco == 0.0
        assert sat.no_kozai * 1440 / (2 * math.pi) == pytest.approx(el.mean_motion_rev_day, abs=1e-8)
        epoch = (sat.jdsatepoch - 2440587.5) * 86400 + sat.jdsatepochF * 86400
        assert epoch == pytest.approx(SAMPLE_EPOCH, abs=1e-3)
        # ~550 km: the semi-major axis SGP4 recovers (earth radii) minus the radius.
        assert sat.a * 6378.135 - 6378.135 == pytest.approx(550.0, abs=15.0)


def test_walker_geometry() -> None:
    members = walker_delta(8, 2, 1, altitude_km=550, inclination_deg=53, epoch=SAMPLE_EPOCH)
    plane1 = [el for p, el in members if p == 1]
    plane2 = [el for p, el in members if p == 2]
    assert {el.raan_deg for el in plane1} == {0.0}
    assert {el.raan_deg for el in plane2} == {180.0}
    assert [el.mean_anomaly_deg for el in plane1] == [0.0, 90.0, 180.0, 270.0]
    assert [el.mean_anomaly_deg for el in plane2] == [45.0, 135.0, 225.0, 315.0]  # f * 360 / t = 45
    assert [el.name for el in plane1] == ["OV-11", "OV-12", "OV-13", "OV-14"]
    with pytest.raises(InvalidArgument):
        walker_delta(7, 2, 1, altitude_km=550, inclination_deg=53, epoch=0)
    with pytest.raises(InvalidArgument):
        walker_delta(8, 2, 2, altitude_km=550, inclination_deg=53, epoch=0)


def test_shipped_sample_file_is_what_the_generator_writes() -> None:
    shipped = (data_dir() / "walker-8x2.tle").read_text(encoding="ascii")
    assert shipped == sample_tle_text(), "regenerate with: python -m orbitvault.orbit.walker"
    records = parse_tle_text(shipped)
    assert [r.name for r in records] == [el.name for _p, el in sample_walker()]


def test_mean_motion_for_altitude() -> None:
    # Period of a 550 km circular orbit is about 95.6 minutes.
    assert 1440 / mean_motion_for_altitude(550.0) == pytest.approx(95.6, abs=0.2)
    with pytest.raises(InvalidArgument):
        mean_motion_for_altitude(-7000.0)


def test_parse_two_and_three_line_files_and_errors() -> None:
    two = f"{ISS1}\n{ISS2}\n"
    assert parse_tle_text(two)[0].name == "SAT-25544"
    three = f"0 ISS (ZARYA)\n{ISS1}\n\n{ISS2}\n"
    rec = parse_tle_text(three)[0]
    assert (rec.name, rec.catalog) == ("ISS (ZARYA)", 25544)
    with pytest.raises(InvalidArgument, match=r"sats.tle:2: .*checksum"):
        parse_tle_text(f"ISS\n{ISS1[:-1]}0\n{ISS2}\n", source="sats.tle")
    with pytest.raises(InvalidArgument, match=r":3: line 2 of a TLE without its line 1"):
        parse_tle_text(f"{ISS1}\n{ISS2}\n{ISS2}\n")
    with pytest.raises(InvalidArgument, match="not followed"):
        parse_tle_text(f"ISS\n{ISS1}\n")
    with pytest.raises(InvalidArgument, match="has no TLE lines"):
        parse_tle_text(f"{ISS1}\n{ISS2}\nDANGLING\n")


def test_format_refuses_impossible_elements() -> None:
    base = sample_walker()[0][1]
    for bad in (
        {"catalog": 100000},
        {"eccentricity": 1.0},
        {"inclination_deg": 181.0},
        {"mean_motion_rev_day": 0.0},
    ):
        with pytest.raises(InvalidArgument):
            format_tle(OrbitalElements(**{**base.__dict__, **bad}))
