"""Synthetic OwnTracks history with known truth, for tests, benchmarks, seeding and the demo.

`generate(TrackSpec(...))` plans each device's days as legs (stays and moves along
routes) in the home time zone: nights at home, commutes to an office on weekdays, an
errand walk that stays inside the exit radius, weekend trips, one flight (no fixes in the
air, as with a phone in airplane mode). Fixes are sampled every `interval_s` seconds along
the legs, with GPS noise at rest and on the move, then spoiled the way real data is:
teleport fixes, low-accuracy fixes, exact duplicates, NULL accuracies and uploads buffered
for hours. The plan gives the truth: each device's path length and its trips.

Deterministic for a given spec (seeded numpy generator); pure (no I/O); vectorised over
fixes (loops run over devices and days only).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from shared.engine import EARTH_RADIUS_KM, destination, haversine_km, zone
from shared.engine.points import MISSING, US_PER_S, Points

_M_PER_DEG = EARTH_RADIUS_KM * 1000 * np.pi / 180
Floats = npt.NDArray[np.float64]


class TrackSpec(BaseModel):
    """What to generate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    start: dt.date = dt.date(2024, 3, 8)
    """First local day; the default range crosses the spring DST change (2024-03-10)."""
    days: Annotated[int, Field(ge=1, le=3660)] = 7
    devices: Annotated[int, Field(ge=1, le=1000)] = 1
    home_latitude: Annotated[float, Field(ge=-80, le=80)] = 40.736097
    home_longitude: Annotated[float, Field(ge=-180, le=180)] = -74.039373
    timezone: str = "America/New_York"
    interval_s: Annotated[float, Field(ge=0.1, le=3600)] = 30
    """Seconds between fixes; fractions too (a phone set to report several times a second)."""
    rest_noise_m: Annotated[float, Field(ge=0)] = 15.0
    """Standard deviation of each coordinate's noise at rest (indoors, wifi)."""
    move_noise_m: Annotated[float, Field(ge=0)] = 5.0
    teleport_rate: Annotated[float, Field(ge=0, le=0.1)] = 2e-4
    low_accuracy_rate: Annotated[float, Field(ge=0, le=0.1)] = 1e-3
    duplicate_rate: Annotated[float, Field(ge=0, le=0.1)] = 1e-3
    null_accuracy_rate: Annotated[float, Field(ge=0, le=0.5)] = 0.01
    late_upload_rate: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Share of device-days with a stretch of fixes uploaded hours late."""


@dataclass(frozen=True)
class TrueTrip:
    """A trip as planned: leaving home and arriving back (µs since the epoch)."""

    device_id: str
    leave_us: int
    return_us: int
    max_distance_km: float


@dataclass(frozen=True, eq=False)
class Track:
    """Generated fixes and the truth about them."""

    points: Points
    path_km: dict[str, float]
    """True path length of each device over all the days."""
    trips: tuple[TrueTrip, ...]
    teleport: npt.NDArray[np.bool_]
    """Which fixes (parallel to `points`) were teleported."""
    low_accuracy: npt.NDArray[np.bool_]
    """Which fixes were spoiled with a poor, honestly reported accuracy."""


@dataclass
class _Legs:
    """One device's plan: leg k runs from start[k] to start[k+1] (µs), moving linearly
    from `origin[k]` to `target[k]` (lat, lon); `sampled[k]` is False in the air."""

    start: list[int]
    origin: list[tuple[float, float]]
    target: list[tuple[float, float]]
    sampled: list[bool]
    speed_kmh: list[float]


def _offset(lat: float, lon: float, bearing: float, km: float) -> tuple[float, float]:
    """The point `km` away from (lat, lon) along `bearing` (radians)."""
    lat2, lon2 = destination(lat, lon, bearing, km)
    return float(lat2), float(lon2)


class _Planner:
    """Builds one device's legs day by day, and the truth they imply."""

    def __init__(self, spec: TrackSpec, rng: np.random.Generator, device_id: str) -> None:
        self.spec, self.rng, self.device_id = spec, rng, device_id
        self.tz = zone(spec.timezone)
        self.home = (spec.home_latitude, spec.home_longitude)
        self.office = _offset(*self.home, rng.uniform(0, 2 * np.pi), rng.uniform(5, 15))
        self.commute = self._route(self.home, self.office, stops=4)
        self.legs = _Legs([], [], [], [], [])
        self.here = self.home
        self.path_km = 0.0
        self.trips: list[TrueTrip] = []
        self._left_us: int | None = None
        self._far_km = 0.0

    def _route(
        self, a: tuple[float, float], b: tuple[float, float], stops: int
    ) -> list[tuple[float, float]]:
        """Waypoints from a to b that wander sideways, as streets do."""
        lat = np.linspace(a[0], b[0], stops + 2)
        lon = np.linspace(a[1], b[1], stops + 2)
        span_deg = np.hypot(b[0] - a[0], (b[1] - a[1]) * np.cos(np.radians(a[0])))
        lat[1:-1] += self.rng.normal(0, span_deg * 0.08, stops)
        lon[1:-1] += self.rng.normal(0, span_deg * 0.08, stops) / np.cos(np.radians(a[0]))
        return list(zip(lat.tolist(), lon.tolist(), strict=True))

    def at(self, day: dt.date, hours: float) -> int:
        """µs of local clock time `hours` after midnight of `day` (DST-correct)."""
        # Aware datetime arithmetic is wall-clock arithmetic: 07:00 stays 07:00 on DST days.
        local = dt.datetime.combine(day, dt.time(), self.tz) + dt.timedelta(seconds=hours * 3600)
        return round(local.timestamp() * US_PER_S)

    def _add(self, start_us: int, target: tuple[float, float], speed: float, sampled: bool) -> None:
        self.legs.start.append(start_us)
        self.legs.origin.append(self.here)
        self.legs.target.append(target)
        self.legs.sampled.append(sampled)
        self.legs.speed_kmh.append(speed)
        self.here = target

    def stay(self, start_us: int) -> None:
        """Rest where the device is from `start_us` on."""
        self._add(start_us, self.here, 0.0, sampled=True)

    def travel(
        self, start_us: int, route: list[tuple[float, float]], kmh: float, sampled: bool = True
    ) -> int:
        """Move along `route` (from the current place) at `kmh`; returns the arrival time."""
        now = start_us
        for point in route[1:]:
            km = float(haversine_km(self.here[0], self.here[1], point[0], point[1]))
            if self._left_us is None and self.here == self.home:
                self._left_us = now
            self._add(now, point, kmh, sampled)
            self.path_km += km
            self._far_km = max(
                self._far_km, float(haversine_km(self.home[0], self.home[1], *point))
            )
            now += round(km / kmh * 3600 * US_PER_S)
        if self.here == self.home and self._left_us is not None:
            self.trips.append(TrueTrip(self.device_id, self._left_us, now, self._far_km))
            self._left_us, self._far_km = None, 0.0
        self.stay(now)
        return now

    def plan_day(self, day: dt.date, flight: bool) -> None:
        """One local day: every plan starts and ends at home."""
        rng = self.rng
        if flight:
            airport = _offset(*self.home, rng.uniform(0, 2 * np.pi), 20.0)
            away = _offset(*airport, rng.uniform(0, 2 * np.pi), rng.uniform(1000, 2000))
            now = self.travel(self.at(day, 5.5), self._route(self.home, airport, 3), 60)
            now = self.travel(now + 3600 * US_PER_S, [airport, away], 800, sampled=False)
            now = self.travel(now + 4 * 3600 * US_PER_S, [away, airport], 800, sampled=False)
            self.travel(now + 1800 * US_PER_S, self._route(airport, self.home, 3), 60)
        elif day.weekday() < 5:
            now = self.travel(self.at(day, rng.uniform(7, 8.5)), self.commute, rng.uniform(30, 50))
            back = max(now + 3600 * US_PER_S, self.at(day, rng.uniform(16.5, 18.5)))
            self.travel(back, self.commute[::-1], rng.uniform(30, 50))
        elif rng.random() < 0.6:
            far = _offset(*self.home, rng.uniform(0, 2 * np.pi), rng.uniform(20, 80))
            route = self._route(self.home, far, 6)
            now = self.travel(self.at(day, rng.uniform(9, 11)), route, rng.uniform(60, 90))
            self.travel(now + round(rng.uniform(2, 5) * 3600 * US_PER_S), route[::-1], 70)
        if rng.random() < 0.5:
            shop = _offset(*self.home, rng.uniform(0, 2 * np.pi), 0.4)
            now = self.travel(self.at(day, rng.uniform(19.5, 20.5)), [self.home, shop], 4.5)
            self.travel(now + round(rng.uniform(600, 1200) * US_PER_S), [shop, self.home], 4.5)


