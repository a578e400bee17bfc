"""Pass and ISL window prediction, validated against skyfield and against brute force."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.frames import EARTH_RADIUS_KM, distance, gmst82, segment_clearance, teme_to_ecef
from orbitvault.orbit.model import Constellation, GroundStation, IslConfig, Satellite
from orbitvault.orbit.passes import Pass, predict_all, predict_isl_windows, predict_passes
from orbitvault.orbit.tle import format_tle
from orbitvault.orbit.walker import SAMPLE_EPOCH, walker_delta

skyfield_api = pytest.importorskip("skyfield.api")

DAY = 86400.0
T0 = SAMPLE_EPOCH + 20 * DAY  # 2026-11-21, three weeks past the TLE epoch


@pytest.fixture(scope="module")
def sample() -> Constellation:
    return load_constellation()


@pytest.fixture(scope="module")
def day_passes(sample: Constellation) -> list[Pass]:
    return predict_passes(sample, T0, T0 + DAY)


def _skyfield_passes(sample: Constellation, station: str, t0: float, t1: float) -> dict[str, list[tuple]]:
    """(AOS, LOS) per satellite from skyfield's independent find_events, complete passes only."""
    ts = skyfield_api.load.timescale(builtin=True)
    st = sample.station(station)
    topo = skyfield_api.wgs84.latlon(st.latitude_deg, st.longitude_deg, st.altitude_m)
    begin = ts.from_datetime(datetime.fromtimestamp(t0, UTC))
    end = ts.from_datetime(datetime.fromtimestamp(t1, UTC))
    out: dict[str, list[tuple]] = {}
    for sat in sample.satellites:
        es = skyfield_api.EarthSatellite(sat.line1, sat.line2, sat.name, ts)
        times, events = es.find_events(topo, begin, end, altitude_degrees=st.elevation_mask_deg)
        found, aos = [], None
        for t, ev in zip(times, events, strict=True):
            u = t.utc_datetime().timestamp()
            if ev == 0:
                aos = u
            elif ev == 2 and aos is not None:
                found.append((aos, u))
                aos = None
        out[sat.name] = found
    return out


@pytest.mark.parametrize("station", ["Wallops", "Hartebeesthoek", "Redu"])
def test_aos_los_agree_with_skyfield(sample: Constellation, day_passes: list[Pass], station: str) -> None:
    reference = _skyfield_passes(sample, station, T0, T0 + DAY)
    worst = 0.0
    compared = 0
    for sat in sample.satellites:
        mine = [(p.aos, p.los) for p in day_passes if p.station == station and p.satellite == sat.name]
        mine = [(a, b) for a, b in mine if a > T0 and b < T0 + DAY]  # complete passes only
        theirs = reference[sat.name]
        assert len(mine) == len(theirs), f"{station}/{sat.name}: {len(mine)} passes vs skyfield {len(theirs)}"
        for (a, b), (ra, rb) in zip(mine, theirs, strict=True):
            worst = max(worst, abs(a - ra), abs(b - rb))
            compared += 1
    assert compared >= 20
    assert worst < 2.0, f"AOS/LOS differ from skyfield by up to {worst:.2f} s"


def test_mid_latitude_pass_figures_match_published_ranges(sample: Constellation, day_passes: list[Pass]) -> None:
    """Design §4: a 500-550 km LEO sees a mid-latitude station 5-7 times a day above 10 degrees,
    about 7 minutes on average, up to about 11."""
    wallops = sample.station("Wallops")
    assert wallops.elevation_mask_deg == 10.0
    mine = [p for p in day_passes if p.station == "Wallops"]
    per_sat = Counter(p.satellite for p in mine)
    assert 5.0 <= len(mine) / len(sample.satellites) <= 7.0
    assert all(4 <= per_sat[s.name] <= 8 for s in sample.satellites)
    durations = [p.duration / 60 for p in mine]
    assert 4.5 <= sum(durations) / len(durations) <= 8.0
    assert max(durations) <= 11.5
    for p in mine:
        assert 10.0 <= p.max_elevation_deg <= 90.0
        assert p.aos <= p.max_elevation_time <= p.los
        assert 500.0 < p.max_range_km < 2500.0


def test_coarse_step_does_not_change_the_answer(sample: Constellation, day_passes: list[Pass]) -> None:
    """Even a 4-minute scan step finds every pass (short ones hide between samples): the
    local-maximum refinement catches them."""
    coarse = predict_passes(sample, T0, T0 + DAY, step=240.0)
    assert len(coarse) == len(day_passes)
    for a, b in zip(coarse, day_passes, strict=True):
        assert (a.station, a.satellite) == (b.station, b.satellite)
        assert abs(a.aos - b.aos) < 0.5 and abs(a.los - b.los) < 0.5
        assert abs(a.max_elevation_deg - b.max_elevation_deg) < 0.05


def test_passes_are_clipped_to_the_span(sample: Constellation, day_passes: list[Pass]) -> None:
    p = next(p for p in day_passes if p.duration > 300 and p.aos > T0)
    mid = p.aos + p.duration / 2
    clipped = [
        q for q in predict_passes(sample, mid, mid + 3600) if (q.station, q.satellite) == (p.station, p.satellite)
    ]
    assert clipped[0].aos == mid
    assert abs(clipped[0].los - p.los) < 0.5


