"""Contact windows from the model: ground-station passes and inter-satellite link windows.

Both use the same search over a "margin" function f(t) that is >= 0 exactly while the link is
possible (elevation minus mask; the slack in range and in Earth clearance for an ISL):

1. coarse scan: sample f on a grid (`step`, 30 s by default). Satellite positions are propagated
   once per grid instant and shared by every station and every pair, so the cost is
   O(satellites x samples) SGP4 calls plus cheap arithmetic, never a per-second loop;
2. runs of samples with f >= 0 are windows; their edges are refined by bisection to `tol`
   (0.1 s by default, well inside the 1 s asked for);
3. a window shorter than a step can hide between two negative samples, so every local maximum of
   the samples that is within `rate_bound x step / 2` of zero (rate_bound bounds |df/dt|) is refined
   by golden-section search, and kept if its true maximum reaches 0.

The peak of each window (maximum elevation, or minimum ISL range) comes from the same
golden-section refinement.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.frames import (
    EARTH_RADIUS_KM,
    Vec3,
    distance,
    elevation_deg,
    gmst82,
    segment_clearance,
    teme_to_ecef,
)
from orbitvault.orbit.model import Constellation, GroundStation, IslConfig, Satellite
from orbitvault.orbit.timeutil import Timestamp

DEFAULT_STEP = 30.0
DEFAULT_TOL = 0.1
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class Pass:
    """A station sees a satellite above its elevation mask from `aos` to `los`."""

    station: str
    satellite: str
    aos: Timestamp
    los: Timestamp
    max_elevation_deg: float
    max_elevation_time: Timestamp
    max_range_km: float
    """Largest slant range in the pass (at AOS or LOS): gives the worst one-way light time."""

    @property
    def duration(self) -> float:
        return self.los - self.aos


@dataclass(frozen=True)
class IslWindow:
    """Satellites `a` and `b` (a before b in configuration order) can link from start to end."""

    a: str
    b: str
    start: Timestamp
    end: Timestamp
    min_range_km: float
    min_range_time: Timestamp
    max_range_km: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class _Window:
    start: Timestamp
    end: Timestamp
    peak_time: Timestamp
    peak_value: float


def time_grid(start: Timestamp, end: Timestamp, step: float) -> list[Timestamp]:
    """start, start+step, ... and end itself (the last gap may be shorter)."""
    if not end > start:
        raise InvalidArgument(f"span end {end} must be after its start {start}")
    if step <= 0:
        raise InvalidArgument("step must be positive")
    n = math.ceil((end - start) / step)
    grid = [start + i * step for i in range(n)]
    grid.append(end)
    return grid


def _bisect(f: Callable[[float], float], outside: float, inside: float, tol: float) -> float:
    """The crossing between a time where f < 0 and one where f >= 0, to within tol / 2."""
    while abs(inside - outside) > tol:
        mid = 0.5 * (outside + inside)
        if f(mid) >= 0.0:
            inside = mid
        else:
            outside = mid
    return 0.5 * (outside + inside)


def _golden_max(f: Callable[[float], float], lo: float, hi: float, tol: float) -> tuple[float, float]:
    """Maximum of a unimodal f on [lo, hi]: (time, value)."""
    a, b = lo, hi
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    best = max((f(lo), lo), (fc, c), (fd, d), (f(hi), hi))
    return best[1], best[0]


def find_windows(
    grid: Sequence[Timestamp],
    values: Sequence[float],
    f: Callable[[float], float],
    rate_bound: float,
    tol: float = DEFAULT_TOL,
    *,
    refine_peak: bool = True,
) -> list[_Window]:
    """Intervals where f >= 0, given f sampled on `grid` (see the module docstring).

    With `refine_peak` False a window's peak is its best sample (saves a search per window).
    """
    n = len(grid)
    out: list[_Window] = []
    i = 0
    while i < n:
        if values[i] >= 0.0:
            j = i
            while j + 1 < n and values[j + 1] >= 0.0:
                j += 1
            start = grid[0] if i == 0 else _bisect(f, grid[i - 1], grid[i], tol)
            end = grid[-1] if j == n - 1 else _bisect(f, grid[j + 1], grid[j], tol)
            k = max(range(i, j + 1), key=values.__getitem__)
            tp, vp = grid[k], values[k]
            if refine_peak:
                tp, vp = _golden_max(f, grid[max(k - 1, 0)], grid[min(k + 1, n - 1)], tol)
                tp, vp = min(max(tp, start), end), max(vp, values[k])
            out.append(_Window(start, end, tp, vp))
            i = j + 1
            continue
        # Below zero: a short window may hide around a local maximum of the samples.
        left = values[i - 1] if i > 0 else -math.inf
        right = values[i + 1] if i + 1 < n else -math.inf
        if values[i] >= left and values[i] >= right:
            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, n - 1)]
            if values[i] > -rate_bound * (hi - lo) / 2.0:
                tp, vp = _golden_max(f, lo, hi, tol)
                if vp >= 0.0:  # both neighbours sampled below zero: bisect each side
                    out.append(_Window(_bisect(f, lo, tp, tol), _bisect(f, hi, tp, tol), tp, vp))
        i += 1
    return out


class _Ephemeris:
    """Positions of every satellite on the coarse grid, TEME and Earth-fixed, computed once."""

    def __init__(self, satellites: Sequence[Satellite], grid: Sequence[Timestamp]) -> None:
        self.grid = grid
        self.teme: dict[str, list[Vec3]] = {sat.name: sat.positions_teme(grid) for sat in satellites}
        self._ecef: dict[str, list[Vec3]] = {}
        self._rot: list[float] | None = None

    def ecef(self, name: str) -> list[Vec3]:
        """Earth-fixed positions, converted on first use (ISL windows never need them)."""
        if name not in self._ecef:
            if self._rot is None:
                self._rot = [gmst82(t) for t in self.grid]
            self._ecef[name] = [teme_to_ecef(r, g) for r, g in zip(self.teme[name], self._rot, strict=True)]
        return self._ecef[name]


def _elevation_fn(station: GroundStation, sat: Satellite) -> Callable[[float], float]:
    site, up, mask = station.ecef, station.up, station.elevation_mask_deg

    def f(t: float) -> float:
        return elevation_deg(site, up, teme_to_ecef(sat.position_teme(t), gmst82(t))) - mask

    return f


def _pass_rate_bound(station: GroundStation, sat: Satellite) -> float:
    """Bound on |d elevation / dt| (deg/s): speed over the least possible range, plus 20%."""
    closest = max(sat.perigee_altitude_km - station.altitude_m / 1000.0, 100.0)
    return math.degrees((sat.max_speed_km_s + 0.5) / closest) * 1.2


def predict_passes(
    constellation: Constellation,
    start: Timestamp,
    end: Timestamp,
    *,
    step: float = DEFAULT_STEP,
    tol: float = DEFAULT_TOL,
    _ephemeris: _Ephemeris | None = None,
) -> list[Pass]:
    """Every pass of every satellite over every station in [start, end], sorted by AOS.

    A pass already under way at `start` (or still on at `end`) is clipped to the span.
    """
    grid = _ephemeris.grid if _ephemeris else time_grid(start, end, step)
    eph = _ephemeris or _Ephemeris(constellation.satellites, grid)
    passes: list[Pass] = []
    for station in constellation.stations:
        site, up, mask = station.ecef, station.up, station.elevation_mask_deg
        for sat in constellation.satellites:
            values = [elevation_deg(site, up, r) - mask for r in eph.ecef(sat.name)]
            f = _elevation_fn(station, sat)
            for w in find_windows(grid, values, f, _pass_rate_bound(station, sat), tol):
                if w.end <= w.start:
                    continue
                rng = max(_slant_range(station, sat, w.start), _slant_range(station, sat, w.end))
                passes.append(Pass(station.name, sat.name, w.start, w.end, w.peak_value + mask, w.peak_time, rng))
    passes.sort(key=lambda p: (p.aos, p.station, p.satellite))
    return passes


def _slant_range(station: GroundStation, sat: Satellite, t: float) -> float:
    return distance(station.ecef, teme_to_ecef(sat.position_teme(t), gmst82(t)))


def predict_isl_windows(
    constellation: Constellation,
    start: Timestamp,
    end: Timestamp,
    *,
    step: float = DEFAULT_STEP,
    tol: float = DEFAULT_TOL,
    isl: IslConfig | None = None,
    _ephemeris: _Ephemeris | None = None,
) -> list[IslWindow]:
    """Windows in which each pair of satellites can link, sorted by start.

    A link needs the straight line between the two satellites to pass at least
    `atmosphere_margin_km` above a spherical Earth of equatorial radius, and the range to be at most
    `max_range_km`. The margin function is min(max_range - range, clearance - (R + margin)), in km;
    TEME suffices here since both quantities are rotation-invariant.
    """
    cfg = isl or constellation.isl
    sats = constellation.satellites
    grid = _ephemeris.grid if _ephemeris else time_grid(start, end, step)
    eph = _ephemeris or _Ephemeris(sats, grid)
    limit, floor = cfg.max_range_km, EARTH_RADIUS_KM + cfg.atmosphere_margin_km
    windows: list[IslWindow] = []
    for ia, a in enumerate(sats):
        for b in sats[ia + 1 :]:
            rate_bound = 1.2 * (a.max_speed_km_s + b.max_speed_km_s)
            near = rate_bound * step  # beyond this, the exact value cannot matter
            ra, rb = eph.teme[a.name], eph.teme[b.name]
            ranges = list(map(math.dist, ra, rb))  # C speed; most pairs stop here
            if min(ranges) > limit + near:
                continue
            # Range slack alone is an upper bound of the margin; it is exact enough wherever it
            # is already far below zero, so the clearance is computed only near the limit.
            values = [limit - d for d in ranges]
            for k, v in enumerate(values):
                if v > -near:
                    values[k] = min(v, segment_clearance(ra[k], rb[k]) - floor)
            if max(values) < -near:
                continue

            def f(t: float, a: Satellite = a, b: Satellite = b) -> float:
                pa, pb = a.position_teme(t), b.position_teme(t)
                return min(limit - distance(pa, pb), segment_clearance(pa, pb) - floor)

            def rng(t: float, a: Satellite = a, b: Satellite = b) -> float:
                return distance(a.position_teme(t), b.position_teme(t))

            for w in find_windows(grid, values, f, rate_bound, tol, refine_peak=False):
                if w.end <= w.start:
                    continue
                lo, hi = bisect.bisect_left(grid, w.start), bisect.bisect_right(grid, w.end)
                inside = ranges[lo:hi]
                # Closest approach: refine around the closest sample (range need not be unimodal
                # over a long window); it is informative only, so 1 s is plenty.
                a0, a1 = w.start, w.end
                if inside:
                    k = lo + min(range(len(inside)), key=inside.__getitem__)
                    a0, a1 = max(grid[max(k - 1, 0)], w.start), min(grid[min(k + 1, len(grid) - 1)], w.end)
                tmin, neg = _golden_max(lambda t, rng=rng: -rng(t), a0, a1, max(tol, 1.0))
                far = max(rng(w.start), rng(w.end), *inside)
                windows.append(IslWindow(a.name, b.name, w.start, w.end, -neg, tmin, far))
    windows.sort(key=lambda w: (w.start, w.a, w.b))
    return windows


def predict_all(
    constellation: Constellation,
    start: Timestamp,
    end: Timestamp,
    *,
    step: float = DEFAULT_STEP,
    tol: float = DEFAULT_TOL,
    isl: bool = True,
) -> tuple[list[Pass], list[IslWindow]]:
    """Passes and (if enabled) ISL windows, sharing one propagation of the coarse grid."""
    grid = time_grid(start, end, step)
    eph = _Ephemeris(constellation.satellites, grid)
    passes = predict_passes(constellation, start, end, step=step, tol=tol, _ephemeris=eph)
    windows: list[IslWindow] = []
    if isl and constellation.isl.enabled:
        windows = predict_isl_windows(constellation, start, end, step=step, tol=tol, _ephemeris=eph)
    return passes, windows