@dataclass(frozen=True, eq=False)
class _Samples:
    """Fix times and the true position and speed at each."""

    t: npt.NDArray[np.int64]
    lat: Floats
    lon: Floats
    speed_kmh: Floats

    @property
    def resting(self) -> npt.NDArray[np.bool_]:
        still: npt.NDArray[np.bool_] = self.speed_kmh == 0
        return still


def _sample(legs: _Legs, start_us: int, end_us: int, interval_us: int, phase_us: int) -> _Samples:
    """Fix times in [start, end), skipping legs in the air, and the truth at each."""
    t = np.arange(start_us + phase_us, end_us, interval_us, dtype=np.int64)
    begin = np.array(legs.start, dtype=np.int64)
    leg = np.searchsorted(begin, t, side="right") - 1
    t = t[np.asarray(legs.sampled)[leg]]
    leg = np.searchsorted(begin, t, side="right") - 1
    finish = np.append(begin[1:], end_us)
    share = (t - begin[leg]) / np.maximum(finish[leg] - begin[leg], 1)
    share = np.clip(share, 0.0, 1.0)
    origin, target = np.array(legs.origin), np.array(legs.target)
    lat = origin[leg, 0] + share * (target[leg, 0] - origin[leg, 0])
    lon = origin[leg, 1] + share * (target[leg, 1] - origin[leg, 1])
    return _Samples(t=t, lat=lat, lon=lon, speed_kmh=np.asarray(legs.speed_kmh)[leg])


