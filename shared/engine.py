"""The distance engine: GPS fixes in, distance-from-home metrics out. Pure and vectorised.

`analyze(points, window, params)` runs every filter and metric over numpy arrays in one
call and returns an `Analysis`: the JSON-ready `Summary` plus per-fix arrays for the CSV.
It imports nothing but numpy, pydantic and the standard library, so it runs the same in
the compute function, in `otel-worker analyze` and in the benchmark.

How the numbers are made (docs/FUNCTIONALITY.md, "Metrics"):

- Distances are great-circle distances on a sphere of the mean Earth radius. They are
  computed as the chord between unit vectors, which is the haversine formula rearranged
  (hav(d/R) = (chord/2)^2): one set of trigonometric calls per fix instead of per pair.
- Filters run in a fixed order and the first one that applies names the fix's
  `dropped_by` rule: invalid coordinates, accuracy above the limit, exact duplicates,
  impossible jumps, stationary jitter. The first four are quality filters: such a fix is
  ignored everywhere. A jitter fix is a genuine but noisy observation of a device that has
  not moved: it adds no path, but it counts for the distance statistics, trips and time
  accounting, so a quiet night at home is time at home rather than a gap.
- Fixes outside the window are context only (never counted): they let segments and time
  that cross the window's edges be split exactly at the edge, the same way segments that
  cross local midnight are split between days, so the days of a range add up to the range.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.points import DTYPES, MISSING, MISSING_TIME, US_PER_S, Points

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the radius of the sphere all distances are measured on."""

SCHEMA_VERSION = 1
"""Version of the `Summary` JSON; bumped whenever a key changes meaning or disappears."""

DROP_RULES: tuple[str, ...] = ("invalid", "accuracy", "duplicate", "jump", "jitter")
"""Filter rules in the order they run; `Analysis.dropped_by` holds 1 + the rule's index."""

KEPT = 0
INVALID, ACCURACY, DUPLICATE, JUMP, JITTER = range(1, 6)
NO_TRIP = 0
HOME, AWAY, UNKNOWN = 0, 1, 2
STATE_UNKNOWN = -1
"""`Analysis.at_home` of a fix a quality filter dropped: it tells nothing about the state."""

_US_PER_H = 3600 * US_PER_S
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Codes = npt.NDArray[np.integer[Any]]
"""Small non-negative integers (device codes, groups) of whatever width they come in."""


class EngineParams(BaseModel):
    """Home, radii and filter thresholds: everything `analyze` needs besides the data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home_latitude: Annotated[float, Field(ge=-90, le=90)]
    home_longitude: Annotated[float, Field(ge=-180, le=180)]
    exit_radius_km: Annotated[float, Field(gt=0)] = 0.5
    """Leaving this radius starts a trip (`AWAY_THRESHOLD_KM`)."""
    enter_radius_km: Annotated[float, Field(gt=0)] = 0.3
    """Coming back inside this smaller radius ends it, so boundary jitter makes no trips."""
    max_accuracy_m: Annotated[float, Field(gt=0)] | None = 200.0
    """Fixes reporting a worse accuracy are dropped; None keeps them all."""
    max_speed_kmh: Annotated[float, Field(gt=0)] | None = 500.0
    """A fix reached and left faster than this is a jump and dropped; None disables."""
    max_gap_s: Annotated[float, Field(gt=0)] = 1800.0
    """Longer gaps between observed fixes are unknown time."""
    jitter_radius_m: Annotated[float, Field(ge=0)] = 120.0
    """A fix this close to where the device was over its last `jitter_fixes` fixes adds no
    path (a fix reporting a worse accuracy must move by its accuracy); 0 disables."""
    jitter_fixes: Annotated[int, Field(ge=1, le=1000)] = 10
    drop_duplicates: bool = True
    null_island_invalid: bool = True
    """Treat latitude 0, longitude 0 (a common placeholder for "no fix") as invalid."""
    context_s: Annotated[float, Field(ge=0)] = 86400.0
    """How far beyond the window fixes are used as context (see `read_range`)."""

    @model_validator(mode="after")
    def _radii_ordered(self) -> Self:
        if self.enter_radius_km >= self.exit_radius_km:
            raise ValueError(
                f"enter_radius_km ({self.enter_radius_km}) must be smaller than "
                f"exit_radius_km ({self.exit_radius_km})"
            )
        return self


@dataclass(frozen=True, eq=False)
class Window:
    """A half-open UTC range made of whole local days of one time zone.

    `bounds_us[k]` is the UTC instant (µs since the epoch) local day `dates[k]` starts;
    the last element is where the window ends. Days are 23, 24 or 25 hours long.
    """

    timezone: str
    dates: tuple[dt.date, ...]
    bounds_us: npt.NDArray[np.int64]

    @property
    def start_us(self) -> int:
        """First instant inside the window."""
        return int(self.bounds_us[0])

    @property
    def end_us(self) -> int:
        """First instant after the window."""
        return int(self.bounds_us[-1])

    def local_time(self, us: int) -> dt.datetime:
        """An instant as an aware datetime in the window's time zone."""
        return dt.datetime.fromtimestamp(us / US_PER_S, ZoneInfo(self.timezone))


def zone(name: str) -> ZoneInfo:
    """The time zone `name`, or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def local_midnight_us(day: dt.date, tz: ZoneInfo) -> int:
    """The UTC instant (µs) local `day` begins in `tz`.

    Where a DST change skips midnight itself, the day begins at the change, which is what
    the offset in force before it gives.
    """
    start = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    return int(start.timestamp()) * US_PER_S


def day_window(first: dt.date, last: dt.date, timezone: str) -> Window:
    """The window covering local days `first` to `last` (both included) in `timezone`."""
    if last < first:
        raise ValueError(f"the last day ({last}) is before the first day ({first})")
    tz = zone(timezone)
    days = (last - first).days + 1
    dates = tuple(first + dt.timedelta(days=k) for k in range(days))
    bounds = [local_midnight_us(day, tz) for day in (*dates, last + dt.timedelta(days=1))]
    return Window(timezone=timezone, dates=dates, bounds_us=np.array(bounds, dtype=np.int64))


def read_range(window: Window, params: EngineParams) -> tuple[int, int]:
    """The half-open range of fix timestamps (µs) a reader should fetch for `window`.

    The window plus `params.context_s` on each side: the context lets filters judge the
    window's first and last fixes by their real neighbours and lets segments crossing the
    window's edges be split there, so consecutive days add up to their range exactly.
    """
    margin = round(params.context_s * US_PER_S)
    return window.start_us - margin, window.end_us + margin


# --- result model -------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DroppedCounts(_Model):
    """Fixes read in the window that each filter rule dropped (the first rule that applied)."""

    invalid: int = 0
    accuracy: int = 0
    duplicate: int = 0
    jump: int = 0
    jitter: int = 0


class PointCounts(_Model):
    """Fixes read in the window, used by every metric, and dropped per rule."""

    read: int = 0
    used: int = 0
    dropped: DroppedCounts = DroppedCounts()
    accuracy_unknown: int = 0
    """Fixes without an accuracy (NULL): kept, since unknown is not bad."""


class Place(_Model):
    """Where and when a device was."""

    time: dt.datetime
    latitude: float
    longitude: float
    device_id: str


class Trip(_Model):
    """Leaving the exit radius until coming back inside the enter radius."""

    id: int
    device_id: str
    start: dt.datetime
    end: dt.datetime
    duration_s: float
    max_distance_km: float | None
    """Farthest used fix of the trip inside the window (None when none is inside)."""
    path_km: float
    clipped_start: bool
    """The departure is before the window or was not observed (the data start away)."""
    clipped_end: bool
    """The return is after the window or was not observed (the data end away)."""


class Completeness(_Model):
    """How well the fixes cover the window."""

    coverage: float
    """Share of the window (per device) that is known time, 0 to 1."""
    largest_gap_s: float
    """Longest stretch of the window without an observed fix (edges included)."""
    largest_gap_start: dt.datetime | None
    ingest_lag_median_s: float | None
    """created_at - timestamp over the fixes read that have a created_at."""
    ingest_lag_max_s: float | None


class DayMetrics(_Model):
    """One local day of the window; the days of a window add up to the window's totals."""

    date: dt.date
    points_read: int
    points_used: int
    path_km: float
    raw_path_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float


