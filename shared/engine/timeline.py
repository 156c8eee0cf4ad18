"""Places and the timeline: each stay's place (home, a named place or an unnamed one), the
time spent per place, and each device's window as stays, moves and unknown time that add up
to it exactly (and to each day of it).
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from dataclasses import dataclass, replace

import numpy as np

from shared.engine.arrays import Floats, Ints
from shared.engine.geometry import EARTH_RADIUS_KM, haversine_km
from shared.engine.params import EngineParams
from shared.engine.points import US_PER_S
from shared.engine.results import PlaceVisit, Stay, TimelineEntry, trusted
from shared.engine.statistics import round_km, round_s
from shared.engine.stays import Stays
from shared.engine.window import Window

_M_PER_DEGREE = EARTH_RADIUS_KM * 1000.0 * np.pi / 180.0
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
GEOHASH_PRECISION = 7
"""An unnamed place's id is the geohash of its centre to this many characters (a cell of
about 150 m by 150 m): the same spot gets the same id in every job."""


def geohash(latitude: float, longitude: float, precision: int = GEOHASH_PRECISION) -> str:
    """The standard geohash of a point: alternating longitude and latitude bisections."""
    bounds = [[-180.0, 180.0], [-90.0, 90.0]]
    value = (longitude, latitude)
    chars: list[str] = []
    code = 0
    for k in range(precision * 5):
        side = bounds[k % 2]
        mid = (side[0] + side[1]) / 2
        upper = value[k % 2] >= mid
        code = 2 * code + upper
        side[0 if upper else 1] = mid
        if k % 5 == 4:  # five bits make a character
            chars.append(_BASE32[code])
            code = 0
    return "".join(chars)


@dataclass(frozen=True)
class PlaceInfo:
    """Where a place is and what kind it is."""

    name: str
    kind: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class StaySpan:
    """A stay cut to an interval (the window or one day), with its place."""

    id: int
    device: int
    start_us: int
    end_us: int
    latitude: float
    longitude: float
    radius_m: float
    fixes: int
    place: PlaceInfo
    clipped_start: bool
    clipped_end: bool

    def cut(self, lo: int, hi: int) -> StaySpan | None:
        """This stay within [lo, hi), or None when it lies outside."""
        if self.end_us <= lo or self.start_us >= hi:
            return None
        if self.start_us >= lo and self.end_us <= hi:
            return self
        return replace(
            self,
            start_us=max(self.start_us, lo),
            end_us=min(self.end_us, hi),
            clipped_start=self.clipped_start or self.start_us < lo,
            clipped_end=self.clipped_end or self.end_us > hi,
        )


@dataclass(frozen=True)
class Span:
    """A timeline entry in µs: a stay (`stay` set), a move or unknown time."""

    kind: str
    device: int
    start_us: int
    end_us: int
    stay: StaySpan | None = None
    path_km: float | None = None
    from_place: str | None = None
    to_place: str | None = None


def name_places(stays: Stays, params: EngineParams) -> list[PlaceInfo]:
    """Each stay's place: home when its centre lies within the home enter radius, else the
    nearest named place whose radius holds it, else an unnamed place shared by the stays of
    this job within the stay radius of each other, named by the geohash of their centre."""
    lat, lon = stays.lat, stays.lon
    n = len(lat)
    home = PlaceInfo("home", "home", params.home_latitude, params.home_longitude)
    out: list[PlaceInfo | None] = [None] * n
    nearest = np.full(n, np.inf)
    for place in params.places:
        km = haversine_km(lat, lon, np.full(n, place.latitude), np.full(n, place.longitude))
        holds = (km * 1000.0 <= place.radius_m) & (km < nearest)
        nearest[holds] = km[holds]
        info = PlaceInfo(place.name, "named", place.latitude, place.longitude)
        for k in np.flatnonzero(holds).tolist():
            out[k] = info
    home_km = haversine_km(
        lat, lon, np.full(n, params.home_latitude), np.full(n, params.home_longitude)
    )
    for k in np.flatnonzero(home_km < params.enter_radius_km).tolist():
        out[k] = home
    # Unnamed stays near each other are one place, centred on their mean.
    unnamed = [k for k in range(n) if out[k] is None]
    group = np.full(n, -1)
    lead_lat, lead_lon = np.empty((2, len(unnamed)))
    leads = 0
    for k in unnamed:
        if leads:
            # Metres on the local plane: exact enough at the scale of a stay radius.
            north = (lead_lat[:leads] - lat[k]) * _M_PER_DEGREE
            east = (lead_lon[:leads] - lon[k] + 540.0) % 360.0 - 180.0
            east *= _M_PER_DEGREE * np.cos(np.radians(lat[k]))
            apart = np.hypot(north, east)
            closest = int(np.argmin(apart))
            if apart[closest] <= params.stay_radius_m:
                group[k] = closest
                continue
        group[k] = leads
        lead_lat[leads], lead_lon[leads] = lat[k], lon[k]
        leads += 1
    for g in range(leads):
        members = np.flatnonzero(group == g)
        centre = float(lat[members].mean()), float(lon[members].mean())
        info = PlaceInfo(geohash(*centre), "unnamed", *centre)
        for k in members.tolist():
            out[k] = info
    return [info if info is not None else home for info in out]


def stay_spans(stays: Stays, params: EngineParams, window: Window) -> list[StaySpan]:
    """The stays cut to the window, numbered from 1, with their places."""
    columns = zip(
        stays.device.tolist(),
        stays.start_us.tolist(),
        stays.end_us.tolist(),
        stays.lat.tolist(),
        stays.lon.tolist(),
        stays.radius_m.tolist(),
        stays.fixes.tolist(),
        name_places(stays, params),
        stays.data_start.tolist(),
        stays.data_end.tolist(),
        strict=True,
    )
    spans = []
    for k, values in enumerate(columns):
        span = StaySpan(k + 1, *values).cut(window.start_us, window.end_us)
        if span is not None:
            spans.append(span)
    return spans


class PathClock:
    """The path a device has travelled by each instant of the window: the running path of
    its fixes in the window at the last fix at or before it."""

    def __init__(self, t: Ints, cumulative_km: Floats) -> None:
        self.t, self.cumulative_km = t, cumulative_km

    def at(self, us: int) -> float:
        k = int(np.searchsorted(self.t, us, side="right")) - 1
        return float(self.cumulative_km[k]) if k >= 0 else 0.0

    def between(self, a: int, b: int) -> float:
        return self.at(b) - self.at(a)

    def between_each(self, a: Ints, b: Ints) -> list[float]:
        """`between` for each pair of `a` and `b`, in one pass."""
        if not len(self.t):
            return [0.0] * len(a)
        k = np.searchsorted(self.t, np.stack([a, b]), side="right") - 1
        at = np.where(k >= 0, self.cumulative_km[np.maximum(k, 0)], 0.0)
        return (at[1] - at[0]).tolist()  # type: ignore[no-any-return]


def device_timeline(
    device: int,
    stays: list[StaySpan],
    observed_t: Ints,
    clock: PathClock,
    *,
    lo: int,
    hi: int,
    max_gap_s: float,
) -> list[Span]:
    """One device's window [lo, hi) as consecutive spans: its stays, unknown time where no
    fix was observed for longer than `max_gap_s` (before its first fix and after its last
    included) outside stays, and moves in between. `observed_t` are its valid fixes' times
    (context included), in order."""
    gap_us = round(max_gap_s * US_PER_S)
    edges = np.concatenate(([np.iinfo(np.int64).min], observed_t, [np.iinfo(np.int64).max]))
    step = np.diff(edges.astype(np.float64))
    wide = np.flatnonzero(step > gap_us)
    unknown = [
        (max(int(edges[k]), lo), min(int(edges[k + 1]), hi))
        for k in wide.tolist()
        if edges[k] < hi and edges[k + 1] > lo
    ]
    cuts = sorted(
        {lo, hi, *(u for pair in unknown for u in pair)}
        | {u for stay in stays for u in (stay.start_us, stay.end_us)}
    )
    stay_starts = [stay.start_us for stay in stays]
    unknown_starts = [a for a, _ in unknown]
    pieces: list[tuple[str, StaySpan | None, int, int]] = []
    for a, b in itertools.pairwise(cuts):
        k = bisect.bisect_right(stay_starts, a) - 1
        if k >= 0 and stays[k].end_us >= b:
            kind, stay = "stay", stays[k]
        else:
            j = bisect.bisect_right(unknown_starts, a) - 1
            kind = "unknown" if j >= 0 and unknown[j][1] >= b else "move"
            stay = None
        if pieces and pieces[-1][0] == kind and pieces[-1][1] is stay:
            pieces[-1] = (kind, stay, pieces[-1][2], b)
        else:
            pieces.append((kind, stay, a, b))
    moves = [(a, b) for kind, _, a, b in pieces if kind == "move"]
    paths = iter(clock.between_each(*np.array(moves, dtype=np.int64).reshape(-1, 2).T))
    spans = []
    for k, (kind, stay, a, b) in enumerate(pieces):
        if kind != "move":
            spans.append(Span(kind, device, a, b, stay=stay))
            continue
        before = pieces[k - 1][1] if k else None
        after = pieces[k + 1][1] if k + 1 < len(pieces) else None
        spans.append(
            Span(
                kind,
                device,
                a,
                b,
                path_km=next(paths),
                from_place=before.place.name if before else None,
                to_place=after.place.name if after else None,
            )
        )
    return spans


def spans_by_day(spans: list[Span], bounds: list[int], clock: PathClock) -> list[list[Span]]:
    """One device's spans cut to each day [bounds[d], bounds[d + 1]) (a cut move's path is
    its part inside the day)."""
    days: list[list[Span]] = [[] for _ in bounds[:-1]]
    for span in spans:
        first = max(bisect.bisect_right(bounds, span.start_us) - 1, 0)
        last = min(bisect.bisect_left(bounds, span.end_us) - 1, len(days) - 1)
        for d in range(first, last + 1):
            lo, hi = bounds[d], bounds[d + 1]
            a, b = max(span.start_us, lo), min(span.end_us, hi)
            if a >= b:
                continue
            if (a, b) == (span.start_us, span.end_us):
                days[d].append(span)
                continue
            stay = span.stay.cut(lo, hi) if span.stay else None
            path = None if span.path_km is None else clock.between(a, b)
            days[d].append(
                Span(span.kind, span.device, a, b, stay, path, span.from_place, span.to_place)
            )
    return days


@dataclass(frozen=True)
class TimelineModels:
    """The stays, places and timeline entries of the window and of each of its days."""

    stays: list[Stay]
    places: list[PlaceVisit]
    timeline: list[TimelineEntry]
    days: list[tuple[list[Stay], list[PlaceVisit], list[TimelineEntry]]]

    @staticmethod
    def joined(parts: list[TimelineModels], n_days: int) -> TimelineModels:
        """Several devices' models together: each device's own entries, in device order,
        and the time per place over all of them."""
        if len(parts) == 1:
            return parts[0]
        days = [
            (
                [stay for part in parts for stay in part.days[d][0]],
                join_places([part.days[d][1] for part in parts]),
                [entry for part in parts for entry in part.days[d][2]],
            )
            for d in range(n_days)
        ]
        return TimelineModels(
            stays=[stay for part in parts for stay in part.stays],
            places=join_places([part.places for part in parts]),
            timeline=[entry for part in parts for entry in part.timeline],
            days=days,
        )


class Models:
    """The JSON models of spans, each built once: a day's entries are mostly the window's
    own spans (only those crossing midnight are cut), so the days share their models, and
    the local times of instants, which the stays, moves and places share too."""

    def __init__(self, device_ids: tuple[str, ...], window: Window) -> None:
        self.device_ids, self.window = device_ids, window
        self._stays: dict[int, Stay] = {}
        self._entries: dict[int, TimelineEntry] = {}
        self._times: dict[int, dt.datetime] = {}

    def time(self, us: int) -> dt.datetime:
        """The local time of the instant `us`."""
        time = self._times.get(us)
        if time is None:
            time = self._times[us] = self.window.local_time(us)
        return time

    def of(self, spans: list[Span], days: list[list[Span]]) -> TimelineModels:
        """The models of one device's spans over the window and over each day."""
        # Spans are known by their ids, which are unique only among live objects: those
        # of one device's spans, which live through this call.
        self._stays.clear()
        self._entries.clear()
        return TimelineModels(
            stays=self.stays(spans),
            places=self.places(spans),
            timeline=self.timeline(spans),
            days=[(self.stays(day), self.places(day), self.timeline(day)) for day in days],
        )

    def stays(self, spans: list[Span]) -> list[Stay]:
        """The models of the stays among `spans`."""
        out = []
        for span in spans:
            if span.stay is not None:
                key = id(span.stay)
                model = self._stays.get(key)
                if model is None:
                    model = self._stays[key] = self.stay(span.stay)
                out.append(model)
        return out

    def stay(self, span: StaySpan) -> Stay:
        """The JSON model of a stay span."""
        return trusted(
            Stay,
            {
                "id": span.id,
                "device_id": self.device_ids[span.device],
                "start": self.time(span.start_us),
                "end": self.time(span.end_us),
                "duration_s": round_s((span.end_us - span.start_us) / US_PER_S),
                "latitude": round(span.latitude, 7),
                "longitude": round(span.longitude, 7),
                "radius_m": round(span.radius_m, 1),
                "fixes": span.fixes,
                "place": span.place.name,
                "clipped_start": span.clipped_start,
                "clipped_end": span.clipped_end,
            },
        )

    def timeline(self, spans: list[Span]) -> list[TimelineEntry]:
        """The models of `spans`."""
        out = []
        for span in spans:
            key = id(span)
            model = self._entries.get(key)
            if model is None:
                model = self._entries[key] = self.entry(span)
            out.append(model)
        return out

    def entry(self, span: Span) -> TimelineEntry:
        """The JSON model of a timeline span."""
        return trusted(
            TimelineEntry,
            {
                "kind": span.kind,
                "device_id": self.device_ids[span.device],
                "start": self.time(span.start_us),
                "end": self.time(span.end_us),
                "duration_s": round_s((span.end_us - span.start_us) / US_PER_S),
                "place": span.stay.place.name if span.stay else None,
                "stay_id": span.stay.id if span.stay else None,
                "path_km": None if span.path_km is None else round_km(span.path_km),
                "from_place": span.from_place,
                "to_place": span.to_place,
            },
        )

    def places(self, spans: list[Span]) -> list[PlaceVisit]:
        """Time spent per place over the stays among `spans`, the most time first."""
        by_place: dict[str, list[StaySpan]] = {}
        for span in spans:
            if span.stay is not None:
                by_place.setdefault(span.stay.place.name, []).append(span.stay)
        visits = [
            trusted(
                PlaceVisit,
                {
                    "place": name,
                    "kind": group[0].place.kind,
                    "latitude": round(group[0].place.latitude, 7),
                    "longitude": round(group[0].place.longitude, 7),
                    "visits": len(group),
                    "total_s": round_s(sum(s.end_us - s.start_us for s in group) / US_PER_S),
                    "first_arrival": self.time(min(s.start_us for s in group)),
                    "last_departure": self.time(max(s.end_us for s in group)),
                },
            )
            for name, group in by_place.items()
        ]
        return sorted(visits, key=lambda visit: (-visit.total_s, visit.place))


def join_places(parts: list[list[PlaceVisit]]) -> list[PlaceVisit]:
    """The time per place of several devices together."""
    by_place: dict[str, list[PlaceVisit]] = {}
    for part in parts:
        for visit in part:
            by_place.setdefault(visit.place, []).append(visit)
    joined = [
        group[0]
        if len(group) == 1
        else group[0].model_copy(
            update={
                "visits": sum(v.visits for v in group),
                "total_s": round_s(sum(v.total_s for v in group)),
                "first_arrival": min(v.first_arrival for v in group),
                "last_departure": max(v.last_departure for v in group),
            }
        )
        for group in by_place.values()
    ]
    return sorted(joined, key=lambda visit: (-visit.total_s, visit.place))
