"""What the engine returns: the JSON-ready `Summary` (and the models it is made of) and the
per-fix `Analysis` arrays, with the codes those arrays hold.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from shared.engine.arrays import Floats
from shared.engine.params import EngineParams
from shared.engine.points import Points

SCHEMA_VERSION = 1
"""Version of the `Summary` JSON; bumped whenever a key changes meaning or disappears."""

DROP_RULES: tuple[str, ...] = ("invalid", "accuracy", "duplicate", "jump", "jitter")
"""Filter rules in the order they run; `Analysis.dropped_by` holds 1 + the rule's index."""

KEPT = 0
INVALID, ACCURACY, DUPLICATE, JUMP, JITTER = range(1, 6)
NO_TRIP = 0
HOME, AWAY, UNKNOWN = 0, 1, 2
STATE_UNKNOWN = -1
"""`Analysis.at_home` of a fix a quality filter dropped: it tells nothing about the state."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=_Model)
_SET_ATTRIBUTE = object.__setattr__


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """`cls.model_construct(**values)` for `values` of every field of `cls`, in the order
    of its fields, already of the types validation gives: the engine builds thousands of
    stays and timeline entries, and model_construct's lookup of aliases and defaults per
    field costs several times what this does (the dict becomes the model's own)."""
    model = cls.__new__(cls)
    _SET_ATTRIBUTE(model, "__dict__", values)
    _SET_ATTRIBUTE(model, "__pydantic_fields_set__", set(values))
    _SET_ATTRIBUTE(model, "__pydantic_extra__", None)
    _SET_ATTRIBUTE(model, "__pydantic_private__", None)
    return model


class DroppedCounts(_Model):
    """Fixes read in the window that each filter rule dropped (the first rule that applied)."""

    invalid: int = 0
    accuracy: int = 0
    duplicate: int = 0
    jump: int = 0
    jitter: int = 0


class PointCounts(_Model):
    """Fixes read in the window, used by every metric, and dropped per rule."""

    read: int = 0
    used: int = 0
    dropped: DroppedCounts = DroppedCounts()
    accuracy_unknown: int = 0
    """Fixes without an accuracy (NULL): kept, since unknown is not bad."""


class Place(_Model):
    """Where and when a device was."""

    time: dt.datetime
    latitude: float
    longitude: float
    device_id: str


class Trip(_Model):
    """Leaving the exit radius until coming back inside the enter radius."""

    id: int
    device_id: str
    start: dt.datetime
    end: dt.datetime
    duration_s: float
    max_distance_km: float | None
    """Farthest used fix of the trip inside the window (None when none is inside)."""
    path_km: float
    clipped_start: bool
    """The departure is before the window or was not observed (the data start away)."""
    clipped_end: bool
    """The return is after the window or was not observed (the data end away)."""


class Stay(_Model):
    """A period of at least `stay_min_minutes` within `stay_radius_m` of one centre."""

    id: int
    device_id: str
    start: dt.datetime
    end: dt.datetime
    duration_s: float
    latitude: float
    longitude: float
    """The stay's centre: the median of its fixes, so one noisy fix cannot move it."""
    radius_m: float
    """How far from the centre the stay's fixes kept (lone outliers aside)."""
    fixes: int
    place: str
    """`home`, the name of a configured place, or the id of an unnamed place."""
    clipped_start: bool
    """The arrival is before the window (or day) or was not observed."""
    clipped_end: bool
    """The departure is after the window (or day) or was not observed."""


class PlaceVisit(_Model):
    """Time spent at one place: the stays there."""

    place: str
    kind: Literal["home", "named", "unnamed"]
    latitude: float
    longitude: float
    visits: int
    total_s: float
    first_arrival: dt.datetime
    last_departure: dt.datetime


class TimelineEntry(_Model):
    """One stretch of a device's day: a stay, a move between stays, or unknown time."""

    kind: Literal["stay", "move", "unknown"]
    device_id: str
    start: dt.datetime
    end: dt.datetime
    duration_s: float
    place: str | None = None
    """The stay's place (stays only)."""
    stay_id: int | None = None
    path_km: float | None = None
    """Path travelled (moves only)."""
    from_place: str | None = None
    """The place of the stay a move leaves (None when it does not follow a stay)."""
    to_place: str | None = None
    """The place of the stay a move reaches (None when no stay follows it)."""


class Completeness(_Model):
    """How well the fixes cover the window."""

    coverage: float
    """Share of the window (per device) that is known time, 0 to 1."""
    largest_gap_s: float
    """Longest stretch of the window without an observed fix (edges included)."""
    largest_gap_start: dt.datetime | None
    ingest_lag_median_s: float | None
    """created_at - timestamp over the fixes read that have a created_at."""
    ingest_lag_max_s: float | None


class DayMetrics(_Model):
    """One local day of the window; the days of a window add up to the window's totals."""

    date: dt.date
    points_read: int
    points_used: int
    path_km: float
    path_km_low: float = 0.0
    path_km_high: float = 0.0
    raw_path_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float
    stays: list[Stay] = []
    """The stays overlapping the day, cut to it."""
    places: list[PlaceVisit] = []
    timeline: list[TimelineEntry] = []
    """The day's part of the timeline: its entries add up to the day."""


class Metrics(_Model):
    """The metrics of one device, or of all devices together (sums over devices)."""

    points: PointCounts
    path_km: float
    """Path through the used fixes: segments between consecutive fixes of one device."""
    path_km_low: float = 0.0
    """The least the true path may be, given the fixes' reported accuracy (noise lengthens
    a measured path)."""
    path_km_high: float = 0.0
    """The most it may be, given the time between fixes (roads are longer than chords)."""
    raw_path_km: float
    """The same through every fix with valid coordinates, before any other filter."""
    max_distance_km: float
    max_distance_at: Place | None
    min_distance_km: float
    mean_distance_km: float
    median_distance_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float
    trips: list[Trip]
    completeness: Completeness
    days: list[DayMetrics]
    stays: list[Stay] = []
    places: list[PlaceVisit] = []
    """One entry per place stayed at, by time spent there."""
    timeline: list[TimelineEntry] = []
    """Per device in time order: stays, moves and unknown time adding up to the window."""


class Month(_Model):
    """One calendar month of a summary's days (the days of it inside the window)."""

    month: str
    """`YYYY-MM`."""
    days: int
    points_read: int
    points_used: int
    path_km: float
    time_at_home_s: float
    time_away_s: float
    time_unknown_s: float


def months(days: Sequence[DayMetrics]) -> list[Month]:
    """Per calendar month totals of `days` (in order)."""
    groups: dict[str, list[DayMetrics]] = {}
    for day in days:
        groups.setdefault(f"{day.date:%Y-%m}", []).append(day)
    return [
        Month(
            month=name,
            days=len(group),
            points_read=sum(d.points_read for d in group),
            points_used=sum(d.points_used for d in group),
            path_km=round(sum(d.path_km for d in group), 6),
            time_at_home_s=round(sum(d.time_at_home_s for d in group), 3),
            time_away_s=round(sum(d.time_away_s for d in group), 3),
            time_unknown_s=round(sum(d.time_unknown_s for d in group), 3),
        )
        for name, group in groups.items()
    ]


class WindowInfo(_Model):
    """The analysed window: local days, their time zone and the UTC range they make."""

    timezone: str
    first_day: dt.date
    last_day: dt.date
    start: dt.datetime
    end: dt.datetime


class Summary(Metrics):
    """The result of one analysis: totals over devices, then each device on its own."""

    schema_version: Literal[1] = 1
    """`SCHEMA_VERSION`: bumped whenever a key changes meaning or disappears."""
    window: WindowInfo
    parameters: EngineParams
    devices: dict[str, Metrics]
    notes: list[str]
    months: list[Month] = []
    """Per calendar month totals of `days`."""


@dataclass(frozen=True, eq=False)
class Analysis:
    """A `Summary` plus one row per fix read in the window (the rows of the CSV).

    Every array is parallel to `points` (the fixes inside the window, sorted by device and
    time, dropped ones included).
    """

    summary: Summary
    points: Points
    distance_km: Floats
    """Distance from home; NaN where the coordinates are invalid."""
    segment_km: Floats
    """Path added by this fix (from the previous used fix, the part inside the window)."""
    cumulative_km: Floats
    """Running path of the fix's device."""
    at_home: npt.NDArray[np.int8]
    """1 at home, 0 away, -1 for fixes a quality filter dropped."""
    trip: npt.NDArray[np.int32]
    """Id of the trip the fix belongs to, 0 for none."""
    stay: npt.NDArray[np.int32]
    """Id of the stay the fix belongs to, 0 for none."""
    dropped_by: npt.NDArray[np.uint8]
    """0 for kept fixes, else 1 + the index of the rule in `DROP_RULES`."""
    sums: DaySums | None = None
    """The unrounded per-(device, day) sums the summary was rounded from."""


@dataclass(frozen=True, eq=False)
class DaySums:
    """Unrounded sums per device (rows, in `Points.device_ids` order) and day (columns):
    what `assembly` adds up across days so a range equals a single pass to the last digit."""

    path: Floats
    path_low: Floats
    path_high: Floats
    raw_path: Floats
    home_s: Floats
    away_s: Floats
    lead_km: Floats
    """Per device: the share before the window of the step into its first fix inside it
    (a trip starting with that fix counts the whole step in a single pass over a range)."""
    lead_us: npt.NDArray[np.int64]
    """Per device: that fix's time (µs), -1 for none."""