class Metrics(_Model):
    """The metrics of one device, or of all devices together (sums over devices)."""

    points: PointCounts
    path_km: float
    """Path through the used fixes: segments between consecutive fixes of one device."""
    raw_path_km: float
    """The same through every fix with valid coordinates, before any other filter."""
    max_distance_km: float
    max_distance_at: Place | None
    min_distance_km: float
    mean_distance_km: float
    median_distance_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float
    trips: list[Trip]
    completeness: Completeness
    days: list[DayMetrics]


class WindowInfo(_Model):
    """The analysed window: local days, their time zone and the UTC range they make."""

    timezone: str
    first_day: dt.date
    last_day: dt.date
    start: dt.datetime
    end: dt.datetime


class Summary(Metrics):
    """The result of one analysis: totals over devices, then each device on its own."""

    schema_version: Literal[1] = 1
    """`SCHEMA_VERSION`: bumped whenever a key changes meaning or disappears."""
    window: WindowInfo
    parameters: EngineParams
    devices: dict[str, Metrics]
    notes: list[str]


@dataclass(frozen=True, eq=False)
class Analysis:
    """A `Summary` plus one row per fix read in the window (the rows of the CSV).

    Every array is parallel to `points` (the fixes inside the window, sorted by device and
    time, dropped ones included).
    """

    summary: Summary
    points: Points
    distance_km: Floats
    """Distance from home; NaN where the coordinates are invalid."""
    segment_km: Floats
    """Path added by this fix (from the previous used fix, the part inside the window)."""
    cumulative_km: Floats
    """Running path of the fix's device."""
    at_home: npt.NDArray[np.int8]
    """1 at home, 0 away, -1 for fixes a quality filter dropped."""
    trip: npt.NDArray[np.int32]
    """Id of the trip the fix belongs to, 0 for none."""
    dropped_by: npt.NDArray[np.uint8]
    """0 for kept fixes, else 1 + the index of the rule in `DROP_RULES`."""


# --- geometry --------------------------------------------------------------------------------


# The hot helpers below work in place: at millions of fixes, allocating a fresh array for
# every step costs as much as the arithmetic (page faults), and peak memory is a target.

CHUNK = 1 << 15
"""Fixes per slice of the geometry pass: its temporaries then stay in the CPU's cache, where
numpy's arithmetic runs several times faster than on arrays streamed from memory."""

# Taylor coefficients of sin(x)/x - 1 in powers of x^2, highest first. Up to x^19 the
# remainder for |x| <= pi/2 is below (pi/2)^21 / 21! < 3e-16: as exact as numpy's sine
# (a nanometre on Earth), at a third of its cost, since numpy's float64 sine is scalar.
_SINE = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(9, 0, -1))


def _sine(x: Floats, out: Floats, square: Floats) -> Floats:
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


def _cos_from_sin(s: Floats, out: Floats) -> Floats:
    """cos(x) from s = sin(x) for |x| <= pi/2 (so cos(x) >= 0), into `out`.

    sqrt((1 - s)(1 + s)) costs a fifth of a cosine and is exact but where cos(x) nears 0:
    there its absolute error reaches sqrt(2 ulp) ~ 2e-8, so positions within metres of the
    poles or the antimeridian may be off by up to 0.35 m (tests/test_engine_numerics.py)."""
    np.subtract(1.0, s, out=out)
    out *= 1.0 + s
    return np.sqrt(out, out=out)


def _unit_vectors_into(
    lat: Floats, lon: Floats, x: Floats, y: Floats, z: Floats, scratch: Floats
) -> None:
    """Unit vectors of (lat, lon) in degrees into x, y, z; `scratch` is (3, len(lat)).

    The longitude's sine and cosine come from the sine of half of it (whose cosine is >= 0,
    as |lon/2| <= 90 degrees): sin = 2 s c, cos = 1 - 2 s^2, one polynomial for both."""
    a, b, c = scratch
    np.multiply(lat, np.pi / 180.0, out=a)
    _sine(a, out=z, square=b)
    cos_phi = _cos_from_sin(z, out=a)
    np.multiply(lon, np.pi / 360.0, out=b)
    half_sin = _sine(b, out=y, square=c)
    half_cos = _cos_from_sin(half_sin, out=b)
    np.multiply(half_sin, half_sin, out=x)
    x *= -2.0
    x += 1.0
    x *= cos_phi
    y *= half_cos
    y *= 2.0
    y *= cos_phi


def _unit_vectors(lat: Floats, lon: Floats) -> tuple[Floats, Floats, Floats]:
    x, y, z = np.empty((3, len(lat)))
    _unit_vectors_into(lat, lon, x, y, z, np.empty((3, len(lat))))
    return x, y, z


def _chord_km(chord: Floats) -> Floats:
    """Great-circle km from chord lengths on the unit sphere (in place)."""
    chord *= 0.5
    if chord.max(initial=0.0) > 1.0:  # rounding near the antipode (a max is cheaper)
        np.minimum(chord, 1.0, out=chord)
    np.arcsin(chord, out=chord)
    chord *= 2.0 * EARTH_RADIUS_KM
    return chord


def _distance_km(
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
    return _chord_km(np.sqrt(sq, out=sq))


def _geometry(
    lat: Floats,
    lon: Floats,
    home: tuple[float, float],
    *,
    null_island_invalid: bool,
    home_km: Floats,
) -> tuple[Bools, tuple[Floats, Floats, Floats], Floats]:
    """Which fixes have valid coordinates, their unit vectors, km from home (NaN when
    invalid), and km from each fix to the one before it (0 for the first), in one pass
    over cache-sized slices. The km from home go into `home_km`, the rest is returned."""
    n = len(lat)
    located = np.empty(n, dtype=bool)
    x, y, z = np.empty((3, n))
    step_km = np.zeros(n)
    origin = _unit_vectors(np.array([home[0]]), np.array([home[1]]))
    scratch = np.empty((3, CHUNK))
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
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
        _unit_vectors_into(la, lo, x[a:b], y[a:b], z[a:b], s)
        _distance_km((x[a:b], y[a:b], z[a:b]), origin, out=home_km[a:b], scratch=s[0])
        if not whole:
            home_km[a:b][~ok] = np.nan
        p = max(a, 1)
        _distance_km(
            (x[p:b], y[p:b], z[p:b]),
            (x[p - 1 : b - 1], y[p - 1 : b - 1], z[p - 1 : b - 1]),
            out=step_km[p:b],
            scratch=s[0, : b - p],
        )
    return located, (x, y, z), step_km


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Floats:
    """Great-circle km between points given in degrees (array-likes that broadcast)."""
    a, b = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)) for v in (lat1, lon1)))
    c, d = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, np.float64)) for v in (lat2, lon2)))
    shape = np.broadcast_shapes(np.shape(lat1), np.shape(lon1), np.shape(lat2), np.shape(lon2))
    return _distance_km(_unit_vectors(a, b), _unit_vectors(c, d)).reshape(shape)


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


# --- the chain of fixes that survive a filter ---------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Chain:
    """Fixes at positions `idx` of the context arrays, with the step from each one's predecessor
    of the same device (`linked` False and step 0 for a device's first fix)."""

    idx: Ints
    linked: Bools
    step_km: Floats
    step_us: Ints


