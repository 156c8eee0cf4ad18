"""The engine's fast numerics against the plain formulas they replace: the polynomial sine and
the square-root cosines, the sampled median, and the cache-sized slices."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dev.tracks import TrackSpec, generate
from shared.engine import (
    EARTH_RADIUS_KM,
    EngineParams,
    Window,
    analyze,
    arrays,
    day_window,
    haversine_km,
    statistics,
)
from shared.engine.arrays import concat_ranges, first_at_or_after, run_sums, window_sums
from shared.engine.chain import Chain, Fixes
from shared.engine.days import spread_over_days
from shared.engine.filters import find_still
from shared.engine.geometry import chord_km, sine, unit_vectors
from shared.engine.points import Points
from shared.engine.statistics import MEDIAN_SAMPLE, exact_median

M_PER_UNIT = EARTH_RADIUS_KM * 1000.0

latitudes = st.one_of(
    st.floats(-90, 90),
    st.sampled_from([-90.0, 90.0, 0.0, -1e-300, 89.9999999, -89.9999999]),
)
longitudes = st.one_of(
    st.floats(-180, 180),
    st.sampled_from([-180.0, 180.0, 0.0, 90.0, -90.0, 179.9999999, -179.9999999]),
)


def textbook_error_m(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """How far (m on Earth) the engine's unit vectors are from numpy's sine and cosine."""
    phi, lam = np.radians(lat), np.radians(lon)
    truth = np.array([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)])
    ours = np.array(unit_vectors(lat, lon))
    error_m: np.ndarray = np.sqrt(((ours - truth) ** 2).sum(axis=0)) * M_PER_UNIT
    return error_m


@settings(max_examples=300)
@given(st.lists(st.tuples(latitudes, longitudes), min_size=1, max_size=50))
def test_unit_vectors_are_within_a_third_of_a_metre_anywhere(points: list) -> None:
    # The square-root cosines lose precision only where the cosine nears 0: within metres of
    # the poles (cos lat) and of the antimeridian (cos lon/2). Even there, under 0.35 m.
    lat, lon = np.array(points).T
    assert textbook_error_m(lat, lon).max() < 0.35


def test_unit_vectors_are_within_a_millimetre_where_people_are() -> None:
    rng = np.random.default_rng(3)
    lat = rng.uniform(-89.9, 89.9, 200_000)
    lon = rng.uniform(-179.99, 179.99, 200_000)
    assert textbook_error_m(lat, lon).max() < 1e-3


def test_the_worst_case_near_the_antimeridian_is_bounded_and_real() -> None:
    # Within a hair of 180 degrees the error is largest; it is bounded, but not zero, so
    # this also shows the test above can fail if the bound were tightened below it.
    lon = 180.0 - np.logspace(-13, -3, 2000)
    error = textbook_error_m(np.zeros_like(lon), lon)
    assert 1e-3 < error.max() < 0.35


def test_sine_polynomial_matches_numpy_to_rounding() -> None:
    x = np.linspace(-np.pi / 2, np.pi / 2, 100_001)
    ours = sine(x, out=np.empty_like(x), square=np.empty_like(x))
    assert np.abs(ours - np.sin(x)).max() < 1e-15


def hav_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@settings(max_examples=300)
@given(
    st.floats(-89.9, 89.9),
    st.floats(-179.9, 179.9),
    st.floats(-0.05, 0.05),
    st.floats(-0.05, 0.05),
)
def test_short_hops_match_the_textbook_haversine_within_a_millimetre(
    lat: float, lon: float, north: float, east: float
) -> None:
    lat2, lon2 = float(np.clip(lat + north, -90, 90)), (lon + east + 540.0) % 360.0 - 180.0
    ours = float(haversine_km(lat, lon, lat2, lon2))
    assert abs(ours - hav_km(lat, lon, lat2, lon2)) < 1e-6


def test_long_distances_match_the_textbook_haversine_within_a_millimetre() -> None:
    rng = np.random.default_rng(4)
    lat1, lat2 = rng.uniform(-89.9, 89.9, (2, 2000))
    lon1, lon2 = rng.uniform(-179.9, 179.9, (2, 2000))
    ours = haversine_km(lat1, lon1, lat2, lon2)
    truth = np.array([hav_km(*row) for row in zip(lat1, lon1, lat2, lon2, strict=True)])
    near_antipodes = truth > 19_000  # where arcsine itself is ill-conditioned
    assert np.abs(ours - truth)[~near_antipodes].max() < 1e-6


@settings(max_examples=200)
@given(
    st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=300),
    st.integers(1, 30),
)
def test_median_is_exact_with_or_without_sampling(values: list, sample: int) -> None:
    # A tiny sample makes the sampled bracket both hit and miss the middle.
    expected = float(np.median(values))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(statistics, "MEDIAN_SAMPLE", sample)
        assert exact_median(np.array(values)) == expected


@pytest.mark.parametrize("n", [2**20, 2**20 + 1])
def test_median_of_large_arrays_is_exact(n: int) -> None:
    rng = np.random.default_rng(n)
    values = np.round(rng.lognormal(0, 2, n), 3)  # ties too
    assert exact_median(values.copy()) == float(np.median(values))


def test_median_falls_back_when_the_sample_misses_the_middle() -> None:
    # Every sampled value is huge while almost all others are 0: the bracket misses.
    values = np.zeros(2**20)
    values[:: len(values) // MEDIAN_SAMPLE] = 1e9
    assert exact_median(values.copy()) == 0.0


def _generated(days: int, seed: int) -> tuple[Points, Window, EngineParams]:
    """Three generated devices over `days`, and a window of all but the first and last day."""
    spec = TrackSpec(days=days, devices=3, seed=seed)
    window = day_window(
        spec.start + dt.timedelta(days=1), spec.start + dt.timedelta(days=days - 2), spec.timezone
    )
    params = EngineParams(home_latitude=spec.home_latitude, home_longitude=spec.home_longitude)
    return generate(spec).points, window, params


def test_slices_and_sampling_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    points, window, params = _generated(days=5, seed=5)
    whole = analyze(points, window, params)
    monkeypatch.setattr(arrays, "CHUNK", 777)
    monkeypatch.setattr(statistics, "MEDIAN_SAMPLE", 50)
    sliced = analyze(points, window, params)
    assert sliced.summary == whole.summary
    for name in ("at_home", "trip", "dropped_by"):
        assert np.array_equal(getattr(sliced, name), getattr(whole, name))
    for name in ("distance_km", "segment_km", "cumulative_km"):
        assert np.allclose(
            getattr(sliced, name), getattr(whole, name), rtol=0, atol=1e-9, equal_nan=True
        )


@settings(max_examples=200)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=200),
    st.lists(st.integers(0, 220), max_size=30),
)
def test_run_sums_are_exact_to_rounding_and_empty_runs_are_zero(values: list, starts: list) -> None:
    array = np.array(values)
    at = np.sort(np.array(starts, dtype=np.int64))
    sums = run_sums(np.stack([array, -2 * array]), at)
    ends = [*at[1:].tolist(), len(values)][: len(at)]
    for k, (a, b) in enumerate(zip(at.tolist(), ends, strict=True)):
        exact = math.fsum(values[a:b])
        scale = math.fsum(abs(v) for v in values[a:b])
        assert abs(sums[0, k] - exact) <= 1e-14 * scale
        assert sums[1, k] == -2 * sums[0, k]
        if a >= b:
            assert sums[0, k] == 0.0


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=20))
def test_ranges_lists_each_range_in_turn(pairs: list) -> None:
    begin, end = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    expected = [k for a, b in pairs for k in range(a, b)]
    assert concat_ranges(begin, end).tolist() == expected


@st.composite
def steps(draw: st.DrawFn) -> tuple[list[list[int]], list[bool], list[float]]:
    """Two devices' times (µs) around three days of 86,400 µs, which of their fixes make the
    chain, and the chain's step amounts."""
    times = [sorted(draw(st.lists(st.integers(-100_000, 360_000), max_size=12))) for _ in range(2)]
    chain = draw(st.lists(st.booleans(), min_size=24, max_size=24))
    amounts = draw(st.lists(st.floats(0, 1e3), min_size=24, max_size=24))
    return times, chain, amounts


