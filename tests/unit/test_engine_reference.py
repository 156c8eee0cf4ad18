"""The engine against a scalar reference written here, one fix at a time, with hypothesis.

The reference follows the definitions in docs/FUNCTIONALITY.md ("Metrics") and the engine's
documented rules with plain loops and the textbook haversine formula. It imports nothing
from `shared/`: it only reads the engine's results.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.engine import EngineParams, analyze, day_window
from shared.engine.points import Points

R_KM = 6371.0088
HOME = (40.7, -74.0)
TZ = "America/New_York"
DAY = dt.date(2024, 3, 10)  # 23 hours long
PARAMS = {
    "home_latitude": HOME[0],
    "home_longitude": HOME[1],
    "exit_radius_km": 0.5,
    "enter_radius_km": 0.3,
    "max_accuracy_m": 200.0,
    "max_speed_kmh": 500.0,
    "max_gap_s": 1800.0,
    "jitter_radius_m": 100.0,
    "jitter_fixes": 4,
    "context_s": 10 * 86400.0,  # the reference sees every fix, so must the engine
    "stay_radius_m": 100.0,
    # No stay here (none lasts a million minutes), so every rest is a pause: the reference
    # follows the pause rule; what stays add (the farthest counts a stay at its centre) is
    # tests/unit/test_stays.py's.
    "stay_min_minutes": 1e6,
}
PAUSE_S = 60
RULES = ["", "invalid", "accuracy", "duplicate", "jump", "jitter"]


def hav_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dp, dl = p2 - p1, math.radians(b[1] - a[1])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * R_KM * math.asin(min(1.0, math.sqrt(h)))


def unit(p: tuple[float, float]) -> tuple[float, float, float]:
    la, lo = math.radians(p[0]), math.radians(p[1])
    return (math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la))


@dataclass
class Fix:
    device: str
    t: int  # µs
    lat: float
    lon: float
    acc: int
    rule: str = ""
    state: str = ""
    segment: float = 0.0


@dataclass
class Reference:
    fixes: list[Fix]
    start: int
    end: int
    path: float = 0.0
    raw: float = 0.0
    home_s: float = 0.0
    away_s: float = 0.0
    trips: list[tuple[str, int, int, float]] = field(default_factory=list)

    def inside(self, a: int, b: int) -> float:
        """Share of [a, b) inside the window (a point interval counts by where it is)."""
        if a == b:
            return 1.0 if self.start <= a < self.end else 0.0
        return max(0, min(b, self.end) - max(a, self.start)) / (b - a)


def reference(fixes: list[Fix], start: int, end: int, p: dict[str, float]) -> Reference:
    ref = Reference(fixes, start, end)
    for device in sorted({f.device for f in fixes}):
        mine = [f for f in fixes if f.device == device]
        located = []
        for f in mine:
            if not (abs(f.lat) <= 90 and abs(f.lon) <= 180) or (f.lat == 0 and f.lon == 0):
                f.rule = "invalid"
            else:
                located.append(f)
        for a, b in itertools.pairwise(located):
            ref.raw += hav_km((a.lat, a.lon), (b.lat, b.lon)) * ref.inside(a.t, b.t)
        seen = set()
        chain = []
        for f in located:
            if f.acc > p["max_accuracy_m"]:
                f.rule = "accuracy"
            elif (f.t, f.lat, f.lon) in seen:
                f.rule = "duplicate"
            else:
                seen.add((f.t, f.lat, f.lon))
                chain.append(f)

        def fast(a: Fix, b: Fix) -> bool:
            km = hav_km((a.lat, a.lon), (b.lat, b.lon))
            hours = abs(b.t - a.t) / 3.6e9
            return km > p["max_speed_kmh"] * hours

        jumps = []
        for i, f in enumerate(chain):
            before = chain[i - 1] if i > 0 else (chain[i + 2] if i + 2 < len(chain) else None)
            after = chain[i + 1] if i + 1 < len(chain) else (chain[i - 2] if i >= 2 else None)
            if before is not None and after is not None and fast(before, f) and fast(f, after):
                jumps.append(f)
        for f in jumps:
            f.rule = "jump"
        valid = [f for f in chain if f.rule != "jump"]
        anchor: list[float] = []  # the centroid at the last used fix
        for i, f in enumerate(valid):
            past = valid[max(0, i - int(p["jitter_fixes"])) : i]
            here = unit((f.lat, f.lon))
            if not past:
                anchor = list(here)
                continue
            vectors = [unit((g.lat, g.lon)) for g in past]
            centre = [sum(v[k] for v in vectors) / len(vectors) for k in range(3)]
            chord = math.dist(here, centre)
            radius = max(p["jitter_radius_m"], f.acc) if f.acc != -1 else p["jitter_radius_m"]
            drift = math.dist(centre, anchor)
            if chord < radius / (R_KM * 1000) and drift < p["jitter_radius_m"] / (R_KM * 1000):
                f.rule = "jitter"
            else:
                anchor = centre
        rests = pauses(valid, p)
        for first, last, _ in rests:
            for f in valid[first + 1 : last]:
                f.rule = "jitter"
            valid[first].rule = valid[last].rule = ""  # the path reaches the pause, leaves it
        arrive = {id(valid[first]): place for first, _, place in rests}
        leave = {id(valid[last]): place for _, last, place in rests}
        used = [f for f in valid if f.rule == ""]
        # A move from a resting place starts after the last fix seen there.
        last_seen = {id(f): valid[i - 1].t for i, f in enumerate(valid) if i}
        state = "home"
        for i, f in enumerate(used):
            d = hav_km(HOME, (f.lat, f.lon))
            if i == 0:
                state = "away" if d > p["exit_radius_km"] else "home"
            elif d > p["exit_radius_km"]:
                state = "away"
            elif d < p["enter_radius_km"]:
                state = "home"
            f.state = state
            if i:
                # The path runs through a pause's centre, and not across the pause.
                origin = leave.get(id(used[i - 1]), (used[i - 1].lat, used[i - 1].lon))
                here = arrive.get(id(f), (f.lat, f.lon))
                f.segment = 0.0 if id(f) in leave else hav_km(origin, here)
                f.segment *= ref.inside(last_seen[id(f)], f.t)
                ref.path += f.segment
        for i, f in enumerate(valid):
            if not f.state:
                f.state = valid[i - 1].state
            if i and f.t - valid[i - 1].t <= p["max_gap_s"] * 1e6:
                seconds = (f.t - valid[i - 1].t) / 1e6 * ref.inside(valid[i - 1].t, f.t)
                if valid[i - 1].state == "home":
                    ref.home_s += seconds
                else:
                    ref.away_s += seconds
        i = 0
        while i < len(valid):
            if valid[i].state != "away":
                i += 1
                continue
            j = i
            while j + 1 < len(valid) and valid[j + 1].state == "away":
                j += 1
            stop = j + 1 if j + 1 < len(valid) else j
            begin, finish = valid[i].t, valid[stop].t
            if (begin < end and finish > start) or start <= begin < end:
                path = sum(f.segment for f in valid[i : stop + 1])
                ref.trips.append((device, max(begin, start), min(finish, end), path))
            i = j + 1
    return ref


def pauses(valid: list[Fix], p: dict[str, float]) -> list[tuple[int, int, tuple[float, float]]]:
    """Runs of valid fixes, cut where a step leaves the reach (the stay radius plus the
    larger accuracy of its two fixes), of at least three fixes and PAUSE_S that keep within
    the reach of their mean place once the fixes beyond it at either end are trimmed: first
    and last index and the centre (lat, lon)."""

    def reach(f: Fix) -> float:
        return p["stay_radius_m"] + max(f.acc, 0)

    def mean_place(run: list[int]) -> tuple[float, float, float]:
        vectors = [unit((valid[i].lat, valid[i].lon)) for i in run]
        total = [sum(v[k] for v in vectors) for k in range(3)]
        norm = math.sqrt(sum(c * c for c in total))
        return (total[0] / norm, total[1] / norm, total[2] / norm)

    def within(i: int, centre: tuple[float, float, float]) -> bool:
        chord = math.dist(unit((valid[i].lat, valid[i].lon)), centre)
        return chord * R_KM * 1000 <= reach(valid[i])

    def long_enough(run: list[int]) -> bool:
        return len(run) >= 3 and valid[run[-1]].t - valid[run[0]].t >= PAUSE_S * 1e6

    runs: list[list[int]] = []
    for i, f in enumerate(valid):
        step_m = hav_km((valid[i - 1].lat, valid[i - 1].lon), (f.lat, f.lon)) * 1000 if i else 0
        if not i or step_m > max(reach(f), reach(valid[i - 1])):
            runs.append([])
        runs[-1].append(i)
    found = []
    for run in filter(long_enough, runs):
        held = [i for i in run if within(i, mean_place(run))]
        trimmed = list(range(held[0], held[-1] + 1)) if held else []
        if long_enough(trimmed):
            centre = mean_place(trimmed)
            if all(within(i, centre) for i in trimmed):
                lat = math.degrees(math.asin(centre[2]))
                found.append(
                    (trimmed[0], trimmed[-1], (lat, math.degrees(math.atan2(centre[1], centre[0]))))
                )
    return found


@st.composite
def tracks(draw: st.DrawFn) -> list[Fix]:
    """Up to two devices wandering near home around the window, spoiled now and then."""
    start = int(day_window(DAY, DAY, TZ).bounds_us[0])
    fixes = []
    for device in draw(st.sampled_from([["a"], ["a", "b"]])):
        t = start - draw(st.integers(0, 4 * 3600)) * 1_000_000
        lat, lon = HOME
        for _ in range(draw(st.integers(0, 25))):
            t += draw(st.sampled_from([0, 1, 30, 60, 600, 2400, 4 * 3600])) * 1_000_000
            kind = draw(st.sampled_from(["still", "still", "walk", "drive", "teleport", "bad"]))
            step = {"still": 0.00005, "walk": 0.002, "drive": 0.05, "teleport": 3.0, "bad": 0.0}
            dlat = draw(st.floats(-1, 1)) * step[kind]
            dlon = draw(st.floats(-1, 1)) * step[kind]
            here = (lat + dlat, lon + dlon)
            if kind == "bad":
                here = draw(st.sampled_from([(0.0, 0.0), (95.0, 10.0), (float("nan"), 1.0)]))
            elif kind != "teleport":
                lat, lon = here
            acc = draw(st.sampled_from([-1, 5, 20, 150, 250, 3000]))
            fixes.append(Fix(device, t, here[0], here[1], acc))
            if draw(st.integers(0, 9)) == 0:
                fixes.append(Fix(device, t, here[0], here[1], acc))
    return fixes


def _points(fixes: list[Fix]) -> Points:
    names = sorted({f.device for f in fixes})
    return Points.from_columns(
        names,
        device=[names.index(f.device) for f in fixes],
        timestamp=[f.t for f in fixes],
        lat=[f.lat for f in fixes],
        lon=[f.lon for f in fixes],
        accuracy=[f.acc for f in fixes],
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tracks())
def test_engine_matches_the_scalar_reference(fixes: list[Fix]) -> None:
    window = day_window(DAY, DAY, TZ)
    start, end = int(window.bounds_us[0]), int(window.bounds_us[-1])
    result = analyze(_points(fixes), window, EngineParams(**PARAMS))  # type: ignore[arg-type]
    fixes.sort(key=lambda f: (f.device, f.t))
    ref = reference(fixes, start, end, PARAMS)
    inside = [f for f in fixes if start <= f.t < end]
    summary = result.summary

    assert [RULES[k] for k in result.dropped_by] == [f.rule for f in inside]
    assert np.allclose(result.segment_km, [f.segment for f in inside], rtol=1e-9, atol=1e-9)
    states = [
        {"home": 1, "away": 0, "": -1}[f.state if f.rule in ("", "jitter") else ""] for f in inside
    ]
    assert result.at_home.tolist() == states
    assert summary.points.read == len(inside)
    assert summary.points.used == sum(f.rule == "" for f in inside)
    for rule in RULES[1:]:
        assert getattr(summary.points.dropped, rule) == sum(f.rule == rule for f in inside)
    assert math.isclose(summary.path_km, ref.path, abs_tol=2e-6)
    assert math.isclose(summary.raw_path_km, ref.raw, abs_tol=2e-6)
    assert math.isclose(summary.time_at_home_s, ref.home_s, abs_tol=2e-3)
    assert math.isclose(summary.time_away_s, ref.away_s, abs_tol=2e-3)
    seen = [hav_km(HOME, (f.lat, f.lon)) for f in inside if f.rule in ("", "jitter")]
    if seen:
        assert math.isclose(summary.max_distance_km, max(seen), abs_tol=2e-6)
        assert math.isclose(summary.min_distance_km, min(seen), abs_tol=2e-6)
        assert math.isclose(summary.mean_distance_km, sum(seen) / len(seen), abs_tol=2e-6)
        assert math.isclose(summary.median_distance_km, float(np.median(seen)), abs_tol=2e-6)
    else:
        assert summary.max_distance_km == 0.0
        assert summary.max_distance_at is None
    tz = ZoneInfo(TZ)
    got = [
        (t.device_id, t.start.astimezone(tz), t.end.astimezone(tz), t.path_km)
        for t in summary.trips
    ]
    want = [
        (d, dt.datetime.fromtimestamp(a / 1e6, tz), dt.datetime.fromtimestamp(b / 1e6, tz), km)
        for d, a, b, km in ref.trips
    ]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g[3], w[3], abs_tol=2e-6)