class _Fixes:
    """The context fixes as arrays, and chains of subsets of them."""

    def __init__(self, points: Points, params: EngineParams, home_km: Floats) -> None:
        self.points = points
        self.device = points.device
        self.t = points.timestamp
        self.home_km = home_km
        self.located, self.xyz, self._step_km = _geometry(
            points.lat,
            points.lon,
            (params.home_latitude, params.home_longitude),
            null_island_invalid=params.null_island_invalid,
            home_km=home_km,
        )

    def every(self) -> _Chain:
        """Every fix, each with its step from the one before it (of the same device)."""
        device, t, step_km = self.device, self.t, self._step_km
        linked = np.zeros(len(t), dtype=bool)
        np.equal(device[1:], device[:-1], out=linked[1:])
        step_us = np.zeros(len(t), dtype=np.int64)
        np.subtract(t[1:], t[:-1], out=step_us[1:])
        first = ~linked
        step_km[first] = 0.0
        step_us[first] = 0
        return _Chain(idx=np.arange(len(t)), linked=linked, step_km=step_km, step_us=step_us)

    def subchain(self, parent: _Chain, keep: Bools) -> _Chain:
        """The fixes of `parent` where `keep` holds. Steps are reused from the parent and
        measured anew only where a dropped fix separates a fix from its new predecessor."""
        if keep.all():
            return parent
        pos = np.flatnonzero(keep)
        idx = parent.idx[pos]
        linked = parent.linked[pos]
        step_km, step_us = parent.step_km[pos], parent.step_us[pos]
        # A fix keeps its predecessor, so its step, unless dropped fixes lay between them:
        # then its predecessor is the previous kept fix, if that is of the same device.
        gap = np.flatnonzero(np.diff(pos) != 1) + 1
        now, before = idx[gap], idx[gap - 1]
        joined = self.device[now] == self.device[before]
        linked[gap] = joined
        step_km[gap] = np.where(joined, self.distance(now, before), 0.0)
        step_us[gap] = np.where(joined, self.t[now] - self.t[before], 0)
        if len(pos):  # the first fix kept has no predecessor
            linked[0], step_km[0], step_us[0] = False, 0.0, 0
        return _Chain(idx=idx, linked=linked, step_km=step_km, step_us=step_us)

    def distance(self, i: Ints, j: Ints) -> Floats:
        return _distance_km(tuple(c[i] for c in self.xyz), tuple(c[j] for c in self.xyz))  # type: ignore[arg-type]


def _duplicates(fixes: _Fixes, idx: Ints) -> Bools:
    """Among the fixes at `idx`, those repeating an earlier one's device, time and place."""
    device, t = fixes.device[idx], fixes.t[idx]
    same_time = np.zeros(len(idx), dtype=bool)
    same_time[1:] = (device[1:] == device[:-1]) & (t[1:] == t[:-1])
    dup = np.zeros(len(idx), dtype=bool)
    if not same_time.any():
        return dup
    # Only fixes sharing a timestamp can repeat each other: order just those by place.
    tied = same_time.copy()
    tied[:-1] |= same_time[1:]
    members = np.flatnonzero(tied)
    pos = idx[members]
    lat, lon = fixes.points.lat[pos], fixes.points.lon[pos]
    order = np.lexsort((members, lon, lat, t[members], device[members]))
    key = (device[members][order], t[members][order], lat[order], lon[order])
    repeat = np.ones(len(order) - 1, dtype=bool)
    for column in key:
        repeat &= column[1:] == column[:-1]
    dup[members[order[1:][repeat]]] = True
    return dup


def _jumps(fixes: _Fixes, chain: _Chain, max_speed_kmh: float) -> Bools:
    """Fixes reached and left faster than the limit (the first and last fix of a device are
    judged against their next-but-one neighbour instead of the one they lack)."""
    n = len(chain.idx)
    limit = max_speed_kmh / _US_PER_H  # km per µs
    fast_in = chain.linked & (chain.step_km > limit * chain.step_us)
    fast_out = np.zeros(n, dtype=bool)
    fast_out[:-1] = fast_in[1:]
    first = np.flatnonzero(~chain.linked)
    last = np.append(first[1:], n) - 1
    for end, step, fast in ((first, 2, fast_in), (last, -2, fast_out)):
        other = end + step
        exists = (other >= 0) & (other < n)
        i, j = chain.idx[end[exists]], chain.idx[other[exists]]
        same = fixes.device[i] == fixes.device[j]
        i, j = i[same], j[same]
        fast[end[exists][same]] = fixes.distance(i, j) > limit * np.abs(fixes.t[i] - fixes.t[j])
    return fast_in & fast_out


def _window_sums(values: Floats, width: int, out: Floats) -> Floats:
    """out[j] = values[j] + ... + values[j + width - 1] for each j of `out`, from sums of
    runs of 1, 2, 4, ... values: a few vectorised additions, where a running sum is serial
    (numpy's cumsum costs ten additions per value) and loses precision as it grows."""
    m = len(out)
    out.fill(0.0)
    power, size, done = values, 1, 0
    while m:
        if width & size:
            out += power[done : done + m]
            done += size
        if 2 * size > width:
            break
        power = power[:-size] + power[size:]
        size *= 2
    return out


def _still(fixes: _Fixes, chain: _Chain, params: EngineParams) -> Bools:
    """Fixes within the jitter radius of where their device was over its previous fixes,
    while that place has stayed within the radius of where it was at the last used fix.

    "Where it was" is the centroid of the device's `jitter_fixes` fixes before this one:
    averaging makes it steady, so a resting device's noise rarely escapes the radius,
    while a walk leaves it within a few fixes. Motion that is slow for the rate of fixes
    (a walk logged every second) stays within the radius of a centroid that trails it,
    but the centroid moves with it: once it has moved the radius from the centroid of the
    last used fix, the fix is used (see `_drifted`). A device's first fix is never jitter.
    """
    n = len(chain.idx)
    still = np.zeros(n, dtype=bool)
    if n == 0 or params.jitter_radius_m == 0:
        return still
    k, radius = params.jitter_fixes, params.jitter_radius_m
    unit_m = EARTH_RADIUS_KM * 1000.0
    accuracy, device_start = fixes.points.accuracy, 0
    anchor = np.zeros(3)  # the centroid at the last used fix, carried from slice to slice
    # Slice by slice, each with the predecessors its first fixes look back to, so that the
    # sums and temporaries stay in the CPU's cache.
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        s = max(a - k, device_start)  # the slice's earliest predecessor
        # Windows cut short by their device's first fix (the k fixes from it on): their own
        # sums; every fix before `lead` has one.
        begins = np.append(device_start, np.flatnonzero(~chain.linked[a:b]) + a)
        ends = np.minimum(np.append(begins[1:], b), begins + k)
        short = _ranges(np.maximum(begins, a), ends)
        first = np.repeat(begins, np.maximum(ends - np.maximum(begins, a), 0))
        count = short - first  # predecessors in each short window
        window = np.empty(2 * len(short), dtype=np.int64)
        window[0::2], window[1::2] = first - s, short - s
        short -= a
        device_start = int(begins[-1])
        lead = min(s + k - a, b - a)
        idx = chain.idx[s:b]
        sq = np.zeros(b - a)
        centroid = np.empty((3, b - a))
        for axis, column in enumerate(fixes.xyz):
            c = column[idx]
            full = _window_sums(c, k, out=centroid[axis, lead:])
            full /= k
            if len(short):
                # (a device's first fix, with no predecessor, gets its own place)
                centroid[axis, short] = np.add.reduceat(c, window)[0::2] / np.maximum(count, 1)
            here = c[a - s :]
            here -= centroid[axis]
            here *= here
            sq += here
        here_still = np.less(sq, (radius / unit_m) ** 2, out=still[a:b])
        # A fix claiming a worse accuracy than the radius must move by its accuracy (rare).
        claimed = accuracy[idx[a - s :]]
        worse = np.flatnonzero(claimed > radius)
        here_still[worse] = sq[worse] < np.square(claimed[worse] / unit_m)
        here_still[short[count == 0]] = False
        anchor = _drifted(centroid, here_still, anchor, (radius / unit_m) ** 2)
    return still