@settings(max_examples=300)
@given(steps(), st.booleans())
def test_day_sums_match_exact_sums_of_each_steps_share(case: tuple, resting: bool) -> None:
    # Days are summed run by run, and a step crossing midnight is taken out of the day it
    # ends in again before its shares are added: within rounding of exactly rounded sums.
    times, in_chain, amounts = case
    bounds = np.array([0, 86_400, 172_800, 259_200], dtype=np.int64)
    t = np.array(times[0] + times[1], dtype=np.int64)
    starts = np.array([0, len(times[0]), len(t)])
    device = (np.arange(len(t)) >= starts[1]).astype(np.int64)
    idx = np.flatnonzero(in_chain[: len(t)])
    n = len(idx)
    linked = np.zeros(n, dtype=bool)
    linked[1:] = device[idx[1:]] == device[idx[:-1]]
    amount = np.where(linked, np.array(amounts[:n]), 0.0)
    # A step starts at the chain's previous fix, or (a resting phone) at a later row.
    previous = np.append(idx[:1], idx[:-1])
    since = np.where(linked, (previous + idx) // 2 if resting else previous, idx)
    chain = Chain(idx=idx, linked=linked, step_km=amount, step_us=np.zeros(n, dtype=np.int64))
    at_bound = first_at_or_after(t, starts, bounds)
    totals, crossing, inside = spread_over_days(
        chain, amount[np.newaxis], at_bound, t=t, bounds=bounds, since=since
    )
    expected: list[list[list[float]]] = [[[], [], []], [[], [], []]]
    in_window = {}
    for k in np.flatnonzero(linked).tolist():
        a, b = int(t[since[k]]), int(t[idx[k]])
        parts = []
        for d in range(3):
            within = bounds[d] <= a and b < bounds[d + 1]
            if within or a == b:
                part = amount[k] if within else 0.0
            else:
                part = amount[k] * max(0, min(b, bounds[d + 1]) - max(a, bounds[d])) / (b - a)
            expected[device[idx[k]]][d].append(part)
            parts.append(part)
        in_window[k] = math.fsum(parts)
    scale = math.fsum(amount) + 1.0
    for g in range(2):
        for d in range(3):
            assert abs(totals[0, g, d] - math.fsum(expected[g][d])) <= 1e-13 * scale
    for k, share in zip(crossing.tolist(), inside[0].tolist(), strict=True):
        assert abs(share - in_window[k]) <= 1e-13 * scale
    # Every other step is inside one day: whole if that day is in the window, else none.
    for k in set(np.flatnonzero(linked).tolist()) - set(crossing.tolist()):
        assert in_window[k] in (0.0, amount[k])


def test_trip_paths_are_within_a_millimetre_of_exact_sums() -> None:
    # A trip's path is summed over its own rows, not as a difference of running sums.
    analysis = analyze(*_generated(days=20, seed=11))
    summary = analysis.summary
    device = analysis.points.device
    for g, name in enumerate(analysis.points.device_ids):
        exact = math.fsum(analysis.segment_km[device == g])
        metrics = summary.devices[name]
        assert abs(metrics.path_km - exact) <= 1e-6
        assert abs(math.fsum(day.path_km for day in metrics.days) - exact) <= 1e-6 * len(
            metrics.days
        )
    checked = 0
    for trip in summary.trips:
        if trip.clipped_start or trip.clipped_end:
            continue
        rows = np.flatnonzero(analysis.trip == trip.id)
        # To the return: the first fix seen at home after the trip's last away fix.
        back = rows[-1] + 1 + int(np.argmax(analysis.at_home[rows[-1] + 1 :] == 1))
        exact = math.fsum(analysis.segment_km[rows[0] : back + 1])
        assert abs(trip.path_km - exact) <= 1e-6
        checked += 1
    assert checked > 10


@settings(max_examples=200)
@given(
    st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=120),
    st.integers(1, 130),
)
def test_window_sums_are_exact_to_rounding(values: list, width: int) -> None:
    out = np.full(max(len(values) - width + 1, 0), np.nan)
    window_sums(np.array(values), width, out)
    for j, got in enumerate(out.tolist()):
        run = values[j : j + width]
        assert abs(got - math.fsum(run)) <= 8 * width * 2.0**-53 * math.fsum(map(abs, run))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=5),
    st.integers(1, 25),
    st.integers(0, 2**32 - 1),
)
def test_jitter_matches_centroids_summed_exactly(sizes: list, k: int, seed: int) -> None:
    # Window sums by doubling, short windows at a device's start summed on their own, in
    # slices smaller than the window, the drift anchor carried from slice to slice: the same
    # fixes as exactly summed centroids (up to fixes within a rounding of the radius).
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    device = np.repeat(np.arange(len(sizes)), sizes)
    lat = 40.7 + np.cumsum(rng.normal(0, 0.0008, n) * (rng.random(n) < 0.5))
    lon = -74.0 + rng.normal(0, 0.0008, n)
    accuracy = rng.choice([-1, 10, 150, 400], n)
    points = Points.from_columns(
        [str(g) for g in range(len(sizes))],
        device=device,
        timestamp=np.arange(n) * 30_000_000,
        lat=lat,
        lon=lon,
        accuracy=accuracy,
    )
    params = EngineParams(
        home_latitude=40.7, home_longitude=-74.0, jitter_fixes=k, jitter_radius_m=100.0
    )
    fixes = Fixes(points, params, np.empty(n))
    chain = fixes.every()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(arrays, "CHUNK", 7)
        still = find_still(fixes, chain, params)
    xyz = np.array(fixes.xyz)
    for i in range(n):
        first = int(np.searchsorted(device, device[i]))
        past = range(max(first, i - k), i)
        if not past:
            assert not still[i]
            anchor = xyz[:, i]
            continue
        centre = np.array([math.fsum(xyz[c, j] for j in past) / len(past) for c in range(3)])
        sq = math.fsum((xyz[c, i] - centre[c]) ** 2 for c in range(3))
        limit = (max(100.0, accuracy[i]) / M_PER_UNIT) ** 2
        drift = math.fsum((centre - anchor) ** 2)
        drift_limit = (100.0 / M_PER_UNIT) ** 2
        if abs(sq - limit) > 1e-12 * limit and abs(drift - drift_limit) > 1e-12 * drift_limit:
            assert still[i] == (sq < limit and drift < drift_limit)
        if not still[i]:
            anchor = centre  # (followed as the engine decided, so a rounding cannot derail it)


