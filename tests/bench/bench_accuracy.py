"""Accuracy benchmark of stays, path, bounds, trips and time at home (`make bench-accuracy`).

For each scenario it analyses seeded one-day tracks whose truth is known
(`shared.dev.scenarios`) and prints: stay precision, recall and F1, the median arrival and
departure error, the path error while moving, phantom path per stationary hour, trip F1,
the median error of time at home per day, how often the path bounds contain the true path
and their mean width, and the error of the farthest distance. docs/ACCURACY.md defines each
figure and shows the table. Not a test: tests/unit/test_accuracy.py holds a smaller run on
other seeds to the targets.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import numpy as np

from shared.config import AnalysisSettings
from shared.dev.scenarios import Day, Scenario, generate_day
from shared.engine import analyze

SCENARIOS = (
    Scenario("10 s, 5 m", interval_s=10, noise_m=5),
    Scenario("30 s, 5 m", interval_s=30, noise_m=5),
    Scenario("30 s, 30 m", interval_s=30, noise_m=30),
    Scenario("2 min, 30 m", interval_s=120, noise_m=30),
    Scenario("5 min, 30 m", interval_s=300, noise_m=30),
    Scenario("15 min, 30 m", interval_s=900, noise_m=30),
    Scenario("30 s, 100 m", interval_s=30, noise_m=100),
    Scenario("30 s, heavy-tailed 15 m", interval_s=30, noise_m=15, heavy_tailed=True),
    Scenario("30 s, indoor drift", interval_s=30, noise_m=10, indoor_drift=True),
    Scenario("2 min, 6 h silent at rest", interval_s=120, noise_m=15, silence_h=6),
    Scenario("30 s, two places 150 m apart", interval_s=30, noise_m=10, two_places=True),
)
"""Every day holds 2-4 minute traffic stops (no stays) and a short real stop (a stay)."""

MATCH_CENTRE_M = 200.0


@dataclass
class Score:
    """The figures of one scenario over its tracks."""

    name: str
    tracks: int
    precision: float
    recall: float
    f1: float
    arrival_min: float
    departure_min: float
    moving_error_pct: float
    phantom_km_per_h: float
    trip_f1: float
    home_error_min: float
    coverage: float
    width_pct: float
    farthest_error_pct: float


def _f1(true_positive: int, found: int, real: int) -> tuple[float, float, float]:
    precision = true_positive / found if found else 1.0
    recall = true_positive / real if real else 1.0
    both = precision + recall
    return precision, recall, (2 * precision * recall / both if both else 0.0)


def _metres(lat: float, lon: float, east: float, north: float, home: tuple[float, float]) -> float:
    m_per_deg = 111_194.93
    de = (lon - home[1]) * m_per_deg * np.cos(np.radians(home[0])) - east
    dn = (lat - home[0]) * m_per_deg - north
    return float(np.hypot(de, dn))


def score(scenario: Scenario, seeds: range, **changes: object) -> Score:
    """The scenario's figures over one day per seed, with the default settings (and these
    engine parameters changed)."""
    params = AnalysisSettings().engine_params()
    params = params.model_copy(
        update={"home_latitude": 40.736097, "home_longitude": -74.039373, **changes}
    )
    found = real = matched = trips_found = trips_real = trips_matched = 0
    arrivals: list[float] = []
    departures: list[float] = []
    moving: list[float] = []
    phantom_km = stationary_h = 0.0
    home_errors: list[float] = []
    covered = 0
    widths: list[float] = []
    farthest: list[float] = []
    for seed in seeds:
        day: Day = generate_day(scenario, seed)
        analysis = analyze(day.points, day.window, params)
        summary, truth = analysis.summary, day.truth
        start = summary.window.start
        home = (params.home_latitude, params.home_longitude)
        detected = [
            (
                (s.start - start).total_seconds(),
                (s.end - start).total_seconds(),
                s.latitude,
                s.longitude,
                s,
            )
            for s in summary.stays
        ]
        found += len(detected)
        real += len(truth.stays)
        used: set[int] = set()
        for stay in truth.stays:
            for k, (a, b, lat, lon, s) in enumerate(detected):
                if k in used:
                    continue
                overlap = min(b, stay.end_s) - max(a, stay.start_s)
                shorter = min(b - a, stay.end_s - stay.start_s)
                near = _metres(lat, lon, stay.east_m, stay.north_m, home) <= MATCH_CENTRE_M
                if overlap >= shorter / 2 and near:
                    used.add(k)
                    matched += 1
                    if not s.clipped_start:
                        arrivals.append(abs(a - stay.start_s) / 60)
                    if not s.clipped_end and stay.end_s < 86400:
                        departures.append(abs(b - stay.end_s) / 60)
                    break
        # Path while moving: the steps that end inside a true move (or just after it).
        t = (analysis.points.timestamp - day.window.start_us) / 1e6
        segment = analysis.segment_km
        in_move = np.zeros(len(t), dtype=bool)
        for a, b, _ in truth.moves:
            in_move |= (t > a) & (t <= b + scenario.interval_s * 1.1)
        true_moving = sum(m[2] for m in truth.moves)
        moving.append(100 * abs(float(segment[in_move].sum()) - true_moving) / true_moving)
        at_rest = np.zeros(len(t), dtype=bool)
        for stay in truth.stays:
            inside = (t > stay.start_s + scenario.interval_s * 1.1) & (t <= stay.end_s)
            at_rest |= inside
            stationary_h += max(stay.end_s - stay.start_s - scenario.interval_s, 0) / 3600
        phantom_km += float(segment[at_rest].sum())
        trips_found += len(summary.trips)
        trips_real += len(truth.away)
        for a, b in truth.away:
            for trip in summary.trips:
                ta = (trip.start - start).total_seconds()
                tb = (trip.end - start).total_seconds()
                if min(b, tb) - max(a, ta) >= min(b - a, tb - ta) / 2:
                    trips_matched += 1
                    break
        home_errors.append(abs(summary.time_at_home_s - truth.home_s) / 60)
        covered += summary.path_km_low <= truth.path_km <= summary.path_km_high
        widths.append(100 * (summary.path_km_high - summary.path_km_low) / truth.path_km)
        farthest.append(100 * abs(summary.max_distance_km - truth.farthest_km) / truth.farthest_km)
    precision, recall, f1 = _f1(matched, found, real)
    trip_f1 = _f1(trips_matched, trips_found, trips_real)[2]
    return Score(
        name=scenario.name,
        tracks=len(seeds),
        precision=precision,
        recall=recall,
        f1=f1,
        arrival_min=statistics.median(arrivals) if arrivals else float("nan"),
        departure_min=statistics.median(departures) if departures else float("nan"),
        moving_error_pct=statistics.median(moving),
        phantom_km_per_h=phantom_km / stationary_h,
        trip_f1=trip_f1,
        home_error_min=statistics.median(home_errors),
        coverage=covered / len(seeds),
        width_pct=statistics.fmean(widths),
        farthest_error_pct=statistics.median(farthest),
    )


HEADER = (
    "| scenario | stays P | R | F1 | arrival min | departure min | moving path % "
    "| phantom km/h | trip F1 | home min/day | bounds cover | width % | farthest % |"
)


def row(s: Score) -> str:
    """One scenario as a Markdown table row."""
    return (
        f"| {s.name} | {s.precision:.2f} | {s.recall:.2f} | {s.f1:.2f} | {s.arrival_min:.1f} "
        f"| {s.departure_min:.1f} | {s.moving_error_pct:.1f} | {s.phantom_km_per_h:.3f} "
        f"| {s.trip_f1:.2f} | {s.home_error_min:.1f} | {s.coverage:.0%} | {s.width_pct:.1f} "
        f"| {s.farthest_error_pct:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=50, help="seeded tracks per scenario")
    parser.add_argument("--first-seed", type=int, default=1000)
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.tracks)
    print(f"{args.tracks} one-day tracks per scenario, seeds {seeds.start}-{seeds.stop - 1}")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for scenario in SCENARIOS:
        print(row(score(scenario, seeds)), flush=True)


if __name__ == "__main__":
    main()