def _drifted(centroid: Floats, still: Bools, anchor: Floats, limit: float) -> Floats:
    """Clears `still` where a fix's centroid (column of `centroid`) lies at a squared chord
    of `limit` or more from the anchor: the centroid at the device's last used fix before
    it, or `anchor` for the fixes before the slice's first used one. Returns the anchor
    after the slice.

    Where nothing drifts (the usual case) that is one vectorised pass. Each fix it frees
    becomes the anchor of the fixes after it, so drifting runs are resolved fix by fix,
    each search vectorised over blocks that double in size: Python steps only once per
    radius travelled.
    """
    m = len(still)
    used = np.flatnonzero(~still)
    head = int(used[0]) if len(used) else m  # fixes before the slice's first used one
    runs = np.diff(np.append(used, m))
    drift = np.zeros(m)
    ref = np.empty(m)
    for axis, column in enumerate(centroid):
        # Each run's anchor repeated along it: several times cheaper than a gather.
        ref[:head] = anchor[axis]
        ref[head:] = np.repeat(column[used], runs)
        np.subtract(column, ref, out=ref)
        ref *= ref
        drift += ref
    far = np.flatnonzero(still & (drift >= limit))
    i = 0
    while i < len(far):
        at = int(far[i])
        following = np.searchsorted(used, at)
        end = int(used[following]) if following < len(used) else m
        # Every fix between `at` and `end` is still; their anchor is now `at`'s centroid.
        while at >= 0:
            still[at] = False
            at = _first_far(centroid, at, end, limit)
        i = int(np.searchsorted(far, end))
    moved = np.flatnonzero(~still)
    return centroid[:, moved[-1]].copy() if len(moved) else anchor


def _first_far(centroid: Floats, at: int, end: int, limit: float) -> int:
    """The first column in `at + 1 : end` at a squared chord of `limit` or more from
    column `at`, or -1."""
    start, size = at + 1, 64
    while start < end:
        stop = min(start + size, end)
        step = centroid[:, start:stop] - centroid[:, at, None]
        step *= step
        hit = np.flatnonzero(step.sum(axis=0) >= limit)
        if len(hit):
            return start + int(hit[0])
        start, size = stop, 2 * size
    return -1


def _states(home_km: Floats, chain: _Chain, params: EngineParams) -> npt.NDArray[np.int8]:
    """At home (HOME) or away (AWAY) at each fix of `chain`, with hysteresis: leaving takes
    a fix beyond the exit radius, coming back one inside the enter radius; in between the
    state carries on. A device's first fix is away only beyond the exit radius."""
    n = len(chain.idx)
    d = home_km[chain.idx]
    decided = (d > params.exit_radius_km) | (d < params.enter_radius_km) | ~chain.linked
    source = np.where(decided, np.arange(n), 0)
    np.maximum.accumulate(source, out=source)
    away = d[source] > params.exit_radius_km
    return away.view(np.int8)  # AWAY is 1, HOME 0: the comparison is the state


def _first_at_or_after(t: Ints, starts: Ints, bounds: Ints) -> Ints:
    """For each group of rows `starts[g]:starts[g + 1]` (each sorted by time), the first row
    whose time is at or after each of `bounds`: shape (groups, len(bounds)).

    One binary search per (group, bound), all run side by side: a few small passes instead
    of a day index per fix, since days are runs of consecutive rows of a device."""
    lo = np.repeat(starts[:-1], len(bounds)).reshape(-1, len(bounds))
    hi = np.repeat(starts[1:], len(bounds)).reshape(-1, len(bounds))
    longest = int(np.diff(starts).max(initial=0))
    for _ in range(longest.bit_length()):
        mid = (lo + hi) >> 1
        before = (lo < hi) & (t[np.minimum(mid, len(t) - 1)] < bounds)
        hi = np.where(before, hi, mid)  # where lo == hi, mid is hi too
        lo = np.where(before, mid + 1, lo)
    return lo


def _ranges(begin: Ints, end: Ints) -> Ints:
    """The positions of every range [begin[k], end[k]), one after the other."""
    size = np.maximum(end - begin, 0)
    offset = np.repeat(begin - (np.cumsum(size) - size), size)
    offset += np.arange(len(offset))
    return offset


def _run_sums(values: Floats, starts: Ints) -> Floats:
    """Sums of `values` (last axis) over the runs that start at the sorted positions
    `starts` and end where the next one starts (the last at the end): 0 for empty runs.

    The runs' own pairwise sums, not differences of a running sum."""
    m = values.shape[-1]
    inside = int(np.searchsorted(starts, m))  # runs starting at m are empty
    sums = np.zeros((*values.shape[:-1], len(starts)))
    if inside:
        at = starts[:inside]
        sums[..., :inside] = np.add.reduceat(values, at, axis=-1)
        sums[..., :inside][..., np.append(at[:-1] == at[1:], False)] = 0.0
    return sums


def _spread(
    chain: _Chain,
    amounts: Floats,
    at_bound: Ints,
    *,
    t: Ints,
    bounds: Ints,
    since: Ints | None = None,
) -> tuple[Floats, Ints, Floats]:
    """Share each step of `chain` and its `amounts` (rows of values, one per step) among the
    days it overlaps, in proportion to the overlap in time.

    A step runs from the fix at context position `since` (by default the chain's previous
    fix) to the chain's fix. `at_bound[g]` holds the first context row of the block's g-th
    device at or after each day bound. Returns the sums per (row, device, day), the chain
    positions of the steps that cross a bound and their amounts inside the window.
    """
    n_days = len(bounds) - 1
    rows, m = amounts.shape
    groups = len(at_bound)
    # Each device's fixes of one day are a run of the chain, so are the steps ending there.
    edges = np.searchsorted(chain.idx, at_bound).ravel()
    totals = _run_sums(amounts, edges).reshape(rows, groups, n_days + 1)[:, :, :-1].copy()
    # Only the first step into a day can cross its bound (and steps of a device's first fix
    # cannot: it starts where it ends).
    candidate = np.unique(edges[edges < m])
    candidate = candidate[chain.linked[candidate]]
    origin = chain.idx[candidate - 1] if since is None else since[candidate]
    start, end = t[origin], t[chain.idx[candidate]]
    day0 = np.searchsorted(bounds, start, side="right") - 1
    day1 = np.searchsorted(bounds, end, side="right") - 1
    cross = day0 != day1
    crossing, start, end, day0, day1 = (v[cross] for v in (candidate, start, end, day0, day1))
    amount = amounts[:, crossing]
    # The device whose window starts last at or before the fix: a crossing step ends inside
    # or after its device's window, and before the next device's rows.
    group = np.searchsorted(at_bound[:, 0], chain.idx[crossing], side="right") - 1
    # The runs counted crossing steps whole in the day they end: take them out again
    # (exact to a rounding of that day's sum), then add their shares of each day.
    ends_inside = day1 < n_days
    cell = group[ends_inside] * n_days + day1[ends_inside]
    # One row per (crossing step, window day it overlaps): a step may span many days.
    first_day = np.maximum(day0, 0)
    spans = np.maximum(np.minimum(day1, n_days - 1) - first_day + 1, 0)
    step = np.repeat(np.arange(len(crossing)), spans)
    d = np.arange(len(step)) - np.repeat(np.cumsum(spans) - spans, spans)
    d += first_day[step]
    overlap = np.maximum(
        np.minimum(end[step], bounds[d + 1]) - np.maximum(start[step], bounds[d]), 0
    )
    share = overlap / (end - start)[step]
    inside = np.empty((rows, len(crossing)))
    for r in range(rows):
        flat = totals[r].reshape(-1)
        flat -= np.bincount(cell, weights=amount[r][ends_inside], minlength=len(flat))
        part = share * amount[r][step]
        flat += np.bincount(group[step] * n_days + d, weights=part, minlength=len(flat))
        inside[r] = np.bincount(step, weights=part, minlength=len(crossing))
    return totals, crossing, inside


