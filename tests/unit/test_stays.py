"""Stays, places and the timeline, as a person reading their day would check them."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from shared.engine import DROP_RULES, EngineParams, Summary, Window, analyze, day_window
from shared.engine.params import NamedPlace
from shared.engine.points import Points
from shared.engine.timeline import geohash

HOME = (40.736097, -74.039373)
TZ = "America/New_York"
M_PER_DEG = 111_195.0
DAY = dt.date(2024, 6, 5)


def params(**changes: object) -> EngineParams:
    return EngineParams(home_latitude=HOME[0], home_longitude=HOME[1], **changes)


def at(north_m: np.ndarray, east_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = HOME[0] + north_m / M_PER_DEG
    lon = HOME[1] + east_m / (M_PER_DEG * np.cos(np.radians(HOME[0])))
    return lat, lon


def day_track(
    hours: Sequence[float],
    east_km: Sequence[float],
    *,
    every_s: int = 30,
    noise_m: float = 15.0,
    seed: int = 1,
    window: Window | None = None,
    accuracy: int = 15,
) -> tuple[Points, Window]:
    """A device moving east of home along these (hour, km) waypoints, one fix every
    `every_s` seconds with Gaussian noise."""
    window = window or day_window(DAY, DAY, TZ)
    span_s = (window.end_us - window.start_us) // 1_000_000
    seconds = np.arange(0, span_s, every_s)
    east = np.interp(seconds / 3600, hours, np.asarray(east_km) * 1000)
    noise = np.random.default_rng(seed).normal(0, noise_m, (2, len(seconds)))
    lat, lon = at(noise[0], east + noise[1])
    points = Points.from_columns(
        ["phone"],
        device=np.zeros(len(seconds)),
        timestamp=window.start_us + seconds * 1_000_000,
        lat=lat,
        lon=lon,
        accuracy=np.full(len(seconds), accuracy),
    )
    return points, window


WORKDAY: tuple[list[float], list[float]] = (
    [0, 8, 8 + 1 / 3, 17, 17 + 1 / 2, 24],
    [0, 0, 5, 5, 0, 0],
)


def local(summary: Summary, hour: float) -> dt.datetime:
    start = summary.window.start
    return start + dt.timedelta(hours=hour)


def assert_adds_up(summary: Summary) -> None:
    """Each device's timeline runs from the window's start to its end without a gap or an
    overlap, and so does each day's."""
    for device in summary.devices.values():
        entries = device.timeline
        assert entries[0].start == summary.window.start
        assert entries[-1].end == summary.window.end
        for before, after in itertools.pairwise(entries):
            assert before.end == after.start
        total = sum(entry.duration_s for entry in entries)
        window_s = (summary.window.end - summary.window.start).total_seconds()
        assert total == pytest.approx(window_s, abs=1e-3)
        for day in device.days:
            tz = summary.window.start.tzinfo
            assert day.timeline[0].start == dt.datetime.combine(day.date, dt.time(), tz)
            next_day = day.date + dt.timedelta(days=1)
            assert day.timeline[-1].end == dt.datetime.combine(next_day, dt.time(), tz)
            for before, after in zip(day.timeline, day.timeline[1:], strict=False):
                assert before.end == after.start


def test_a_workday_is_home_office_home_with_arrival_and_departure_to_the_minute() -> None:
    points, window = day_track(*WORKDAY)
    summary = analyze(points, window, params()).summary
    stays = summary.stays
    assert [stay.place for stay in stays] == ["home", stays[1].place, "home"]
    office = stays[1]
    assert office.place == geohash(office.latitude, office.longitude)
    assert abs((office.start - local(summary, 8 + 1 / 3)).total_seconds()) <= 120
    assert abs((office.end - local(summary, 17)).total_seconds()) <= 120
    assert office.latitude == pytest.approx(HOME[0], abs=20 / M_PER_DEG)
    assert stays[0].clipped_start
    assert not stays[0].clipped_end
    kinds = [entry.kind for entry in summary.timeline]
    assert kinds[:5] == ["stay", "move", "stay", "move", "stay"]
    move = summary.timeline[1]
    assert move.from_place == "home"
    assert move.to_place == office.place
    assert move.path_km == pytest.approx(5.0, rel=0.05)
    places = {visit.place: visit for visit in summary.places}
    assert places["home"].visits == 2
    assert places[office.place].visits == 1
    assert places[office.place].total_s == office.duration_s
    assert_adds_up(summary)