def test_frame_conversion_matches_skyfield_itrs(sample: Constellation) -> None:
    """TEME -> Earth-fixed via GMST82 agrees with skyfield's full conversion to ~40 m."""
    ts = skyfield_api.load.timescale(builtin=True)
    sat = sample.satellites[0]
    es = skyfield_api.EarthSatellite(sat.line1, sat.line2, sat.name, ts)
    from skyfield.framelib import itrs

    for k in range(5):
        t = T0 + k * 3917.0
        ours = teme_to_ecef(sat.position_teme(t), gmst82(t))
        theirs = es.at(ts.from_datetime(datetime.fromtimestamp(t, UTC))).frame_xyz(itrs).km
        assert distance(ours, tuple(theirs)) < 0.2  # km; measured ~0.04 (polar motion, UT1)


def _plane(count: int) -> Constellation:
    """One plane of `count` evenly spaced satellites at 550 km."""
    members = walker_delta(count, 1, 0, altitude_km=550, inclination_deg=53, epoch=SAMPLE_EPOCH)
    sats = tuple(Satellite(el.name, el.catalog, *format_tle(el), plane=1) for _p, el in members)
    return Constellation(sats, ())


def test_same_plane_fixed_spacing_is_continuous_or_never() -> None:
    con = _plane(12)  # 30 deg apart: 3586 km chord, clears the Earth by ~210 km
    t0 = T0
    windows = predict_isl_windows(con, t0, t0 + 6 * 3600, isl=IslConfig(max_range_km=5000))
    pairs = {(w.a, w.b) for w in windows}
    neighbours = {(con.satellites[i].name, con.satellites[(i + 1) % 12].name) for i in range(12)}
    assert {tuple(sorted(p)) for p in pairs} == {tuple(sorted(p)) for p in neighbours}
    for w in windows:  # continuous: one window covering the whole span
        assert (w.start, w.end) == (t0, t0 + 6 * 3600)
        assert w.min_range_km == pytest.approx(3586, abs=30)
    # A range limit below the spacing: never.
    assert predict_isl_windows(con, t0, t0 + 3600, isl=IslConfig(max_range_km=3000)) == []
    # Four per plane (the sample's spacing, 90 deg): the Earth is always in the way.
    assert predict_isl_windows(_plane(4), t0, t0 + 3600, isl=IslConfig(max_range_km=20000)) == []


def test_cross_plane_windows_honour_range_and_earth_clearance(sample: Constellation) -> None:
    cfg = sample.isl
    t1 = T0 + 6 * 3600
    windows = predict_isl_windows(sample, T0, t1)
    assert windows
    sats = {s.name: s for s in sample.satellites}
    floor = EARTH_RADIUS_KM + cfg.atmosphere_margin_km

    def slack(a: str, b: str, t: float) -> float:
        pa, pb = sats[a].position_teme(t), sats[b].position_teme(t)
        return min(cfg.max_range_km - distance(pa, pb), segment_clearance(pa, pb) - floor)

    for w in windows:
        assert sats[w.a].plane != sats[w.b].plane  # same-plane pairs are 90 deg apart: never
        assert w.max_range_km <= cfg.max_range_km + 0.5
        for k in range(11):
            assert slack(w.a, w.b, w.start + (w.end - w.start) * k / 10) > -1.0
        if w.start > T0:
            assert slack(w.a, w.b, w.start - 1.0) < 0
        if w.end < t1:
            assert slack(w.a, w.b, w.end + 1.0) < 0

    # Brute force at 5 s: the time covered by windows agrees per pair.
    for a, b in {(w.a, w.b) for w in windows}:
        brute = sum(5.0 for k in range(int((t1 - T0) / 5)) if slack(a, b, T0 + 5 * k + 2.5) >= 0)
        ours = sum(w.duration for w in windows if (w.a, w.b) == (a, b))
        assert abs(brute - ours) <= 5.0 * (1 + sum(1 for w in windows if (w.a, w.b) == (a, b)))


def test_one_day_of_the_sample_is_quick(sample: Constellation) -> None:
    import time

    began = time.perf_counter()
    passes, windows = predict_all(sample, T0, T0 + DAY)
    assert time.perf_counter() - began < 3.0
    assert passes and windows


def test_bad_spans_and_stale_tles() -> None:
    con = load_constellation()
    with pytest.raises(InvalidArgument, match="after its start"):
        predict_passes(con, T0, T0)
    # A decaying orbit SGP4 cannot follow far from its epoch gives a clear error.
    members = walker_delta(1, 1, 0, altitude_km=150, inclination_deg=53, epoch=SAMPLE_EPOCH)
    el = members[0][1]
    decaying = el.__class__(**{**el.__dict__, "bstar": 0.9, "ndot": 0.5})
    sat = Satellite("DECAY", 1, *format_tle(decaying))
    station = GroundStation("GS", 2, 0.0, 0.0)
    with pytest.raises(InvalidArgument, match="SGP4 cannot propagate DECAY"):
        predict_passes(Constellation((sat,), (station,)), SAMPLE_EPOCH + 400 * DAY, SAMPLE_EPOCH + 401 * DAY)
    assert math.isfinite(gmst82(T0))