@dataclass(frozen=True, eq=False)
class _Trips:
    """Trips overlapping the window, as parallel arrays, and each valid fix's trip id."""

    device: Codes
    start_us: Ints
    end_us: Ints
    clipped_start: Bools
    clipped_end: Bools
    path_km: Floats
    max_km: Floats
    fix_trip: npt.NDArray[np.int32]

    @staticmethod
    def joined(parts: list[_Trips]) -> _Trips:
        """The trips of consecutive blocks as one set (fix_trip is left to the caller)."""
        if len(parts) == 1:
            return parts[0]
        return _Trips(
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in (
                    "device",
                    "start_us",
                    "end_us",
                    "clipped_start",
                    "clipped_end",
                    "path_km",
                    "max_km",
                )
            },
            fix_trip=np.zeros(0, dtype=np.int32),
        )


def _trips(
    chain: _Chain,
    state: npt.NDArray[np.int8],
    *,
    t: Ints,
    segment_km: Floats,
    home_km: Floats,
    window_edges: Ints,
    device: Codes,
    window: Window,
) -> _Trips:
    """Runs of away fixes per device. `segment_km` is each context row's in-window path,
    `home_km` each chain fix's distance from home, `window_edges[g]` the chain positions
    where the g-th device's fixes inside the window begin and end."""
    n = len(t)
    away = state == AWAY
    first = ~chain.linked
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    before_away = np.zeros(n, dtype=bool)
    before_away[1:] = away[:-1]
    after_away = np.zeros(n, dtype=bool)
    after_away[:-1] = away[1:]
    starts = np.flatnonzero(away & (first | ~before_away))
    ends = np.flatnonzero(away & (last | ~after_away))
    returned = ~last[ends]
    stop = np.where(returned, ends + 1, ends)
    begin_us, finish_us = t[starts], t[stop]
    lo, hi = window.start_us, window.end_us
    keep = ((begin_us < hi) & (finish_us > lo)) | ((begin_us >= lo) & (begin_us < hi))
    starts, ends, stop, returned = starts[keep], ends[keep], stop[keep], returned[keep]
    begin_us, finish_us = begin_us[keep], finish_us[keep]
    # Sums over each trip's own rows (rows off the chain add no path).
    rows = np.empty(2 * len(starts), dtype=np.int64)
    rows[0::2], rows[1::2] = chain.idx[starts], chain.idx[stop] + 1
    path_km = _run_sums(segment_km, rows)[0::2]
    # The farthest fix of each trip inside the window: its chain positions clipped to the
    # device's fixes in the window (a kept trip starts before its device's window ends).
    group = np.searchsorted(window_edges[:, 1], starts, side="right")
    inside = np.empty((len(starts), 2), dtype=np.int64)
    inside[:, 0] = np.maximum(starts, window_edges[group, 0])
    inside[:, 1] = np.minimum(ends + 1, window_edges[group, 1])
    farthest = np.full(len(starts), np.nan)
    seen = inside[:, 0] < inside[:, 1]
    if seen.any():
        at = inside[seen].ravel()
        # The last run may end at the chain's end, which reduceat takes as its own end.
        farthest[seen] = np.maximum.reduceat(home_km, at[: len(at) - (at[-1] == n)])[0::2]
    ids = np.arange(1, len(starts) + 1, dtype=np.int32)
    runs = np.zeros(2 * len(starts) + 1, dtype=np.int32)
    runs[1::2] = ids
    sizes = np.empty(len(runs), dtype=np.int64)
    sizes[0::2] = np.diff(starts, prepend=0, append=n) - np.append(0, ends - starts + 1)
    sizes[1::2] = ends - starts + 1
    return _Trips(
        device=device[starts],
        start_us=np.maximum(begin_us, lo),
        end_us=np.minimum(finish_us, hi),
        clipped_start=(begin_us < lo) | first[starts],
        clipped_end=(finish_us > hi) | ~returned,
        path_km=path_km,
        max_km=farthest,
        fix_trip=np.repeat(runs, sizes),
    )


def _check_sorted(points: Points) -> None:
    device, t = points.device, points.timestamp
    for a in range(0, len(points) - 1, CHUNK):  # slices that stay in the CPU's cache
        b = min(a + CHUNK, len(points) - 1)
        step = device[a + 1 : b + 1] - device[a:b]
        if (step < 0).any() or ((t[a + 1 : b + 1] < t[a:b]) & (step == 0)).any():
            raise ValueError("points must be sorted by device, then timestamp")


MEDIAN_SAMPLE = 4096
"""Values sampled to bracket the median of large arrays (see `_median`)."""


