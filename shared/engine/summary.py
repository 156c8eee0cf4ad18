"""Building the `Summary` from the fixes in the window and the per-day sums: totals, each
device, each day, trips, distance statistics and completeness.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from shared.engine import arrays
from shared.engine.arrays import Codes, Floats, Ints, device_starts
from shared.engine.params import EngineParams
from shared.engine.points import MISSING, MISSING_TIME, US_PER_S, Points
from shared.engine.results import (
    AWAY,
    DROP_RULES,
    HOME,
    JITTER,
    KEPT,
    Completeness,
    DayMetrics,
    DroppedCounts,
    Metrics,
    Place,
    PointCounts,
    Summary,
    Trip,
    WindowInfo,
    months,
    trusted,
)
from shared.engine.statistics import exact_median, mean_km, round_km, round_s
from shared.engine.stays import Stays
from shared.engine.timeline import (
    Models,
    PathClock,
    TimelineModels,
    device_timeline,
    spans_by_day,
    stay_spans,
)
from shared.engine.trips import Trips
from shared.engine.window import Window

_K = TypeVar("_K", bound=tuple[int, ...])


_V = TypeVar("_V")


DistanceStats = tuple[Place | None, float, float, float, float]
"""Farthest place, max, min, mean and median km from home."""


def part_ranges(sizes: Any) -> list[tuple[int, int]]:
    """The ranges that consecutive parts of these sizes take, then the range of them all."""
    ends = np.cumsum(sizes, dtype=np.int64)
    return [(int(end - size), int(end)) for size, end in zip(sizes, ends, strict=True)] + [
        (0, int(ends[-1]) if len(ends) else 0)
    ]


def once(keys: list[_K], compute: Callable[..., _V]) -> list[_V]:
    """`compute(*key)` for each key, computed once per distinct key."""
    done: dict[_K, _V] = {}
    return [done[key] if key in done else done.setdefault(key, compute(*key)) for key in keys]


class Summarizer:
    """Builds the `Summary` from the fixes in the window and the per-day sums."""

    def __init__(
        self,
        points: Points,
        window: Window,
        params: EngineParams,
        *,
        distance_km: Floats,
        code: npt.NDArray[np.uint8],
        stay: Codes,
        stays: Stays,
    ) -> None:
        self.points, self.window, self.params = points, window, params
        self.distance_km, self.code = distance_km, code
        self.stay, self.stays = stay, stays  # each row's stay id (from 1), and the stays
        self.used = code == KEPT
        # Jitter fixes add no path, but a resting device is really where they say.
        self.seen = self.used | (code == JITTER)
        self.n_devices, self.n_days = len(points.device_ids), len(window.dates)
        self.day_s = np.diff(window.bounds_us) / US_PER_S

    def summary(
        self,
        *,
        path_days: Floats,
        bound_days: Floats,
        raw_days: Floats,
        time_days: Floats,
        read_days: Ints,
        used_days: Ints,
        trips: Trips,
        cumulative_km: Floats,
        valid_device: Codes,
        valid_t: Ints,
    ) -> Summary:
        """The whole result: each device that has fixes in (or segments across) the window,
        then the totals over those devices."""
        points, n_devices = self.points, self.n_devices
        # Rows are sorted by device: each device's counts come from its own slice, which
        # spares the full-length combined keys a single bincount would need.
        first_fix = device_starts(points.device, n_devices)
        counts = np.zeros((n_devices, len(DROP_RULES) + 1), dtype=np.int64)
        unknown_accuracy = np.zeros(n_devices, dtype=np.int64)
        for g in np.flatnonzero(np.diff(first_fix)):
            rows = slice(first_fix[g], first_fix[g + 1])
            code = self.code[rows]
            # A comparison per rule: bincount would first widen each code to 8 bytes.
            counts[g] = [np.count_nonzero(code == rule) for rule in range(counts.shape[1])]
            unknown_accuracy[g] = np.count_nonzero(points.accuracy[rows] == MISSING)
        lo, hi = self.window.start_us, self.window.end_us
        first_valid = device_starts(valid_device, n_devices)
        seen_before = np.zeros(n_devices, dtype=bool)
        seen_after = np.zeros(n_devices, dtype=bool)
        for g in np.flatnonzero(np.diff(first_valid)):
            # A device's valid fixes are in time order: its first and last tell.
            seen_before[g] = valid_t[first_valid[g]] < lo
            seen_after[g] = valid_t[first_valid[g + 1] - 1] >= hi
        reported = np.flatnonzero((read_days.sum(axis=1) > 0) | (seen_before & seen_after))
        stats = self._distance_stats(first_fix, counts[:, KEPT] + counts[:, JITTER])
        lags = self._lags(first_fix)

        all_trips = [
            Trip(
                id=k + 1,
                device_id=points.device_ids[trips.device[k]],
                start=self.window.local_time(int(trips.start_us[k])),
                end=self.window.local_time(int(trips.end_us[k])),
                duration_s=round_s((trips.end_us[k] - trips.start_us[k]) / US_PER_S),
                max_distance_km=None if np.isnan(trips.max_km[k]) else round_km(trips.max_km[k]),
                path_km=round_km(trips.path_km[k]),
                clipped_start=bool(trips.clipped_start[k]),
                clipped_end=bool(trips.clipped_end[k]),
            )
            for k in range(len(trips.device))
        ]
        spans = stay_spans(self.stays, self.params, self.window)
        models = Models(points.device_ids, self.window)
        timelines: dict[int, TimelineModels] = {}
        bounds = self.window.bounds_us.tolist()
        for device in reported.tolist():
            rows = slice(first_fix[device], first_fix[device + 1])
            clock = PathClock(points.timestamp[rows], cumulative_km[rows])
            timeline = device_timeline(
                device,
                [span for span in spans if span.device == device],
                valid_t[first_valid[device] : first_valid[device + 1]],
                clock,
                lo=lo,
                hi=hi,
                max_gap_s=self.params.max_gap_s,
            )
            timelines[device] = models.of(timeline, spans_by_day(timeline, bounds, clock))
        devices: dict[str, Metrics] = {}
        gaps: list[tuple[float, int]] = []
        for g in reported:
            observed = valid_t[first_valid[g] : first_valid[g + 1]]
            gap = self._largest_gap(observed[(observed >= lo) & (observed < hi)])
            gaps.append(gap)
            devices[points.device_ids[g]] = self._metrics(
                stats[g],
                lags[g],
                counts=counts[g],
                path=path_days[g],
                bounds=bound_days[:, g],
                raw=raw_days[g],
                time=time_days[g],
                read=read_days[g],
                used=used_days[g],
                unknown_accuracy=int(unknown_accuracy[g]),
                trips=[trip for trip in all_trips if trip.device_id == points.device_ids[g]],
                gap=gap,
                n_devices=1,
                timeline=timelines[int(g)],
            )
        totals = self._metrics(
            stats[-1],
            lags[-1],
            counts=counts[reported].sum(axis=0),
            path=path_days[reported].sum(axis=0),
            bounds=bound_days[:, reported].sum(axis=1),
            raw=raw_days[reported].sum(axis=0),
            time=time_days[reported].sum(axis=0),
            read=read_days[reported].sum(axis=0),
            used=used_days[reported].sum(axis=0),
            unknown_accuracy=int(unknown_accuracy[reported].sum()),
            trips=all_trips,
            gap=max(gaps, default=((hi - lo) / US_PER_S, lo)),
            n_devices=len(reported),
            timeline=TimelineModels.joined(list(timelines.values()), self.n_days),
        )
        notes = []
        if not len(points):
            notes.append("no fixes in the window: every metric is zero")
        elif not self.seen.any():
            notes.append("every fix in the window was dropped by a filter")
        elif not self.used.any():
            notes.append("no movement: every fix in the window was stationary jitter")
        return Summary(
            **dict(totals),
            window=WindowInfo(
                timezone=self.window.timezone,
                first_day=self.window.dates[0],
                last_day=self.window.dates[-1],
                start=self.window.local_time(lo),
                end=self.window.local_time(hi),
            ),
            parameters=self.params,
            devices=devices,
            notes=notes,
            months=months(totals.days),
        )

    def _distance_stats(self, first_fix: Ints, sizes: Ints) -> list[DistanceStats]:
        """Farthest place, max, min, mean and median distance of the fixes seen, for each
        device (`sizes` of them, from row `first_fix`) and then for all of them together.
        The farthest counts each fix of a stay at the stay's centre (see `_farthest`)."""
        seen_km = self.distance_km[self.seen]  # a copy, which the medians may reorder
        ranges = part_ranges(sizes)
        # Everything that depends on the order comes first; the medians then reorder each
        # device's part in place, which leaves the whole's median as it was. The whole's
        # extremes and sum are those of its devices.
        parts = [
            self._extremes(row, end, seen_km[a:b])
            for row, end, (a, b) in zip(
                first_fix[:-1].tolist(), first_fix[1:].tolist(), ranges[:-1], strict=True
            )
        ]
        seen = [part for part in parts if part[4]]
        farthest = max(seen, key=lambda part: part[1], default=(-1, 0.0, 0.0, 0.0, 0))
        whole = (
            farthest[0],
            farthest[1],
            min((part[2] for part in seen), default=0.0),
            sum(part[3] for part in seen),
            sum(part[4] for part in seen),
        )
        medians = once(ranges, lambda a, b: round_km(exact_median(seen_km[a:b])) if a < b else 0.0)
        return [
            (self._place(k), round_km(maximum), round_km(minimum), mean_km(total, n), median)
            for (k, maximum, minimum, total, n), median in zip(
                [*parts, whole], medians, strict=True
            )
        ]

    def _extremes(
        self, row: int, end: int, distance: Floats
    ) -> tuple[int, float, float, float, int]:
        """The row of the farthest fix (-1 for none), the farthest, min, sum and count of
        `distance`, the km of the fixes seen in rows `row:end` (one device's)."""
        if not len(distance):
            return -1, 0.0, 0.0, 0.0, 0
        k, farthest = self._farthest(row, end)
        return k, farthest, float(distance.min()), float(distance.sum()), len(distance)

    def _farthest(self, row: int, end: int) -> tuple[int, float]:
        """The row and km of the farthest fix seen in rows `row:end`, each fix of a stay
        counted at the stay's centre (its first row there): where a device rested, one
        noisy fix or a drift jump must not set the farthest point."""
        distance, stay = self.distance_km[row:end], self.stay[row:end]
        free = self.seen[row:end] & (stay == 0)
        far = float(np.max(distance, where=free, initial=-np.inf))
        ids = int(np.max(stay, initial=0))
        if ids:
            # A device's stays have consecutive ids; the first one here may start earlier.
            low = int(np.min(stay, where=stay > 0, initial=ids))
            at = low - 1 + int(np.argmax(self.stays.home_km[low - 1 : ids]))
            there = np.flatnonzero(stay == at + 1)
            if self.stays.home_km[at] > far and len(there):
                return row + int(there[0]), float(self.stays.home_km[at])
        return row + int(np.argmax(free & (distance == far))), far

    def _place(self, k: int) -> Place | None:
        """Where and when the fix at row `k` was (None for -1)."""
        if k < 0:
            return None
        points, stay = self.points, int(self.stay[k])
        # A fix of a stay stands for the stay: the place is its centre.
        lat, lon = points.lat[k], points.lon[k]
        if stay:
            lat = round(float(self.stays.lat[stay - 1]), 7)  # as the stay reports it
            lon = round(float(self.stays.lon[stay - 1]), 7)
        return Place(
            time=self.window.local_time(int(points.timestamp[k])),
            latitude=float(lat),
            longitude=float(lon),
            device_id=points.device_ids[points.device[k]],
        )

    def _lags(self, first_fix: Ints) -> list[tuple[float | None, float | None]]:
        """Median and largest ingest lag (s) of the fixes that have a created_at, for each
        device (from row `first_fix`) and then for all of them together."""
        created, t = self.points.created_at, self.points.timestamp
        has = np.empty(len(created), dtype=bool)
        lag = np.empty(len(created))
        size = 0
        chunk = arrays.CHUNK
        for a in range(0, len(created), chunk):  # slices that stay in the CPU's cache
            rows = slice(a, a + chunk)
            here = np.not_equal(created[rows], MISSING_TIME, out=has[rows])
            if here.all():  # the usual case: no copies of the rows that have one
                step = np.subtract(created[rows], t[rows])
            else:
                step = created[rows][here]
                step -= t[rows][here]
            np.divide(step, US_PER_S, out=lag[size : size + len(step)])
            size += len(step)
        lag = lag[:size]
        ranges = part_ranges([np.count_nonzero(has[a:b]) for a, b in itertools.pairwise(first_fix)])
        # The whole's maximum is the largest of the devices' (they are its parts).
        maxima: list[float | None] = [lag[a:b].max() if a < b else None for a, b in ranges[:-1]]
        largest = max((m for m in maxima if m is not None), default=None)
        maxima = [None if m is None else round_s(m) for m in [*maxima, largest]]
        medians = once(ranges, lambda a, b: round_s(exact_median(lag[a:b])) if a < b else None)
        return [
            (median, maximum) if maximum is not None else (None, None)
            for median, maximum in zip(medians, maxima, strict=True)
        ]

    def _largest_gap(self, observed: Ints) -> tuple[float, int]:
        edges = np.concatenate(([self.window.start_us], observed, [self.window.end_us]))
        gaps = np.diff(edges)
        k = int(np.argmax(gaps))
        return float(gaps[k]) / US_PER_S, int(edges[k])

    def _metrics(
        self,
        stats: DistanceStats,
        lags: tuple[float | None, float | None],
        *,
        counts: Ints,
        path: Floats,
        bounds: Floats,
        raw: Floats,
        time: Floats,
        read: Ints,
        used: Ints,
        unknown_accuracy: int,
        trips: list[Trip],
        gap: tuple[float, int],
        n_devices: int,
        timeline: TimelineModels,
    ) -> Metrics:
        farthest, maximum, minimum, mean, median = stats
        window_s = self.day_s * n_devices
        unknown = np.maximum(window_s - time[HOME] - time[AWAY], 0.0)
        lag_median, lag_max = lags
        total_s = float(window_s.sum())
        known_s = float(time[HOME].sum() + time[AWAY].sum())
        return Metrics(
            points=PointCounts(
                read=int(counts.sum()),
                used=int(counts[KEPT]),
                dropped=DroppedCounts(
                    **{rule: int(counts[k + 1]) for k, rule in enumerate(DROP_RULES)}
                ),
                accuracy_unknown=unknown_accuracy,
            ),
            path_km=round_km(path.sum()),
            path_km_low=round_km(bounds[0].sum()),
            path_km_high=round_km(bounds[1].sum()),
            raw_path_km=round_km(raw.sum()),
            max_distance_km=maximum,
            max_distance_at=farthest,
            min_distance_km=minimum,
            mean_distance_km=mean,
            median_distance_km=median,
            time_at_home_s=round_s(time[HOME].sum()),
            time_away_s=round_s(time[AWAY].sum()),
            time_unknown_s=round_s(unknown.sum()),
            trips=trips,
            completeness=Completeness(
                coverage=round(known_s / total_s, 6) if total_s else 0.0,
                largest_gap_s=round_s(gap[0]),
                largest_gap_start=self.window.local_time(gap[1]),
                ingest_lag_median_s=lag_median,
                ingest_lag_max_s=lag_max,
            ),
            days=[
                trusted(
                    DayMetrics,
                    {
                        "date": date,
                        "points_read": n_read,
                        "points_used": n_used,
                        "path_km": round_km(path_km),
                        "path_km_low": round_km(low_km),
                        "path_km_high": round_km(high_km),
                        "raw_path_km": round_km(raw_km),
                        "time_at_home_s": round_s(home_s),
                        "time_away_s": round_s(away_s),
                        "time_unknown_s": round_s(unknown_s),
                        "stays": day_stays,
                        "places": day_places,
                        "timeline": day_timeline,
                    },
                )
                # Python numbers (as validation gives them): indexing numpy arrays per day
                # costs more than the models.
                for (
                    date,
                    n_read,
                    n_used,
                    path_km,
                    low_km,
                    high_km,
                    raw_km,
                    home_s,
                    away_s,
                    unknown_s,
                    (day_stays, day_places, day_timeline),
                ) in zip(
                    self.window.dates,
                    read.tolist(),
                    used.tolist(),
                    path.tolist(),
                    bounds[0].tolist(),
                    bounds[1].tolist(),
                    raw.tolist(),
                    time[HOME].tolist(),
                    time[AWAY].tolist(),
                    unknown.tolist(),
                    timeline.days,
                    strict=True,
                )
            ],
            stays=timeline.stays,
            places=timeline.places,
            timeline=timeline.timeline,
        )
