"""Great-circle geometry: unit vectors, chords and distances on the sphere of the mean Earth
radius, computed in place over cache-sized slices (see the package docstring).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shared.engine import arrays
from shared.engine.arrays import Bools, Floats

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the radius of the sphere all distances are measured on."""


# Taylor coefficients of sin(x)/x - 1 in powers of x^2, highest first. Up to x^19 the
# remainder for |x| <= pi/2 is below (pi/2)^21 / 21! < 3e-16: as exact as numpy's sine
# (a nanometre on Earth), at a third of its cost, since numpy's float64 sine is scalar.
_SINE = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(9, 0, -1))


def sine(x: Floats, out: Floats, square: Floats) -> Floats:
    """sin(x) for |x| <= pi/2 into `out`, using `square` as scratch (all the same length)."""
    np.multiply(x, x, out=square)
    out.fill(_SINE[0])
    for coefficient in _SINE[1:]:
        out *= square
        out += coefficient
    out *= square
    out *= x
    out += x
    return out


def cos_from_sin(s: Floats, out: Floats) -> Floats:
    """cos(x) from s = sin(x) for |x| <= pi/2 (so cos(x) >= 0), into `out`.

    sqrt((1 - s)(1 + s)) costs a fifth of a cosine and is exact but where cos(x) nears 0:
    there its absolute error reaches sqrt(2 ulp) ~ 2e-8, so positions within metres of the
    poles or the antimeridian may be off by up to 0.35 m (tests/unit/test_engine_numerics.py)."""
    np.subtract(1.0, s, out=out)
    out *= 1.0 + s
    return np.sqrt(out, out=out)


def unit_vectors_into(
    lat: Floats, lon: Floats, x: Floats, y: Floats, z: Floats, scratch: Floats
) -> None:
    """Unit vectors of (lat, lon) in degrees into x, y, z; `scratch` is (3, len(lat)).

    The longitude's sine and cosine come from the sine of half of it (whose cosine is >= 0,
    as |lon/2| <= 90 degrees): sin = 2 s c, cos = 1 - 2 s^2, one polynomial for both."""
    a, b, c = scratch
    np.multiply(lat, np.pi / 180.0, out=a)
    sine(a, out=z, square=b)
    cos_phi = cos_from_sin(z, out=a)
    np.multiply(lon, np.pi / 360.0, out=b)
    half_sin = sine(b, out=y, square=c)
    half_cos = cos_from_sin(half_sin, out=b)
    np.multiply(half_sin, half_sin, out=x)
    x *= -2.0
    x += 1.0
    x *= cos_phi
    y *= half_cos
    y *= 2.0
    y *= cos_phi


def unit_vectors(lat: Floats, lon: Floats) -> tuple[Floats, Floats, Floats]:
    x, y, z = np.empty((3, len(lat)))
    unit_vectors_into(lat, lon, x, y, z, np.empty((3, len(lat))))
    return x, y, z


def chord_km(chord: Floats) -> Floats:
    """Great-circle km from chord lengths on the unit sphere (in place)."""
    chord *= 0.5
    if chord.max(initial=0.0) > 1.0:  # rounding near the antipode (a max is cheaper)
        np.minimum(chord, 1.0, out=chord)
    np.arcsin(chord, out=chord)
    chord *= 2.0 * EARTH_RADIUS_KM
    return chord


def vector_distance_km(
    a: tuple[Floats, Floats, Floats],
    b: tuple[Floats, Floats, Floats],
    out: Floats | None = None,
    scratch: Floats | None = None,
) -> Floats:
    sq = np.subtract(a[0], b[0], out=out)
    sq *= sq
    part = np.subtract(a[1], b[1], out=scratch)
    part *= part
    sq += part
    np.subtract(a[2], b[2], out=part)
    part *= part
    sq += part
    return chord_km(np.sqrt(sq, out=sq))


def fix_geometry(
    lat: Floats,
    lon: Floats,
    home: tuple[float, float],
    *,
    null_island_invalid: bool,
    home_km: Floats,
) -> tuple[Bools, Floats, Floats]:
    """Which fixes have valid coordinates, their unit vectors (rows x, y, z of one array),
    km from home (NaN when invalid), and km from each fix to the one before it (0 for the
    first), in one pass over cache-sized slices. The km from home go into `home_km`, the
    rest is returned."""
    n = len(lat)
    located = np.empty(n, dtype=bool)
    xyz = np.empty((3, n))
    x, y, z = xyz
    step_km = np.zeros(n)
    origin = unit_vectors(np.array([home[0]]), np.array([home[1]]))
    scratch = np.empty((3, arrays.CHUNK))
    for a in range(0, n, arrays.CHUNK):
        b = min(a + arrays.CHUNK, n)
        s = scratch[:, : b - a]
        la, lo, ok = lat[a:b], lon[a:b], located[a:b]
        np.less_equal(np.abs(la, out=s[0]), 90.0, out=ok)  # NaN compares False: invalid
        ok &= np.abs(lo, out=s[0]) <= 180.0
        if null_island_invalid:
            ok &= (la != 0) | (lo != 0)
        whole = ok.all()
        if not whole:
            # Out-of-range values would make the trigonometry warn; those fixes are dropped.
            la, lo = np.where(ok, la, 0.0), np.where(ok, lo, 0.0)
        unit_vectors_into(la, lo, x[a:b], y[a:b], z[a:b], s)
        vector_distance_km((x[a:b], y[a:b], z[a:b]), origin, out=home_km[a:b], scratch=s[0])
        if not whole:
            home_km[a:b][~ok] = np.nan
        p = max(a, 1)
        vector_distance_km(
            (x[p:b], y[p:b], z[p:b]),
            (x[p - 1 : b - 1], y[p - 1 : b - 1], z[p - 1 : b - 1]),
            out=step_km[p:b],
            scratch=s[0, : b - p],
        )
    return located, xyz, step_km


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Floats:
    """Great-circle km between points given in degrees (array-likes that broadcast)."""
    a, b = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)) for v in (lat1, lon1)))
    c, d = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)) for v in (lat2, lon2)))
    shape = np.broadcast_shapes(np.shape(lat1), np.shape(lon1), np.shape(lat2), np.shape(lon2))
    return vector_distance_km(unit_vectors(a, b), unit_vectors(c, d)).reshape(shape)


def destination(lat: float, lon: float, bearing: Any, km: Any) -> tuple[Floats, Floats]:
    """Points `km` away from (lat, lon) in degrees along `bearing` (radians from north)."""
    phi, lam = np.radians(lat), np.radians(lon)
    delta = np.asarray(km, np.float64) / EARTH_RADIUS_KM
    theta = np.asarray(bearing, np.float64)
    sin_phi2 = np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(theta)
    phi2 = np.arcsin(np.clip(sin_phi2, -1.0, 1.0))
    lam2 = lam + np.arctan2(
        np.sin(theta) * np.sin(delta) * np.cos(phi), np.cos(delta) - np.sin(phi) * sin_phi2
    )
    return np.degrees(phi2), (np.degrees(lam2) + 540.0) % 360.0 - 180.0