def _median(values: Floats) -> float:
    """The median, exactly, reordering `values` in place.

    For a large array, a sample's quantiles give a narrow range that holds the middle with
    near certainty; counting the values below it and partitioning only those inside costs a
    few comparisons per value instead of a partition of them all. Should the range miss
    the middle, the whole array is partitioned.
    """
    n = len(values)
    middle = n // 2
    if n >= 16 * MEDIAN_SAMPLE:
        sample = np.sort(values[:: n // MEDIAN_SAMPLE])
        # +-128 sample ranks is about 4 standard deviations of a random sample's quantile.
        at = middle * len(sample) // n
        lo, hi = sample[max(at - 128, 0)], sample[min(at + 128, len(sample) - 1)]
        # One pass in cache-sized slices: count the values below the range, keep those in it.
        below, parts = 0, []
        for a in range(0, n, CHUNK):
            part = values[a : a + CHUNK]
            below += int(np.count_nonzero(part < lo))
            parts.append(part[(part >= lo) & (part <= hi)])
        inside = np.concatenate(parts)
        rank = middle - below
        if 1 <= rank < len(inside):
            return _partition_median(inside, rank, n % 2 == 0)
    return _partition_median(values, middle, n % 2 == 0)


def _partition_median(values: Floats, middle: int, even: bool) -> float:
    """The value of rank `middle`, or for an `even` count its mean with the one of rank
    `middle - 1`: one partition, as that is the largest value left of `middle`."""
    values.partition(middle)
    median = float(values[middle])
    if even:
        median = (median + float(values[:middle].max())) / 2
    return median


def _round_km(value: float) -> float:
    return round(float(value), 6)


def _mean_km(total: float, count: int) -> float:
    return _round_km(total / count) if count else 0.0


def _round_s(value: float) -> float:
    return round(float(value), 3)


BLOCK_FIXES = 1 << 20
"""Devices are analysed in blocks of about this many fixes (every step is per device):
arrays this size are reused from the heap rather than faulted in afresh, which keeps the
time per fix at ten million fixes close to that at one million and bounds temporaries."""


@dataclass(frozen=True, eq=False)
class _Part:
    """The per-day sums and trips of one block of whole devices (rows `first_device` on of
    the per-day arrays), and the rows of its fixes inside the window."""

    first_device: int
    path_days: Floats
    raw_days: Floats
    time_days: Floats
    read_days: Ints
    used_days: Ints
    window_rows: Ints
    """Per device, the first row inside the window and the first after it."""
    trips: _Trips
    n_valid: int


@dataclass(frozen=True, eq=False)
class _Columns:
    """The per-fix results of every context fix, which the blocks fill in row by row (no
    copies to join), and the devices and times of the valid fixes, filled from the start."""

    code: npt.NDArray[np.uint8]
    home_km: Floats
    segment_km: Floats
    at_home: npt.NDArray[np.int8]
    trip: npt.NDArray[np.int32]
    valid_device: Codes
    valid_t: Ints

    @staticmethod
    def empty(points: Points) -> _Columns:
        """Columns for `points`, not yet filled."""
        n = len(points)
        return _Columns(
            code=np.empty(n, dtype=np.uint8),
            home_km=np.empty(n),
            segment_km=np.empty(n),
            at_home=np.empty(n, dtype=np.int8),
            trip=np.empty(n, dtype=np.int32),
            valid_device=np.empty(n, dtype=points.device.dtype),
            valid_t=np.empty(n, dtype=np.int64),
        )


def analyze(points: Points, window: Window, params: EngineParams) -> Analysis:
    """Run every filter and metric over `points` for `window`.

    `points` must be sorted by device, then timestamp (as `Points.from_columns` and the
    readers produce them). Fixes outside the window serve as context only (see
    `read_range`); the result describes the fixes inside it. No fixes is a valid input and
    gives zeros and a note.
    """
    _check_sorted(points)
    lo, hi = read_range(window, params)
    t, first = points.timestamp, _starts(points.device, len(points.device_ids))
    seen = first[:-1] < first[1:]
    # Each device's fixes are in time order: its first and last tell whether all are near.
    if (t[first[:-1][seen]] < lo).any() or (t[first[1:][seen] - 1] >= hi).any():
        points = points.take((t >= lo) & (t < hi))
    n_devices, n_days = len(points.device_ids), len(window.dates)
    out = _Columns.empty(points)
    path_days, raw_days = np.zeros((2, n_devices, n_days))
    time_days = np.zeros((n_devices, 2, n_days))
    read_days, used_days = np.zeros((2, n_devices, n_days), dtype=np.int64)
    parts: list[_Part] = []
    n_valid = n_trips = 0
    for rows in _blocks(points.device, n_devices):
        part = _analyze_devices(points, rows, window, params, out=out, valid_from=n_valid)
        if n_trips:  # each block numbers its trips from 1
            trip = out.trip[rows]
            trip[trip > 0] += n_trips
        n_valid += part.n_valid
        n_trips += len(part.trips.device)
        devices = slice(part.first_device, part.first_device + len(part.window_rows))
        path_days[devices], raw_days[devices] = part.path_days, part.raw_days
        time_days[devices], read_days[devices] = part.time_days, part.read_days
        used_days[devices] = part.used_days
        parts.append(part)
    trips = _Trips.joined([part.trips for part in parts])

    window_rows = np.concatenate([part.window_rows for part in parts])
    w: slice | Ints = slice(None)
    window_points = points
    if int((window_rows[:, 1] - window_rows[:, 0]).sum()) != len(points):
        w = _ranges(window_rows[:, 0], window_rows[:, 1])
        window_points = points.take(w)
    segment_km = out.segment_km[w]
    cumulative = np.empty_like(segment_km)
    for a, b in itertools.pairwise(_starts(window_points.device, n_devices).tolist()):
        np.cumsum(segment_km[a:b], out=cumulative[a:b])  # rows are sorted by device
    home_km, code = out.home_km[w], out.code[w]
    summary = _Summarizer(window_points, window, params, distance_km=home_km, code=code).summary(
        path_days=path_days,
        raw_days=raw_days,
        time_days=time_days,
        read_days=read_days,
        used_days=used_days,
        trips=trips,
        valid_device=out.valid_device[:n_valid],
        valid_t=out.valid_t[:n_valid],
    )
    return Analysis(
        summary=summary,
        points=window_points,
        distance_km=home_km,
        segment_km=segment_km,
        cumulative_km=cumulative,
        at_home=out.at_home[w],
        trip=out.trip[w],
        dropped_by=code,
    )


def _blocks(device: Codes, n_devices: int) -> list[slice]:
    """Row ranges of whole devices, each about BLOCK_FIXES long (or one larger device)."""
    starts = _starts(device, n_devices)[1:].tolist()
    edges = [0]
    for end in starts:
        if end - edges[-1] >= BLOCK_FIXES:
            edges.append(end)
    if edges[-1] != len(device) or len(edges) == 1:
        edges.append(len(device))
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _analyze_devices(
    all_points: Points,
    rows: slice,
    window: Window,
    params: EngineParams,
    *,
    out: _Columns,
    valid_from: int,
) -> _Part:
    """Every filter and per-fix metric for the fixes in `rows` (whole devices), written to
    those rows of `out` (the valid fixes' devices and times from row `valid_from`)."""
    points = Points(
        device_ids=all_points.device_ids,
        **{name: getattr(all_points, name)[rows] for name in DTYPES},
    )
    t = points.timestamp
    bounds = window.bounds_us
    device = points.device
    first_device = int(device[0]) if len(device) else 0
    last_device = int(device[-1]) + 1 if len(device) else 0
    # Each device's rows of each day are consecutive: found by their first rows, not per fix.
    starts = np.searchsorted(device, np.arange(first_device, last_device + 1, dtype=device.dtype))
    at_bound = _first_at_or_after(t, starts, bounds)
    fixes = _Fixes(points, params, out.home_km[rows])
    located, home_km = fixes.located, fixes.home_km

    code = out.code[rows]
    np.logical_not(located, out=code.view(np.bool_))  # INVALID where not located, else KEPT
    good = located.copy()
    if params.max_accuracy_m is not None:
        inaccurate = good & (points.accuracy > params.max_accuracy_m)
        code[inaccurate] = ACCURACY
        good &= ~inaccurate
    spread = {"t": t, "bounds": bounds}
    raw = fixes.subchain(fixes.every(), located)
    # A chain as long as the rows holds them all: its positions are the rows.
    keep = good if len(raw.idx) == len(good) else good[raw.idx]
    if params.drop_duplicates:  # judged among the accurate fixes, dropped with them
        accurate = np.flatnonzero(keep)
        repeated = accurate[_duplicates(fixes, raw.idx[accurate])]
        code[raw.idx[repeated]] = DUPLICATE
        keep[repeated] = False
    valid = fixes.subchain(raw, keep)
    raw_days, _, _ = _spread(raw, raw.step_km[np.newaxis], at_bound, **spread)
    del raw  # the largest chain: free it before the next ones are built
    if params.max_speed_kmh is not None:
        jumped = _jumps(fixes, valid, params.max_speed_kmh)
        code[valid.idx[jumped]] = JUMP
        valid = fixes.subchain(valid, ~jumped)
    still = _still(fixes, valid, params)
    code[valid.idx[still]] = JITTER
    used = fixes.subchain(valid, ~still)

    # A resting device was seen where it rested until its last jitter fix: a move away
    # happened after that, so the step is placed in time from there, not from the anchor.
    moved = np.flatnonzero(~still)
    last_seen = valid.idx[np.maximum(moved - 1, 0)]
    path_days, crossing, crossing_km = _spread(
        used,
        used.step_km[np.newaxis],
        at_bound,
        since=np.where(used.linked, last_seen, used.idx),
        **spread,
    )
    # The path each fix adds inside the window, by row: none before or after the window.
    seg = out.segment_km[rows]
    seg.fill(0.0)
    seg[used.idx] = used.step_km
    seg[_ranges(starts[:-1], at_bound[:, 0])] = 0.0
    seg[_ranges(at_bound[:, -1], starts[1:])] = 0.0
    seg[used.idx[crossing]] = crossing_km[0]

    state_used = _states(home_km, used, params)
    # A jitter fix is where its device's last used fix was: it shares that fix's state (a
    # device's first valid fix is never jitter, so each run starts with a used fix).
    state = np.repeat(state_used, np.diff(moved, append=len(still)))
    observed = valid.linked & (valid.step_us <= round(params.max_gap_s * US_PER_S))
    seconds = np.zeros((2, len(valid.idx)))  # time at home, away since the previous fix
    np.divide(valid.step_us, US_PER_S, out=seconds[AWAY], where=observed)
    away_before = np.zeros(len(state), dtype=bool)
    away_before[1:] = state[:-1] == AWAY
    np.copyto(seconds[HOME], seconds[AWAY], where=~away_before)
    seconds[AWAY][~away_before] = 0.0
    valid_at = slice(valid_from, valid_from + len(valid.idx))
    valid_device = np.take(device, valid.idx, out=out.valid_device[valid_at])
    valid_t = np.take(t, valid.idx, out=out.valid_t[valid_at])
    time_days, _, _ = _spread(valid, seconds, at_bound, **spread)

    window_edges = np.searchsorted(valid.idx, at_bound[:, [0, -1]])
    trips = _trips(
        valid,
        state,
        t=valid_t,
        segment_km=seg,
        home_km=home_km[valid.idx],
        window_edges=window_edges,
        device=valid_device,
        window=window,
    )
    at_home = out.at_home[rows]
    at_home.fill(STATE_UNKNOWN)
    at_home[valid.idx] = state == HOME
    trip = out.trip[rows]
    trip.fill(0)
    trip[valid.idx] = trips.fix_trip

    return _Part(
        first_device=first_device,
        path_days=path_days[0],
        raw_days=raw_days[0],
        time_days=time_days.transpose(1, 0, 2),
        read_days=np.diff(at_bound, axis=1),
        used_days=np.diff(np.searchsorted(used.idx, at_bound), axis=1),
        window_rows=at_bound[:, [0, -1]] + rows.start,
        trips=trips,
        n_valid=len(valid.idx),
    )


_K = TypeVar("_K", bound=tuple[int, ...])
_V = TypeVar("_V")
_DistanceStats = tuple[Place | None, float, float, float, float]
"""Farthest place, max, min, mean and median km from home."""


def _starts(device: Codes, n_devices: int) -> Ints:
    """Where each device's rows start in rows sorted by device, and (last) the end."""
    # Keys of the column's own type: other keys would make searchsorted convert the column.
    return np.searchsorted(device, np.arange(n_devices + 1, dtype=device.dtype))


def _parts(sizes: Any) -> list[tuple[int, int]]:
    """The ranges that consecutive parts of these sizes take, then the range of them all."""
    ends = np.cumsum(sizes, dtype=np.int64)
    return [(int(end - size), int(end)) for size, end in zip(sizes, ends, strict=True)] + [
        (0, int(ends[-1]) if len(ends) else 0)
    ]


def _once(keys: list[_K], compute: Callable[..., _V]) -> list[_V]:
    """`compute(*key)` for each key, computed once per distinct key."""
    done: dict[_K, _V] = {}
    return [done[key] if key in done else done.setdefault(key, compute(*key)) for key in keys]


def _nth_true(mask: Bools, k: int) -> int:
    """The position of the (k+1)-th True in `mask` (which must have that many): counted a
    slice at a time, which is cheaper than listing every position."""
    step, start = 1 << 16, 0
    while k >= (here := int(np.count_nonzero(mask[start : start + step]))):
        k -= here
        start += step
    return start + int(np.flatnonzero(mask[start : start + step])[k])


class _Summarizer:
    """Builds the `Summary` from the fixes in the window and the per-day sums."""

    def __init__(
        self,
        points: Points,
        window: Window,
        params: EngineParams,
        *,
        distance_km: Floats,
        code: npt.NDArray[np.uint8],
    ) -> None:
        self.points, self.window, self.params = points, window, params
        self.distance_km, self.code = distance_km, code
        self.used = code == KEPT
        # Jitter fixes add no path, but a resting device is really where they say.
        self.seen = self.used | (code == JITTER)
        self.n_devices, self.n_days = len(points.device_ids), len(window.dates)
        self.day_s = np.diff(window.bounds_us) / US_PER_S

    def summary(
        self,
        *,
        path_days: Floats,
        raw_days: Floats,
        time_days: Floats,
        read_days: Ints,
        used_days: Ints,
        trips: _Trips,
        valid_device: Codes,
        valid_t: Ints,
    ) -> Summary:
        """The whole result: each device that has fixes in (or segments across) the window,
        then the totals over those devices."""
        points, n_devices = self.points, self.n_devices
        # Rows are sorted by device: each device's counts come from its own slice, which
        # spares the full-length combined keys a single bincount would need.
        first_fix = _starts(points.device, n_devices)
        counts = np.zeros((n_devices, len(DROP_RULES) + 1), dtype=np.int64)
        unknown_accuracy = np.zeros(n_devices, dtype=np.int64)
        for g in np.flatnonzero(np.diff(first_fix)):
            rows = slice(first_fix[g], first_fix[g + 1])
            code = self.code[rows]
            # A comparison per rule: bincount would first widen each code to 8 bytes.
            counts[g] = [np.count_nonzero(code == rule) for rule in range(counts.shape[1])]
            unknown_accuracy[g] = np.count_nonzero(points.accuracy[rows] == MISSING)
        lo, hi = self.window.start_us, self.window.end_us
        first_valid = _starts(valid_device, n_devices)
        seen_before = np.zeros(n_devices, dtype=bool)
        seen_after = np.zeros(n_devices, dtype=bool)
        for g in np.flatnonzero(np.diff(first_valid)):
            # A device's valid fixes are in time order: its first and last tell.
            seen_before[g] = valid_t[first_valid[g]] < lo
            seen_after[g] = valid_t[first_valid[g + 1] - 1] >= hi
        reported = np.flatnonzero((read_days.sum(axis=1) > 0) | (seen_before & seen_after))
        stats = self._distance_stats(first_fix, counts[:, KEPT] + counts[:, JITTER])
        lags = self._lags(first_fix)

        all_trips = [
            Trip(
                id=k + 1,
                device_id=points.device_ids[trips.device[k]],
                start=self.window.local_time(int(trips.start_us[k])),
                end=self.window.local_time(int(trips.end_us[k])),
                duration_s=_round_s((trips.end_us[k] - trips.start_us[k]) / US_PER_S),
                max_distance_km=None if np.isnan(trips.max_km[k]) else _round_km(trips.max_km[k]),
                path_km=_round_km(trips.path_km[k]),
                clipped_start=bool(trips.clipped_start[k]),
                clipped_end=bool(trips.clipped_end[k]),
            )
            for k in range(len(trips.device))
        ]
        devices: dict[str, Metrics] = {}
        gaps: list[tuple[float, int]] = []
        for g in reported:
            observed = valid_t[first_valid[g] : first_valid[g + 1]]
            gap = self._largest_gap(observed[(observed >= lo) & (observed < hi)])
            gaps.append(gap)
            devices[points.device_ids[g]] = self._metrics(
                stats[g],
                lags[g],
                counts=counts[g],
                path=path_days[g],
                raw=raw_days[g],
                time=time_days[g],
                read=read_days[g],
                used=used_days[g],
                unknown_accuracy=int(unknown_accuracy[g]),
                trips=[trip for trip in all_trips if trip.device_id == points.device_ids[g]],
                gap=gap,
                n_devices=1,
            )
        totals = self._metrics(
            stats[-1],
            lags[-1],
            counts=counts[reported].sum(axis=0),
            path=path_days[reported].sum(axis=0),
            raw=raw_days[reported].sum(axis=0),
            time=time_days[reported].sum(axis=0),
            read=read_days[reported].sum(axis=0),
            used=used_days[reported].sum(axis=0),
            unknown_accuracy=int(unknown_accuracy[reported].sum()),
            trips=all_trips,
            gap=max(gaps, default=((hi - lo) / US_PER_S, lo)),
            n_devices=len(reported),
        )
        notes = []
        if not len(points):
            notes.append("no fixes in the window: every metric is zero")
        elif not self.seen.any():
            notes.append("every fix in the window was dropped by a filter")
        elif not self.used.any():
            notes.append("no movement: every fix in the window was stationary jitter")
        return Summary(
            **dict(totals),
            window=WindowInfo(
                timezone=self.window.timezone,
                first_day=self.window.dates[0],
                last_day=self.window.dates[-1],
                start=self.window.local_time(lo),
                end=self.window.local_time(hi),
            ),
            parameters=self.params,
            devices=devices,
            notes=notes,
        )

    def _distance_stats(self, first_fix: Ints, sizes: Ints) -> list[_DistanceStats]:
        """Farthest place, max, min, mean and median distance of the fixes seen, for each
        device (`sizes` of them, from row `first_fix`) and then for all of them together."""
        seen_km = self.distance_km[self.seen]  # a copy, which the medians may reorder
        ranges = _parts(sizes)
        # Everything that depends on the order comes first; the medians then reorder each
        # device's part in place, which leaves the whole's median as it was. The whole's
        # extremes and sum are those of its devices.
        parts = [
            self._extremes(row, seen_km[a:b])
            for row, (a, b) in zip(first_fix[:-1].tolist(), ranges[:-1], strict=True)
        ]
        seen = [part for part in parts if part[4]]
        farthest = max(seen, key=lambda part: part[1], default=(-1, 0.0, 0.0, 0.0, 0))
        whole = (
            farthest[0],
            farthest[1],
            min((part[2] for part in seen), default=0.0),
            sum(part[3] for part in seen),
            sum(part[4] for part in seen),
        )
        medians = _once(ranges, lambda a, b: _round_km(_median(seen_km[a:b])) if a < b else 0.0)
        return [
            (self._place(k), _round_km(maximum), _round_km(minimum), _mean_km(total, n), median)
            for (k, maximum, minimum, total, n), median in zip(
                [*parts, whole], medians, strict=True
            )
        ]

    def _extremes(self, row: int, distance: Floats) -> tuple[int, float, float, float, int]:
        """The row of the farthest fix (-1 for none), max, min, sum and count of `distance`,
        the km of the fixes seen from `row` on."""
        if not len(distance):
            return -1, 0.0, 0.0, 0.0, 0
        k = row + _nth_true(self.seen[row:], int(np.argmax(distance)))
        return k, float(distance.max()), float(distance.min()), float(distance.sum()), len(distance)

    def _place(self, k: int) -> Place | None:
        """Where and when the fix at row `k` was (None for -1)."""
        if k < 0:
            return None
        points = self.points
        return Place(
            time=self.window.local_time(int(points.timestamp[k])),
            latitude=float(points.lat[k]),
            longitude=float(points.lon[k]),
            device_id=points.device_ids[points.device[k]],
        )

    def _lags(self, first_fix: Ints) -> list[tuple[float | None, float | None]]:
        """Median and largest ingest lag (s) of the fixes that have a created_at, for each
        device (from row `first_fix`) and then for all of them together."""
        created, t = self.points.created_at, self.points.timestamp
        has = np.empty(len(created), dtype=bool)
        lag = np.empty(len(created))
        size = 0
        for a in range(0, len(created), CHUNK):  # slices that stay in the CPU's cache
            here = np.not_equal(created[a : a + CHUNK], MISSING_TIME, out=has[a : a + CHUNK])
            if here.all():  # the usual case: no copies of the rows that have one
                step = np.subtract(created[a : a + CHUNK], t[a : a + CHUNK])
            else:
                step = created[a : a + CHUNK][here]
                step -= t[a : a + CHUNK][here]
            np.divide(step, US_PER_S, out=lag[size : size + len(step)])
            size += len(step)
        lag = lag[:size]
        ranges = _parts([np.count_nonzero(has[a:b]) for a, b in itertools.pairwise(first_fix)])
        # The whole's maximum is the largest of the devices' (they are its parts).
        maxima: list[float | None] = [lag[a:b].max() if a < b else None for a, b in ranges[:-1]]
        largest = max((m for m in maxima if m is not None), default=None)
        maxima = [None if m is None else _round_s(m) for m in [*maxima, largest]]
        medians = _once(ranges, lambda a, b: _round_s(_median(lag[a:b])) if a < b else None)
        return [
            (median, maximum) if maximum is not None else (None, None)
            for median, maximum in zip(medians, maxima, strict=True)
        ]

    def _largest_gap(self, observed: Ints) -> tuple[float, int]:
        edges = np.concatenate(([self.window.start_us], observed, [self.window.end_us]))
        gaps = np.diff(edges)
        k = int(np.argmax(gaps))
        return float(gaps[k]) / US_PER_S, int(edges[k])

    def _metrics(
        self,
        stats: _DistanceStats,
        lags: tuple[float | None, float | None],
        *,
        counts: Ints,
        path: Floats,
        raw: Floats,
        time: Floats,
        read: Ints,
        used: Ints,
        unknown_accuracy: int,
        trips: list[Trip],
        gap: tuple[float, int],
        n_devices: int,
    ) -> Metrics:
        farthest, maximum, minimum, mean, median = stats
        window_s = self.day_s * n_devices
        unknown = np.maximum(window_s - time[HOME] - time[AWAY], 0.0)
        lag_median, lag_max = lags
        total_s = float(window_s.sum())
        known_s = float(time[HOME].sum() + time[AWAY].sum())
        return Metrics(
            points=PointCounts(
                read=int(counts.sum()),
                used=int(counts[KEPT]),
                dropped=DroppedCounts(
                    **{rule: int(counts[k + 1]) for k, rule in enumerate(DROP_RULES)}
                ),
                accuracy_unknown=unknown_accuracy,
            ),
            path_km=_round_km(path.sum()),
            raw_path_km=_round_km(raw.sum()),
            max_distance_km=maximum,
            max_distance_at=farthest,
            min_distance_km=minimum,
            mean_distance_km=mean,
            median_distance_km=median,
            time_at_home_s=_round_s(time[HOME].sum()),
            time_away_s=_round_s(time[AWAY].sum()),
            time_unknown_s=_round_s(unknown.sum()),
            trips=trips,
            completeness=Completeness(
                coverage=round(known_s / total_s, 6) if total_s else 0.0,
                largest_gap_s=_round_s(gap[0]),
                largest_gap_start=self.window.local_time(gap[1]),
                ingest_lag_median_s=lag_median,
                ingest_lag_max_s=lag_max,
            ),
            days=[
                DayMetrics(
                    date=date,
                    points_read=n_read,
                    points_used=n_used,
                    path_km=_round_km(path_km),
                    raw_path_km=_round_km(raw_km),
                    time_at_home_s=_round_s(home_s),
                    time_away_s=_round_s(away_s),
                    time_unknown_s=_round_s(unknown_s),
                )
                # Python numbers: indexing numpy arrays per day costs more than the models.
                for date, n_read, n_used, path_km, raw_km, home_s, away_s, unknown_s in zip(
                    self.window.dates,
                    read.tolist(),
                    used.tolist(),
                    path.tolist(),
                    raw.tolist(),
                    time[HOME].tolist(),
                    time[AWAY].tolist(),
                    unknown.tolist(),
                    strict=True,
                )
            ],
        )
