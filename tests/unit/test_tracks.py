"""The synthetic tracks: deterministic, realistic in the ways the engine must cope with."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from shared.dev.tracks import Track, TrackSpec, generate
from shared.engine import haversine_km
from shared.engine.points import US_PER_S

SPEC = TrackSpec(days=7, devices=2, seed=4, late_upload_rate=1.0)


@pytest.fixture(scope="module")
def week() -> Track:
    return generate(SPEC)


def test_the_same_seed_gives_the_same_tracks_and_another_seed_others(week: Track) -> None:
    again = generate(SPEC)
    for name in ("timestamp", "lat", "lon", "accuracy", "created_at"):
        assert np.array_equal(getattr(week.points, name), getattr(again.points, name))
    assert week.path_km == again.path_km
    other = generate(SPEC.model_copy(update={"seed": 5}))
    assert not np.array_equal(week.points.lat[:100], other.points.lat[:100])


def test_fixes_are_sorted_and_cover_every_day(week: Track) -> None:
    points = week.points
    assert points.device_ids == ("phone1", "phone2")
    order = np.lexsort((points.timestamp, points.device))
    assert np.array_equal(order, np.arange(len(points)))
    # Every 30 s over 7 days, less the hours in the air, plus duplicates.
    assert 2 * 7 * 2880 * 0.9 < len(points) < 2 * 7 * 2880 * 1.01


def test_the_range_holds_a_dst_change_and_a_flight(week: Track) -> None:
    points = week.points
    first = points.timestamp[points.device == 0]
    offsets = {
        dt.datetime.fromtimestamp(t / US_PER_S, ZoneInfo(SPEC.timezone)).utcoffset()
        for t in first[::2880]
    }
    assert len(offsets) == 2
    gaps = np.diff(first)
    k = int(np.argmax(gaps))
    assert gaps[k] > 3600 * US_PER_S  # no fixes in the air
    mine = np.flatnonzero(points.device == 0)
    jump = haversine_km(
        points.lat[mine[k]], points.lon[mine[k]], points.lat[mine[k + 1]], points.lon[mine[k + 1]]
    )
    assert float(jump) > 900


def test_the_data_is_spoiled_as_real_data_is(week: Track) -> None:
    points = week.points
    assert week.teleport.sum() > 0
    assert week.low_accuracy.sum() > 0
    assert (points.accuracy[week.low_accuracy] >= 1000).all()
    assert (points.accuracy == -1).any()
    assert (points.velocity == -1).any()
    same = (
        (np.diff(points.timestamp) == 0)
        & (np.diff(points.lat) == 0)
        & (np.diff(points.device) == 0)
    )
    assert same.sum() > 10
    lag = points.created_at - points.timestamp
    assert (lag > 0).all()
    assert (lag > 3600 * US_PER_S).sum() > 100  # buffered uploads, hours late


def test_the_truth_is_told(week: Track) -> None:
    assert all(km > 100 for km in week.path_km.values())
    trips = [t for t in week.trips if t.max_distance_km > 0.5]
    errands = [t for t in week.trips if t.max_distance_km <= 0.5]
    assert len(trips) >= 2 * 5  # commutes at least, and a flight
    assert max(t.max_distance_km for t in trips) > 900
    assert all(t.return_us > t.leave_us for t in week.trips)
    assert errands  # short walks that stay inside the exit radius
