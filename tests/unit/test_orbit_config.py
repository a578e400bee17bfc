"""Constellation TOML: the shipped sample, the schema, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.config import load_constellation, parse_constellation
from orbitvault.orbit.model import DEFAULT_RATES, LinkBand
from orbitvault.orbit.walker import data_dir, sample_tle_text

TLE = sample_tle_text().splitlines()


def test_shipped_sample() -> None:
    con = load_constellation()
    assert [s.name for s in con.satellites] == ["OV-11", "OV-12", "OV-13", "OV-14", "OV-21", "OV-22", "OV-23", "OV-24"]
    assert [s.plane for s in con.satellites] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [s.node for s in con.satellites] == [11, 12, 13, 14, 21, 22, 23, 24]
    assert [(s.name, s.node) for s in con.stations] == [("Redu", 1), ("Wallops", 2), ("Hartebeesthoek", 3)]
    wallops = con.station("Wallops")
    assert wallops.uplink_rate == DEFAULT_RATES[LinkBand.S] == 1_000_000  # 8 Mbit/s
    assert wallops.downlink_rate == DEFAULT_RATES[LinkBand.X]
    assert con.isl.rate == 312_500_000 and con.isl.max_range_km == 5000.0
    for s in con.satellites:
        assert 540 < s.perigee_altitude_km < 560
    # The same file, loaded by path, gives the same constellation.
    assert load_constellation(data_dir() / "sample.toml") == con


def test_tle_file_without_satellite_entries(tmp_path: Path) -> None:
    (tmp_path / "sats.tle").write_text(sample_tle_text())
    (tmp_path / "c.toml").write_text('tle_files = ["sats.tle"]\n')
    con = load_constellation(tmp_path / "c.toml")
    assert len(con.satellites) == 8
    assert con.satellites[0].node == 99911  # default: the NORAD catalog number
    assert con.satellites[0].plane is None
    assert con.stations == ()


def test_inline_tles_bands_and_rates() -> None:
    text = f"""
name = "mini"
[isl]
enabled = false
rate_bytes_per_s = 1000
[[satellites]]
name = "A"
line1 = "{TLE[1]}"
line2 = "{TLE[2]}"
[[stations]]
name = "GS"
latitude_deg = 10
longitude_deg = 20
uplink_band = "ka"
downlink_bytes_per_s = 12345
"""
    con = parse_constellation(text)
    assert con.name == "mini"
    gs = con.station("GS")
    assert (gs.node, gs.uplink_rate, gs.downlink_rate, gs.elevation_mask_deg) == (1, 250_000_000, 12345, 10.0)
    assert con.isl.enabled is False and con.isl.rate == 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[stations]]\nname='GS'\nlatitude_deg=1\nlongitude_deg=2\nmask=5\n", "unknown key(s) mask"),
        ("[[stations]]\nname='GS'\nlongitude_deg=2\n", "missing required key 'latitude_deg'"),
        ("[[stations]]\nname='GS'\nlatitude_deg='north'\nlongitude_deg=2\n", "latitude_deg must be float"),
        ("[[stations]]\nname='GS'\nlatitude_deg=95\nlongitude_deg=2\n", "latitude 95.0"),
        ("[[stations]]\nname='GS'\nlatitude_deg=1\nlongitude_deg=2\nuplink_band='L'\n", "unknown link band"),
        (
            "[[stations]]\nname='GS'\nlatitude_deg=1\nlongitude_deg=2\nuplink_band='S'\nuplink_bytes_per_s=5\n",
            "not both",
        ),
        ("[[stations]]\nname='G S'\nlatitude_deg=1\nlongitude_deg=2\n", "node name 'G S'"),
        ("[[satellites]]\nname='X'\n", "no TLE titled 'X'"),
        ("name = [\n", "invalid TOML"),
        ("[isl]\nrange=3\n", "unknown key(s) range"),
    ],
)
def test_schema_errors(text: str, message: str) -> None:
    sat = f'[[satellites]]\nname="A"\nline1="{TLE[1]}"\nline2="{TLE[2]}"\n'
    full = text if "satellites" in text or "TOML" in message else sat + text
    with pytest.raises(InvalidArgument) as err:
        parse_constellation(full, source="c.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("c.toml")


def test_duplicate_nodes_and_missing_files(tmp_path: Path) -> None:
    sat = f'[[satellites]]\nname="A"\nnode=1\nline1="{TLE[1]}"\nline2="{TLE[2]}"\n'
    with pytest.raises(InvalidArgument, match="node number 1 is used by both"):
        parse_constellation(sat + "[[stations]]\nname='GS'\nlatitude_deg=1\nlongitude_deg=2\n")
    with pytest.raises(InvalidArgument, match="no satellites"):
        parse_constellation("")
    with pytest.raises(InvalidArgument, match="cannot read constellation config"):
        load_constellation(tmp_path / "missing.toml")
    (tmp_path / "c.toml").write_text('tle_files = ["gone.tle"]\n')
    with pytest.raises(InvalidArgument, match="cannot read TLE file"):
        load_constellation(tmp_path / "c.toml")
