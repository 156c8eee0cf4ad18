"""Device-days and their assembly: a range is analysed one local day at a time (each day
with its own context, so memory follows the largest device-day, not the range), and the
days' parts are assembled into the `Summary` a single pass over the range gives.

`day_parts(analysis)` turns a one-day `Analysis` into one `DayPart` per device: the
device's metrics for that day plus what assembly needs that rounding would lose (the
unrounded sums, the distance and ingest-lag extremes, a mergeable quantile sketch, the
first and last observed fix). `assemble(parts, window, params)` adds them up: counts, sums,
extremes and times exactly; trips, stays and timeline entries that cross midnight are
stitched back into one; the medians come from the merged sketches (within `SKETCH_ERROR`).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from shared.engine.analysis import analyze
from shared.engine.arrays import Floats, Ints, concat_ranges, device_starts, first_at_or_after
from shared.engine.params import EngineParams
from shared.engine.points import MISSING_TIME, US_PER_S, Points
from shared.engine.results import (
    DROP_RULES,
    JITTER,
    KEPT,
    Analysis,
    Completeness,
    DayMetrics,
    DroppedCounts,
    Metrics,
    Place,
    PlaceVisit,
    PointCounts,
    Stay,
    Summary,
    TimelineEntry,
    Trip,
    WindowInfo,
    months,
    trusted,
)
from shared.engine.statistics import mean_km, round_km, round_s
from shared.engine.timeline import join_places
from shared.engine.window import Window, day_window, read_range

ASSEMBLY_VERSION = 1
"""Version of `DayPart`'s JSON and of the assembly rules; part of a kept day's key."""

SKETCH_ERROR = 0.001
"""Relative width of a sketch bin: a sketched median is within half of it of a value of the
bin holding the true median (values under `SKETCH_FLOOR` are exact to that floor)."""

SKETCH_FLOOR = 1e-6
"""Magnitudes below this fall in one bin (0): a millimetre, a microsecond."""

_LOG_STEP = math.log1p(SKETCH_ERROR)


_M = TypeVar("_M", Stay, Trip, TimelineEntry, PlaceVisit, Metrics, DayMetrics)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sketch(_Model):
    """A mergeable quantile sketch: counts of values per logarithmic bin (signed, so the
    bins' order is the values' order). Merging adds counts; nothing depends on the order
    the values came in, so the days of a range merge to the range's own sketch. Kept as
    text (zlib and base64 of the bins' steps and counts): a day's sketch holds a thousand
    bins or more."""

    bins: str = ""
    """`encode_bins` of the sorted bins and their counts."""

    @staticmethod
    def of(values: Floats) -> Sketch:
        """The sketch of `values`."""
        if not len(values):
            return Sketch()
        magnitude = np.abs(values)
        big = magnitude >= SKETCH_FLOOR
        index = np.zeros(len(values), dtype=np.int64)
        index[big] = np.floor(np.log(magnitude[big] / SKETCH_FLOOR) / _LOG_STEP).astype(np.int64)
        index[big] += 1
        keys = np.where(values < 0, -index, index)
        found, counts = np.unique(keys, return_counts=True)
        return Sketch(bins=encode_bins(found, counts))

    def arrays(self) -> tuple[Ints, Ints]:
        """The sorted bins and their counts."""
        return decode_bins(self.bins)

    @staticmethod
    def merged(sketches: Iterable[Sketch]) -> Sketch:
        """The sketch of all their values together."""
        pairs = [sketch.arrays() for sketch in sketches if sketch.bins]
        if not pairs:
            return Sketch()
        keys = np.concatenate([k for k, _ in pairs])
        low = int(keys.min())
        # Bins span a few tens of thousands at most: counting by offset beats sorting.
        counts = np.bincount(keys - low, weights=np.concatenate([c for _, c in pairs]))
        found = np.flatnonzero(counts)
        return Sketch(bins=encode_bins(found + low, counts[found].astype(np.int64)))

    def median(self) -> float | None:
        """The median of the values (the mean of the two middle ones for an even count),
        each taken as its bin's centre; None for no values."""
        keys, counts = self.arrays()
        n = int(counts.sum())
        if not n:
            return None
        ends = np.cumsum(counts)
        ranks = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
        values = [_centre(int(keys[np.searchsorted(ends, rank, side="right")])) for rank in ranks]
        return sum(values) / len(values)


def encode_bins(keys: Ints, counts: Ints) -> str:
    """Sorted bins and their counts as text: the steps between bins and the counts, as
    little-endian int64, deflated and base64-encoded."""
    steps = np.diff(keys, prepend=0).astype("<i8")
    raw = steps.tobytes() + counts.astype("<i8").tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode()


def decode_bins(text: str) -> tuple[Ints, Ints]:
    """The bins and counts `encode_bins` wrote."""
    if not text:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8")
    half = len(raw) // 2
    return np.cumsum(raw[:half]).astype(np.int64), raw[half:].astype(np.int64)


def _centre(key: int) -> float:
    if key == 0:
        return 0.0
    magnitude = SKETCH_FLOOR * math.exp((abs(key) - 0.5) * _LOG_STEP)
    return magnitude if key > 0 else -magnitude


class Spread(_Model):
    """Count, sum and extremes of some values (distances or lags) and their sketch."""

    n: int = 0
    total: float = 0.0
    maximum: float | None = None
    minimum: float | None = None
    sketch: Sketch = Sketch()


DAY_SERIES_POINTS = 96
"""Observed fixes a day keeps for a range's charts (its farthest among them)."""


class DaySeries(_Model):
    """Observed fixes of a device-day, sampled: time (s), distance (km), position, trip."""

    t: list[int] = []
    km: list[float] = []
    lat: list[float] = []
    lon: list[float] = []
    trip: list[int] = []


class DayPart(_Model):
    """One device's analysis of one local day, with what assembly needs besides it."""

    version: int = ASSEMBLY_VERSION
    device_id: str
    date: dt.date
    metrics: Metrics
    """The device's metrics for the day; its stays, places and timeline are those of its
    one `days` entry, kept there only."""
    path: float
    path_low: float
    path_high: float
    raw_path: float
    home_s: float
    away_s: float
    distance: Spread
    farthest: Place | None
    lag: Spread
    first_seen_us: int | None
    """The first and last observed fix inside the day (valid, not dropped)."""
    last_seen_us: int | None
    inner_gap: tuple[float, int] | None
    """The longest gap between two observed fixes of the day (s, its start µs)."""
    lead_km: float = 0.0
    """The share before midnight of the step into the device's first fix of the day..."""
    lead_us: int | None = None
    """...and that fix's time: a trip starting with it counts the whole step in a range."""
    series: DaySeries = DaySeries()
    """A sample of the day's observed fixes, for a range's charts."""


def day_parts(analysis: Analysis) -> list[DayPart]:
    """One part per device the one-day `analysis` reports (see `DayPart`)."""
    summary, points, sums = analysis.summary, analysis.points, analysis.sums
    if sums is None or summary.window.first_day != summary.window.last_day:
        raise ValueError("day_parts needs the Analysis of one day, with its sums")
    first = device_starts(points.device, len(points.device_ids))
    code = analysis.dropped_by
    seen = (code == KEPT) | (code == JITTER)
    parts = []
    for g, device_id in enumerate(points.device_ids):
        metrics = summary.devices.get(device_id)
        if metrics is None:
            continue
        rows = slice(int(first[g]), int(first[g + 1]))
        km = analysis.distance_km[rows][seen[rows]]
        t = points.timestamp[rows][seen[rows]]
        created, at = points.created_at[rows], points.timestamp[rows]
        has = created != MISSING_TIME
        lag = (created[has] - at[has]) / US_PER_S
        sample = _sample(analysis.distance_km[rows], seen[rows])
        gap: tuple[float, int] | None = None
        if len(t) > 1:
            steps = np.diff(t)
            k = int(np.argmax(steps))
            gap = (float(steps[k]) / US_PER_S, int(t[k]))
        parts.append(
            DayPart(
                device_id=device_id,
                date=summary.window.first_day,
                # A day's own lists are the window's: kept once, in its `days` entry.
                metrics=_own_numbers(metrics),
                path=float(sums.path[g, 0]),
                path_low=float(sums.path_low[g, 0]),
                path_high=float(sums.path_high[g, 0]),
                raw_path=float(sums.raw_path[g, 0]),
                home_s=float(sums.home_s[g, 0]),
                away_s=float(sums.away_s[g, 0]),
                distance=_spread(km),
                farthest=metrics.max_distance_at,
                lag=_spread(lag),
                first_seen_us=int(t[0]) if len(t) else None,
                last_seen_us=int(t[-1]) if len(t) else None,
                inner_gap=gap,
                lead_km=float(sums.lead_km[g]),
                lead_us=int(sums.lead_us[g]) if sums.lead_us[g] >= 0 else None,
                series=DaySeries(
                    t=(points.timestamp[rows][sample] // US_PER_S).tolist(),
                    km=np.round(analysis.distance_km[rows][sample], 4).tolist(),
                    lat=np.round(points.lat[rows][sample], 6).tolist(),
                    lon=np.round(points.lon[rows][sample], 6).tolist(),
                    trip=analysis.trip[rows][sample].tolist(),
                ),
            )
        )
    return parts


def day_by_day(points: Points, window: Window, params: EngineParams) -> Summary:
    """The summary of `window` as `analyze` gives it, computed one local day at a time
    (each day with its context) and assembled: memory follows the largest day."""
    return assemble(
        [part for date in window.dates for part in analyze_day(points, date, window, params)],
        window,
        params,
    )


def analyze_day(
    points: Points, date: dt.date, window: Window, params: EngineParams
) -> list[DayPart]:
    """The parts of local day `date` of `window`'s time zone, from the fixes of `points`
    (sorted by device and time) that day's read range holds."""
    return analyze_day_rows(points, date, window, params)[0]


def analyze_day_rows(
    points: Points, date: dt.date, window: Window, params: EngineParams
) -> tuple[list[DayPart], Analysis]:
    """`analyze_day`'s parts, and the day's `Analysis` (its rows, for the CSV)."""
    day = day_window(date, date, window.timezone)
    analysis = analyze(day_points(points, *read_range(day, params)), day, params)
    return day_parts(analysis), analysis


def day_points(points: Points, lo: int, hi: int) -> Points:
    """The fixes of `points` with lo <= timestamp < hi: each device's run found by binary
    search, not by a pass over every fix."""
    starts = device_starts(points.device, len(points.device_ids))
    edges = first_at_or_after(points.timestamp, starts, np.array([lo, hi], dtype=np.int64))
    return points.take(concat_ranges(edges[:, 0], edges[:, 1]))


def device_rows(analysis: Analysis, device: str) -> Analysis | None:
    """The analysis' rows of one device (None when it has none)."""
    points = analysis.points
    if device not in points.device_ids:
        return None
    code = points.device_ids.index(device)
    a, b = np.searchsorted(points.device, [code, code + 1])
    if a == b:
        return None
    rows = slice(int(a), int(b))
    trip_from, stay_from = _firsts(analysis.summary.devices[device])
    trip, stay = analysis.trip[rows].copy(), analysis.stay[rows].copy()
    trip[trip > 0] -= trip_from - 1
    stay[stay > 0] -= stay_from - 1
    return replace(
        analysis,
        points=points.take(np.arange(a, b)),
        distance_km=analysis.distance_km[rows],
        segment_km=analysis.segment_km[rows],
        cumulative_km=analysis.cumulative_km[rows],
        at_home=analysis.at_home[rows],
        trip=trip,
        stay=stay,
        dropped_by=analysis.dropped_by[rows],
    )


def _firsts(metrics: Metrics) -> tuple[int, int]:
    """The first trip and stay id of one device in an analysis that may hold others: ids
    run on from device to device, so each device's start where the one before ended."""
    return (
        min((trip.id for trip in metrics.trips), default=1),
        min((stay.id for stay in metrics.stays), default=1),
    )


def _own_numbers(metrics: Metrics) -> Metrics:
    """One device's metrics of a day with its trips and stays numbered from 1, whatever
    other devices the day's analysis held (`device_rows` numbers its rows alike), and its
    lists kept once: a day's stays, places and timeline are its one `days` entry's."""
    trip_from, stay_from = _firsts(metrics)
    day = metrics.days[0]
    return _copy(
        metrics,
        trips=[_copy(t, id=t.id - trip_from + 1) for t in metrics.trips],
        stays=[],
        places=[],
        timeline=[],
        days=[
            _copy(
                day,
                stays=[_copy(st, id=st.id - stay_from + 1) for st in day.stays],
                timeline=[
                    _copy(e, stay_id=e.stay_id - stay_from + 1) if e.stay_id is not None else e
                    for e in day.timeline
                ],
            )
        ],
    )


def _sample(km: Floats, seen: npt.NDArray[np.bool_]) -> Ints:
    """Rows of up to DAY_SERIES_POINTS observed fixes, evenly spread, the farthest kept."""
    rows = np.flatnonzero(seen)
    if len(rows) <= DAY_SERIES_POINTS:
        return rows
    even = rows[np.linspace(0, len(rows) - 1, DAY_SERIES_POINTS - 1).astype(np.int64)]
    return np.union1d(even, rows[np.argmax(km[rows])])


def _spread(values: Floats) -> Spread:
    if not len(values):
        return Spread()
    return Spread(
        n=len(values),
        total=float(values.sum()),
        maximum=float(values.max()),
        minimum=float(values.min()),
        sketch=Sketch.of(values),
    )


_SUMS = ("path", "path_low", "path_high", "raw_path", "home_s", "away_s")


def assemble(parts: Sequence[DayPart], window: Window, params: EngineParams) -> Summary:
    """The `Summary` of `window` from the day parts of its days (any order; a device-day
    without a part had nothing to report). Devices come in the order of their ids, as
    readers number them."""
    index = {date: k for k, date in enumerate(window.dates)}
    devices = sorted({part.device_id for part in parts})
    by_device: dict[str, list[DayPart]] = {device: [] for device in devices}
    for part in parts:
        if part.date not in index:
            raise ValueError(f"a part for {part.date} is outside the window")
        by_device[part.device_id].append(part)
    n_days = len(window.dates)
    sums = np.zeros((len(_SUMS), len(devices), n_days))
    for g, device in enumerate(devices):
        by_device[device].sort(key=lambda part: part.date)
        for part in by_device[device]:
            sums[:, g, index[part.date]] = [getattr(part, name) for name in _SUMS]
    day_s = np.diff(window.bounds_us) / US_PER_S
    lo, hi = window.start_us, window.end_us
    metrics: dict[str, Metrics] = {}
    gaps: list[tuple[float, int]] = []
    stitched: list[_Stitched] = []
    next_trip, next_stay = 1, 1
    for g, device in enumerate(devices):
        mine = by_device[device]
        joined = _Stitched.of(mine, window.dates[0], next_trip, next_stay)
        next_trip += len(joined.trips)
        next_stay += joined.n_stays
        stitched.append(joined)
        gap = _largest_gap(mine, lo, hi)
        gaps.append(gap)
        metrics[device] = _metrics(
            mine,
            sums[:, g],
            day_s,
            window,
            joined=joined,
            gap=gap,
            days=[_day(mine, index, window, day_s, d, joined) for d in range(n_days)],
        )
    total_sums, total_s = sums.sum(axis=1), day_s * len(devices)
    totals = _metrics(
        list(parts),
        total_sums,
        total_s,
        window,
        joined=_Stitched.joined(stitched),
        gap=max(gaps, default=((hi - lo) / US_PER_S, lo)),
        days=[
            _total_day(
                [metrics[d].days[k] for d in devices], total_sums[:, k], total_s[k], window.dates[k]
            )
            for k in range(n_days)
        ],
    )
    notes = []
    counts = totals.points
    if not counts.read:
        notes.append("no fixes in the window: every metric is zero")
    elif counts.used + counts.dropped.jitter == 0:
        notes.append("every fix in the window was dropped by a filter")
    elif not counts.used:
        notes.append("no movement: every fix in the window was stationary jitter")
    return Summary(
        **dict(totals),
        window=WindowInfo(
            timezone=window.timezone,
            first_day=window.dates[0],
            last_day=window.dates[-1],
            start=window.local_time(lo),
            end=window.local_time(hi),
        ),
        parameters=params,
        devices=metrics,
        notes=notes,
        months=months(totals.days),
    )


Numbers = tuple[dict[tuple[dt.date, int], int], dict[tuple[dt.date, int], int]]
"""A device's trip and stay ids: (day, id in the day's analysis) -> id in the range."""


def numbering(parts: Sequence[DayPart], window: Window) -> dict[str, Numbers]:
    """Per device, the range's trip and stay ids of each day's ones, as `assemble` numbers
    them (for the range's CSV rows)."""
    by_device: dict[str, list[DayPart]] = {}
    for part in sorted(parts, key=lambda part: (part.device_id, part.date)):
        by_device.setdefault(part.device_id, []).append(part)
    out: dict[str, Numbers] = {}
    next_trip, next_stay = 1, 1
    for device, mine in by_device.items():
        joined = _Stitched.of(mine, window.dates[0], next_trip, next_stay)
        next_trip += len(joined.trips)
        next_stay += joined.n_stays
        out[device] = joined.numbers
    return out


class _Stitched:
    """One device's (or all devices') trips, stays and timeline over the range, with the
    pieces that meet at midnight joined, renumbered as a single pass numbers them, and the
    days' own lists with the new numbers."""

    def __init__(
        self,
        trips: list[Trip],
        stays: list[Stay],
        timeline: list[TimelineEntry],
        places: list[PlaceVisit],
        day_lists: dict[dt.date, tuple[list[Stay], list[TimelineEntry]]],
        n_stays: int,
    ) -> None:
        self.trips, self.stays, self.timeline, self.places = trips, stays, timeline, places
        self.day_lists, self.n_stays = day_lists, n_stays
        self.numbers: Numbers = ({}, {})

    @staticmethod
    def of(parts: list[DayPart], first: dt.date, first_trip: int, first_stay: int) -> _Stitched:
        """The stitched lists of one device's parts (sorted by day; the range starts on
        `first`)."""
        trips: list[Trip] = []
        trip_ids: dict[tuple[dt.date, int], int] = {}
        for part in parts:
            for trip in _led(part, first):
                if trips and _continues(trips[-1], trip):
                    trips[-1] = _join_trips(trips[-1], trip)
                else:
                    trips.append(_copy(trip, id=first_trip + len(trips)))
                trip_ids[(part.date, trip.id)] = trips[-1].id
        stays: list[Stay] = []
        renumber: dict[tuple[dt.date, int], int] = {}
        joins: dict[str, int] = {}
        for part in parts:
            for stay in part.metrics.days[0].stays:
                if stays and _continues(stays[-1], stay) and _same_place(stays[-1], stay):
                    stays[-1] = _join_stays(stays[-1], stay)
                    joins[stay.place] = joins.get(stay.place, 0) + 1
                else:
                    stays.append(_copy(stay, id=first_stay + len(stays)))
                renumber[(part.date, stay.id)] = stays[-1].id
        timeline: list[TimelineEntry] = []
        day_lists: dict[dt.date, tuple[list[Stay], list[TimelineEntry]]] = {}
        for part in parts:
            entries = [
                _renumbered(entry, part.date, renumber) for entry in part.metrics.days[0].timeline
            ]
            for entry in entries:
                if timeline and _continues_entry(timeline[-1], entry):
                    timeline[-1] = _join_entries(timeline[-1], entry)
                else:
                    timeline.append(entry)
            day = part.metrics.days[0]
            day_lists[part.date] = (
                [_copy(s, id=renumber[(part.date, s.id)]) for s in day.stays],
                [_renumbered(entry, part.date, renumber) for entry in day.timeline],
            )
        places = join_places([part.metrics.days[0].places for part in parts])
        places = [
            _copy(visit, visits=visit.visits - joins[visit.place])
            if visit.place in joins
            else visit
            for visit in places
        ]
        stitched = _Stitched(trips, stays, timeline, places, day_lists, len(stays))
        stitched.numbers = (trip_ids, renumber)
        return stitched

    @staticmethod
    def joined(parts: list[_Stitched]) -> _Stitched:
        """Several devices' lists together, in device order."""
        return _Stitched(
            [trip for part in parts for trip in part.trips],
            [stay for part in parts for stay in part.stays],
            [entry for part in parts for entry in part.timeline],
            join_places([part.places for part in parts]),
            {},
            sum(part.n_stays for part in parts),
        )


def _led(part: DayPart, first: dt.date) -> list[Trip]:
    """The part's trips, a trip that leaves with the day's first fix given back the share
    of the step into that fix that lies before midnight (inside the range but for its
    first day), as a single pass over the range counts it."""
    if part.lead_us is None or part.date == first:
        return part.metrics.trips
    at = _EPOCH + dt.timedelta(microseconds=part.lead_us)
    return [
        _copy(trip, path_km=round_km(trip.path_km + part.lead_km))
        if trip.start.astimezone(dt.UTC) == at and not trip.clipped_start
        else trip
        for trip in part.metrics.trips
    ]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _continues(before: Trip | Stay, after: Trip | Stay) -> bool:
    """`after` carries on `before` across a day bound: one was cut there, into both."""
    return (
        before.device_id == after.device_id
        and before.clipped_end
        and after.clipped_start
        and before.end == after.start
    )


def _same_place(before: Stay, after: Stay) -> bool:
    return (before.latitude, before.longitude, before.place) == (
        after.latitude,
        after.longitude,
        after.place,
    )


def _copy(model: _M, **changes: Any) -> _M:
    """`model.model_copy(update=changes)` without the deep copy of its private state:
    assembly renumbers thousands of stays and timeline entries."""
    return trusted(type(model), {**model.__dict__, **changes})


def _duration(start: dt.datetime, end: dt.datetime) -> float:
    """Seconds between two local times (in UTC: a DST change between them counts)."""
    elapsed = end.astimezone(dt.UTC) - start.astimezone(dt.UTC)
    return round_s(elapsed / dt.timedelta(microseconds=1) / US_PER_S)


def _join_trips(before: Trip, after: Trip) -> Trip:
    farthest = [km for km in (before.max_distance_km, after.max_distance_km) if km is not None]
    return before.model_copy(
        update={
            "end": after.end,
            "duration_s": _duration(before.start, after.end),
            "max_distance_km": max(farthest) if farthest else None,
            "path_km": round_km(before.path_km + after.path_km),
            "clipped_end": after.clipped_end,
        }
    )


def _join_stays(before: Stay, after: Stay) -> Stay:
    return before.model_copy(
        update={
            "end": after.end,
            "duration_s": _duration(before.start, after.end),
            "radius_m": max(before.radius_m, after.radius_m),
            "fixes": max(before.fixes, after.fixes),
            "clipped_end": after.clipped_end,
        }
    )


def _renumbered(
    entry: TimelineEntry, date: dt.date, renumber: dict[tuple[dt.date, int], int]
) -> TimelineEntry:
    if entry.stay_id is None:
        return entry
    return _copy(entry, stay_id=renumber[(date, entry.stay_id)])


def _continues_entry(before: TimelineEntry, after: TimelineEntry) -> bool:
    return (
        before.device_id == after.device_id
        and before.end == after.start
        and before.kind == after.kind
        and before.place == after.place
        and before.stay_id == after.stay_id
        and before.from_place == after.from_place
        and before.to_place == after.to_place
    )


def _join_entries(before: TimelineEntry, after: TimelineEntry) -> TimelineEntry:
    path = None
    if before.path_km is not None or after.path_km is not None:
        path = round_km((before.path_km or 0.0) + (after.path_km or 0.0))
    return before.model_copy(
        update={"end": after.end, "duration_s": _duration(before.start, after.end), "path_km": path}
    )


def _largest_gap(parts: list[DayPart], lo: int, hi: int) -> tuple[float, int]:
    """The longest stretch of the window without an observed fix of the device (its days
    in order), the earliest of equals, as a single pass finds it."""
    best = (-1.0, lo)
    previous = lo
    for part in parts:
        if part.first_seen_us is None or part.last_seen_us is None:
            continue
        across = ((part.first_seen_us - previous) / US_PER_S, previous)
        for gap in (across, part.inner_gap):
            if gap is not None and gap[0] > best[0]:
                best = gap
        previous = part.last_seen_us
    end = ((hi - previous) / US_PER_S, previous)
    return end if end[0] > best[0] else best


def _metrics(
    parts: list[DayPart],
    sums: Floats,
    window_s: Floats,
    window: Window,
    *,
    joined: _Stitched,
    gap: tuple[float, int],
    days: list[DayMetrics],
) -> Metrics:
    """The metrics of `parts` (one device's days, or every part), from their unrounded
    `sums` (rows of `_SUMS`, columns per day) over a window of `window_s` per day."""
    path, low, high, raw, home, away = (sums[k] for k in range(len(_SUMS)))
    points = [part.metrics.points for part in parts]
    dropped = {rule: sum(getattr(p.dropped, rule) for p in points) for rule in DROP_RULES}
    distance = _merged([part.distance for part in parts])
    lag = _merged([part.lag for part in parts])
    farthest = None
    best = -1.0
    for part in parts:  # the first of equal maxima, in time (then device) order
        if part.distance.maximum is not None and part.distance.maximum > best:
            best, farthest = part.distance.maximum, part.farthest
    unknown = np.maximum(window_s - home - away, 0.0)
    total_s = float(window_s.sum())
    known_s = float(home.sum() + away.sum())
    distance_median = distance.sketch.median()
    lag_median = lag.sketch.median()
    return Metrics(
        points=PointCounts(
            read=sum(p.read for p in points),
            used=sum(p.used for p in points),
            dropped=DroppedCounts(**dropped),
            accuracy_unknown=sum(p.accuracy_unknown for p in points),
        ),
        path_km=round_km(path.sum()),
        path_km_low=round_km(low.sum()),
        path_km_high=round_km(high.sum()),
        raw_path_km=round_km(raw.sum()),
        max_distance_km=round_km(distance.maximum or 0.0),
        max_distance_at=farthest,
        min_distance_km=round_km(distance.minimum or 0.0),
        mean_distance_km=mean_km(distance.total, distance.n),
        median_distance_km=round_km(distance_median or 0.0),
        time_at_home_s=round_s(home.sum()),
        time_away_s=round_s(away.sum()),
        time_unknown_s=round_s(unknown.sum()),
        trips=joined.trips,
        completeness=Completeness(
            coverage=round(known_s / total_s, 6) if total_s else 0.0,
            largest_gap_s=round_s(gap[0]),
            largest_gap_start=window.local_time(gap[1]),
            ingest_lag_median_s=None if lag_median is None else round_s(lag_median),
            ingest_lag_max_s=None if lag.maximum is None else round_s(lag.maximum),
        ),
        days=days,
        stays=joined.stays,
        places=joined.places,
        timeline=joined.timeline,
    )


def _merged(spreads: list[Spread]) -> Spread:
    present = [spread for spread in spreads if spread.n]
    if not present:
        return Spread()
    return Spread(
        n=sum(s.n for s in present),
        total=sum(s.total for s in present),
        maximum=max(s.maximum for s in present if s.maximum is not None),
        minimum=min(s.minimum for s in present if s.minimum is not None),
        sketch=Sketch.merged(s.sketch for s in present),
    )


def _day(
    parts: list[DayPart],
    index: dict[dt.date, int],
    window: Window,
    day_s: Floats,
    k: int,
    joined: _Stitched,
) -> DayMetrics:
    """The device's metrics of day `k`: its part's, with the stitched numbering, or an
    empty day."""
    date = window.dates[k]
    for part in parts:
        if index[part.date] == k:
            stays, timeline = joined.day_lists[date]
            return _copy(part.metrics.days[0], stays=stays, timeline=timeline)
    return DayMetrics(
        date=date,
        points_read=0,
        points_used=0,
        path_km=0.0,
        raw_path_km=0.0,
        time_at_home_s=0.0,
        time_away_s=0.0,
        time_unknown_s=round_s(day_s[k]),
    )


def _total_day(days: list[DayMetrics], sums: Floats, day_s: float, date: dt.date) -> DayMetrics:
    """One day over every device (`days`, their unrounded `sums` added up over a window of
    `day_s`): counts added, and the devices' stays and timeline."""
    path, low, high, raw, home, away = sums.tolist()
    return DayMetrics(
        date=date,
        points_read=sum(d.points_read for d in days),
        points_used=sum(d.points_used for d in days),
        path_km=round_km(path),
        path_km_low=round_km(low),
        path_km_high=round_km(high),
        raw_path_km=round_km(raw),
        time_at_home_s=round_s(home),
        time_away_s=round_s(away),
        time_unknown_s=round_s(max(day_s - home - away, 0.0)),
        stays=[stay for d in days for stay in d.stays],
        places=join_places([d.places for d in days]),
        timeline=[entry for d in days for entry in d.timeline],
    )
