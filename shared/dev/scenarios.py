"""One-day tracks with known stays, moves, path and time at home, for the accuracy benchmark.

A day is planned as legs in metres east and north of home: the night at home, a drive
with short traffic stops to a place a few kilometres away, a stay there, a short real stop
on the way back (and, when asked, a second place 150 m from the first), then home. Fixes
are sampled every `interval_s` (±10 %) with the scenario's noise: Gaussian, heavy-tailed,
or indoor drift at rest (a slow wander of 30-80 m with occasional 150 m jumps reporting
accuracy 65), and optionally hours of silence while at rest. The plan is the truth.

Deterministic for a seed; pure (no I/O); vectorised over fixes.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shared.engine import EARTH_RADIUS_KM, Window, day_window
from shared.engine.points import US_PER_S, Points

_M_PER_DEG = EARTH_RADIUS_KM * 1000 * np.pi / 180
HOME = (40.736097, -74.039373)
TIMEZONE = "America/New_York"
DAY = dt.date(2024, 6, 5)
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scenario:
    """How one day is observed."""

    name: str
    interval_s: float = 30.0
    noise_m: float = 5.0
    """Standard deviation of each coordinate's error (the reported accuracy is 1.5 times
    it, a 68 % radius)."""
    heavy_tailed: bool = False
    """Errors from a Student t distribution (3 degrees of freedom): now and then far off."""
    indoor_drift: bool = False
    silence_h: float = 0.0
    """Hours without fixes in the middle of each long stay."""
    two_places: bool = False
    """A second stay 150 m from the first, after it."""


@dataclass(frozen=True)
class TrueStay:
    start_s: float
    end_s: float
    east_m: float
    north_m: float


@dataclass(frozen=True)
class Truth:
    """What really happened (seconds after the window's start, metres from home)."""

    stays: list[TrueStay]
    moves: list[tuple[float, float, float]]
    """Start, end and path (km) of each move."""
    path_km: float
    farthest_km: float
    home_s: float
    away: list[tuple[float, float]] = field(default_factory=list)
    """Trips: leaving home until coming back."""


@dataclass(frozen=True)
class Day:
    points: Points
    window: Window
    truth: Truth


def _plan(rng: np.random.Generator, scenario: Scenario) -> tuple[list[tuple[float, Floats]], Truth]:
    """Waypoints (second of the day, east/north metres) and the truth."""
    bearing = rng.uniform(0, 2 * np.pi)
    distance = rng.uniform(3000, 12000)
    work = np.array([np.sin(bearing), np.cos(bearing)]) * distance
    bend = work / 2 + np.array([np.cos(bearing), -np.sin(bearing)]) * distance * 0.15
    speed = rng.uniform(9, 15)  # m/s in town
    home = np.zeros(2)
    points: list[tuple[float, Floats]] = []
    stays: list[TrueStay] = []
    moves: list[tuple[float, float, float]] = []
    t = rng.uniform(7, 8.5) * 3600
    points.append((0.0, home))
    points.append((t, home))
    stays.append(TrueStay(0.0, t, 0.0, 0.0))

    def drive(t: float, route: list[Floats], stops: int) -> float:
        start = t
        length = sum(float(np.linalg.norm(b - a)) for a, b in itertools.pairwise(route))
        stop_at = sorted(rng.uniform(0.2, 0.8, stops))
        done = 0.0
        for a, b in itertools.pairwise(route):
            leg = float(np.linalg.norm(b - a))
            cuts = [s * length - done for s in stop_at if done <= s * length < done + leg]
            here = a
            for cut in cuts:
                stop = a + (b - a) * cut / leg
                t += float(np.linalg.norm(stop - here)) / speed
                points.append((t, stop))
                t += rng.uniform(120, 240)  # a traffic stop: 2-4 minutes, no stay
                points.append((t, stop))
                here = stop
            t += float(np.linalg.norm(b - here)) / speed
            points.append((t, b))
            done += leg
        moves.append((start, t, length / 1000))
        return t

    t = drive(t, [home, bend, work], stops=2)
    leave = t + rng.uniform(6, 9) * 3600
    points.append((leave, work))
    stays.append(TrueStay(t, leave, *work))
    t = leave
    last = work
    if scenario.two_places:
        side = np.array([np.cos(bearing), -np.sin(bearing)]) * 150
        cafe = work + side
        start = t
        t += 150 / 1.3  # a walk
        points.append((t, cafe))
        moves.append((start, t, 0.15))
        leave = t + rng.uniform(30, 60) * 60
        points.append((leave, cafe))
        stays.append(TrueStay(t, leave, *cafe))
        t, last = leave, cafe
    shop = bend * rng.uniform(0.6, 0.9)
    t = drive(t, [last, shop], stops=1)
    leave = t + rng.uniform(8, 15) * 60  # a short real stop
    points.append((leave, shop))
    stays.append(TrueStay(t, leave, *shop))
    t = drive(leave, [shop, home], stops=1)
    points.append((86400.0, home))
    stays.append(TrueStay(t, 86400.0, 0.0, 0.0))
    farthest = max(float(np.linalg.norm(p)) for _, p in points) / 1000
    path = sum(m[2] for m in moves)
    # Away: from leaving the 0.5 km exit radius to coming back inside 0.3 km.
    times = np.array([p[0] for p in points])
    xy = np.array([p[1] for p in points])
    fine = np.arange(0, 86400, 1.0)
    r = np.hypot(np.interp(fine, times, xy[:, 0]), np.interp(fine, times, xy[:, 1]))
    out, back = np.flatnonzero(r > 500), np.flatnonzero(r < 300)
    leave_s = float(fine[out[0]]) if len(out) else 0.0
    return_s = float(fine[back[back > out[-1]][0]]) if len(out) else 0.0
    truth = Truth(
        stays=stays,
        moves=moves,
        path_km=path,
        farthest_km=farthest,
        home_s=86400 - (return_s - leave_s),
        away=[(leave_s, return_s)] if len(out) else [],
    )
    return points, truth


def generate_day(scenario: Scenario, seed: int) -> Day:
    """One observed day of `scenario` and its truth."""
    rng = np.random.default_rng(seed)
    plan, truth = _plan(rng, scenario)
    times = np.array([p[0] for p in plan])
    xy = np.array([p[1] for p in plan])
    steps = rng.uniform(0.9, 1.1, int(86400 / scenario.interval_s) + 2) * scenario.interval_s
    t = np.cumsum(steps) - steps[0] * rng.uniform()
    t = t[(t >= 0) & (t < 86400)]
    east, north = np.interp(t, times, xy[:, 0]), np.interp(t, times, xy[:, 1])
    resting = np.zeros(len(t), dtype=bool)
    for stay in truth.stays:
        resting |= (t >= stay.start_s) & (t <= stay.end_s)
    sigma = scenario.noise_m
    if scenario.heavy_tailed:
        error = rng.standard_t(3, (2, len(t))) * sigma
    else:
        error = rng.normal(0, sigma, (2, len(t)))
    accuracy = np.full(len(t), max(round(1.5 * sigma), 1))
    if scenario.indoor_drift:
        # A slow wander of 30-80 m about the true spot while at rest, and now and then a
        # 150 m jump that reports accuracy 65.
        angle = np.cumsum(rng.normal(0, 0.15, len(t)))
        radius = 55 + 25 * np.sin(t / 2400 + rng.uniform(0, 6))
        drift = np.array([radius * np.cos(angle), radius * np.sin(angle)])
        error[:, resting] += drift[:, resting]
        jumps = resting & (rng.random(len(t)) < 0.01)
        theta = rng.uniform(0, 2 * np.pi, int(jumps.sum()))
        error[:, jumps] += np.array([np.cos(theta), np.sin(theta)]) * 150
        accuracy[jumps] = 65
    keep = np.ones(len(t), dtype=bool)
    if scenario.silence_h:
        for stay in truth.stays:
            if stay.end_s - stay.start_s > scenario.silence_h * 3600 + 1800:
                middle = (stay.start_s + stay.end_s) / 2
                half = scenario.silence_h * 1800
                keep &= ~((t > middle - half) & (t < middle + half))
    east, north = east + error[0], north + error[1]
    lat = HOME[0] + north / _M_PER_DEG
    lon = HOME[1] + east / (_M_PER_DEG * np.cos(np.radians(HOME[0])))
    window = day_window(DAY, DAY, TIMEZONE)
    points = Points.from_columns(
        ["phone"],
        device=np.zeros(int(keep.sum())),
        timestamp=window.start_us + np.round(t[keep] * US_PER_S).astype(np.int64),
        lat=lat[keep],
        lon=lon[keep],
        accuracy=accuracy[keep],
    )
    return Day(points=points, window=window, truth=truth)
