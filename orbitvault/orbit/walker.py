"""Walker-delta constellations as TLEs, and the shipped sample constellation.

A Walker delta i:t/p/f puts t satellites in p circular planes of inclination i, the planes' right
ascensions of the ascending node spread evenly over 360 deg, the satellites of a plane evenly over
their orbit, and satellites in adjacent planes offset in phase by f x 360/t deg.

The sample (`orbitvault/orbit/data/walker-8x2.tle`) is 53:8/2/1 at 550 km, epoch 2026-11-01 UTC,
no drag. Regenerate it with `python -m orbitvault.orbit.walker`; a test checks the shipped file
still equals what this module writes.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.timeutil import Timestamp
from orbitvault.orbit.tle import OrbitalElements, format_tle_file, mean_motion_for_altitude

SAMPLE_EPOCH: Timestamp = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
SAMPLE_TLE_FILE = "walker-8x2.tle"


def walker_delta(
    total: int,
    planes: int,
    phasing: int,
    *,
    altitude_km: float,
    inclination_deg: float,
    epoch: Timestamp,
    raan0_deg: float = 0.0,
    catalog_base: int = 99900,
    name_prefix: str = "OV-",
) -> list[tuple[int, OrbitalElements]]:
    """(plane, elements) for each satellite, planes and slots numbered from 1.

    Satellite `slot` of `plane` is named `{prefix}{plane}{slot}` and numbered
    `catalog_base + 10 * plane + slot` (so up to 9 planes of 9 satellites keep tidy numbers; larger
    constellations get sequential catalog numbers instead).
    """
    if total <= 0 or planes <= 0 or total % planes:
        raise InvalidArgument(f"Walker {total}/{planes}: total must be a positive multiple of planes")
    if not 0 <= phasing < planes:
        raise InvalidArgument(f"Walker phasing f={phasing} must be in [0, {planes - 1}]")
    per_plane = total // planes
    tidy = planes <= 9 and per_plane <= 9
    n = mean_motion_for_altitude(altitude_km)
    out: list[tuple[int, OrbitalElements]] = []
    for p in range(planes):
        for s in range(per_plane):
            index = p * per_plane + s
            plane, slot = p + 1, s + 1
            name = f"{name_prefix}{plane}{slot}" if tidy else f"{name_prefix}{plane}-{slot}"
            catalog = catalog_base + (10 * plane + slot if tidy else index + 1)
            el = OrbitalElements(
                name=name,
                catalog=catalog,
                epoch=epoch,
                inclination_deg=inclination_deg,
                raan_deg=raan0_deg + p * 360.0 / planes,
                eccentricity=0.0,
                arg_perigee_deg=0.0,
                mean_anomaly_deg=s * 360.0 / per_plane + p * phasing * 360.0 / total,
                mean_motion_rev_day=n,
            )
            out.append((plane, el))
    return out


def sample_walker() -> list[tuple[int, OrbitalElements]]:
    """The shipped sample: 53:8/2/1 at 550 km."""
    return walker_delta(8, 2, 1, altitude_km=550.0, inclination_deg=53.0, epoch=SAMPLE_EPOCH)


def sample_tle_text() -> str:
    return format_tle_file([el for _plane, el in sample_walker()])


def data_dir() -> Path:
    return Path(__file__).with_name("data")


def main(argv: list[str] | None = None) -> int:
    """Rewrite the sample TLE file (or write it to the directory given as argument)."""
    args = sys.argv[1:] if argv is None else argv
    target = (Path(args[0]) if args else data_dir()) / SAMPLE_TLE_FILE
    target.write_text(sample_tle_text(), encoding="ascii")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
