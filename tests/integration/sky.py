"""A scheduled-mode sky for integration tests and `bench/scheduled.py`: the sample constellation
(8 satellites in 2 planes, 3 stations) with its link rates scaled down, so a backlog of a few MiB
spans most of a simulated day and windows cut shards, its contact plan for two days as an ION
file, and one storage node per satellite.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orbitvault.orbit
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.model import Constellation
from orbitvault.orbit.plan import ContactPlan, write_plan
from orbitvault.orbit.timeutil import DAY
from orbitvault.orbit.walker import SAMPLE_EPOCH

T0 = SAMPLE_EPOCH
# Bytes per second: a 4+2 shard of 4 KiB fragments (4 rows, ~17 KB) takes minutes on these links.
UPLINK = {"Redu": 300.0, "Wallops": 100.0, "Hartebeesthoek": 200.0}
DOWNLINK = 400.0
ISL = 200.0


def scaled(uplink: dict[str, float] | None = None, downlink: float = DOWNLINK, isl: float = ISL) -> Constellation:
    con = load_constellation()
    up = uplink or UPLINK
    stations = tuple(replace(s, uplink_rate=up[s.name], downlink_rate=downlink) for s in con.stations)
    return replace(con, stations=stations, isl=replace(con.isl, rate=isl), name="orbitvault-test")


def write_sky(root: Path, con: Constellation, *, days: float = 2.0) -> tuple[Path, Path]:
    """(constellation TOML, ION contact plan) for `con` from T0, as the gateway config names them."""
    root.mkdir(parents=True, exist_ok=True)
    tle = Path(orbitvault.orbit.__file__).parent / "data" / "walker-8x2.tle"
    lines = [f'name = "{con.name}"', f'tle_files = ["{tle}"]', "", "[isl]"]
    lines += [
        f"enabled = {str(con.isl.enabled).lower()}",
        f"max_range_km = {con.isl.max_range_km}",
        f"atmosphere_margin_km = {con.isl.atmosphere_margin_km}",
        f"rate_bytes_per_s = {con.isl.rate}",
    ]
    for s in con.satellites:
        lines += ["", "[[satellites]]", f'name = "{s.name}"', f"plane = {s.plane}", f"node = {s.node}"]
    for st in con.stations:
        lines += [
            "",
            "[[stations]]",
            f'name = "{st.name}"',
            f"node = {st.node}",
            f"latitude_deg = {st.latitude_deg}",
            f"longitude_deg = {st.longitude_deg}",
            f"altitude_m = {st.altitude_m}",
            f"elevation_mask_deg = {st.elevation_mask_deg}",
            f"antennas = {st.antennas}",
            f"uplink_bytes_per_s = {st.uplink_rate}",
            f"downlink_bytes_per_s = {st.downlink_rate}",
        ]
    toml = root / "constellation.toml"
    toml.write_text("\n".join(lines) + "\n")
    plan = ContactPlan.from_model(load_constellation(toml), T0, T0 + days * DAY)
    rc = root / "plan.rc"
    write_plan(plan, rc, "ion")
    return toml, rc