def generate(spec: TrackSpec) -> Track:
    """Generate the fixes and the truth `spec` describes."""
    rng = np.random.default_rng(spec.seed)
    tz = zone(spec.timezone)
    dates = [spec.start + dt.timedelta(days=k) for k in range(spec.days)]
    end_day = spec.start + dt.timedelta(days=spec.days)
    start_us = int(dt.datetime.combine(spec.start, dt.time(), tz).timestamp()) * US_PER_S
    end_us = int(dt.datetime.combine(end_day, dt.time(), tz).timestamp()) * US_PER_S
    interval_us = round(spec.interval_s * US_PER_S)
    device_ids = [f"phone{k + 1}" for k in range(spec.devices)]
    columns: dict[str, list[npt.NDArray[np.generic]]] = {}
    path_km: dict[str, float] = {}
    trips: list[TrueTrip] = []
    for code, device_id in enumerate(device_ids):
        planner = _Planner(spec, rng, device_id)
        planner.stay(start_us)
        weekdays = [k for k, day in enumerate(dates) if day.weekday() < 5]
        flight_day = weekdays[(code * 3 + 2) % len(weekdays)] if len(weekdays) >= 3 else -1
        for k, day in enumerate(dates):
            planner.plan_day(day, flight=k == flight_day)
        path_km[device_id] = planner.path_km
        trips.extend(planner.trips)
        # Whole seconds, drawn as before fractions were allowed, so seeds keep their tracks.
        phase = int(rng.integers(0, max(int(spec.interval_s), 1))) * US_PER_S
        truth = _sample(planner.legs, start_us, end_us, interval_us, phase)
        for name, value in _observe(spec, rng, truth, code).items():
            columns.setdefault(name, []).append(value)
    merged = {name: np.concatenate(parts) for name, parts in columns.items()}
    merged = _duplicate(spec, rng, merged)
    order = np.lexsort((merged["timestamp"], merged["device"]))
    merged = {name: value[order] for name, value in merged.items()}
    teleport, low_accuracy = merged.pop("teleport"), merged.pop("low_accuracy")
    return Track(
        points=Points.from_columns(device_ids, **merged),
        path_km=path_km,
        trips=tuple(trips),
        teleport=teleport.astype(bool),
        low_accuracy=low_accuracy.astype(bool),
    )