def test_the_models_are_those_validation_builds_and_place_ids_are_standard_geohashes() -> None:
    points, window = day_track(*WORKDAY)
    summary = analyze(points, window, params()).summary
    day = summary.days[0]
    models = [*summary.stays, *summary.places, *summary.timeline, day, *day.stays, *day.timeline]
    assert len(models) > 10
    for model in models:
        rebuilt = type(model).model_validate(model.model_dump())
        assert model == rebuilt
        assert model.model_dump_json() == rebuilt.model_dump_json()
        assert model.model_fields_set == set(type(model).model_fields)
    assert Summary.model_validate_json(summary.model_dump_json()) == summary
    assert geohash(57.64911, 10.40744, 11) == "u4pruydqqvj"


def test_traffic_stops_of_two_to_four_minutes_are_not_stays() -> None:
    # Driving 30 km/h east with three stops of 2, 3 and 4 minutes.
    hours, east = [0.0, 8.0], [0.0, 0.0]
    for stop_min in (2, 3, 4):
        hours += [hours[-1] + 1 / 30, hours[-1] + 1 / 30 + stop_min / 60]
        east += [east[-1] + 1.0, east[-1] + 1.0]
    hours += [hours[-1] + 1 / 30, 24.0]
    east += [east[-1] + 1.0, east[-1] + 1.0]
    points, window = day_track(hours, east, every_s=10)
    stays = analyze(points, window, params()).summary.stays
    assert len(stays) == 2  # home in the morning, the destination in the evening


def test_indoor_drift_makes_no_phantom_stays_or_moves() -> None:
    window = day_window(DAY, DAY, TZ)
    rng = np.random.default_rng(3)
    seconds = np.arange(0, 86400, 60)
    # A slow wander of 30-80 m about a spot 3 km from home, with a 150 m jump reporting
    # accuracy 65 now and then.
    angle = np.cumsum(rng.normal(0, 0.2, len(seconds)))
    radius = 55 + 25 * np.sin(seconds / 1800)
    north, east = radius * np.sin(angle), 3000 + radius * np.cos(angle)
    accuracy = np.full(len(seconds), 20)
    jumps = rng.choice(len(seconds), 40, replace=False)
    north[jumps] += 150 * np.sin(angle[jumps] * 3)
    east[jumps] += 150 * np.cos(angle[jumps] * 3)
    accuracy[jumps] = 65
    lat, lon = at(north, east)
    points = Points.from_columns(
        ["phone"],
        device=np.zeros(len(seconds)),
        timestamp=window.start_us + seconds * 1_000_000,
        lat=lat,
        lon=lon,
        accuracy=accuracy,
    )
    summary = analyze(points, window, params()).summary
    assert len(summary.stays) == 1
    assert [entry.kind for entry in summary.timeline] == ["stay", "unknown"]
    assert summary.timeline[1].duration_s == 60  # after the last fix
    # A day at rest is no path, whatever the drift and its jumps say (they are jitter)...
    assert summary.path_km < 0.1
    # ...and the farthest point is the stay's centre, not its farthest jump.
    centre = summary.stays[0]
    assert summary.max_distance_at is not None
    assert summary.max_distance_at.latitude == centre.latitude
    assert summary.max_distance_km == pytest.approx(3.0, abs=0.03)


