"""Reference frames: SGP4's TEME to Earth-fixed (ECEF), and station-centred elevation.

SGP4 yields positions in TEME (True Equator, Mean Equinox of date). Turning them into the
Earth-fixed frame needs only a rotation about the z axis by Greenwich Mean Sidereal Time (the IAU
1982 model, the one SGP4 and Vallado's TEME definition are consistent with). Polar motion (tens of
metres) and UT1-UTC (under 0.9 s, i.e. under 0.4 km at the equator) are left out: both shift
AOS/LOS by far less than a second, which tests check against skyfield's full conversion.
Stations sit on the WGS84 ellipsoid. Units: km and radians unless a name says otherwise.
"""

from __future__ import annotations

import math

from orbitvault.orbit.timeutil import DAY, Timestamp, to_jd

Vec3 = tuple[float, float, float]

WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
EARTH_RADIUS_KM = WGS84_A_KM
"""Spherical Earth for line-of-sight checks: the equatorial radius, the conservative choice."""
C_KM_S = 299792.458
"""Speed of light, for one-way light time."""

_TWO_PI = 2.0 * math.pi
_JD2000 = 2451545.0


def gmst82(t: Timestamp) -> float:
    """Greenwich Mean Sidereal Time (IAU 1982), radians in [0, 2pi), taking UT1 = UTC."""
    jd, fr = to_jd(t)
    tu = ((jd - _JD2000) + fr) / 36525.0
    seconds = 67310.54841 + (8640184.812866 + (0.093104 - 6.2e-6 * tu) * tu) * tu
    # The polynomial's 876600 h/century term is just elapsed days: whole days are whole turns, so
    # it is replaced by the Julian day fraction, which keeps full precision (as skyfield does).
    return ((fr + (jd % 1.0) + seconds / DAY) % 1.0) * _TWO_PI


def teme_to_ecef(r: Vec3, gmst: float) -> Vec3:
    """Rotate a TEME vector into the Earth-fixed frame given GMST (see `gmst82`)."""
    c, s = math.cos(gmst), math.sin(gmst)
    x, y, z = r
    return (c * x + s * y, -s * x + c * y, z)


def geodetic_to_ecef(lat_deg: float, lon_deg: float, alt_m: float) -> Vec3:
    """WGS84 geodetic coordinates to Earth-fixed km."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    slat, clat = math.sin(lat), math.cos(lat)
    n = WGS84_A_KM / math.sqrt(1.0 - WGS84_E2 * slat * slat)
    h = alt_m / 1000.0
    return ((n + h) * clat * math.cos(lon), (n + h) * clat * math.sin(lon), (n * (1.0 - WGS84_E2) + h) * slat)


def local_up(lat_deg: float, lon_deg: float) -> Vec3:
    """Unit normal to the ellipsoid (geodetic zenith), against which elevation is measured."""
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))


def elevation_deg(site: Vec3, up: Vec3, target: Vec3) -> float:
    """Elevation of `target` above the site's local horizon, degrees (both in ECEF km)."""
    dx, dy, dz = target[0] - site[0], target[1] - site[1], target[2] - site[2]
    rng = math.sqrt(dx * dx + dy * dy + dz * dz)
    return math.degrees(math.asin((dx * up[0] + dy * up[1] + dz * up[2]) / rng))


def distance(a: Vec3, b: Vec3) -> float:
    dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return math.sqrt(dx * dx + dy * dy + dz * dz)


def segment_clearance(a: Vec3, b: Vec3) -> float:
    """Closest distance from the Earth's centre to the segment a-b (km): the line-of-sight test."""
    dx, dy, dz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    dd = dx * dx + dy * dy + dz * dz
    if dd == 0.0:
        return math.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])
    u = -(a[0] * dx + a[1] * dy + a[2] * dz) / dd
    u = 0.0 if u < 0.0 else 1.0 if u > 1.0 else u
    px, py, pz = a[0] + u * dx, a[1] + u * dy, a[2] + u * dz
    return math.sqrt(px * px + py * py + pz * pz)
