"""Assembly of device-days against a single pass over the range: random ranges, devices,
time zones with DST days, and gaps (shorter than the context, which is what a day reads
around itself: a filter whose state reaches back further than that, such as a device
resting for more than a day, is judged from the day's context alone)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.engine import EngineParams, Summary, analyze, day_window
from shared.engine.assembly import Sketch, day_by_day
from shared.engine.points import US_PER_S, Points
from shared.engine.results import months
from shared.engine.statistics import exact_median

HOME = (52.52, 13.405)
DST_DAYS = {
    "Europe/Berlin": [dt.date(2024, 3, 31), dt.date(2024, 10, 27)],
    "America/New_York": [dt.date(2024, 3, 10), dt.date(2024, 11, 3)],
    "Australia/Lord_Howe": [dt.date(2024, 4, 7)],  # a half-hour change
    "UTC": [dt.date(2024, 2, 29)],
}


def _track(seed: int, devices: int, first: dt.date, days: int, timezone: str) -> Points:
    """Random walks out from home and back, at uneven intervals with gaps up to 3 h and moves
    every day (the filters' state then never reaches back further than a day's context)."""
    rng = np.random.default_rng(seed)
    window = day_window(first, first + dt.timedelta(days=days - 1), timezone)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("device", "t", "lat", "lon", "acc")}
    for device in range(devices):
        t = window.start_us - int(rng.integers(0, 30 * 3600)) * US_PER_S
        times: list[int] = []
        while t < window.end_us + 30 * 3600 * US_PER_S:
            times.append(t)
            step = rng.choice([30, 120, 600, 3 * 3600], p=[0.6, 0.25, 0.12, 0.03])
            t += int(step * US_PER_S * rng.uniform(0.5, 1.1))
        n = len(times)
        # Excursions of a few hours, between rests near home (each day has some).
        hours = np.array(times) / (3600 * US_PER_S)
        away = np.sin(hours / rng.uniform(0.5, 3) + rng.uniform(0, 6)) > 0.3
        drift = np.cumsum(rng.normal(0, 0.002, (n, 2)), axis=0) * away[:, None]
        columns["device"].append(np.full(n, device))
        columns["t"].append(np.array(times, dtype=np.int64))
        columns["lat"].append(HOME[0] + drift[:, 0] + rng.normal(0, 0.0003, n))
        columns["lon"].append(HOME[1] + drift[:, 1] + rng.normal(0, 0.0003, n))
        columns["acc"].append(rng.choice([5, 20, 80, 400], size=n, p=[0.5, 0.3, 0.15, 0.05]))
    stamps = np.concatenate(columns["t"])
    return Points.from_columns(
        [f"phone-{k}" for k in range(devices)],
        device=np.concatenate(columns["device"]),
        timestamp=stamps,
        lat=np.concatenate(columns["lat"]),
        lon=np.concatenate(columns["lon"]),
        accuracy=np.concatenate(columns["acc"]),
        created_at=stamps + rng.integers(0, 600, len(stamps)) * US_PER_S,
    )


def _same_figures(one: Summary, days: Summary) -> None:
    """Counts, sums, extremes and times as a single pass gives them; medians within 0.1 %."""
    assert days.points == one.points
    assert list(days.devices) == list(one.devices)
    for whole, assembled in [
        (one, days),
        *zip(one.devices.values(), days.devices.values(), strict=True),
    ]:
        assert assembled.points == whole.points
        for name in ("path_km", "raw_path_km"):
            assert getattr(assembled, name) == pytest.approx(getattr(whole, name), abs=2e-6)
        for name in ("time_at_home_s", "time_away_s", "time_unknown_s"):
            assert getattr(assembled, name) == pytest.approx(getattr(whole, name), abs=2e-3)
        assert assembled.max_distance_km == whole.max_distance_km
        assert assembled.max_distance_at == whole.max_distance_at
        assert assembled.min_distance_km == whole.min_distance_km
        assert assembled.mean_distance_km == pytest.approx(whole.mean_distance_km, abs=2e-6)
        assert assembled.median_distance_km == pytest.approx(
            whole.median_distance_km, rel=1e-3, abs=1e-6
        )
        assert assembled.completeness.coverage == pytest.approx(
            whole.completeness.coverage, abs=2e-6
        )
        assert assembled.completeness.largest_gap_s == whole.completeness.largest_gap_s
        assert assembled.completeness.largest_gap_start == whole.completeness.largest_gap_start
        assert assembled.completeness.ingest_lag_max_s == whole.completeness.ingest_lag_max_s
        lag, lag_whole = (s.completeness.ingest_lag_median_s for s in (assembled, whole))
        assert lag == pytest.approx(lag_whole, rel=1e-3, abs=1e-3)
        # Trips crossing midnight are one trip again, numbered as the single pass does.
        assert [
            (t.id, t.device_id, t.start, t.end, t.clipped_start, t.clipped_end)
            for t in assembled.trips
        ] == [
            (t.id, t.device_id, t.start, t.end, t.clipped_start, t.clipped_end) for t in whole.trips
        ]
        for a, w in zip(assembled.trips, whole.trips, strict=True):
            assert a.duration_s == w.duration_s
            assert a.max_distance_km == w.max_distance_km
            assert a.path_km == pytest.approx(w.path_km, abs=3e-6)
        for a_day, w_day in zip(assembled.days, whole.days, strict=True):
            assert (a_day.date, a_day.points_read, a_day.points_used) == (
                w_day.date,
                w_day.points_read,
                w_day.points_used,
            )
            assert a_day.path_km == w_day.path_km
            assert a_day.time_at_home_s == w_day.time_at_home_s
            assert a_day.time_away_s == w_day.time_away_s
            assert a_day.time_unknown_s == w_day.time_unknown_s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    devices=st.integers(1, 3),
    timezone=st.sampled_from(sorted(DST_DAYS)),
    offset=st.integers(-3, 1),
    days=st.integers(2, 5),
    pick=st.integers(0, 1),
)
def test_days_assembled_equal_a_single_pass(
    seed: int, devices: int, timezone: str, offset: int, days: int, pick: int
) -> None:
    dst = DST_DAYS[timezone]
    first = dst[pick % len(dst)] + dt.timedelta(days=offset)
    points = _track(seed, devices, first, days, timezone)
    window = day_window(first, first + dt.timedelta(days=days - 1), timezone)
    params = EngineParams(home_latitude=HOME[0], home_longitude=HOME[1])
    _same_figures(analyze(points, window, params).summary, day_by_day(points, window, params))


def test_a_range_without_fixes_assembles_to_zeros_with_the_note() -> None:
    window = day_window(dt.date(2024, 5, 1), dt.date(2024, 5, 3), "UTC")
    params = EngineParams(home_latitude=HOME[0], home_longitude=HOME[1])
    summary = day_by_day(Points.empty(), window, params)
    assert summary.points.read == 0
    assert summary.devices == {}
    assert summary.notes == ["no fixes in the window: every metric is zero"]
    assert [day.date for day in summary.days] == list(window.dates)


@given(
    values=st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=300
    ),
    cut=st.integers(0, 300),
)
def test_sketch_median_is_within_a_thousandth_whatever_the_split(
    values: list[float], cut: int
) -> None:
    array = np.array(values)
    whole = Sketch.of(array)
    merged = Sketch.merged([Sketch.of(array[:cut]), Sketch.of(array[cut:])])
    assert merged == whole
    median = merged.median()
    assert median is not None
    exact = exact_median(array.copy())
    ordered = np.sort(array)
    n = len(ordered)
    middle = ordered[[n // 2]] if n % 2 else ordered[[n // 2 - 1, n // 2]]
    # Each middle value is off by at most half a bin (or the floor's width): so is their mean.
    bound = float(np.mean(np.abs(middle))) * 5e-4 + 1e-6
    assert abs(median - exact) <= bound * (1 + 1e-9)


def test_months_add_up_the_days_of_each_calendar_month() -> None:
    points = _track(7, 2, dt.date(2024, 1, 30), 3, "UTC")
    window = day_window(dt.date(2024, 1, 30), dt.date(2024, 2, 1), "UTC")
    summary = day_by_day(
        points, window, EngineParams(home_latitude=HOME[0], home_longitude=HOME[1])
    )
    got = months(summary.days)
    assert [(m.month, m.days) for m in got] == [("2024-01", 2), ("2024-02", 1)]
    assert sum(m.points_read for m in got) == summary.points.read
    assert got[1].path_km == summary.days[2].path_km