def _observe(
    spec: TrackSpec, rng: np.random.Generator, truth: _Samples, code: int
) -> dict[str, npt.NDArray[np.generic]]:
    """What the phone reports for true positions: noise, accuracy, speed, battery, upload time."""
    t, lat = truth.t, truth.lat
    n = len(t)
    sigma = np.where(truth.resting, spec.rest_noise_m, spec.move_noise_m)
    north, east = rng.normal(0, 1, (2, n)) * sigma
    accuracy = np.rint(sigma * rng.uniform(1.5, 2.5, n)).astype(np.int32) + 3
    velocity = np.rint(truth.speed_kmh * rng.uniform(0.9, 1.1, n)).astype(np.int32)

    teleport = rng.random(n) < spec.teleport_rate
    teleport[[0, -1]] = False
    k = int(teleport.sum())
    bearing, km = rng.uniform(0, 2 * np.pi, k), rng.uniform(50, 500, k)
    north[teleport], east[teleport] = km * 1000 * np.cos(bearing), km * 1000 * np.sin(bearing)

    low = (rng.random(n) < spec.low_accuracy_rate) & ~teleport
    k = int(low.sum())
    accuracy[low] = rng.integers(1000, 5000, k)
    north[low] += rng.normal(0, 1, k) * accuracy[low]
    east[low] += rng.normal(0, 1, k) * accuracy[low]
    accuracy[(rng.random(n) < spec.null_accuracy_rate) & ~low] = MISSING
    velocity[rng.random(n) < 0.01] = MISSING

    lag_s = rng.uniform(1, 10, n)
    day_index = (t - t[0]) // (86400 * US_PER_S) if n else t
    late_days = np.flatnonzero(
        rng.random(int(day_index.max()) + 1 if n else 0) < spec.late_upload_rate
    )
    for day in late_days:
        # A stretch of an hour or two recorded offline and uploaded hours later.
        inside = np.flatnonzero(day_index == day)
        first = int(rng.integers(0, max(len(inside) - 1, 1)))
        stretch = inside[first : first + int(rng.integers(120, 240))]
        lag_s[stretch] += rng.uniform(1, 6) * 3600 + (t[stretch[-1]] - t[stretch]) / US_PER_S

    hours = (t % (86400 * US_PER_S)) / (3600 * US_PER_S)
    battery = np.clip(100 - np.abs(hours - 8) * 4, 5, 100).astype(np.int32)
    return {
        "device": np.full(n, code, dtype=np.int32),
        "timestamp": t,
        "lat": lat + north / _M_PER_DEG,
        "lon": truth.lon + east / (_M_PER_DEG * np.cos(np.radians(lat))),
        "accuracy": accuracy,
        "velocity": velocity,
        "battery": battery,
        "created_at": t + np.rint(lag_s * US_PER_S).astype(np.int64),
        "teleport": teleport,
        "low_accuracy": low,
    }


def _duplicate(
    spec: TrackSpec, rng: np.random.Generator, columns: dict[str, npt.NDArray[np.generic]]
) -> dict[str, npt.NDArray[np.generic]]:
    """Append exact repeats of some fixes, uploaded again a little later."""
    n = len(columns["timestamp"])
    again = np.flatnonzero(rng.random(n) < spec.duplicate_rate)
    copies = {name: value[again] for name, value in columns.items()}
    late = rng.integers(1, 600, len(again)) * US_PER_S
    copies["created_at"] = columns["created_at"][again].astype(np.int64) + late
    return {name: np.concatenate((columns[name], copies[name])) for name in columns}