def test_totals_of_several_devices_are_those_of_all_their_fixes() -> None:
    # The totals' max, min and mean are combined from each device's (one pass per device),
    # the median is taken over all fixes: compared with plain numpy over every fix seen.
    spec = TrackSpec(days=4, devices=4, seed=8)
    points = generate(spec).points
    window = day_window(spec.start, spec.start + dt.timedelta(days=3), spec.timezone)
    params = EngineParams(home_latitude=spec.home_latitude, home_longitude=spec.home_longitude)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(statistics, "MEDIAN_SAMPLE", 64)  # sampled medians at this size too
        patch.setattr(arrays, "CHUNK", 1000)
        analysis = analyze(points, window, params)
    summary = analysis.summary
    seen = np.isin(analysis.dropped_by, [0, 5])  # kept and jitter fixes
    km = analysis.distance_km[seen]
    # The farthest counts each fix of a stay at the stay's centre.
    at_rest = analysis.distance_km.copy()
    centres = {stay.id: stay for stay in summary.stays}
    for stay in summary.stays:
        at_rest[analysis.stay == stay.id] = haversine_km(
            spec.home_latitude, spec.home_longitude, stay.latitude, stay.longitude
        )
    assert summary.max_distance_km == pytest.approx(at_rest[seen].max(), abs=2e-5)
    assert summary.min_distance_km == round(float(km.min()), 6)
    assert abs(summary.mean_distance_km - math.fsum(km) / len(km)) <= 1e-6
    assert summary.median_distance_km == round(float(np.median(km)), 6)
    farthest = np.flatnonzero(seen)[np.argmax(at_rest[seen])]
    assert summary.max_distance_at is not None
    assert summary.max_distance_at.device_id == points.device_ids[analysis.points.device[farthest]]
    stay = centres.get(int(analysis.stay[farthest]))
    latitude = analysis.points.lat[farthest] if stay is None else stay.latitude
    assert summary.max_distance_at.latitude == latitude
    lags = (analysis.points.created_at - analysis.points.timestamp) / 1e6
    assert summary.completeness.ingest_lag_max_s == round(float(lags.max()), 3)
    assert summary.completeness.ingest_lag_median_s == round(float(np.median(lags)), 3)


def test_chords_rounded_past_the_antipode_are_half_the_globe() -> None:
    # Only chords rounded above 2 take the clamp: they give half the globe, not NaN.
    chords = np.array([0.5, 2.0, np.nextafter(2.0, 3.0)])
    km = chord_km(chords)
    assert km[2] == km[1] == pytest.approx(math.pi * EARTH_RADIUS_KM, abs=1e-9)
    assert abs(float(haversine_km(10.0, 20.0, -10.0, -160.0)) - math.pi * EARTH_RADIUS_KM) < 1e-3
