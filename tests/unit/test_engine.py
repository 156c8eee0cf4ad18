"""What a user of the engine notices: trustworthy distances, days, filters, trips and time."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic

from shared.dev.tracks import TrackSpec, generate
from shared.engine import (
    DROP_RULES,
    EngineParams,
    Window,
    analyze,
    day_window,
    destination,
    haversine_km,
    read_range,
)
from shared.engine import analysis as analysis_module
from shared.engine.arrays import first_at_or_after
from shared.engine.points import MISSING_TIME, Points

HOME = (40.736097, -74.039373)
TZ = "America/New_York"
M_PER_DEG = 111_195.0


def params(**changes: object) -> EngineParams:
    return EngineParams(home_latitude=HOME[0], home_longitude=HOME[1], **changes)  # type: ignore[arg-type]


def track(
    seconds: np.ndarray, north_m: np.ndarray, east_m: np.ndarray, start: int, device: str = "phone"
) -> Points:
    """A device at these offsets from home (metres) at these times (s after `start`, µs)."""
    lat = HOME[0] + north_m / M_PER_DEG
    lon = HOME[1] + east_m / (M_PER_DEG * np.cos(np.radians(HOME[0])))
    return Points.from_columns(
        [device],
        device=np.zeros(len(seconds)),
        timestamp=start + np.asarray(seconds, dtype=np.int64) * 1_000_000,
        lat=lat,
        lon=lon,
    )


def one_day(day: dt.date = dt.date(2024, 6, 5)) -> Window:
    return day_window(day, day, TZ)


def test_distances_agree_with_geodesics_within_half_a_percent() -> None:
    # A sphere of the mean radius stays within 0.5 % of WGS84 except for north-south lines
    # within ~15 degrees of the equator (up to 0.56 %, the meridian's flattest curvature).
    rng = np.random.default_rng(7)
    lat1, lat2 = rng.uniform(15, 80, (2, 400)) * rng.choice([-1, 1], 400)
    lon1, lon2 = rng.uniform(-180, 180, (2, 400))
    # Short hops too, where rounding would show first.
    lat2[:200] = lat1[:200] + rng.normal(0, 0.01, 200)
    lon2[:200] = lon1[:200] + rng.normal(0, 0.01, 200)
    ours = haversine_km(lat1, lon1, lat2, lon2)
    for k in range(400):
        truth = Geodesic.WGS84.Inverse(lat1[k], lon1[k], lat2[k], lon2[k])["s12"] / 1000
        assert ours[k] == pytest.approx(truth, rel=0.005), (lat1[k], lon1[k], lat2[k], lon2[k])


def test_destination_lands_where_it_says() -> None:
    lat, lon = destination(HOME[0], HOME[1], np.radians([0.0, 90.0, 225.0]), [1.0, 10.0, 300.0])
    assert haversine_km(HOME[0], HOME[1], lat, lon) == pytest.approx([1.0, 10.0, 300.0])


@pytest.mark.parametrize(
    ("day", "hours"),
    [(dt.date(2024, 3, 10), 23), (dt.date(2024, 11, 3), 25), (dt.date(2024, 6, 5), 24)],
)
def test_local_days_are_cut_at_local_midnight_and_dst_days_have_their_length(
    day: dt.date, hours: int
) -> None:
    window = day_window(day, day, TZ)
    assert (window.end_us - window.start_us) / 3.6e9 == hours
    assert window.local_time(window.start_us).hour == 0
    # A phone at home reporting every 5 minutes, from the previous evening to the next morning.
    seconds = np.arange(-3 * 3600, (hours + 3) * 3600, 300)
    points = track(seconds, np.zeros(len(seconds)), np.zeros(len(seconds)), window.start_us)
    summary = analyze(points, window, params()).summary
    assert summary.time_at_home_s == hours * 3600
    assert summary.time_unknown_s == 0
    assert summary.points.read == hours * 12
    assert summary.days[0].date == day


def test_every_instant_falls_in_its_local_day() -> None:
    window = day_window(dt.date(2024, 3, 1), dt.date(2024, 11, 30), TZ)
    rng = np.random.default_rng(2)
    t = rng.integers(window.start_us - 86400 * 10**6, window.end_us + 86400 * 10**6, 20000)
    t = np.concatenate((t, window.bounds_us, window.bounds_us - 1))
    # Three devices' rows, each sorted by time; the middle one has none.
    sizes = [7000, 0, len(t) - 7000]
    starts = np.cumsum([0, *sizes])
    t = np.concatenate([np.sort(part) for part in np.split(t, starts[1:-1])])
    first = first_at_or_after(t, starts, window.bounds_us)
    assert first.shape == (3, len(window.bounds_us))
    for g, (a, b) in enumerate(itertools.pairwise(starts.tolist())):
        expected = a + np.searchsorted(t[a:b], window.bounds_us, side="left")
        assert np.array_equal(first[g], expected)
        # The rows of day k are those from its first row to the next day's.
        day = np.searchsorted(window.bounds_us, t[a:b], side="right") - 1
        for k in (0, 100, len(window.dates) - 1):
            assert np.array_equal(
                np.flatnonzero(day == k) + a, np.arange(first[g, k], first[g, k + 1])
            )


def test_fixes_are_selected_by_local_day_not_utc_day() -> None:
    window = one_day()
    # 23:30 local the day before is 03:30 UTC on the day itself: not in the window.
    points = track(np.array([-1800, 1800]), np.zeros(2), np.zeros(2), window.start_us)
    assert analyze(points, window, params()).summary.points.read == 1


@pytest.mark.parametrize("context_days", [1, 4])
def test_days_of_a_range_add_up_to_the_range(context_days: int) -> None:
    spec = TrackSpec(days=4, devices=2, seed=3, start=dt.date(2024, 3, 8))
    points = generate(spec).points
    first, last = dt.date(2024, 3, 8), dt.date(2024, 3, 11)
    # Exact when each day's context reaches back to where the device last rested; the
    # default day of context differs only where a day begins with the device resting or
    # drifting slowly since a used fix more than a day earlier (its anchor lies elsewhere).
    settings = params(context_s=context_days * 86400.0)
    tolerance = 1e-5 if context_days == 4 else 0.05
    whole = analyze(points, day_window(first, last, TZ), settings).summary
    singles = [
        analyze(points, day_window(day.date, day.date, TZ), settings).summary for day in whole.days
    ]
    assert sum(s.path_km for s in singles) == pytest.approx(whole.path_km, abs=tolerance)
    assert sum(s.raw_path_km for s in singles) == pytest.approx(whole.raw_path_km, abs=1e-5)
    for single, day in zip(singles, whole.days, strict=True):
        assert single.path_km == pytest.approx(day.path_km, abs=tolerance)
        assert single.time_at_home_s == pytest.approx(day.time_at_home_s, abs=1e-3)
        assert single.time_away_s == pytest.approx(day.time_away_s, abs=1e-3)
        assert single.points.read == day.points_read
    # Midnight falls inside a drive or a stay: some segment really was split.
    assert whole.days[1].path_km > 0


def test_a_segment_across_midnight_is_split_in_proportion_to_time() -> None:
    window = one_day()
    # 10 km driven east between 23:50 and 00:10: half of it belongs to each day.
    points = track(np.array([-600, 600]), np.zeros(2), np.array([0.0, 10_000.0]), window.start_us)
    before = analyze(points, one_day(dt.date(2024, 6, 4)), params()).summary
    after = analyze(points, window, params()).summary
    assert before.path_km == pytest.approx(5.0, rel=0.01)
    assert after.path_km == pytest.approx(5.0, rel=0.01)
    assert before.path_km + after.path_km == pytest.approx(10.0, rel=0.01)


def test_a_phone_lying_still_for_a_day_with_25_m_jitter_travels_under_1_km() -> None:
    rng = np.random.default_rng(11)
    window = one_day()
    seconds = np.arange(0, 86400, 30)
    north, east = rng.normal(0, 25, (2, len(seconds)))
    summary = analyze(track(seconds, north, east, window.start_us), window, params()).summary
    assert summary.path_km < 1.0
    assert summary.raw_path_km > 50  # what a naive sum would have claimed
    assert summary.points.dropped.jitter > 0.9 * len(seconds)
    assert summary.trips == []


def test_a_real_400_m_walk_still_counts() -> None:
    rng = np.random.default_rng(5)
    window = one_day()
    walk_s = 400 / 1.4
    seconds = np.arange(0, 3 * 3600, 30)
    start = 3600.0
    along = np.clip((seconds - start) / walk_s, 0, 1) * 400
    noise = np.where((seconds > start) & (seconds < start + walk_s), 5.0, 15.0)
    north = along + rng.normal(0, 1, len(seconds)) * noise
    east = rng.normal(0, 1, len(seconds)) * noise
    summary = analyze(track(seconds, north, east, window.start_us), window, params()).summary
    assert 0.36 < summary.path_km < 0.5


@pytest.mark.parametrize("interval_s", [1, 10])
def test_a_walk_logged_every_few_seconds_is_a_trip_not_jitter(interval_s: int) -> None:
    # 1.2 km out and back at 1.4 m/s: 1.4-14 m between fixes, well inside the jitter radius
    # of a centroid that trails the walker. The centroid moves with it, so the walk counts.
    rng = np.random.default_rng(interval_s)
    window = one_day()
    seconds = np.arange(0, 3 * 3600, interval_s)
    out_s = 1200 / 1.4
    leave = 3600.0
    along = 1200 - np.abs(np.clip(seconds - leave, 0, 2 * out_s) - out_s) * 1.4
    moving = (seconds > leave) & (seconds < leave + 2 * out_s)
    noise = np.where(moving, 3.0, 10.0)
    north = along + rng.normal(0, 1, len(seconds)) * noise
    east = rng.normal(0, 1, len(seconds)) * noise
    analysis = analyze(track(seconds, north, east, window.start_us), window, params())
    summary = analysis.summary
    # (measured between fixes about a radius apart: the turn and the ends lose a little)
    assert 2.1 < summary.path_km < 2.5
    assert len(summary.trips) == 1
    assert summary.trips[0].max_distance_km == pytest.approx(1.2, abs=0.05)
    # Away from crossing the exit radius on the way out to the enter radius on the way back.
    settings = params()
    away_m = 2 * 1200 - 1000 * (settings.exit_radius_km + settings.enter_radius_km)
    assert summary.time_away_s == pytest.approx(away_m / 1.4, rel=0.1)
    farthest = int(np.argmax(analysis.distance_km))
    assert analysis.at_home[farthest] == 0


@pytest.fixture(scope="module")
def week() -> tuple[object, object]:
    spec = TrackSpec(days=7, devices=2, seed=1)
    generated = generate(spec)
    window = day_window(spec.start, spec.start + dt.timedelta(days=6), spec.timezone)
    return generated, analyze(generated.points, window, params())


def test_devices_analysed_in_blocks_give_the_same_result(
    week: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated, whole = week
    monkeypatch.setattr(analysis_module, "BLOCK_FIXES", 1000)
    spec = TrackSpec(days=7, devices=2, seed=1)
    window = day_window(spec.start, spec.start + dt.timedelta(days=6), spec.timezone)
    blocked = analyze(generated.points, window, params())
    assert blocked.summary == whole.summary
    for name in ("distance_km", "segment_km", "cumulative_km", "at_home", "trip", "dropped_by"):
        assert np.array_equal(getattr(blocked, name), getattr(whole, name), equal_nan=True)


def test_noisy_generated_routes_come_within_5_percent_of_their_true_length(week: tuple) -> None:
    generated, analysis = week
    for device, truth in generated.path_km.items():
        metrics = analysis.summary.devices[device]
        assert metrics.path_km == pytest.approx(truth, rel=0.05)
        assert abs(metrics.raw_path_km / truth - 1) > 0.05


def test_generated_trips_are_found_exactly(week: tuple) -> None:
    generated, analysis = week
    truth = sorted(
        (t for t in generated.trips if t.max_distance_km > 0.5),
        key=lambda t: (t.device_id, t.leave_us),
    )
    found = analysis.summary.trips
    assert len(found) == len(truth)
    for trip, true in zip(found, truth, strict=True):
        assert trip.device_id == true.device_id
        start_us = trip.start.timestamp() * 1e6
        end_us = trip.end.timestamp() * 1e6
        assert true.leave_us <= start_us <= true.leave_us + 600e6
        assert true.return_us - 600e6 <= end_us <= true.return_us + 60e6
        assert trip.max_distance_km == pytest.approx(true.max_distance_km, rel=0.02)
        assert not trip.clipped_start
        assert not trip.clipped_end


def test_teleports_and_low_accuracy_fixes_cannot_move_the_maximum(week: tuple) -> None:
    generated, analysis = week
    points = generated.points
    assert generated.teleport.any()
    assert generated.low_accuracy.any()
    rules = np.array(("kept", *DROP_RULES))[analysis.dropped_by]
    assert set(rules[generated.teleport]) <= {"jump", "duplicate"}
    assert set(rules[generated.low_accuracy]) <= {"accuracy", "duplicate"}
    clean = ~(generated.teleport | generated.low_accuracy)
    seen = np.isin(rules, ("kept", "jitter"))
    honest = haversine_km(HOME[0], HOME[1], points.lat, points.lon)
    # A fix of a stay counts at the stay's centre (one noisy fix there cannot set it).
    for stay in analysis.summary.stays:
        centre = haversine_km(HOME[0], HOME[1], stay.latitude, stay.longitude)
        honest[analysis.stay == stay.id] = centre
    assert analysis.summary.max_distance_km == pytest.approx(honest[clean & seen].max(), abs=1e-4)


def test_a_single_teleport_or_bad_fix_at_the_edges_is_dropped() -> None:
    window = one_day()
    seconds = np.arange(0, 3600, 60)
    north = np.linspace(0, 2000, len(seconds))
    east = np.zeros(len(seconds))
    for k in (0, 20, len(seconds) - 1):
        spoiled_north = north.copy()
        spoiled_north[k] = 900_000
        analysis = analyze(track(seconds, spoiled_north, east, window.start_us), window, params())
        assert analysis.dropped_by[k] == DROP_RULES.index("jump") + 1
        honest = np.delete(north, k).max() / 1000
        assert analysis.summary.max_distance_km == pytest.approx(honest, rel=0.01)


def test_jitter_at_the_exit_radius_makes_no_false_trips() -> None:
    window = one_day()
    seconds = np.arange(0, 6 * 3600, 60)
    # Hovering between 350 m and 550 m from home: out beyond 500 m once, never back under 300 m.
    north = np.where(np.arange(len(seconds)) % 2 == 0, 350.0, 550.0)
    analysis = analyze(
        track(seconds, north, np.zeros(len(seconds)), window.start_us),
        window,
        params(jitter_radius_m=0),
    )
    assert len(analysis.summary.trips) == 1


def test_a_trip_cut_by_the_window_is_clipped_and_flagged() -> None:
    window = one_day()
    # Away from 22:00 the day before until 02:00, then home.
    seconds = np.arange(-2 * 3600, 4 * 3600, 120)
    north = np.where(seconds < 2 * 3600, 5000.0, 0.0)
    analysis = analyze(
        track(seconds, north, np.zeros(len(seconds)), window.start_us), window, params()
    )
    (trip,) = analysis.summary.trips
    assert trip.clipped_start
    assert not trip.clipped_end
    assert trip.start == window.local_time(window.start_us)
    assert trip.duration_s == 2 * 3600
    assert analysis.summary.time_away_s == 2 * 3600


def test_a_gap_longer_than_the_limit_is_unknown_time() -> None:
    window = one_day()
    seconds = np.concatenate((np.arange(0, 3600, 60), np.arange(7200, 86400, 60)))
    points = track(seconds, np.zeros(len(seconds)), np.zeros(len(seconds)), window.start_us)
    summary = analyze(points, window, params()).summary
    assert summary.time_unknown_s == pytest.approx(3600 + 60 + 60, abs=1)
    assert summary.completeness.largest_gap_s == 3660
    assert summary.completeness.coverage == pytest.approx(1 - 3720 / 86400, abs=1e-4)


def test_devices_are_never_joined_and_totals_are_sums() -> None:
    window = one_day()
    a = track(np.array([0, 600]), np.array([0.0, 10_000]), np.zeros(2), window.start_us, "a")
    b = track(
        np.array([300, 900]),
        np.array([20_000.0, 20_000]),
        np.array([0, 3000.0]),
        window.start_us,
        "b",
    )
    points = Points.from_columns(
        ["a", "b"],
        device=[0, 0, 1, 1],
        timestamp=np.concatenate((a.timestamp, b.timestamp)),
        lat=np.concatenate((a.lat, b.lat)),
        lon=np.concatenate((a.lon, b.lon)),
    )
    summary = analyze(points, window, params()).summary
    assert summary.devices["a"].path_km == pytest.approx(10.0, rel=0.01)
    assert summary.devices["b"].path_km == pytest.approx(3.0, rel=0.01)
    assert summary.path_km == pytest.approx(
        summary.devices["a"].path_km + summary.devices["b"].path_km
    )
    assert summary.max_distance_at is not None
    assert summary.max_distance_at.device_id == "b"


def test_filters_can_each_be_switched_off() -> None:
    window = one_day()
    seconds = np.array([0, 60, 60, 120, 180])
    points = Points.from_columns(
        ["p"],
        device=np.zeros(5),
        timestamp=window.start_us + seconds * 1_000_000,
        lat=[HOME[0], HOME[0], HOME[0], 0.0, HOME[0]],
        lon=[HOME[1], HOME[1], HOME[1], 0.0, HOME[1]],
        accuracy=[10, 10, 10, 10, 5000],
    )
    strict = analyze(points, window, params(jitter_radius_m=0)).summary.points.dropped
    assert (strict.duplicate, strict.invalid, strict.accuracy) == (1, 1, 1)
    loose = analyze(
        points,
        window,
        params(
            drop_duplicates=False,
            null_island_invalid=False,
            max_accuracy_m=None,
            max_speed_kmh=None,
            jitter_radius_m=0,
        ),
    ).summary
    assert loose.points.used == 5
    assert loose.path_km > 10_000  # the trip to null island and back counts once allowed


def test_unknown_accuracy_is_kept_and_counted() -> None:
    window = one_day()
    points = Points.from_columns(
        ["p"],
        device=[0, 0],
        timestamp=[window.start_us, window.start_us + 60_000_000],
        lat=[HOME[0]] * 2,
        lon=[HOME[1]] * 2,
        accuracy=[-1, 10],
    )
    summary = analyze(points, window, params()).summary
    assert summary.points.accuracy_unknown == 1
    assert summary.points.dropped.accuracy == 0


def test_ingest_lag_is_reported() -> None:
    window = one_day()
    t = window.start_us + np.array([0, 60, 120]) * 1_000_000
    points = Points.from_columns(
        ["p"],
        device=[0, 0, 0],
        timestamp=t,
        lat=[HOME[0]] * 3,
        lon=[HOME[1]] * 3,
        created_at=[t[0] + 2_000_000, t[1] + 4 * 3600 * 1_000_000, MISSING_TIME],
    )
    completeness = analyze(points, window, params()).summary.completeness
    assert completeness.ingest_lag_max_s == 4 * 3600
    assert completeness.ingest_lag_median_s == pytest.approx((2 + 4 * 3600) / 2)


def test_empty_input_is_a_result_not_an_error() -> None:
    summary = analyze(Points.empty(), one_day(), params()).summary
    assert summary.points.read == 0
    assert summary.path_km == summary.max_distance_km == summary.time_at_home_s == 0
    assert summary.trips == []
    assert summary.devices == {}
    assert summary.notes
    assert summary.time_unknown_s == 0
    data = json.loads(summary.model_dump_json())
    assert data["points"]["read"] == 0
    assert data["schema_version"] == 1


def test_fixes_outside_the_window_are_context_only() -> None:
    window = one_day()
    seconds = np.array([-7200, -3600, 86400 + 3600])
    points = track(seconds, np.array([0.0, 100, 0]), np.zeros(3), window.start_us)
    summary = analyze(points, window, params()).summary
    assert summary.points.read == 0
    assert summary.devices == {} or summary.devices["phone"].points.read == 0
    lo, hi = read_range(window, params())
    assert lo < window.start_us
    assert hi > window.end_us


def test_summary_json_has_the_documented_keys(week: tuple) -> None:
    _, analysis = week
    data = json.loads(analysis.summary.model_dump_json())
    for key in (
        "path_km",
        "raw_path_km",
        "max_distance_km",
        "min_distance_km",
        "mean_distance_km",
        "median_distance_km",
        "time_at_home_s",
        "time_away_s",
        "time_unknown_s",
        "trips",
        "devices",
        "completeness",
        "schema_version",
    ):
        assert key in data
    assert set(data["points"]["dropped"]) == set(DROP_RULES)
    assert {"read", "used"} <= set(data["points"])
    device = next(iter(data["devices"].values()))
    assert set(device) == set(data) - {
        "schema_version",
        "window",
        "parameters",
        "devices",
        "notes",
        "months",
    }
    assert data["path_km"] == pytest.approx(
        sum(d["path_km"] for d in data["devices"].values()), abs=1e-5
    )


def test_unsorted_points_and_bad_parameters_are_refused() -> None:
    points = Points(
        device_ids=("p",),
        device=np.zeros(2, np.int32),
        timestamp=np.array([2, 1], np.int64),
        lat=np.zeros(2),
        lon=np.zeros(2),
        accuracy=np.zeros(2, np.int32),
        velocity=np.zeros(2, np.int32),
        battery=np.zeros(2, np.int32),
        created_at=np.zeros(2, np.int64),
    )
    with pytest.raises(ValueError, match="sorted"):
        analyze(points, one_day(), params())
    with pytest.raises(ValueError, match="enter_radius_km"):
        params(enter_radius_km=1.0)
    with pytest.raises(ValueError, match="before the first day"):
        day_window(dt.date(2024, 1, 2), dt.date(2024, 1, 1), TZ)
    with pytest.raises(ValueError, match="unknown time zone"):
        day_window(dt.date(2024, 1, 1), dt.date(2024, 1, 1), "Mars/Olympus")