def test_a_single_wild_fix_at_the_far_place_does_not_set_the_farthest_point() -> None:
    points, window = day_track(*WORKDAY, noise_m=10)
    lat = points.lat.copy()
    stay_s = np.flatnonzero((points.timestamp - window.start_us) // 1_000_000 == 12 * 3600)
    lat[stay_s] += 90 / M_PER_DEG  # one fix 90 m north at noon, within the stay's reach
    spoiled = Points.from_columns(
        ["phone"],
        device=points.device,
        timestamp=points.timestamp,
        lat=lat,
        lon=points.lon,
        accuracy=points.accuracy,
    )
    summary = analyze(spoiled, window, params()).summary
    # 5 km east; the wild fix would have said 5.0008 km or more.
    assert summary.max_distance_km == pytest.approx(5.0, abs=0.005)
    assert summary.trips[0].max_distance_km == summary.max_distance_km


def test_a_traffic_stop_adds_no_path_and_is_no_stay() -> None:
    # 10 km east at 12 m/s with a 3-minute stop halfway, logged every 30 s with 30 m noise:
    # the stop's fixes scatter some 50 m from each other, which is no path.
    drive_h = 10_000 / 12 / 3600
    hours = [0, 8, 8 + drive_h / 2, 8 + drive_h / 2 + 0.05, 8 + drive_h + 0.05, 24]
    points, window = day_track(hours, [0, 0, 5, 5, 10, 10], noise_m=30, accuracy=45)
    summary = analyze(points, window, params()).summary
    assert [stay.place for stay in summary.stays][:1] == ["home"]
    assert len(summary.stays) == 2  # home, and the end of the drive: the stop is none
    moves = [entry for entry in summary.timeline if entry.kind == "move"]
    assert len(moves) == 1
    assert moves[0].path_km == pytest.approx(10.0, rel=0.02)


def test_dropped_fixes_neither_make_nor_break_a_stay() -> None:
    points, window = day_track(*WORKDAY)
    before = analyze(points, window, params()).summary.stays
    n = len(points)
    # Inaccurate fixes far away in the middle of the office stay, and ten minutes of them
    # resting at a spot where the device never was.
    t = points.timestamp[0] + np.arange(12 * 3600, 12 * 3600 + 600, 10) * 1_000_000
    lat, lon = at(np.full(len(t), 2000.0), np.full(len(t), 2000.0))
    bad = Points.from_columns(
        ["phone"],
        device=np.zeros(n + len(t)),
        timestamp=np.concatenate([points.timestamp, t]),
        lat=np.concatenate([points.lat, lat]),
        lon=np.concatenate([points.lon, lon]),
        accuracy=np.concatenate([points.accuracy, np.full(len(t), 900)]),
    )
    result = analyze(bad, window, params())
    assert [(s.start, s.end, s.place) for s in result.summary.stays] == [
        (s.start, s.end, s.place) for s in before
    ]
    quality = (result.dropped_by != 0) & (result.dropped_by != DROP_RULES.index("jitter") + 1)
    assert quality.sum() == len(t)
    assert (result.stay[quality] == 0).all()


def test_a_silence_at_rest_is_part_of_the_stay_but_still_a_gap() -> None:
    points, window = day_track(*WORKDAY)
    hour = (points.timestamp - window.start_us) / 3.6e9
    quiet = points.take(~((hour > 10) & (hour < 16)))  # six silent hours at the office
    summary = analyze(quiet, window, params()).summary
    assert len(summary.stays) == 3
    assert summary.stays[1].duration_s > 8 * 3600
    assert summary.completeness.largest_gap_s >= 6 * 3600
    assert summary.time_unknown_s >= 6 * 3600  # the time figures still show the gap
    assert_adds_up(summary)
    # Longer than the limit, the silence ends the stay: unknown time, then another stay.
    short = analyze(quiet, window, params(stay_max_silence_hours=2)).summary
    assert len(short.stays) == 4
    assert "unknown" in [entry.kind for entry in short.timeline]


def test_named_places_and_two_places_150_m_apart() -> None:
    office_lat, office_lon = at(np.array([0.0]), np.array([5000.0]))
    named = NamedPlace(name="Office", latitude=office_lat[0], longitude=office_lon[0], radius_m=100)
    hours = [0, 8, 8 + 1 / 3, 12, 12.02, 17, 17.5, 24]
    east = [0, 0, 5, 5, 5.15, 5.15, 0, 0]
    points, window = day_track(hours, east, noise_m=10, accuracy=10)
    summary = analyze(points, window, params(places=(named,))).summary
    places = [stay.place for stay in summary.stays]
    assert places[0] == "home"
    assert places[1] == "Office"
    assert places[-1] == "home"
    assert places[2] not in ("home", "Office")  # the café next door is a place of its own
    assert {visit.place for visit in summary.places} == {"home", "Office", places[2]}
    office = next(visit for visit in summary.places if visit.place == "Office")
    assert office.kind == "named"
    assert office.visits == 1


def test_an_unnamed_place_keeps_its_id_across_jobs_and_visits() -> None:
    hours = [0, 8, 8.3, 10, 10.3, 12, 12.3, 15, 15.3, 24]
    east = [0, 0, 4, 4, 0, 0, 4, 4, 0, 0]
    first, window = day_track(hours, east, seed=1)
    second, _ = day_track(hours, east, seed=2)
    a = analyze(first, window, params()).summary
    b = analyze(second, window, params()).summary
    away = [stay.place for stay in a.stays if stay.place != "home"]
    assert len(away) == 2
    assert away[0] == away[1]
    assert away == [stay.place for stay in b.stays if stay.place != "home"]


def test_the_days_of_a_range_add_up_to_the_range() -> None:
    window = day_window(DAY, DAY + dt.timedelta(days=2), TZ)
    hours = [0, 8, 8.3, 17, 17.5, 23.5, 24.5, 32, 32.3, 41, 41.5, 72]
    east = [0, 0, 5, 5, 0, 0, 3, 3, 0, 0, 0, 0]
    points, window = day_track(hours, east, window=window)
    summary = analyze(points, window, params()).summary
    assert_adds_up(summary)
    device = summary.devices["phone"]
    assert sum(entry.duration_s for day in device.days for entry in day.timeline) == (
        pytest.approx(3 * 86400, abs=1e-3)
    )
    moved = sum(e.path_km or 0 for day in device.days for e in day.timeline)
    assert moved == pytest.approx(sum(e.path_km or 0 for e in device.timeline), abs=1e-5)
    # The trip across midnight is split: the evening part on day one, the rest on day two.
    crossing = [e for e in device.timeline if e.kind == "move" and e.start.day != e.end.day]
    assert crossing
    per_day_stays = sum(len(day.stays) for day in device.days)
    assert per_day_stays >= len(device.stays)


def test_fixes_carry_their_stay_id() -> None:
    points, window = day_track(*WORKDAY)
    result = analyze(points, window, params())
    ids = np.unique(result.stay[result.stay > 0])
    assert ids.tolist() == [stay.id for stay in result.summary.stays]
    hour = (result.points.timestamp - window.start_us) / 3.6e9
    assert (result.stay[(hour > 9) & (hour < 16)] == 2).all()
    assert (result.stay[(hour > 8.05) & (hour < 8.25)] == 0).all()  # driving


@pytest.mark.parametrize(("every_s", "noise_m"), [(10, 5), (30, 30), (120, 30), (300, 15)])
def test_the_path_bounds_hold_the_true_path(every_s: int, noise_m: float) -> None:
    # 10 km driven (5 out, 5 back), whatever the sampling and noise.
    for seed in range(3):
        points, window = day_track(
            *WORKDAY, every_s=every_s, noise_m=noise_m, accuracy=round(noise_m), seed=seed
        )
        summary = analyze(points, window, params()).summary
        assert summary.path_km_low <= 10.0 <= summary.path_km_high
        assert summary.path_km_low <= summary.path_km <= summary.path_km_high
        day = summary.days[0]
        assert (day.path_km_low, day.path_km_high) == (summary.path_km_low, summary.path_km_high)
